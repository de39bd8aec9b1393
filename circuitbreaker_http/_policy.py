"""Reading what the network says: ``Retry-After`` and fallback marking headers.

Everything here takes garbage calmly: a header that cannot be read is
ignored, never raised.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from email.utils import parsedate_to_datetime

from . import _clock

__all__ = ["MAX_RETRY_AFTER", "fallback_headers", "parse_retry_after"]

MAX_RETRY_AFTER = 365 * 24 * 3600.0
"""Longer hints are cut to a year; the open period is capped far below anyway."""


def _http_date(value: str) -> float | None:
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    try:
        if moment.tzinfo is None:
            # RFC 9110 dates are GMT; "-0000" parses without a zone.
            from datetime import timezone

            moment = moment.replace(tzinfo=timezone.utc)
        return moment.timestamp()
    except (ValueError, OverflowError, OSError):
        return None


def parse_retry_after(
    value: str | None,
    date: str | None = None,
    wall_clock: Callable[[], float] = _clock.wall_clock,
) -> float | None:
    """Return the delay a ``Retry-After`` value asks for, in seconds, or ``None``.

    Args:
        value: The header's value: delay-seconds (digits only, RFC 9110) or an HTTP date.
        date: The response's ``Date`` header, against which an HTTP date is read.
        wall_clock: Seconds since the epoch, used when ``Date`` is absent or unreadable.

    Returns:
        A delay ``>= 0`` (a date in the past gives 0), or ``None`` for garbage.
    """
    if not value or not isinstance(value, str):
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        if len(value) > 12:
            return MAX_RETRY_AFTER
        return min(float(int(value)), MAX_RETRY_AFTER)
    target = _http_date(value)
    if target is None:
        return None
    base = _http_date(date) if date else None
    if base is None:
        try:
            base = float(wall_clock())
        except Exception:
            return None
    delay = target - base
    if not math.isfinite(delay):
        return None
    return min(max(0.0, delay), MAX_RETRY_AFTER)


def fallback_headers(present: Iterable[str], retry_after: float | None) -> list[tuple[str, str]]:
    """Return the marking headers to set on a fallback response.

    ``X-Circuit-Breaker: open`` always (replacing any value the fallback set:
    every fallback response carries it), and ``Retry-After`` in whole
    seconds, rounded up, when a trial time is known and the fallback did not
    set one itself.
    """
    added: list[tuple[str, str]] = [("X-Circuit-Breaker", "open")]
    if (
        retry_after is not None
        and math.isfinite(retry_after)
        and all(name.lower() != "retry-after" for name in present)
    ):
        added.append(("Retry-After", str(max(0, math.ceil(retry_after)))))
    return added
