"""BreakerCore against a brute-force reference model, step by step (hypothesis stateful).

The model keeps a plain list of timestamped outcomes and recomputes the window
from it at every look, instead of the core's ring of buckets and running totals;
it keeps its own state and trial bookkeeping, written from API.md. An outcome
recorded at ``t`` is in the window at ``now`` iff
``bucket_of(now, w) - bucket_of(t, w) <= 10`` with ``w = window / 10``. The
model's clock only moves forward (the core files an outcome older than the
newest bucket it has seen into that newest bucket; a forward clock never does
that).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from circuitbreaker_http._core import (
    BUCKETS,
    DISABLED_PERMIT,
    BreakerConfig,
    BreakerCore,
    CircuitState,
    bucket_of,
)

# A passing run takes ~12 s; a failing one spends minutes shrinking to a short
# counterexample, which the suite-wide timeout (120 s) would cut off.
pytestmark = pytest.mark.timeout(900)

CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN
FORCED_OPEN = CircuitState.FORCED_OPEN
DISABLED = CircuitState.DISABLED


@dataclass(frozen=True)
class Ticket:
    """The model's idea of a permit: the cycle it was let through in, and its kind."""

    epoch: int
    kind: str  # "closed", "trial" or "disabled"
    trial: int | None = None


@dataclass
class Trial:
    started: float
    holding: bool


Event = tuple[CircuitState, CircuitState, str, float]


