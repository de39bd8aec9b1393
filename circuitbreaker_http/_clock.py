"""The one place in the package that names the real clocks.

Everything else takes a clock as an argument, so tests move time by hand.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["Clock", "is_standard", "monotonic", "wall_clock"]

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
