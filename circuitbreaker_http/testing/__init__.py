"""Helpers for testing code that uses circuit breakers.

``ManualClock`` stands in for ``time.monotonic``: pass it as ``clock=`` to a
``CircuitBreaker`` or ``BreakerRegistry`` and move time by hand, so tests of
open periods and windows run in microseconds and never sleep.

``FlakyServer`` is a real HTTP/1.1 server on loopback, standard library only,
that fails, stalls, resets and cuts bodies short on demand: point your own
client code at it to see what your breakers do.
"""

from __future__ import annotations

import threading

from ._server import FlakyServer

__all__ = ["FlakyServer", "ManualClock"]


class ManualClock:
    """A clock that moves only when told to.

    Args:
        start: The first reading, in seconds.

    Example:
        >>> clock = ManualClock()
        >>> clock.advance(30)
        >>> clock()
        30.0
    """

    __slots__ = ("_lock", "_now")

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        """Return the current reading."""
        return self._now

    def __repr__(self) -> str:
        return f"ManualClock({self._now!r})"

    @property
    def now(self) -> float:
        """The current reading."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (>= 0)."""
        if seconds < 0:
            raise ValueError(f"ManualClock.advance: seconds must be >= 0, got {seconds!r}")
        with self._lock:
            self._now += seconds

    def set(self, now: float) -> None:
        """Set the reading to ``now``; it may not move backwards."""
        with self._lock:
            if now < self._now:
                raise ValueError(f"ManualClock.set: {now!r} is before {self._now!r}")
            self._now = float(now)