class Model:
    """The reference: state, outcome list, open periods and trials, computed the plain way."""

    def __init__(self, config: BreakerConfig, rnd: float) -> None:
        self.config = config
        self.rnd = rnd
        self.width = config.window / BUCKETS
        self.state = CLOSED
        self.epoch = 0
        self.outcomes: list[tuple[float, bool, bool]] = []  # (time, failed, slow)
        self.consecutive = 0
        self.open_count = 0
        self.open_until = 0.0
        self.not_before: float | None = None
        self.trials: dict[int, Trial] = {}
        self.successes = 0
        self.events: list[Event] = []
        self._trial_ids = 0

    # -- window --------------------------------------------------------------

    def window(self, now: float) -> list[tuple[float, bool, bool]]:
        head = bucket_of(now, self.width)
        return [o for o in self.outcomes if head - bucket_of(o[0], self.width) <= BUCKETS]

    def counts(self, now: float) -> tuple[int, int, int]:
        window = self.window(now)
        return (len(window), sum(o[1] for o in window), sum(o[2] for o in window))

    def buckets(self, now: float) -> tuple[tuple[int, int, int, int], ...]:
        rows: dict[int, list[int]] = {}
        for t, failed, slow in self.window(now):
            row = rows.setdefault(bucket_of(t, self.width), [0, 0, 0])
            row[0] += 1
            row[1] += failed
            row[2] += slow
        return tuple((i, *rows[i]) for i in sorted(rows))  # type: ignore[misc]

    # -- transitions ---------------------------------------------------------

    def period(self, now: float) -> float:
        c = self.config
        try:
            period = c.open_duration * c.open_backoff ** (self.open_count - 1)
        except OverflowError:
            period = math.inf
        if self.not_before is not None:
            period = max(period, self.not_before - now)
        period = min(period, c.max_open_duration)
        return period * (1.0 + self.rnd * c.open_jitter)

    def move(self, trigger: str, new: CircuitState, now: float, reason: str | None = None) -> None:
        old = self.state
        if new is CLOSED:
            self.outcomes = []
            self.consecutive = 0
            self.open_count = 0
            self.not_before = None
        if new is OPEN:
            self.open_count += 1
            self.open_until = now + self.period(now)
        self.trials = {}
        self.successes = 0
        self.epoch += 1
        self.state = new
        if new is not old:
            self.events.append((old, new, reason or trigger, now))

    def expire(self, now: float) -> None:
        for tid, trial in list(self.trials.items()):  # admission order
            if now - trial.started < self.config.max_open_duration:
                continue
            del self.trials[tid]
            if trial.holding:
                self.move("trial_timed_out", OPEN, now)
                return
            if self.trial_succeeded(now):
                return

    def trial_succeeded(self, now: float) -> bool:
        self.successes += 1
        if self.successes >= self.config.success_threshold:
            self.move("trials_succeeded", CLOSED, now)
            return True
        return False

    def poll(self, now: float) -> None:
        if self.state is OPEN and now >= self.open_until:
            self.move("open_period_ended", HALF_OPEN, now)
        elif self.state is HALF_OPEN:
            self.expire(now)

    # -- the protocol --------------------------------------------------------

    def holding(self) -> int:
        return sum(t.holding for t in self.trials.values())

    def acquire(self, now: float) -> Ticket | None:
        if self.state is CLOSED:
            return Ticket(self.epoch, "closed")
        if self.state is DISABLED:
            return Ticket(self.epoch, "disabled")
        if self.state is FORCED_OPEN:
            return None
        if self.state is OPEN:
            if now < self.open_until:
                return None
            self.move("open_period_ended", HALF_OPEN, now)
        else:
            self.expire(now)
            if self.state is CLOSED:
                return Ticket(self.epoch, "closed")
            if self.state is not HALF_OPEN:
                return None
        if self.holding() >= self.config.half_open_max_calls:
            return None
        self._trial_ids += 1
        self.trials[self._trial_ids] = Trial(now, True)
        return Ticket(self.epoch, "trial", self._trial_ids)

    def record(
        self, ticket: Ticket, now: float, failed: bool, slow: bool, retry_at: float | None
    ) -> None:
        c = self.config
        respect = retry_at is not None and c.respect_retry_after
        if ticket.kind == "closed" and ticket.epoch == self.epoch:
            assert self.state is CLOSED
            self.outcomes.append((now, failed, slow))
            if failed:
                self.consecutive += 1
                if respect:
                    self.not_before = retry_at
                limit = c.consecutive_failures
                if limit is not None and self.consecutive >= limit:
                    self.move("trip", OPEN, now, "consecutive_failures")
                    return
            else:
                self.consecutive = 0
            calls, failures, slows = self.counts(now)
            if calls >= c.minimum_calls:
                if c.failure_rate is not None and failures / calls >= c.failure_rate:
                    self.move("trip", OPEN, now, "failure_rate")
                elif c.slow_call_duration is not None and slows / calls >= c.slow_call_rate:
                    self.move("trip", OPEN, now, "slow_call_rate")
            return
        if ticket.kind == "trial" and self.state is HALF_OPEN and ticket.trial in self.trials:
            del self.trials[ticket.trial]
            if failed or slow:
                if failed and respect:
                    self.not_before = retry_at
                self.move("trial_failed", OPEN, now)
            else:
                self.trial_succeeded(now)

    def record_late(self, ticket: Ticket, at: float, now: float, failed: bool, slow: bool) -> bool:
        """An outcome that happened at ``at``, learnt at ``now`` (a GC-settled response)."""
        if not (ticket.kind == "closed" and ticket.epoch == self.epoch):
            self.record(ticket, now, failed, slow, None)
            return True
        c = self.config
        head, index = bucket_of(now, self.width), bucket_of(at, self.width)
        filed = head - index <= BUCKETS
        if filed:
            # After the newest bucket (a clock that stepped back): in the newest.
            self.outcomes.append((min(at, now), failed, slow))
        if failed:
            self.consecutive += 1
            limit = c.consecutive_failures
            if limit is not None and self.consecutive >= limit:
                self.move("trip", OPEN, now, "consecutive_failures")
                return filed
        else:
            self.consecutive = 0
        calls, failures, slows = self.counts(now)
        if filed and calls >= c.minimum_calls:
            if c.failure_rate is not None and failures / calls >= c.failure_rate:
                self.move("trip", OPEN, now, "failure_rate")
            elif c.slow_call_duration is not None and slows / calls >= c.slow_call_rate:
                self.move("trip", OPEN, now, "slow_call_rate")
        return filed

    def headers_ok(self, ticket: Ticket) -> None:
        if self.state is HALF_OPEN and ticket.trial in self.trials:
            self.trials[ticket.trial].holding = False

    def release(self, ticket: Ticket) -> None:
        if self.state is HALF_OPEN and ticket.trial in self.trials:
            del self.trials[ticket.trial]

    def next_transition_at(self) -> float | None:
        if self.state is OPEN:
            return self.open_until
        if self.state is HALF_OPEN and self.trials:
            return min(t.started for t in self.trials.values()) + self.config.max_open_duration
        return None


