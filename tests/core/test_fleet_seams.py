"""The core's and the breaker's seams for a fleet's storage: sync_view, adopt, trial leases."""

from __future__ import annotations

from typing import Any

import pytest

from circuitbreaker_http import BreakerConfig, CircuitBreaker, CircuitState, StateChange
from circuitbreaker_http._core import BreakerCore, FleetState
from circuitbreaker_http.testing import ManualClock

CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN
FORCED_OPEN = CircuitState.FORCED_OPEN
DISABLED = CircuitState.DISABLED


def make(**kwargs: Any) -> BreakerCore:
    fields: dict[str, Any] = {
        "consecutive_failures": None,
        "failure_rate": None,
        "window": 10.0,
        "open_duration": 5.0,
        "max_open_duration": 60.0,
    }
    fields.update(kwargs)
    return BreakerCore("b", BreakerConfig(**fields), lambda: 0.0)


def counts(core: BreakerCore, now: float) -> tuple[int, int, int, int]:
    view = core.sync_view(now)
    return view.window_cycle, view.calls, view.failures, view.slow_calls


def fleet(state: CircuitState, **kwargs: Any) -> FleetState:
    return FleetState("b", state, kwargs.pop("cycle", 7), **kwargs)


# -- window counts ---------------------------------------------------------------------


def test_window_counts_are_monotonic_within_a_closed_period() -> None:
    core = make(slow_call_duration=1.0)
    cycle = core.cycle
    for _ in range(5):
        core.success(cycle, 0.5)  # the fast path: pending successes count too
    core.record(cycle, 0.6, True)
    core.record(cycle, 0.7, False, slow=True)
    assert counts(core, 0.8) == (cycle, 7, 1, 1)
    # Every bucket ages out: the window is empty, the counts are not.
    assert core.snapshot(50.0).calls == 0
    assert counts(core, 50.0) == (cycle, 7, 1, 1)
    core.success(core.cycle, 50.0)
    assert counts(core, 50.1) == (cycle, 8, 1, 1)


def test_counts_age_bucket_by_bucket_without_loss() -> None:
    core = make()
    cycle = core.cycle
    for step in range(30):
        core.record(cycle, step * 0.5, step % 3 == 0)
    assert counts(core, 15.0) == (cycle, 30, 10, 0)


def test_a_trip_keeps_the_counts_and_a_close_starts_new_ones() -> None:
    core = make(consecutive_failures=2)
    first = core.cycle
    core.record(first, 1.0, True)
    core.record(first, 1.1, True)
    assert core.state is OPEN
    assert counts(core, 1.2) == (first, 2, 2, 0)
    core.adopt(fleet(CLOSED, reason="trials_succeeded"), 2.0)
    assert core.state is CLOSED
    assert counts(core, 2.0) == (core.cycle, 0, 0, 0)
    assert core.window_cycle != first


# -- adopt ------------------------------------------------------------------------------


def test_adopt_open_takes_the_fleets_remaining_time_and_backoff_count() -> None:
    core = make()
    core.adopt(fleet(OPEN, open_remaining=3.5, open_count=4, reason="failure_rate"), 100.0)
    assert core.state is OPEN
    assert core.open_until == 103.5
    assert core.open_count == 4
    assert core.fleet_trials
    assert core.changes == [StateChange("b", CLOSED, OPEN, "fleet:failure_rate", 100.0)]


def test_adopt_open_while_open_moves_the_end_without_a_transition() -> None:
    core = make(consecutive_failures=1)
    core.record(core.cycle, 1.0, True)
    core.changes.clear()
    core.adopt(fleet(OPEN, open_remaining=20.0, open_count=1), 2.0)
    assert core.open_until == 22.0
    assert core.changes == []


@pytest.mark.parametrize("state", [FORCED_OPEN, DISABLED, HALF_OPEN, OPEN])
def test_adopt_reaches_every_state_and_back(state: CircuitState) -> None:
    core = make()
    core.adopt(fleet(state, open_remaining=1.0, open_count=1, reason="x"), 10.0)
    assert core.state is state
    core.adopt(fleet(CLOSED, reason="reset"), 11.0)
    assert core.state is CLOSED
    assert not core.fleet_trials
    assert [c.reason for c in core.changes] == ["fleet:x", "fleet:reset"]


def test_a_fleet_reset_clears_a_closed_window() -> None:
    core = make()
    core.record(core.cycle, 1.0, True)
    core.adopt(fleet(CLOSED, reason="reset"), 2.0)
    assert core.snapshot(2.0).failures == 0
    # A fleet close for another reason leaves a closed window alone.
    core.record(core.cycle, 2.5, True)
    core.adopt(fleet(CLOSED, reason="trials_succeeded"), 3.0)
    assert core.snapshot(3.0).failures == 1


