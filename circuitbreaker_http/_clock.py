"""The one place in the package that names the real clocks.

Everything else takes a clock as an argument, so tests move time by hand.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

__all__ = ["Clock", "ClockGuard", "is_standard", "monotonic", "wall_clock"]

logger = logging.getLogger("circuitbreaker_http")

Clock = Callable[[], float]
"""A zero-argument callable returning seconds, like ``time.monotonic``."""

monotonic: Clock = time.monotonic
"""The default clock for breakers and registries."""

wall_clock: Clock = time.time
"""Seconds since the epoch: only for an HTTP-date ``Retry-After`` with no ``Date`` beside it."""

_STANDARD: tuple[Clock, ...] = (time.monotonic, time.perf_counter, time.time)


def is_standard(clock: object) -> bool:
    """Whether ``clock`` is one of the standard library's clocks, which never fail."""
    return any(clock is known for known in _STANDARD)


def finite(reading: object) -> bool:
    """Whether a clock reading is a finite number."""
    try:
        return -math.inf < reading < math.inf  # type: ignore[operator]
    except TypeError:  # not a number at all
        return False


def not_finite(reading: object) -> str:
    """What is wrong with a clock ``reading`` that :func:`finite` refuses."""
    return f"its clock returned {reading!r}, not a finite number of seconds"


class ClockGuard:
    """A clock read where nothing may raise: NaN when it fails, and one WARNING.

    It holds the clock and what to say, never its owner, so an owner that
    keeps it (a breaker's ``timer``) makes no reference cycle.

    Args:
        clock: The clock to read.
        what: The warning's subject and what a failure costs, a %-format
            with ``args`` (say ``"circuit breaker %r: an outcome ... recorded"``).
        args: The values of ``what``.
    """

    __slots__ = ("args", "clock", "warned", "what")

    def __init__(self, clock: Clock, what: str, *args: object) -> None:
        self.clock = clock
        self.what = what
        self.args = args
        self.warned = False

    def __call__(self) -> float:
        try:
            now = self.clock()
        except Exception as exc:
            self.failed(exc)
            return math.nan
        if finite(now):
            return now
        self.failed(ValueError(not_finite(now)))
        return math.nan

    def failed(self, exc: Exception) -> None:
        """Log, the first time only, that the clock failed with ``exc``."""
        if self.warned:
            return
        self.warned = True
        logger.warning(
            self.what + ": %s: %s (its clock raised or gave a reading that is not a "
            "finite number; logged once)",
            *self.args,
            type(exc).__name__,
            exc,
        )
