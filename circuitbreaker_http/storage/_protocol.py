"""The storage protocol: what a registry's syncer says to a fleet's shared state.

One call, :meth:`Storage.exchange`, carries a whole round for many breakers:
each :class:`BreakerReport` flushes a breaker's window deltas, proposes a
transition (a local trip, a manual action), returns trial leases and asks
for new ones; each reply, a :class:`~circuitbreaker_http._core.FleetState`,
says where the fleet stands after the storage applied the report atomically.
Memory and Redis implement it alike and pass one contract test class.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from .._core import BreakerConfig, FleetState

__all__ = [
    "MANUAL_ACTIONS",
    "AsyncStorage",
    "BreakerReport",
    "FleetSettings",
    "Storage",
    "digest",
]

MANUAL_ACTIONS = frozenset({"force_open", "disable", "reset"})
"""The manual actions a report may carry; they apply fleet-wide, unconditionally."""

_TTL_MARGIN = 60.0
"""Seconds every stored key outlives what it can still matter for."""


def digest(key: str) -> str:
    """A fixed-length name for a breaker key: any content or length makes 32 hex digits."""
    # surrogatepass: a str key may hold lone surrogates, which UTF-8 refuses.
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class FleetSettings:
    """The configuration numbers a storage needs to judge a breaker fleet-wide.

    Built from a :class:`~circuitbreaker_http.BreakerConfig` by :meth:`of`;
    ``slow_call_rate`` is ``None`` when slow calls are not judged.
    """

    window: float
    minimum_calls: int
    failure_rate: float | None
    slow_call_rate: float | None
    open_duration: float
    open_backoff: float
    max_open_duration: float
    open_jitter: float
    half_open_max_calls: int
    success_threshold: int

    @classmethod
    def of(cls, config: BreakerConfig) -> FleetSettings:
        """Return the settings of ``config``."""
        return cls(
            window=config.window,
            minimum_calls=config.minimum_calls,
            failure_rate=config.failure_rate,
            slow_call_rate=config.slow_call_rate if config.slow_call_duration is not None else None,
            open_duration=config.open_duration,
            open_backoff=config.open_backoff,
            max_open_duration=config.max_open_duration,
            open_jitter=config.open_jitter,
            half_open_max_calls=config.half_open_max_calls,
            success_threshold=config.success_threshold,
        )

    @property
    def ttl(self) -> float:
        """Seconds a breaker's stored state lives after its last write.

        Long enough for the window's oldest bucket (1.1 × ``window``) and the
        longest open period or trial lease (``max_open_duration``), plus a margin.
        """
        return 1.1 * self.window + self.max_open_duration + _TTL_MARGIN

    def open_period(self, open_count: int, not_before: float, random: float) -> float:
        """Seconds the ``open_count``-th open period in a row lasts (API "When it moves").

        ``not_before`` is the Retry-After delay still ahead (``0.0`` for none);
        ``random`` is in ``[0, 1)`` and stretches the period by up to ``open_jitter``.
        """
        period = self.open_duration
        if open_count > 1 and self.open_backoff > 1:
            try:
                period *= self.open_backoff ** (open_count - 1)
            except OverflowError:
                period = math.inf
        period = max(period, not_before)
        period = min(period, self.max_open_duration)
        return period * (1.0 + random * self.open_jitter)


@dataclass(frozen=True, slots=True)
class BreakerReport:
    """What one process sends for one breaker in a round.

    Attributes:
        key: The breaker's key.
        settings: Its configuration numbers.
        fleet_cycle: The fleet cycle the process last saw (``0``: none yet). The
            deltas and a trip proposal count only if the fleet is still in it
            and closed: an outcome counts only in the cycle it was let
            through in.
        calls: Outcomes recorded in the closed window since the last round.
        failures: Failed ones among them.
        slow_calls: Slow ones among them.
        trip: A trip proposal: why the process tripped locally
            (``"consecutive_failures"`` counts fleet-wide; a rate reason is
            judged again on the fleet's window).
        manual: ``"force_open"``, ``"disable"`` or ``"reset"``, applied fleet-wide.
        lease_returns: Trial leases given back, each with its verdict
            (``True`` success, ``False`` failure, ``None`` no outcome).
        leases_wanted: How many trial leases the process would use now.
        not_before: Seconds until the process's Retry-After not-before time.
        random: A number in ``[0, 1)`` for the open period's jitter.
    """

    key: str
    settings: FleetSettings
    fleet_cycle: int = 0
    calls: int = 0
    failures: int = 0
    slow_calls: int = 0
    trip: str | None = None
    manual: str | None = None
    lease_returns: tuple[tuple[str, bool | None], ...] = ()
    leases_wanted: int = 0
    not_before: float | None = None
    random: float = 0.0


@runtime_checkable
class Storage(Protocol):
    """Where a fleet's breaker state lives (memory for one process, Redis for many).

    Attributes:
        process_id: This process's name among the reporters.
        min_reporters: Distinct processes with failures in the window that a
            fleet-wide trip needs.
        sync_interval: Seconds between two rounds of a registry's syncer.
    """

    process_id: str
    min_reporters: int
    sync_interval: float

    def start(self, engine: Any) -> Any:
        """Start the syncer (a thread, or a task) that runs ``engine``'s rounds; return it.

        The returned object has ``stop()``; :meth:`close` stops it too.
        """
        ...

    def exchange(self, reports: Sequence[BreakerReport]) -> list[FleetState]:
        """Apply each report atomically and return the fleet's state for each, in order.

        Raises:
            Exception: whatever the backend raises; the syncer catches it.
        """
        ...

    def subscribe(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback(key)`` soon after a fleet-wide transition of ``key``; returns an undo."""
        ...

    def breakers(self) -> list[str]:
        """The keys of the breakers the storage holds state for, from its index."""
        ...

    def close(self) -> None:
        """Stop every syncer started on this storage (the client stays the caller's)."""
        ...


@runtime_checkable
class AsyncStorage(Protocol):
    """:class:`Storage` for an asyncio backend: the same round, awaited.

    Its syncer is a task on the running event loop; :meth:`start` may be
    called outside one, and the task then starts once the storage sees a
    running loop (see ``circuitbreaker_http.redis.AsyncRedisStorage``).

    Attributes:
        process_id: This process's name among the reporters.
        min_reporters: Distinct processes with failures in the window that a
            fleet-wide trip needs.
        sync_interval: Seconds between two rounds of a registry's syncer.
    """

    process_id: str
    min_reporters: int
    sync_interval: float

    def start(self, engine: Any) -> Any:
        """Register ``engine`` and start (now or once a loop runs) its syncer task; return it."""
        ...

    async def exchange(self, reports: Sequence[BreakerReport]) -> list[FleetState]:
        """Apply each report atomically and return the fleet's state for each, in order."""
        ...

    def subscribe(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback(key)`` (on the loop) after a fleet-wide transition; returns an undo."""
        ...

    async def breakers(self) -> list[str]:
        """The keys of the breakers the storage holds state for, from its index."""
        ...

    def close(self) -> None:
        """Cancel every task started on this storage without waiting for it."""
        ...

    async def aclose(self) -> None:
        """Cancel every task started on this storage and wait for them to end."""
        ...
