"""How long to wait before trying again: doubling from a base, capped.

One rule for everything eventbus retries on a schedule: the relay's hand-offs and
durable handler runs.
"""

from __future__ import annotations


def doubling(attempts: int, base: float, cap: float) -> float:
    """Seconds to wait after ``attempts`` failed attempts: base, 2 x base, 4 x base... <= cap."""
    return float(min(cap, base * 2 ** max(attempts - 1, 0)))