# Every duration is a multiple of 1/4 (or an exact binary fraction), so grid
# steps land exactly on bucket edges and expiry times; one rule adds arbitrary floats.
configs = st.builds(
    lambda cf, fr, mc, window, scd, scr, od, ob, mod_factor, jitter, hmc, threshold, rra: (
        BreakerConfig(
            consecutive_failures=cf,
            failure_rate=fr,
            minimum_calls=mc,
            window=window,
            slow_call_duration=scd,
            slow_call_rate=scr,
            open_duration=od,
            open_backoff=ob,
            max_open_duration=od * mod_factor,
            open_jitter=jitter,
            half_open_max_calls=hmc,
            success_threshold=threshold,
            respect_retry_after=rra,
        )
    ),
    st.one_of(st.none(), st.integers(1, 4)),
    st.one_of(st.none(), st.sampled_from([0.25, 0.5, 0.6, 1.0])),
    st.integers(1, 5),
    st.sampled_from([2.5, 5.0, 10.0, 20.0]),
    st.one_of(st.none(), st.just(1.0)),
    st.sampled_from([0.5, 1.0]),
    st.sampled_from([0.5, 1.0, 3.0]),
    st.sampled_from([1.0, 1.5, 2.0, 3.0]),
    st.sampled_from([1, 2, 8]),
    st.sampled_from([0.0, 0.25, 0.5]),
    st.sampled_from([1, 1, 2, 3]),
    st.sampled_from([1, 1, 2, 4]),
    st.booleans(),
)

RETRY = st.sampled_from([None, None, 0.5, 3.0, 50.0])
# (what happens to the call, failed, slow, retry-after seconds, use success())
Outcome = tuple[str, bool, bool, float | None, bool]
OUTCOMES = st.lists(
    st.tuples(
        st.sampled_from(["settle", "settle", "settle", "hang", "headers_ok", "release"]),
        st.booleans(),
        st.booleans(),
        RETRY,
        st.booleans(),
    ),
    min_size=1,
    max_size=6,
)
MAX_IN_FLIGHT = 10