# -- trial leases -----------------------------------------------------------------------


def half_open_under_fleet(**kwargs: Any) -> BreakerCore:
    core = make(half_open_max_calls=2, success_threshold=2, **kwargs)
    core.adopt(fleet(OPEN, open_remaining=1.0, open_count=1), 0.0)
    return core


def test_half_open_under_the_fleet_admits_only_with_a_lease() -> None:
    core = half_open_under_fleet()
    assert core.acquire(2.0) is None  # half-open now, but no lease yet
    assert core.state is HALF_OPEN
    assert core.sync_view(2.0).leases_wanted == 2
    core.grant_leases(["L1"])
    assert core.sync_view(2.0).leases_wanted == 1
    permit = core.acquire(2.0)
    assert permit is not None and permit < 0
    assert core.acquire(2.0) is None  # a free slot, but no lease for it
    core.record(permit, 2.1, False)
    view = core.sync_view(2.2)
    assert view.lease_returns == (("L1", True),)
    assert core.sync_view(2.2).lease_returns == ()  # handed over once


def test_every_way_a_trial_ends_returns_its_lease_with_its_verdict() -> None:
    core = half_open_under_fleet(slow_call_duration=1.0)
    core.acquire(2.0)
    core.grant_leases(["a", "b"])
    ok = core.acquire(2.0)
    gone = core.acquire(2.0)
    assert ok is not None and gone is not None
    core.release(gone)
    core.record(ok, 2.5, False, slow=True)  # a slow trial is a failed trial
    assert core.state is OPEN
    assert set(core.sync_view(2.6).lease_returns) == {("b", False), ("a", None)}


def test_an_unsettled_trial_returns_its_lease_as_failed_when_it_times_out() -> None:
    core = half_open_under_fleet()
    core.acquire(2.0)
    core.grant_leases(["a"])
    assert core.acquire(2.0) is not None
    core.poll(62.0)
    assert core.state is OPEN
    assert core.sync_view(62.0).lease_returns == (("a", False),)


def test_leaving_the_fleet_lets_trials_follow_local_rules() -> None:
    core = half_open_under_fleet()
    assert core.acquire(2.0) is None
    core.leave_fleet()
    assert core.acquire(2.0) is not None
    assert core.sync_view(2.0).leases_wanted == 0


def test_leases_are_forgotten_with_their_cycle() -> None:
    core = half_open_under_fleet()
    core.acquire(2.0)
    core.grant_leases(["a", "b"])
    core.adopt(fleet(OPEN, open_remaining=5.0, open_count=2, reason="trial_failed"), 3.0)
    assert core.leases == []
    core.grant_leases(["c"])  # not half-open: ignored
    assert core.leases == []


def test_a_local_trip_does_not_need_leases() -> None:
    core = make(consecutive_failures=1)
    core.record(core.cycle, 1.0, True)
    assert not core.fleet_trials
    assert core.acquire(7.0) is not None  # half-open by local rules


# -- the breaker's seam -----------------------------------------------------------------


def test_the_breaker_adopts_and_delivers_a_fleet_reason() -> None:
    clock = ManualClock(50.0)
    seen: list[StateChange] = []
    breaker = CircuitBreaker("k", BreakerConfig(open_duration=5.0), clock=clock)
    breaker.subscribe(seen.append, StateChange)
    breaker.adopt(FleetState("k", OPEN, 3, open_remaining=2.0, open_count=1, reason="x"))
    assert breaker.state is OPEN
    assert breaker.snapshot().retry_after == 2.0
    assert [(c.new, c.reason) for c in seen] == [(OPEN, "fleet:x")]
    clock.advance(2.0)
    view = breaker.sync_view()
    assert view.state is HALF_OPEN  # a look moves it
    assert view.leases_wanted == 1 and view.fleet_trials
    breaker.grant_leases(("L",))
    permit = breaker.acquire()
    breaker.record(permit, False)
    assert breaker.state is CLOSED
    assert breaker.sync_view().lease_returns == (("L", True),)
    breaker.adopt(FleetState("k", HALF_OPEN, 4, open_count=1, leases=("M",)))
    breaker.leave_fleet()
    assert breaker.acquire() < 0


def test_not_before_is_sent_as_a_delay() -> None:
    core = make(consecutive_failures=5)
    core.record(core.cycle, 1.0, True, retry_at=31.0)
    assert core.sync_view(11.0).not_before == 20.0
    assert core.sync_view(40.0).not_before is None
