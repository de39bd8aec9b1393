"""The syncers that run a registry's sync rounds: the shared bookkeeping, and a thread.

One per registry, never one per breaker (the asyncio task of
``circuitbreaker_http.redis.AsyncRedisStorage`` shares :class:`Rounds`).
Every ``sync_interval`` it asks the engine for the round's reports; with
none (idle) it sends nothing. Whatever
the storage raises is caught here: breaking goes on locally, no error reaches
a caller, one WARNING is logged per outage and one INFO on recovery, and
rounds are retried after a jittered backoff from 0.1 s doubling to 5 s.
"""

from __future__ import annotations

import logging
import math
import random as _random
import threading
from collections.abc import Callable, Sequence

from .. import _clock
from .._core import FleetState
from ._engine import SyncEngine
from ._protocol import BreakerReport

__all__ = ["SYNC_BUCKETS", "Rounds", "ThreadSyncer", "stats_of"]

logger = logging.getLogger("circuitbreaker_http")

BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0

SYNC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Upper bounds, in seconds, of the round-duration histogram a storage's ``stats()`` gives."""


class Rounds:
    """What every syncer does around one exchange, whatever its I/O loop.

    A syncer calls :meth:`begin` for the round's reports, sends them through
    its storage (blocking or awaited), then :meth:`succeeded` with the replies
    or :meth:`failed` with what the storage raised. The outage bookkeeping
    (one WARNING per outage, one INFO on recovery, jittered backoff) lives
    here, so the thread and the asyncio task behave alike.

    Args:
        engine: The registry's engine.
        interval: Seconds between rounds.
        clock: The clock the engine's refresh times are read on.
    """

    def __init__(
        self,
        engine: SyncEngine,
        interval: float,
        clock: Callable[[], float] = _clock.monotonic,
    ) -> None:
        self.engine = engine
        self.interval = interval
        self._clock = clock
        self._down = False
        self._backoff = 0.0
        #: Rounds that sent something, and rounds the storage failed (read-only).
        self.rounds = 0
        self.failures = 0
        # How long rounds took, for metrics: a count per SYNC_BUCKETS bound
        # (the last slot is +Inf), and the total seconds.
        self.durations = [0] * (len(SYNC_BUCKETS) + 1)
        self.duration_sum = 0.0
        self._began: float | None = None

    @property
    def up(self) -> bool:
        """Whether the last round reached the storage (``True`` before the first)."""
        return not self._down

    def _timed(self) -> None:
        began = self._began
        if began is None:
            return
        self._began = None
        seconds = max(0.0, _clock.monotonic() - began)
        self.duration_sum += seconds
        for i, bound in enumerate(SYNC_BUCKETS):
            if seconds <= bound:
                self.durations[i] += 1
                return
        self.durations[-1] += 1

    @property
    def delay(self) -> float:
        """Seconds to wait before the next round: the interval, or the backoff while down."""
        return self._backoff if self._down else self.interval

    def begin(self) -> list[BreakerReport] | None:
        """The round's reports; ``None`` when there is nothing to send (or collecting failed)."""
        try:
            reports = self.engine.collect(self._clock())
        except Exception:  # a bug here must not kill the syncer
            logger.exception("circuit breaker fleet sync: collecting a round failed")
            return None
        if reports:
            self._began = _clock.monotonic()
        return reports or None

    def failed(self, exc: BaseException) -> None:
        """The storage raised ``exc`` for the round :meth:`begin` returned."""
        self._timed()
        self.engine.failed()
        self.failures += 1
        self._backoff = min(BACKOFF_MAX, max(BACKOFF_FIRST, self._backoff * 2))
        self._backoff *= 0.5 + _random.random() / 2  # jitter: a fleet does not retry in step
        if not self._down:
            self._down = True
            logger.warning(
                "circuit breaker fleet storage unreachable (%s: %s); breaking on local "
                "state and retrying with backoff (logged once per outage)",
                type(exc).__name__,
                exc,
            )

    def succeeded(self, replies: list[FleetState]) -> None:
        """The storage answered the round :meth:`begin` returned."""
        self._timed()
        self.rounds += 1
        if self._down:
            self._down = False
            self._backoff = 0.0
            logger.info("circuit breaker fleet storage reachable again; state merged back")
        try:
            self.engine.apply(replies, self._clock())
        except Exception:
            logger.exception("circuit breaker fleet sync: applying a round failed")


class ThreadSyncer(Rounds):
    """Runs :class:`SyncEngine` rounds on a daemon thread.

    Args:
        engine: The registry's engine.
        exchange: The storage's :meth:`~Storage.exchange`.
        interval: Seconds between rounds.
        name: For the thread's name and log lines.
        clock: The clock the engine's refresh times are read on.
    """

    def __init__(
        self,
        engine: SyncEngine,
        exchange: Callable[[Sequence[BreakerReport]], list[FleetState]],
        interval: float,
        name: str = "circuitbreaker_http-sync",
        clock: Callable[[], float] = _clock.monotonic,
    ) -> None:
        super().__init__(engine, interval, clock)
        self._exchange = exchange
        self._stop = threading.Event()
        self._wake = threading.Event()
        engine.wake = self._wake.set
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread after its current round (waits up to ``timeout`` seconds)."""
        self._stop.set()
        self._wake.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.delay)
            self._wake.clear()
            if self._stop.is_set():
                return
            self.run_round()

    def run_round(self) -> bool:
        """Run one round now; whether the storage answered (or there was nothing to send)."""
        reports = self.begin()
        if reports is None:
            return True
        try:
            replies = self._exchange(reports)
        except Exception as exc:
            self.failed(exc)
            return False
        self.succeeded(replies)
        return True


def stats_of(syncers: Sequence[Rounds]) -> dict[str, object]:
    """A storage's ``stats()`` over the syncers it runs (one per registry).

    Returns:
        ``up`` (every syncer's last round reached the storage), ``errors``
        (failed rounds), ``rounds`` (rounds answered), ``sync_buckets``
        (``(upper bound in seconds, cumulative count)`` pairs ending with
        ``math.inf``, as a Prometheus histogram wants them) and ``sync_sum``
        (seconds spent in rounds).
    """
    counts = [0] * (len(SYNC_BUCKETS) + 1)
    total = 0.0
    for syncer in syncers:
        for i, n in enumerate(syncer.durations):
            counts[i] += n
        total += syncer.duration_sum
    buckets: list[tuple[float, int]] = []
    running = 0
    for bound, n in zip((*SYNC_BUCKETS, math.inf), counts, strict=True):
        running += n
        buckets.append((bound, running))
    return {
        "up": all(syncer.up for syncer in syncers),
        "errors": sum(syncer.failures for syncer in syncers),
        "rounds": sum(syncer.rounds for syncer in syncers),
        "sync_buckets": buckets,
        "sync_sum": total,
    }