class CoreVersusModel(RuleBasedStateMachine):
    core: BreakerCore
    model: Model

    def __init__(self) -> None:
        super().__init__()
        self.inflight: list[tuple[int, Ticket]] = []
        self.seen_trial_permits: set[int] = set()
        self.now = 0.0

    @initialize(
        config=configs,
        rnd=st.sampled_from([0.0, 0.5, 0.75]),
        start=st.sampled_from([0.0, 0.25, 1000.0, -7.5]),
    )
    def setup(self, config: BreakerConfig, rnd: float, start: float) -> None:
        self.core = BreakerCore("m", config, lambda: rnd)
        self.model = Model(config, rnd)
        self.now = start

    # -- time ----------------------------------------------------------------

    @rule(quarters=st.integers(0, 8))
    def tick(self, quarters: int) -> None:
        self.now += quarters * self.model.width / 4

    @rule(buckets=st.integers(1, 60))
    def jump(self, buckets: int) -> None:
        self.now += buckets * self.model.width

    @rule(dt=st.floats(0.0, 5.0, allow_nan=False))
    def drift(self, dt: float) -> None:
        self.now += dt

    @rule()
    def to_next_transition(self) -> None:
        """Land exactly on the open period's end or a trial's expiry: the edge cases."""
        at = self.model.next_transition_at()
        if at is not None and at >= self.now:
            self.now = at

    @rule(outcomes=OUTCOMES)
    def call_at_next_transition(self, outcomes: list[Outcome]) -> None:
        """Calls at the very moment time alone changes the state (no look before)."""
        self.to_next_transition()
        self._calls(outcomes)

    @rule()
    def to_bucket_edge(self) -> None:
        """Land exactly on the next bucket edge, where the oldest bucket leaves the window."""
        width = self.model.width
        edge = (bucket_of(self.now, width) + 1) * width
        if edge > self.now:
            self.now = edge

    # -- calls ---------------------------------------------------------------

    def _acquire(self) -> tuple[int, Ticket] | None:
        permit = self.core.acquire(self.now)
        ticket = self.model.acquire(self.now)
        assert (permit is None) == (ticket is None), (permit, ticket, self.model.state)
        if permit is None or ticket is None:
            return None
        if ticket.kind == "closed":
            assert permit == self.core.cycle
        elif ticket.kind == "disabled":
            assert permit == DISABLED_PERMIT
        else:
            assert permit not in self.seen_trial_permits
            assert permit != DISABLED_PERMIT
            self.seen_trial_permits.add(permit)
        return permit, ticket

    def _settle(
        self,
        permit: int,
        ticket: Ticket,
        failed: bool,
        slow: bool,
        retry: float | None,
        fast: bool,
    ) -> None:
        retry_at = None if retry is None else self.now + retry
        if fast and not failed and not slow:
            self.core.success(permit, self.now)
            retry_at = None
        else:
            self.core.record(permit, self.now, failed, slow, retry_at)
        self.model.record(ticket, self.now, failed, slow, retry_at)

    @precondition(lambda self: len(self.inflight) < MAX_IN_FLIGHT)
    @rule()
    def acquire(self) -> None:
        got = self._acquire()
        if got is not None:
            self.inflight.append(got)

    def _calls(self, outcomes: list[Outcome]) -> None:
        """A few calls at this moment: each let through (or not), then settled now,
        left in flight (after headers_ok or not), or released."""
        for what, failed, slow, retry, fast in outcomes:
            got = self._acquire()
            if got is None:
                continue
            if what == "release":
                self.core.release(got[0])
                self.model.release(got[1])
            elif what in ("hang", "headers_ok") and len(self.inflight) < MAX_IN_FLIGHT:
                if what == "headers_ok":
                    self.core.headers_ok(got[0])
                    self.model.headers_ok(got[1])
                self.inflight.append(got)
            else:
                self._settle(*got, failed, slow, retry, fast)

    # The same rule under three names: hypothesis' swarm testing switches rules
    # off per example, and an example without calls tests little.
    @rule(outcomes=OUTCOMES)
    def calls_a(self, outcomes: list[Outcome]) -> None:
        self._calls(outcomes)

    @rule(outcomes=OUTCOMES)
    def calls_b(self, outcomes: list[Outcome]) -> None:
        self._calls(outcomes)

    @rule(outcomes=OUTCOMES)
    def calls_c(self, outcomes: list[Outcome]) -> None:
        self._calls(outcomes)

    @precondition(lambda self: self.inflight)
    @rule(
        index=st.integers(0, 20),
        failed=st.booleans(),
        slow=st.booleans(),
        retry=RETRY,
        fast=st.booleans(),
    )
    def settle(self, index: int, failed: bool, slow: bool, retry: float | None, fast: bool) -> None:
        permit, ticket = self.inflight.pop(index % len(self.inflight))
        self._settle(permit, ticket, failed, slow, retry, fast)

    @precondition(lambda self: self.inflight)
    @rule(
        index=st.integers(0, 20),
        quarters_ago=st.one_of(st.integers(0, 60), st.just(-3)),
        failed=st.booleans(),
        slow=st.booleans(),
    )
    def settle_late(self, index: int, quarters_ago: int, failed: bool, slow: bool) -> None:
        """An outcome that settled a while ago (or, at -3, after now: a clock that stepped back)."""
        permit, ticket = self.inflight.pop(index % len(self.inflight))
        at = self.now - quarters_ago * self.model.width / 4
        filed = self.core.record_late(permit, at, self.now, failed, slow)
        assert filed == self.model.record_late(ticket, at, self.now, failed, slow)

    @precondition(lambda self: self.inflight)
    @rule(index=st.integers(0, 20))
    def release(self, index: int) -> None:
        permit, ticket = self.inflight.pop(index % len(self.inflight))
        self.core.release(permit)
        self.model.release(ticket)

    @precondition(lambda self: self.inflight)
    @rule(index=st.integers(0, 20), times=st.integers(1, 2))
    def headers_ok(self, index: int, times: int) -> None:
        permit, ticket = self.inflight[index % len(self.inflight)]
        for _ in range(times):
            self.core.headers_ok(permit)
            self.model.headers_ok(ticket)

    # Rarely: a manual state parks the machine where nothing else happens.
    @rule(action=st.sampled_from(["force_open", "disable", "reset", "", "", "", "", "", ""]))
    def manual(self, action: str) -> None:
        if not action:
            return
        getattr(self.core, action)(self.now)
        new = {"force_open": FORCED_OPEN, "disable": DISABLED, "reset": CLOSED}[action]
        self.model.move(action, new, self.now)

    @rule()
    def look(self) -> None:
        snap = self.core.snapshot(self.now)
        model = self.model
        model.poll(self.now)
        calls, failures, slows = model.counts(self.now)
        assert snap.state is model.state
        assert (snap.calls, snap.failures, snap.slow_calls) == (calls, failures, slows)
        assert snap.consecutive_failures == model.consecutive
        assert snap.failure_rate == (failures / calls if calls else None)
        assert snap.slow_call_rate == (slows / calls if calls else None)
        expected_retry = max(0.0, model.open_until - self.now) if model.state is OPEN else None
        assert snap.retry_after == expected_retry
        assert snap.open_count == model.open_count
        assert snap.trials_in_flight == model.holding()
        assert snap.at == self.now
        assert snap.name == "m"

    # -- compared after every step ------------------------------------------------

    @invariant()
    def same_as_model(self) -> None:
        core, model, now = self.core, self.model, self.now
        assert core.state is model.state
        # export() ages the window to ``now`` but causes no transition
        exported = core.export(now)
        assert exported.state is model.state
        assert exported.buckets == model.buckets(now)
        assert (core.calls, core.failures, core.slow_calls) == model.counts(now)
        assert core.consecutive == model.consecutive == exported.consecutive_failures
        assert core.open_count == model.open_count
        assert core.open_until == model.open_until
        assert core.not_before == model.not_before
        assert core.trial_successes == model.successes
        assert core.slots_used == model.holding()
        live = {
            permit: model.trials[ticket.trial]
            for permit, ticket in self.inflight
            if ticket.kind == "trial" and ticket.trial in model.trials
        }
        assert set(core.trials) == set(live)
        for permit, trial in live.items():
            started, holding = core.trials[permit]
            assert (started, holding) == (trial.started, trial.holding)
        assert core.next_transition_at() == model.next_transition_at()
        expected_fast: dict[CircuitState, Any] = {CLOSED: core.cycle, DISABLED: DISABLED_PERMIT}
        assert core.fast_permit == expected_fast.get(core.state)
        events = [(c.old, c.new, c.reason, c.at) for c in core.changes]
        assert events == model.events
        core.changes.clear()
        model.events.clear()


TestCoreVersusModel = CoreVersusModel.TestCase
TestCoreVersusModel.settings = settings(
    max_examples=500,
    stateful_step_count=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
