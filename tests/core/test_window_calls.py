"""``window_calls``: the rate rules see the most recent N outcomes of the time window."""

from __future__ import annotations

from typing import Any

import pytest

from circuitbreaker_http import BreakerConfig, CircuitState
from circuitbreaker_http._core import BreakerCore

CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN


def make(**kwargs: Any) -> BreakerCore:
    base: dict[str, Any] = {"consecutive_failures": None, "minimum_calls": 5}
    return BreakerCore("b", BreakerConfig(**{**base, **kwargs}), lambda: 0.0)


def outcome(core: BreakerCore, now: float, failed: bool = False, slow: bool = False) -> None:
    permit = core.acquire(now)
    assert permit is not None
    if failed or slow:
        core.record(permit, now, failed, slow)
    else:
        core.success(permit, now)


@pytest.mark.parametrize("value", [0, -1, 4, 2.5, True, "10"])
def test_window_calls_must_be_an_int_at_least_minimum_calls(value: object) -> None:
    with pytest.raises(ValueError, match="window_calls"):
        BreakerConfig(minimum_calls=5, window_calls=value)  # type: ignore[arg-type]


def test_a_burst_of_failures_trips_despite_a_healthy_past() -> None:
    with_count = make(failure_rate=0.5, window=30.0, window_calls=10)
    without = make(failure_rate=0.5, window=30.0)
    for core in (with_count, without):
        for i in range(200):
            outcome(core, i * 0.1)
    for n in range(1, 6):
        for core in (with_count, without):
            outcome(core, 20.0 + n * 0.01, failed=True)
        # The most recent ten are 10 - n successes and n failures.
        assert with_count.state is (OPEN if n == 5 else CLOSED), n
    assert without.state is CLOSED
    assert with_count.changes[-1].reason == "failure_rate"


def test_slow_calls_trip_on_the_count_window() -> None:
    core = make(slow_call_duration=0.5, slow_call_rate=0.8, window_calls=20, failure_rate=None)
    for i in range(100):
        outcome(core, i * 0.1)
    for n in range(1, 17):
        outcome(core, 10.0 + n * 0.01, slow=True)
        assert core.state is (OPEN if n == 16 else CLOSED), n
    assert core.changes[-1].reason == "slow_call_rate"


def test_the_snapshot_shows_the_count_window() -> None:
    core = make(window_calls=10, failure_rate=None)
    for i in range(30):
        outcome(core, i * 0.01)
    outcome(core, 0.5, failed=True)
    snap = core.snapshot(0.5)
    assert (snap.calls, snap.failures, snap.failure_rate) == (10, 1, 0.1)


def test_outcomes_still_leave_with_their_time_bucket() -> None:
    # A count window is bounded in time: old outcomes age out even when fewer
    # than window_calls have arrived since.
    core = make(window=10.0, window_calls=50, failure_rate=0.5)
    for i in range(4):
        outcome(core, float(i), failed=True)
    assert core.snapshot(4.0).failures == 4
    for i in range(6):
        outcome(core, 12.0 + i * 0.1)
    snap = core.snapshot(12.6)
    # The failures at 0-1 s have left the window (it keeps 10-11 s of history).
    assert (snap.calls, snap.failures) == (8, 2)
    assert core.state is CLOSED


def test_minimum_calls_counts_within_the_count_window() -> None:
    core = make(window_calls=5, minimum_calls=5, failure_rate=0.6)
    outcome(core, 0.0, failed=True)
    outcome(core, 0.1, failed=True)
    outcome(core, 0.2, failed=True)
    assert core.state is CLOSED  # three calls: below minimum_calls
    outcome(core, 0.3)
    outcome(core, 0.4)
    assert core.state is OPEN  # 3 of the last 5


def test_trip_keeps_the_count_window_and_closing_clears_it() -> None:
    core = make(window_calls=5, minimum_calls=5, failure_rate=0.6, open_duration=1.0)
    for i in range(5):
        outcome(core, i * 0.1, failed=i < 3)
    assert core.state is OPEN
    assert core.snapshot(0.5).failures == 3
    permit = core.acquire(2.0)
    assert permit is not None
    core.success(permit, 2.0)
    assert core.state is CLOSED
    assert core.snapshot(2.0).calls == 0


def test_memory_is_bounded_by_changes_of_kind() -> None:
    core = make(window_calls=100, failure_rate=None)
    for i in range(10_000):
        outcome(core, i * 0.001, failed=i % 2 == 0)
    snap = core.snapshot(10.0)
    assert snap.calls == 100
    assert snap.failures == 50
    assert len(core._counted or ()) <= 100


def test_late_outcomes_join_the_count_window() -> None:
    core = make(window_calls=4, minimum_calls=4, failure_rate=0.5)
    permits = [core.acquire(0.0) for _ in range(2)]
    for i in range(4):
        outcome(core, 0.1 + i * 0.1)
    for permit in permits:
        assert permit is not None
        core.record_late(permit, 0.05, 0.6, failed=True)
    assert core.state is OPEN
