"""pytest fixtures for projects using eventbus (registered through the ``pytest11`` entry point)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .testing import CapturedEvents


@pytest.fixture
def captured_events() -> Iterator[CapturedEvents]:
    """Every event published during the test, in order (see ``eventbus.testing.capture_events``)."""
    from .testing import capture_events  # imported late: Django may not be set up yet

    with capture_events() as events:
        yield events
