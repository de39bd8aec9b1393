"""``MemoryStorage``: the storage protocol in-process, with the same rules as the Redis script.

It serves tests of the registry side without Redis and simulations of a
fleet inside one process: :meth:`MemoryStorage.peer` returns another
front-end (another process id) on the same shared state. Its clock plays
Redis' ``TIME``. See ``circuitbreaker_http/redis.py`` for the theory of
operation; the two are kept in step by one contract test class.
"""

from __future__ import annotations

import math
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from .. import _clock
from .._core import CircuitState, FleetState
from ._engine import SyncEngine
from ._protocol import BreakerReport, digest
from ._syncer import ThreadSyncer

__all__ = ["MemoryStorage"]

_STATES = {state.value: state for state in CircuitState}
_BUCKETS = 10


class _Record:
    """One breaker's shared state (the Redis script's hashes and sets)."""

    __slots__ = (
        "expires",
        "fleet_cycle",
        "key",
        "lease_seq",
        "leases",
        "not_before",
        "open_count",
        "open_until",
        "reason",
        "reporters",
        "state",
        "successes",
        "window",
    )

    def __init__(self, key: str) -> None:
        self.key = key
        self.state = "closed"
        self.fleet_cycle = 1
        self.open_until = 0.0
        self.open_count = 0
        self.not_before = 0.0
        self.successes = 0
        self.reason = "new"
        self.lease_seq = 0
        self.window: dict[int, list[int]] = {}  # bucket -> [calls, failures, slow]
        self.reporters: dict[str, float] = {}  # process id -> last failure time
        self.leases: dict[str, float] = {}  # lease id -> expiry time
        self.expires = 0.0


class _Shared:
    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.lock = threading.Lock()
        self.records: dict[str, _Record] = {}
        self.listeners: list[Callable[[str], None]] = []


