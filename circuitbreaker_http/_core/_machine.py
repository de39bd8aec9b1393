"""The pure breaker engine: one state machine and its sliding window.

Theory of operation
-------------------

``BreakerCore`` is a plain object with no clock, no lock and no I/O. Every
method that depends on time takes ``now`` (a clock reading in seconds), so the
shell (``CircuitBreaker``) decides where time comes from and tests move it by
hand. The core can say when it would next change state by itself
(:meth:`BreakerCore.next_transition_at`), as a protocol engine with timers does.

Permits. Every call let through holds a *permit*, an ``int``, that settles
exactly once: :meth:`record` (success or failure, with a slow flag and an
optional Retry-After not-before time) or :meth:`release` (no outcome). Each
entry into a state takes a fresh serial number, the *cycle*; a closed-state
permit is the cycle itself, so admitting a call allocates nothing and needs no
lock (the shell reads :attr:`fast_permit`, a single attribute). A half-open
trial gets a serial of its own, negated, kept in :attr:`trials` with the time
it was let through: the sign of a permit tells for good which state its call
was let through in (positive closed, negative half-open, 0 disabled), however
the breaker moves afterwards. An outcome whose permit is neither the current closed cycle nor a
live trial is stale (its call was let through before a transition) and changes
nothing. ``DISABLED_PERMIT`` (0) is never a cycle, so it records nothing.

The window. Outcomes are counted in a ring of buckets aligned to multiples of
``window / 10`` on the clock: the bucket filling now plus the ten before it.
An outcome therefore leaves the window between ``window`` and ``1.1 × window``
after it was recorded, recording is O(1), memory is O(buckets), and buckets of
different processes line up, so a fleet can add its windows together. Running
totals make every rule check O(1). The consecutive-failure count sits beside
the window and is not aged.

The count window. With ``window_calls`` set, the rate rules (and the
snapshot's counts) see only the most recent ``window_calls`` outcomes still in
the time window. They are kept beside the buckets as runs of equal outcomes
(bucket index, kind, count) in a deque, oldest first, with running totals:
an outcome joins the newest run or starts one, the oldest runs are trimmed to
``window_calls`` outcomes, and runs whose bucket leaves the time window go
with it. Every step is O(1) amortised, and memory is bounded by the number of
changes of kind, not of calls. A late outcome joins as the newest. Without
``window_calls`` none of this exists and nothing on the hot path changes.

Two kinds of time. A live outcome (:meth:`record`, :meth:`success`) happened
at ``now``; a reading older than the newest bucket can only be a clock that
stepped back, and lands in the newest bucket. A late outcome
(:meth:`record_late`, for a response settled by the garbage collector and
applied later) carries the time it settled: it is filed in the bucket of that
time while that bucket is still in the window and dropped once it has aged
out, so a burst of stale successes cannot dilute the failures of now.

Every ``now`` must be a finite clock reading: a method that would file or
compare a NaN or an infinity raises :class:`ValueError` before it changes
anything. (The success fast path compares only ``now < success_fast_until``,
so it counts ``-inf`` like any reading from a clock that stepped back.)

Counters. Beside the window the core keeps totals since it was created
(outcomes, failures, slow and ignored calls, transitions, time spent open) and
the latest failure's cause: integer adds on paths that already run, read by
:meth:`snapshot`. The success fast path adds nothing: pending successes join
``total_calls`` when they are folded. A shell with per-call listeners sets
:attr:`hold_slow_path`, which keeps the fast path closed, so that every
outcome reaches it.

Fleets. With a shared storage a syncer off the request path reads each
breaker through :meth:`sync_view` and moves it to the fleet's state through
:meth:`adopt`. What it reads costs the hot path nothing: the window's
additions since the closed period began are the window's totals plus what
has aged out of it (``_aged``, added to where buckets are dropped, once per
bucket), so no counter is bumped per call. The fleet's moves have triggers of
their own (``fleet_open``, ``fleet_half_open``, ``fleet_close``) and reasons
prefixed ``fleet:``, so a syncer never proposes them back. While the fleet
governs an open period (:attr:`fleet_trials`), half-open admits a trial only
while it holds a lease granted by the fleet; each trial hands its lease back
with its verdict in :attr:`lease_returns`. Without a storage none of this
runs and nothing changes.

Transitions all go through :meth:`_transition`, which looks the move up in
``TRANSITIONS``; a move that is not in the table raises
:class:`IllegalTransition` before anything changes. Each transition is appended
to :attr:`changes` for the shell to hand to listeners outside its lock.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ._values import (
    BreakerConfig,
    BreakerSnapshot,
    CircuitState,
    FleetState,
    StateChange,
    SyncView,
)

__all__ = [
    "BUCKETS",
    "DISABLED_PERMIT",
    "FLEET_REASON_PREFIX",
    "TRANSITIONS",
    "BreakerCore",
    "CoreState",
    "IllegalTransition",
    "MetricsRow",
    "bucket_of",
]

CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN
FORCED_OPEN = CircuitState.FORCED_OPEN
DISABLED = CircuitState.DISABLED

BUCKETS = 10
"""Buckets of history in the window; one more slot holds the bucket filling now."""
_SLOTS = BUCKETS + 1

DISABLED_PERMIT = 0
"""The permit handed out while disabled: it is never a cycle, so it records nothing."""

# (state, trigger) -> new state. Anything absent is illegal.
TRANSITIONS: dict[tuple[CircuitState, str], CircuitState] = {
    (CLOSED, "trip"): OPEN,
    (OPEN, "open_period_ended"): HALF_OPEN,
    (HALF_OPEN, "trial_failed"): OPEN,
    (HALF_OPEN, "trial_timed_out"): OPEN,
    (HALF_OPEN, "trials_succeeded"): CLOSED,
}
for _state in CircuitState:
    TRANSITIONS[(_state, "force_open")] = FORCED_OPEN
    TRANSITIONS[(_state, "disable")] = DISABLED
    TRANSITIONS[(_state, "reset")] = CLOSED
    # A fleet's transition, adopted from shared storage (BreakerCore.adopt):
    # the fleet may have moved any number of times since this process looked.
    if _state is not OPEN:
        TRANSITIONS[(_state, "fleet_open")] = OPEN
    if _state is not HALF_OPEN:
        TRANSITIONS[(_state, "fleet_half_open")] = HALF_OPEN
    if _state is not CLOSED:
        TRANSITIONS[(_state, "fleet_close")] = CLOSED
del _state

FLEET_REASON_PREFIX = "fleet:"
"""Reasons of transitions adopted from a fleet start with this."""

_MANUAL_TRIGGERS = {
    FORCED_OPEN: "force_open",
    DISABLED: "disable",
}
_FLEET_TRIGGERS = {
    OPEN: "fleet_open",
    HALF_OPEN: "fleet_half_open",
    CLOSED: "fleet_close",
}


MetricsRow = tuple[
    CircuitState, int, int, int, int, int, int, int, float, int, int, int, "float | None"
]
"""What :meth:`BreakerCore.metrics` returns (its docstring names the fields)."""


class IllegalTransition(RuntimeError):
    """A transition that the table does not allow; the state is left as it was."""


_INF = math.inf
_NINF = -math.inf


def bucket_of(now: float, width: float) -> int:
    """Return the index of the bucket of ``width`` seconds that ``now`` falls in."""
    return int(now // width)


def _finite(name: str, now: float) -> float:
    """Return ``now`` if it is a finite reading, else raise ``ValueError``."""
    # One chained comparison: False for NaN and both infinities.
    if _NINF < now < _INF:
        return now
    raise ValueError(f"breaker {name!r}: now must be a finite clock reading, got {now!r}")


def _bucket_end(index: int, width: float) -> float:
    """The smallest clock reading whose bucket is after ``index``, exactly as bucket_of sees it."""
    end = (index + 1) * width
    while bucket_of(end, width) <= index:
        end = math.nextafter(end, math.inf)
    while bucket_of(math.nextafter(end, -math.inf), width) > index:
        end = math.nextafter(end, -math.inf)
    return end


@dataclass(frozen=True, slots=True)
class CoreState:
    """The breaker's state as a plain value that can be stored, sent and merged.

    ``buckets`` holds ``(bucket index, calls, failures, slow calls)`` for each
    non-empty bucket of the window, oldest first; bucket ``i`` covers
    ``[i × width, (i + 1) × width)`` on the clock.
    """

    state: CircuitState
    open_until: float
    open_count: int
    not_before: float | None
    consecutive_failures: int
    width: float
    buckets: tuple[tuple[int, int, int, int], ...]

    def merged_buckets(self, other: CoreState) -> tuple[tuple[int, int, int, int], ...]:
        """Add up the aligned buckets of two states (for a fleet's shared window)."""
        if other.width != self.width:
            raise ValueError("cannot merge windows of different widths")
        totals: dict[int, list[int]] = {}
        for index, calls, failures, slow in (*self.buckets, *other.buckets):
            row = totals.setdefault(index, [0, 0, 0])
            row[0] += calls
            row[1] += failures
            row[2] += slow
        return tuple((i, *totals[i]) for i in sorted(totals))  # type: ignore[misc]


class BreakerCore:
    """The pure state machine behind one ``CircuitBreaker``. Not thread-safe.

    The success fast path: while ``now < success_fast_until`` (``now`` in the
    newest bucket of a window that holds no failure and no slow call, with no
    transition waiting in ``changes``), a success of ``permit == cycle`` can
    fire no rule, and all :meth:`success` does is ``pending_successes += 1``;
    a shell may do that itself. Pending
    successes are folded into the window (and reset the consecutive-failure
    count) at the next call of any other method, so ``calls`` and
    ``consecutive`` lag behind them until then; ``snapshot()`` and ``export()``
    are exact. Any transition sets ``success_fast_until`` to ``-inf`` until the
    next outcome of a closed period.

    Args:
        name: The breaker's name, copied into every ``StateChange``.
        config: Its configuration.
        random: A zero-argument callable returning a float in ``[0, 1)``, used
            only for ``open_jitter``.
    """

    __slots__ = (
        "_aged",
        "_b_calls",
        "_b_failures",
        "_b_slow",
        "_bucket_end",
        "_cf",
        "_counted",
        "_fr",
        "_head",
        "_min_calls",
        "_n_calls",
        "_n_failures",
        "_n_slow",
        "_open_since",
        "_open_total",
        "_random",
        "_scr",
        "_serial",
        "_slot",
        "_trial_leases",
        "_width",
        "calls",
        "changes",
        "config",
        "consecutive",
        "cycle",
        "failures",
        "fast_permit",
        "fleet_trials",
        "hold_slow_path",
        "last_failure",
        "lease_returns",
        "leases",
        "name",
        "not_before",
        "open_count",
        "open_until",
        "pending_successes",
        "slots_used",
        "slow_calls",
        "state",
        "success_fast_until",
        "total_calls",
        "total_failures",
        "total_ignored",
        "total_slow",
        "total_transitions",
        "trial_successes",
        "trials",
        "window_cycle",
    )

    def __init__(self, name: str, config: BreakerConfig, random: Callable[[], float]) -> None:
        self.name = name
        self.config = config
        self._random = random
        self._cf = config.consecutive_failures
        self._fr = config.failure_rate
        self._min_calls = config.minimum_calls
        self._scr = config.slow_call_rate if config.slow_call_duration is not None else None
        self._width = config.window / BUCKETS
        # The count window (see "The count window" above): runs of
        # [bucket index, failed, slow, count], and their totals.
        self._counted: deque[list[int]] | None = (
            deque() if config.window_calls is not None else None
        )
        self._n_calls = self._n_failures = self._n_slow = 0
        self.state = CLOSED
        self._serial = 1
        self.cycle = 1
        self.fast_permit: int | None = 1
        self.changes: list[StateChange] = []
        # window
        self._b_calls = [0] * _SLOTS
        self._b_failures = [0] * _SLOTS
        self._b_slow = [0] * _SLOTS
        self._head: int | None = None
        self._slot = 0
        self._bucket_end = -math.inf  # first clock reading past the newest bucket
        # The success fast path (see the class docstring).
        self.pending_successes = 0
        self.success_fast_until = -math.inf
        self.calls = 0
        self.failures = 0
        self.slow_calls = 0
        self.consecutive = 0
        # open periods
        self.open_count = 0
        self.open_until = 0.0
        self.not_before: float | None = None
        # half-open trials: permit -> [let through at, still holding a slot]
        self.trials: dict[int, list[float | bool]] = {}
        self.slots_used = 0
        self.trial_successes = 0
        # counters since creation (see "Counters" above)
        self.total_calls = self.total_failures = self.total_slow = 0
        self.total_ignored = self.total_transitions = 0
        self.last_failure: str | None = None
        self._open_total = 0.0
        self._open_since: float | None = None
        self.hold_slow_path = False
        # Fleets (see "Fleets" above): what has aged out of the window since
        # the closed period ``window_cycle`` began, as [calls, failures, slow].
        self.window_cycle = 1
        self._aged = [0, 0, 0]
        self.fleet_trials = False
        self.leases: list[str] = []
        self._trial_leases: dict[int, str] = {}
        self.lease_returns: list[tuple[str, bool | None]] = []

    # -- admission -----------------------------------------------------------

    def acquire(self, now: float) -> int | None:
        """Let a call through and return its permit, or return ``None`` to reject it."""
        state = self.state
        if state is CLOSED:
            return self.cycle
        if state is DISABLED:
            return DISABLED_PERMIT
        if state is FORCED_OPEN:
            return None
        _finite(self.name, now)
        if state is OPEN:
            if now < self.open_until:
                return None
            self._transition("open_period_ended", now)
        else:
            self._expire_trials(now)
            if self.state is CLOSED:
                # An expired trial that had its headers counted as the last
                # success needed: the call passes as a closed-state call.
                return self.cycle
            if self.state is not HALF_OPEN:
                return None
        if self.slots_used >= self.config.half_open_max_calls:
            return None
        if self.fleet_trials and not self.leases:
            return None  # the fleet's trial budget is spent here
        self._serial += 1
        # Trials are negative, closed cycles positive: a permit says for good
        # which state it was let through in (see CircuitBreaker.permit_state).
        permit = -self._serial
        self.trials[permit] = [now, True]
        self.slots_used += 1
        if self.fleet_trials:
            self._trial_leases[permit] = self.leases.pop()
        return permit

    def poll(self, now: float) -> None:
        """Apply the transitions that time alone causes (a look at the breaker)."""
        _finite(self.name, now)
        state = self.state
        if state is OPEN:
            if now >= self.open_until:
                self._transition("open_period_ended", now)
        elif state is HALF_OPEN:
            self._expire_trials(now)

    def next_transition_at(self) -> float | None:
        """Return the clock reading at which time alone would change the state, if any."""
        if self.state is OPEN:
            return self.open_until
        if self.state is HALF_OPEN and self.trials:
            oldest = min(float(trial[0]) for trial in self.trials.values())
            return oldest + self.config.max_open_duration
        return None

    # -- outcomes ------------------------------------------------------------

    def success(self, permit: int, now: float) -> None:
        """Settle ``permit`` as a success that was not slow: the hot path of :meth:`record`.

        ``calls`` and ``consecutive`` may lag behind it until the next call of
        any other method (``snapshot()`` and ``export()`` are exact).
        """
        # Only a closed cycle's permit equals ``cycle``: open and forced-open
        # cycles hand out none, and half-open trials get serials of their own.
        if now < self.success_fast_until and permit == self.cycle:
            # The newest bucket of a window with nothing failed or slow: no
            # rule can fire, so the success is just counted (NaN fails the
            # comparison; a clock that stepped back lands here too).
            self.pending_successes += 1
            return
        self._fold()
        if permit != self.cycle:
            self.record(permit, now, False)
            return
        self.total_calls += 1
        # One float comparison on the hot path; a clock that stepped back
        # lands in the newest bucket, as in _slot_at. NaN and +inf fail it, and
        # _finite refuses them before anything is counted.
        slot = self._slot if now < self._bucket_end else self._slot_at(_finite(self.name, now))
        self._b_calls[slot] += 1
        self.calls += 1
        self.consecutive = 0
        if self._counted is not None:
            self._count(0, 0)
        # A success lowers every rate, but ageing out or reaching minimum_calls
        # can still leave a rate at its threshold.
        if (self.failures or self.slow_calls) and self.calls >= self._min_calls:
            self._check_rates(now)
        # Open the fast path again if nothing can fire (it may have been
        # closed by close_fast_path, or by a transition).
        self._rearm()

    def record(
        self,
        permit: int,
        now: float,
        failed: bool,
        slow: bool = False,
        retry_at: float | None = None,
        cause: str | None = None,
    ) -> None:
        """Settle ``permit`` with an outcome.

        Args:
            permit: What :meth:`acquire` returned for the call.
            now: The clock reading when the outcome happened.
            failed: Whether the call failed.
            slow: Whether it was slow (a slow failure is both).
            retry_at: For a failure, a not-before time taken from ``Retry-After``.
            cause: For a failure, what it was (``"503"``, ``"ReadTimeout"``).

        Raises:
            ValueError: ``now`` is not finite (nothing is changed).
        """
        _finite(self.name, now)
        self._fold()
        self.total_calls += 1
        if slow:
            self.total_slow += 1
        if failed:
            self.total_failures += 1
            if cause is not None:
                self.last_failure = cause
        if permit == self.cycle:
            slot = self._slot_at(now)
            self._b_calls[slot] += 1
            self.calls += 1
            if self._counted is not None:
                self._count(int(failed), int(slow))
            if failed or slow:
                self.success_fast_until = _NINF
            if slow:
                self._b_slow[slot] += 1
                self.slow_calls += 1
            if failed:
                self._b_failures[slot] += 1
                self.failures += 1
                self.consecutive += 1
                if retry_at is not None and self.config.respect_retry_after:
                    self.not_before = retry_at
                if self._cf is not None and self.consecutive >= self._cf:
                    self._transition("trip", now, "consecutive_failures")
                    return
            else:
                self.consecutive = 0
            if self.calls >= self._min_calls:
                self._check_rates(now)
            return
        if self.state is not HALF_OPEN:
            return
        trial = self.trials.pop(permit, None)
        if trial is None:
            return
        if trial[1]:
            self.slots_used -= 1
        if self._trial_leases:
            self._return_lease(permit, not (failed or slow))
        if failed or slow:
            if failed and retry_at is not None and self.config.respect_retry_after:
                self.not_before = retry_at
            self._transition("trial_failed", now)
        else:
            self._trial_succeeded(now)

    def record_late(
        self, permit: int, at: float | None, now: float, failed: bool = False, slow: bool = False
    ) -> bool:
        """Settle ``permit`` with an outcome that happened at ``at`` and is applied at ``now``.

        For an outcome learnt late (a response settled by the garbage
        collector, applied at the breaker's next look). A closed-state outcome
        is filed in the bucket of ``at`` while that bucket is still in the
        window, and left out of the window once it has aged out (it would have
        left it by now anyway), so stale successes cannot dilute the failures
        of now; an ``at`` after the newest bucket (the clock stepped back
        since) lands in the newest one. The consecutive-failure count, which is
        not aged, counts it either way. What it changes besides (a trip, a
        half-open trial's verdict) happens at ``now``, when it is learnt.
        ``at=None`` (its time is unknown) files it at ``now``.

        Args:
            permit: What :meth:`acquire` returned for the call.
            at: The clock reading when it settled, or ``None``.
            now: The clock reading now (the window is first aged to it).
            failed: Whether the call failed.
            slow: Whether it was slow.

        Returns:
            ``False`` for a closed-state outcome left out of the window because
            it had aged out, else ``True`` (a stale permit included).

        Raises:
            ValueError: ``now`` or ``at`` is not finite (nothing is changed).
        """
        _finite(self.name, now)
        if at is None:
            at = now
        else:
            _finite(self.name, at)
        self._fold()
        if permit != self.cycle:
            self.record(permit, now, failed, slow)
            return True
        self.total_calls += 1
        if slow:
            self.total_slow += 1
        if failed:
            self.total_failures += 1
        self._advance(bucket_of(now, self._width))
        index = bucket_of(at, self._width)
        head = self._head
        assert head is not None  # _advance has just set it
        filed = index >= head - BUCKETS
        if filed:
            slot = self._slot if index >= head else index % _SLOTS
            self._b_calls[slot] += 1
            self.calls += 1
            if self._counted is not None:
                self._count(int(failed), int(slow), index=min(index, head))
            if failed or slow:
                self.success_fast_until = _NINF
            if slow:
                self._b_slow[slot] += 1
                self.slow_calls += 1
            if failed:
                self._b_failures[slot] += 1
                self.failures += 1
        if failed:
            self.consecutive += 1
            if self._cf is not None and self.consecutive >= self._cf:
                self._transition("trip", now, "consecutive_failures")
                return filed
        else:
            self.consecutive = 0
        if filed and self.calls >= self._min_calls:
            self._check_rates(now)
        return filed

    def _check_rates(self, now: float) -> None:
        if self._counted is None:
            calls, failures, slow = self.calls, self.failures, self.slow_calls
        else:
            calls, failures, slow = self._n_calls, self._n_failures, self._n_slow
            if calls < self._min_calls:
                return
        if self._fr is not None and failures / calls >= self._fr:
            self._transition("trip", now, "failure_rate")
        elif self._scr is not None and slow / calls >= self._scr:
            self._transition("trip", now, "slow_call_rate")

    def headers_ok(self, permit: int) -> None:
        """Free a half-open trial's slot once a success status has arrived.

        The trial's outcome still settles later through :meth:`record`; if it
        is never settled it counts as a success ``max_open_duration`` after it
        was let through.
        """
        if self.state is HALF_OPEN:
            trial = self.trials.get(permit)
            if trial is not None and trial[1]:
                trial[1] = False
                self.slots_used -= 1

    def release(self, permit: int, ignored: bool = False) -> None:
        """Settle ``permit`` with no outcome (cancelled, ignored, not about the upstream).

        ``ignored`` counts it in ``total_ignored`` (a verdict of ignore, not a
        cancellation).
        """
        if ignored:
            self.total_ignored += 1
        if self.state is HALF_OPEN:
            trial = self.trials.pop(permit, None)
            if trial is not None and trial[1]:
                self.slots_used -= 1
            if self._trial_leases:
                self._return_lease(permit, None)

    def close_fast_path(self) -> None:
        """Send the next success down the slow path of :meth:`success`.

        For a shell holding outcomes the core has not seen yet (queued where
        its lock could not be waited for): its slow path files them first. A
        success taken by the slow path opens the fast path again when no rule
        can fire, as does the window moving to a new bucket.
        """
        self.success_fast_until = _NINF

    # -- manual control ------------------------------------------------------

    def force_open(self, now: float) -> None:
        """Open by hand until :meth:`reset`."""
        self._transition("force_open", _finite(self.name, now))

    def disable(self, now: float) -> None:
        """Let every call pass and record nothing until :meth:`reset`."""
        self._transition("disable", _finite(self.name, now))

    def reset(self, now: float) -> None:
        """Back to closed with the window, backoff and Retry-After forgotten."""
        self._transition("reset", _finite(self.name, now))

    # -- fleets (see "Fleets" above) ----------------------------------------

    def sync_view(self, now: float) -> SyncView:
        """Return what a fleet syncer sends for this breaker, and hand over the lease returns.

        The window counts are monotonic within ``window_cycle``: the window's
        totals plus what has aged out of it since that closed period began.
        """
        _finite(self.name, now)
        self._fold()
        aged = self._aged
        returns = tuple(self.lease_returns)
        self.lease_returns.clear()
        not_before = self.not_before
        wanted = 0
        if self.state is HALF_OPEN and self.fleet_trials:
            wanted = max(0, self.config.half_open_max_calls - self.slots_used - len(self.leases))
        return SyncView(
            state=self.state,
            window_cycle=self.window_cycle,
            calls=self.calls + aged[0],
            failures=self.failures + aged[1],
            slow_calls=self.slow_calls + aged[2],
            not_before=None if not_before is None or not_before <= now else not_before - now,
            lease_returns=returns,
            leases_wanted=wanted,
            fleet_trials=self.fleet_trials,
        )

    def adopt(self, fleet: FleetState, now: float) -> None:
        """Move to the fleet's state (a transition whose reason starts with ``fleet:``).

        An open fleet sets the open period's end from ``fleet.open_remaining``
        (read on the storage's clock, so hosts' clocks need not agree) and the
        backoff count from ``fleet.open_count``, whether or not the local state
        changes; from then on half-open trials need leases (:meth:`grant_leases`).
        ``fleet.leases`` are granted when the fleet is half-open.

        Raises:
            ValueError: ``now`` is not finite (nothing is changed).
        """
        _finite(self.name, now)
        target = fleet.state
        reason = FLEET_REASON_PREFIX + (fleet.reason or target.value)
        if target is not self.state:
            trigger = _MANUAL_TRIGGERS.get(target) or _FLEET_TRIGGERS[target]
            self._transition(trigger, now, reason)
        elif target is CLOSED and fleet.reason == "reset":
            # A reset elsewhere forgets this window and backoff too.
            self._transition("reset", now, reason)
        if target is OPEN:
            self.open_until = now + max(0.0, fleet.open_remaining)
            self.open_count = max(1, fleet.open_count)
            self.fleet_trials = True
        elif target is HALF_OPEN:
            self.open_count = max(1, fleet.open_count)
            self.fleet_trials = True
            self.grant_leases(fleet.leases)

    def grant_leases(self, leases: tuple[str, ...] | list[str]) -> None:
        """Add trial leases granted by the fleet (ignored unless half-open under it)."""
        if self.state is HALF_OPEN and self.fleet_trials:
            self.leases.extend(leases)

    def leave_fleet(self) -> None:
        """Stop needing leases (the storage is unreachable): trials follow local rules again."""
        self.fleet_trials = False
        self.leases.clear()

    def _return_lease(self, permit: int, verdict: bool | None) -> None:
        lease = self._trial_leases.pop(permit, None)
        if lease is not None:
            self.lease_returns.append((lease, verdict))

    # -- views ---------------------------------------------------------------

    def snapshot(self, now: float, rejected: int = 0, shadow_rejected: int = 0) -> BreakerSnapshot:
        """Return the breaker as it is at ``now`` (after any time-driven transition).

        ``rejected`` and ``shadow_rejected`` are the shell's counts of
        short-circuited calls, which it keeps without the lock.
        """
        calls, failures, slow = self._look(now)
        state = self.state
        return BreakerSnapshot(
            name=self.name,
            state=state,
            calls=calls,
            failures=failures,
            slow_calls=slow,
            consecutive_failures=self.consecutive,
            failure_rate=failures / calls if calls else None,
            slow_call_rate=slow / calls if calls else None,
            retry_after=max(0.0, self.open_until - now) if state is OPEN else None,
            open_count=self.open_count,
            trials_in_flight=self.slots_used,
            at=now,
            last_failure=self.last_failure,
            total_calls=self.total_calls,
            total_failures=self.total_failures,
            total_slow_calls=self.total_slow,
            total_ignored=self.total_ignored,
            total_rejected=rejected,
            total_shadow_rejected=shadow_rejected,
            total_transitions=self.total_transitions,
            open_seconds=self.open_seconds(now),
        )

    def metrics(self, now: float, rejected: int = 0, shadow_rejected: int = 0) -> MetricsRow:
        """What metrics read, as one plain tuple: far cheaper than :meth:`snapshot`.

        ``(state, total_calls, total_failures, total_ignored, total_slow_calls,
        rejected, shadow_rejected, total_transitions, open_seconds, calls,
        failures, slow_calls, retry_after)``, as at ``now``; the window counts
        are those the rules judge (see ``window_calls``), ``retry_after`` is
        ``None`` unless open. Equal tuples mean nothing a metric shows has
        changed.
        """
        calls, failures, slow = self._look(now)
        state = self.state
        return (
            state,
            self.total_calls,
            self.total_failures,
            self.total_ignored,
            self.total_slow,
            rejected,
            shadow_rejected,
            self.total_transitions,
            self.open_seconds(now),
            calls,
            failures,
            slow,
            max(0.0, self.open_until - now) if state is OPEN else None,
        )

    def _look(self, now: float) -> tuple[int, int, int]:
        """A look at ``now`` for a view: time-driven transitions applied, the window
        aged and folded; returns the ``(calls, failures, slow calls)`` the rules judge
        (the count window's when ``window_calls`` is set)."""
        self.poll(now)  # which refuses a ``now`` that is not finite
        self._fold()
        self._advance(bucket_of(now, self._width))
        if self._counted is None:
            return self.calls, self.failures, self.slow_calls
        return self._n_calls, self._n_failures, self._n_slow

    def open_seconds(self, now: float) -> float:
        """Seconds spent open, half-open or forced open since creation, as of ``now``."""
        since = self._open_since
        if since is None:
            return self._open_total
        return self._open_total + max(0.0, now - since)

    def export(self, now: float) -> CoreState:
        """Return the state as a plain value (see :class:`CoreState`)."""
        self._fold()
        self._advance(bucket_of(_finite(self.name, now), self._width))
        buckets = []
        head = self._head
        if head is not None:
            for index in range(head - BUCKETS, head + 1):
                slot = index % _SLOTS
                if self._b_calls[slot]:
                    buckets.append(
                        (index, self._b_calls[slot], self._b_failures[slot], self._b_slow[slot])
                    )
        return CoreState(
            state=self.state,
            open_until=self.open_until,
            open_count=self.open_count,
            not_before=self.not_before,
            consecutive_failures=self.consecutive,
            width=self._width,
            buckets=tuple(buckets),
        )

    # -- internals -----------------------------------------------------------

    def _slot_at(self, now: float) -> int:
        """Return the ring slot to count a live outcome at finite ``now`` in, ageing the window."""
        index = bucket_of(now, self._width)
        head = self._head
        if head is not None and index <= head:
            # A clock that stepped back still lands in the newest bucket.
            return self._slot
        self._advance(index)
        return self._slot

    def _advance(self, index: int) -> None:
        """Drop the buckets that have left the window when time reaches bucket ``index``."""
        head = self._head
        if head is not None and index <= head:
            return
        self._fold()  # the pending successes belong to the bucket being left
        self._head = index
        self._slot = index % _SLOTS
        self._bucket_end = _bucket_end(index, self._width)
        if head is None or index - head >= _SLOTS:
            self._clear_window()
            return
        if self._counted is not None:
            self._age_counted(index - BUCKETS)
        b_calls, b_failures, b_slow = self._b_calls, self._b_failures, self._b_slow
        for i in range(head + 1, index + 1):
            slot = i % _SLOTS
            if b_calls[slot]:
                self.calls -= b_calls[slot]
                self.failures -= b_failures[slot]
                self.slow_calls -= b_slow[slot]
                aged = self._aged  # what a fleet syncer has to add back (see "Fleets")
                aged[0] += b_calls[slot]
                aged[1] += b_failures[slot]
                aged[2] += b_slow[slot]
                b_calls[slot] = b_failures[slot] = b_slow[slot] = 0
        self._rearm()

    def _fold(self) -> None:
        """Count the successes :meth:`success` left pending into the newest bucket."""
        pending = self.pending_successes
        if pending:
            self.pending_successes = 0
            self._b_calls[self._slot] += pending
            self.calls += pending
            self.total_calls += pending
            self.consecutive = 0
            if self._counted is not None:
                self._count(0, 0, pending)

    def _clear_window(self) -> None:
        aged = self._aged
        aged[0] += self.calls + self.pending_successes
        aged[1] += self.failures
        aged[2] += self.slow_calls
        self._b_calls[:] = self._b_failures[:] = self._b_slow[:] = [0] * _SLOTS
        self.calls = self.failures = self.slow_calls = 0
        self.pending_successes = 0
        if self._counted is not None:
            self._counted.clear()
            self._n_calls = self._n_failures = self._n_slow = 0
        self._rearm()

    def _count(self, failed: int, slow: int, k: int = 1, index: int | None = None) -> None:
        """Add ``k`` outcomes of one kind to the count window, then trim it to size."""
        counted = self._counted
        assert counted is not None and self._head is not None
        if index is None:
            index = self._head
        last = counted[-1] if counted else None
        if last is not None and last[0] == index and last[1] == failed and last[2] == slow:
            last[3] += k
        else:
            counted.append([index, failed, slow, k])
        self._n_calls += k
        self._n_failures += failed * k
        self._n_slow += slow * k
        excess = self._n_calls - self.config.window_calls  # type: ignore[operator]
        while excess > 0:
            run = counted[0]
            n = min(run[3], excess)
            run[3] -= n
            excess -= n
            self._n_calls -= n
            self._n_failures -= run[1] * n
            self._n_slow -= run[2] * n
            if not run[3]:
                counted.popleft()

    def _age_counted(self, oldest: int) -> None:
        """Drop the count window's runs filed in buckets before bucket ``oldest``."""
        counted = self._counted
        assert counted is not None
        while counted and counted[0][0] < oldest:
            _, failed, slow, n = counted.popleft()
            self._n_calls -= n
            self._n_failures -= failed * n
            self._n_slow -= slow * n

    def _rearm(self) -> None:
        """Open the success fast path for the newest bucket, if no rule can fire in it.

        Not while the window holds a failure or a slow call, and not while
        transitions wait in ``changes``: a shell delivers them after an outcome
        it records by the slow path.
        """
        quiet = not (self.failures or self.slow_calls or self.changes or self.hold_slow_path)
        self.success_fast_until = self._bucket_end if quiet else _NINF

    def _expire_trials(self, now: float) -> None:
        limit = self.config.max_open_duration
        for permit, (started, holding) in list(self.trials.items()):
            if now - float(started) < limit:
                continue
            del self.trials[permit]
            if self._trial_leases:
                self._return_lease(permit, not holding)
            if holding:
                self.slots_used -= 1
                self._transition("trial_timed_out", now)
                return
            self._trial_succeeded(now)
            if self.state is not HALF_OPEN:
                return

    def _trial_succeeded(self, now: float) -> None:
        self.trial_successes += 1
        if self.trial_successes >= self.config.success_threshold:
            self._transition("trials_succeeded", now)

    def _open_period(self, now: float) -> float:
        config = self.config
        period = config.open_duration
        if self.open_count > 1 and config.open_backoff > 1:
            try:
                period *= config.open_backoff ** (self.open_count - 1)
            except OverflowError:
                period = math.inf
        if self.not_before is not None and self.not_before - now > period:
            period = self.not_before - now
        period = min(period, config.max_open_duration)
        if config.open_jitter:
            period *= 1.0 + self._random() * config.open_jitter
        return period

    def _transition(self, trigger: str, now: float, reason: str | None = None) -> None:
        old = self.state
        new = TRANSITIONS.get((old, trigger))
        if new is None:
            raise IllegalTransition(f"{self.name}: cannot {trigger!r} from {old.value!r}")
        self._fold()  # a trip keeps the window: with every success in it
        if trigger == "reset" or new is CLOSED:
            self._clear_window()
            self._head = None
            self._bucket_end = -math.inf
            self.consecutive = 0
            self.open_count = 0
            self.not_before = None
        self.success_fast_until = _NINF  # until the next outcome of a closed period
        if new is OPEN:
            self.open_count += 1
            self.open_until = now + self._open_period(now)
        self.trials.clear()
        self.slots_used = 0
        self.trial_successes = 0
        # Unused leases die with the cycle they were granted in (the fleet's
        # transition drops them too); verdicts already given stay to be sent.
        self.leases.clear()
        self._trial_leases.clear()
        if new is not OPEN and new is not HALF_OPEN:
            self.fleet_trials = False
        self._serial += 1
        self.cycle = self._serial
        self.state = new
        if new is CLOSED:
            self.window_cycle = self.cycle
            self._aged = [0, 0, 0]
            self.fast_permit = self.cycle
        elif new is DISABLED:
            self.fast_permit = DISABLED_PERMIT
        else:
            self.fast_permit = None
        if new is not old:
            self.total_transitions += 1
            was_open = old is OPEN or old is HALF_OPEN or old is FORCED_OPEN
            is_open = new is OPEN or new is HALF_OPEN or new is FORCED_OPEN
            if is_open and not was_open:
                self._open_since = now
            elif was_open and not is_open and self._open_since is not None:
                self._open_total += max(0.0, now - self._open_since)
                self._open_since = None
            self.changes.append(StateChange(self.name, old, new, reason or trigger, now))
