"""Django signals eventbus sends, so plain ``@receiver`` code can observe events."""

from django.dispatch import Signal

event_published = Signal()
"""Sent once per dispatched event, after its catalog handlers.

``sender`` is the event type's enum member; the keyword argument ``event`` is
the :class:`eventbus.Event`. Sent with ``send_robust``: a failing receiver is
logged and never reaches the publisher.
"""