class MemoryStorage:
    """The storage protocol held in this process's memory.

    Args:
        clock: Seconds, playing the storage's own clock (Redis' ``TIME``).
        sync_interval: Seconds between two rounds of a registry's syncer.
        min_reporters: Distinct processes with failures in the window that a
            fleet-wide trip needs (``>= 1``).
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = _clock.monotonic,
        sync_interval: float = 0.1,
        min_reporters: int = 1,
        _shared: _Shared | None = None,
    ) -> None:
        if isinstance(min_reporters, bool) or not isinstance(min_reporters, int):
            raise ValueError(f"min_reporters must be an int >= 1, got {min_reporters!r}")
        if min_reporters < 1:
            raise ValueError(f"min_reporters must be an int >= 1, got {min_reporters!r}")
        if not (isinstance(sync_interval, (int, float)) and 0 < sync_interval < math.inf):
            raise ValueError(f"sync_interval must be seconds > 0, got {sync_interval!r}")
        self._shared = _shared if _shared is not None else _Shared(clock)
        self.process_id = uuid.uuid4().hex
        self.min_reporters = min_reporters
        self.sync_interval = float(sync_interval)
        self._syncers: list[ThreadSyncer] = []
        self._undo: list[Callable[[], None]] = []

    def peer(self, **kwargs: Any) -> MemoryStorage:
        """Another front-end on the same shared state, as another process would be."""
        kwargs.setdefault("sync_interval", self.sync_interval)
        kwargs.setdefault("min_reporters", self.min_reporters)
        return MemoryStorage(_shared=self._shared, **kwargs)

    # -- the protocol ------------------------------------------------------------

    def start(self, engine: SyncEngine) -> ThreadSyncer:
        """Start the syncer thread of a registry's engine."""
        syncer = ThreadSyncer(engine, self.exchange, self.sync_interval)
        self._syncers.append(syncer)
        # A fleet transition wakes every registry's syncer, as Redis' pub/sub does.
        self._undo.append(self.subscribe(engine.notice))
        return syncer

    def exchange(self, reports: Sequence[BreakerReport]) -> list[FleetState]:
        """Apply each report atomically; return the fleet's state for each, in order."""
        shared = self._shared
        notify = []
        with shared.lock:
            replies = []
            for report in reports:
                reply, moved = self._apply(report)
                replies.append(reply)
                if moved:
                    notify.append(report.key)
        for key in notify:
            for listener in list(shared.listeners):
                listener(key)
        return replies

    def subscribe(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback(key)`` after every fleet-wide transition; returns an undo."""
        listeners = self._shared.listeners
        listeners.append(callback)

        def undo() -> None:
            if callback in listeners:
                listeners.remove(callback)

        return undo

    def breakers(self) -> list[str]:
        """The keys held (the index), without the expired."""
        shared = self._shared
        now = shared.clock()
        with shared.lock:
            return [r.key for r in shared.records.values() if r.expires > now]

    def ttls(self) -> dict[str, float]:
        """Seconds left to live of each stored record, by digest (for tests and tools)."""
        shared = self._shared
        now = shared.clock()
        with shared.lock:
            return {d: r.expires - now for d, r in shared.records.items() if r.expires > now}

    def close(self) -> None:
        """Stop every syncer started on this storage."""
        syncers, self._syncers = self._syncers, []
        undo, self._undo = self._undo, []
        for stop in undo:
            stop()
        for syncer in syncers:
            syncer.stop()

    # -- the rules (the Redis script says the same in Lua) --------------------------

    def _apply(self, report: BreakerReport) -> tuple[FleetState, bool]:
        shared = self._shared
        now = shared.clock()
        s = report.settings
        name = digest(report.key)
        record = shared.records.get(name)
        fresh = record is None or record.expires <= now
        if record is None or fresh:
            record = shared.records[name] = _Record(report.key)
        moved = False

        def go(new: str, why: str) -> None:
            nonlocal moved
            moved = True
            record.state = new
            record.fleet_cycle += 1
            record.reason = why
            record.successes = 0
            record.leases.clear()
            if new == "closed":
                record.window.clear()
                record.reporters.clear()
                record.open_count = 0
                record.not_before = 0.0
            elif new == "open":
                record.open_count += 1
                ahead = max(0.0, record.not_before - now)
                record.open_until = now + s.open_period(record.open_count, ahead, report.random)

        seen = report.fleet_cycle or record.fleet_cycle
        # 1. Manual actions apply fleet-wide, whatever the cycle.
        manual = report.manual
        if manual == "force_open":
            go("forced_open", "force_open")
        elif manual == "disable":
            go("disabled", "disable")
        elif manual == "reset":
            go("closed", "reset")
        # 2. Time: open -> half-open once the period is over; an expired lease is a failed trial.
        if record.state == "open" and now >= record.open_until:
            go("half_open", "open_period_ended")
        if record.state == "half_open" and any(t <= now for t in record.leases.values()):
            go("open", "trial_timed_out")
        current = seen == record.fleet_cycle
        if current and report.not_before is not None:
            record.not_before = now + report.not_before
        # 3. The window, and trips: only in the cycle the outcomes were let through in.
        width = s.window / _BUCKETS
        head = math.floor(now / width)
        for bucket in [b for b in record.window if b < head - _BUCKETS]:
            del record.window[bucket]
        horizon = now - s.window - width
        for pid in [p for p, t in record.reporters.items() if t < horizon]:
            del record.reporters[pid]
        if current and record.state == "closed":
            if report.calls:
                row = record.window.setdefault(head, [0, 0, 0])
                row[0] += report.calls
                row[1] += report.failures
                row[2] += report.slow_calls
            if report.failures or report.slow_calls:
                record.reporters[self.process_id] = now
            if len(record.reporters) >= self.min_reporters:
                calls = sum(row[0] for row in record.window.values())
                failures = sum(row[1] for row in record.window.values())
                slow = sum(row[2] for row in record.window.values())
                if report.trip == "consecutive_failures":
                    go("open", "consecutive_failures")
                elif calls >= s.minimum_calls:
                    if s.failure_rate is not None and failures / calls >= s.failure_rate:
                        go("open", "failure_rate")
                    elif s.slow_call_rate is not None and slow / calls >= s.slow_call_rate:
                        go("open", "slow_call_rate")
        # 4. Half-open: verdicts of live leases, then new leases.
        if record.state == "half_open":
            for lease, verdict in report.lease_returns:
                if record.leases.pop(lease, None) is None:
                    continue  # expired, or of another cycle
                if verdict is False:
                    go("open", "trial_failed")
                    break
                if verdict:
                    record.successes += 1
                    if record.successes >= s.success_threshold:
                        go("closed", "trials_succeeded")
                        break
        granted: list[str] = []
        if record.state == "half_open" and report.leases_wanted > 0:
            free = s.half_open_max_calls - len(record.leases)
            for _ in range(min(report.leases_wanted, max(0, free))):
                record.lease_seq += 1
                lease = f"{record.fleet_cycle}.{record.lease_seq}"
                record.leases[lease] = now + s.max_open_duration
                granted.append(lease)
        record.expires = now + s.ttl
        calls = failures = slow = 0
        for row in record.window.values():
            calls += row[0]
            failures += row[1]
            slow += row[2]
        reply = FleetState(
            key=report.key,
            state=_STATES[record.state],
            fleet_cycle=record.fleet_cycle,
            open_remaining=max(0.0, record.open_until - now) if record.state == "open" else 0.0,
            open_count=record.open_count,
            reason=record.reason,
            leases=tuple(granted),
            calls=calls,
            failures=failures,
            slow_calls=slow,
            fresh=fresh,
        )
        return reply, moved
