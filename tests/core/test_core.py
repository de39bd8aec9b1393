"""Unit tests of the pure engine ``BreakerCore``: explicit ``now`` values, no clock, no sleeps."""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from circuitbreaker_http._core import (
    BUCKETS,
    DISABLED_PERMIT,
    TRANSITIONS,
    BreakerConfig,
    BreakerCore,
    BreakerSnapshot,
    CircuitState,
    CoreState,
    IllegalTransition,
    StateChange,
    bucket_of,
)

CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN
FORCED_OPEN = CircuitState.FORCED_OPEN
DISABLED = CircuitState.DISABLED

TRIGGERS = (
    "trip",
    "open_period_ended",
    "trial_failed",
    "trial_timed_out",
    "trials_succeeded",
    "force_open",
    "disable",
    "reset",
    "fleet_open",
    "fleet_half_open",
    "fleet_close",
)


def make(random: Callable[[], float] = lambda: 0.0, **kwargs: Any) -> BreakerCore:
    return BreakerCore("b", BreakerConfig(**kwargs), random)


def take(core: BreakerCore, now: float) -> int:
    permit = core.acquire(now)
    assert permit is not None, f"call rejected in {core.state} at {now}"
    return permit


def fail(core: BreakerCore, now: float, slow: bool = False, retry_at: float | None = None) -> None:
    core.record(take(core, now), now, True, slow, retry_at)


def succeed(core: BreakerCore, now: float, slow: bool = False, fast: bool = False) -> None:
    permit = take(core, now)
    if fast and not slow:
        core.success(permit, now)
    else:
        core.record(permit, now, False, slow)


def trip(core: BreakerCore, now: float, retry_at: float | None = None) -> None:
    """Record failures at ``now`` until the breaker opens."""
    for _ in range(1000):
        if core.state is OPEN:
            return
        fail(core, now, retry_at=retry_at)
    raise AssertionError("never tripped")


def reasons(core: BreakerCore) -> list[tuple[CircuitState, CircuitState, str, float]]:
    out = [(c.old, c.new, c.reason, c.at) for c in core.changes]
    core.changes.clear()
    return out


# -- the rules -------------------------------------------------------------------------------

# Script letters: F failure, S success, f slow failure, s slow success.
RULES: list[tuple[str, dict[str, Any], str, int | None, str | None]] = [
    # consecutive failures
    ("cf3", {"consecutive_failures": 3, "failure_rate": None}, "FFF", 2, "consecutive_failures"),
    ("cf3 broken", {"consecutive_failures": 3, "failure_rate": None}, "FFSFF", None, None),
    (
        "cf3 after break",
        {"consecutive_failures": 3, "failure_rate": None},
        "FFSFFF",
        5,
        "consecutive_failures",
    ),
    ("cf1", {"consecutive_failures": 1, "failure_rate": None}, "F", 0, "consecutive_failures"),
    ("cf off", {"consecutive_failures": None, "failure_rate": None}, "F" * 50, None, None),
    (
        "cf beats rate",
        {"consecutive_failures": 2, "failure_rate": 0.5, "minimum_calls": 2},
        "FF",
        1,
        "consecutive_failures",
    ),
    (
        "slow failure counts for cf",
        {"consecutive_failures": 2, "failure_rate": None},
        "ff",
        1,
        "consecutive_failures",
    ),
    # failure rate with minimum_calls
    (
        "rate below minimum",
        {"consecutive_failures": None, "failure_rate": 0.5, "minimum_calls": 4},
        "FSF",
        None,
        None,
    ),
    (
        "success reaching minimum trips",
        {"consecutive_failures": None, "failure_rate": 0.5, "minimum_calls": 4},
        "FSFS",
        3,
        "failure_rate",
    ),
    (
        "rate just under",
        {"consecutive_failures": None, "failure_rate": 0.51, "minimum_calls": 4},
        "FSFSS",
        None,
        None,
    ),
    (
        "rate reached exactly",
        {"consecutive_failures": None, "failure_rate": 0.5, "minimum_calls": 4},
        "SSSFFF",
        5,
        "failure_rate",
    ),
    (
        "rate 1.0 min 1",
        {"consecutive_failures": None, "failure_rate": 1.0, "minimum_calls": 1},
        "F",
        0,
        "failure_rate",
    ),
    (
        "rate 1.0 never with a success",
        {"consecutive_failures": None, "failure_rate": 1.0, "minimum_calls": 1},
        "SFFFFFFF",
        None,
        None,
    ),
    (
        "min 10",
        {"consecutive_failures": None, "failure_rate": 0.1, "minimum_calls": 10},
        "F" * 10,
        9,
        "failure_rate",
    ),
    # slow-call rate
    (
        "slow rate",
        {
            "consecutive_failures": None,
            "failure_rate": None,
            "slow_call_duration": 1.0,
            "slow_call_rate": 0.5,
            "minimum_calls": 4,
        },
        "sSsS",
        3,
        "slow_call_rate",
    ),
    (
        "slow rate off without slow_call_duration",
        {
            "consecutive_failures": None,
            "failure_rate": None,
            "slow_call_rate": 0.5,
            "minimum_calls": 1,
        },
        "ssss",
        None,
        None,
    ),
    (
        "slow failures: failure rate checked first",
        {
            "consecutive_failures": None,
            "failure_rate": 0.5,
            "slow_call_duration": 1.0,
            "slow_call_rate": 0.5,
            "minimum_calls": 2,
        },
        "fS",
        1,
        "failure_rate",
    ),
    (
        "slow failures trip the slow rate",
        {
            "consecutive_failures": None,
            "failure_rate": None,
            "slow_call_duration": 1.0,
            "slow_call_rate": 1.0,
            "minimum_calls": 2,
        },
        "ff",
        1,
        "slow_call_rate",
    ),
    (
        "slow rate under minimum",
        {
            "consecutive_failures": None,
            "failure_rate": None,
            "slow_call_duration": 1.0,
            "slow_call_rate": 0.5,
            "minimum_calls": 5,
        },
        "ssss",
        None,
        None,
    ),
]


@pytest.mark.parametrize("fast", [False, True], ids=["record", "success"])
@pytest.mark.parametrize(
    ("config", "script", "trips_at", "reason"),
    [r[1:] for r in RULES],
    ids=[r[0] for r in RULES],
)
def test_rules(
    config: dict[str, Any], script: str, trips_at: int | None, reason: str | None, fast: bool
) -> None:
    core = make(**config)
    tripped_at = None
    for step, letter in enumerate(script):
        now = float(step) / 100  # all in one bucket
        if letter in "Ff":
            fail(core, now, slow=letter == "f")
        else:
            succeed(core, now, slow=letter == "s", fast=fast)
        if core.state is OPEN:
            tripped_at = step
            break
        assert core.state is CLOSED
    assert tripped_at == trips_at
    changes = reasons(core)
    if reason is None:
        assert changes == []
    else:
        assert changes == [(CLOSED, OPEN, reason, tripped_at / 100)]  # type: ignore[operator]


def test_counts_and_consecutive() -> None:
    core = make(consecutive_failures=None, failure_rate=None, slow_call_duration=1.0)
    for letter in "FSfsFF":
        if letter in "Ff":
            fail(core, 0.0, slow=letter == "f")
        else:
            succeed(core, 0.0, slow=letter == "s")
    snap = core.snapshot(0.0)
    assert (snap.calls, snap.failures, snap.slow_calls, snap.consecutive_failures) == (6, 4, 2, 2)
    assert snap.failure_rate == pytest.approx(4 / 6)
    assert snap.slow_call_rate == pytest.approx(2 / 6)
    # success() resets the consecutive count just as record() does
    core.success(take(core, 0.0), 0.0)
    assert core.snapshot(0.0).consecutive_failures == 0
    assert core.snapshot(0.0).calls == 7


def test_tripping_keeps_the_window() -> None:
    core = make(consecutive_failures=None, failure_rate=0.5, minimum_calls=4)
    for letter in "SFSF":
        (fail if letter == "F" else succeed)(core, 1.0)
    assert core.state is OPEN
    snap = core.snapshot(1.0)
    assert (snap.calls, snap.failures, snap.failure_rate) == (4, 2, 0.5)


# -- the window ------------------------------------------------------------------------------

WIDTH = 1.0  # window=10.0 -> buckets of exactly 1.0 s


@pytest.mark.parametrize(
    ("recorded", "now", "inside"),
    [
        (0.0, 0.0, True),
        (0.0, 10.0, True),  # window after
        (0.0, 10.999, True),
        (0.0, 11.0, False),  # 1.1 x window after: an outcome on a bucket edge
        (3.0, 13.999, True),
        (3.0, 14.0, False),
        (3.75, 13.75, True),  # exactly window after
        (3.75, 13.999, True),
        (3.75, 14.0, False),  # 10.25 s after
        (9.999, 19.999, True),
        (9.999, 20.0, False),  # just over window after
        (-0.5, 9.999, True),  # negative clock readings bucket by floor
        (-0.5, 10.0, False),
        (0.0, 1000.0, False),
    ],
)
def test_outcome_leaves_the_window(recorded: float, now: float, inside: bool) -> None:
    core = make(window=10.0, consecutive_failures=None, failure_rate=None)
    fail(core, recorded)
    snap = core.snapshot(now)
    assert (snap.calls, snap.failures) == ((1, 1) if inside else (0, 0))


@pytest.mark.parametrize("recorded", [0.0, 0.25, 0.5, 0.999, 7.0, 7.3, 123.456, 1e6 + 0.1])
@pytest.mark.parametrize("window", [10.0, 30.0, 2.5, 0.3])
def test_window_leave_time_is_between_window_and_1_1_window(recorded: float, window: float) -> None:
    width = window / BUCKETS
    first = bucket_of(recorded, width)
    # The first clock reading whose bucket is 11 past the outcome's (exact in floats).
    leaves = (first + BUCKETS + 1) * width
    while bucket_of(leaves, width) - first <= BUCKETS:
        leaves = math.nextafter(leaves, math.inf)
    before = math.nextafter(leaves, -math.inf)
    while bucket_of(before, width) - first > BUCKETS:
        leaves, before = before, math.nextafter(before, -math.inf)
    assert window - 1e-9 <= leaves - recorded <= 1.1 * window + 1e-9
    core = make(window=window, consecutive_failures=None, failure_rate=None)
    fail(core, recorded)
    assert core.snapshot(before).calls == 1
    assert core.snapshot(leaves).calls == 0


def test_window_ages_bucket_by_bucket() -> None:
    core = make(window=10.0, consecutive_failures=None, failure_rate=None)
    for t in range(12):
        fail(core, t + 0.5)
        assert core.snapshot(t + 0.5).calls == min(t + 1, 11)
    # from now on one outcome leaves per bucket
    for k in range(1, 12):
        assert core.snapshot(11.5 + k).calls == 11 - k


def test_aged_failures_do_not_count_for_the_rate() -> None:
    core = make(window=10.0, consecutive_failures=None, failure_rate=0.5, minimum_calls=2)
    fail(core, 0.0)  # 1/1 but minimum 2
    succeed(core, 11.0)  # the failure left at 11.0: 0/1
    assert core.state is CLOSED
    assert core.snapshot(11.0).calls == 1
    fail(core, 11.0)  # 1/2
    assert core.state is OPEN
    assert reasons(core) == [(CLOSED, OPEN, "failure_rate", 11.0)]


@pytest.mark.parametrize("fast", [False, True])
def test_success_after_ageing_can_trip(fast: bool) -> None:
    core = make(window=10.0, consecutive_failures=None, failure_rate=0.5, minimum_calls=2)
    for _ in range(3):
        succeed(core, 0.0)
    fail(core, 5.0)  # 1/4
    assert core.state is CLOSED
    succeed(core, 11.0, fast=fast)  # the three successes left: 1 failure / 2 calls
    assert core.state is OPEN
    assert reasons(core) == [(CLOSED, OPEN, "failure_rate", 11.0)]


def test_consecutive_count_is_not_aged() -> None:
    core = make(window=10.0, consecutive_failures=3, failure_rate=None)
    fail(core, 0.0)
    fail(core, 0.0)
    assert core.snapshot(500.0).calls == 0
    assert core.snapshot(500.0).consecutive_failures == 2
    fail(core, 500.0)
    assert core.state is OPEN


def test_large_jump_clears_the_whole_ring() -> None:
    core = make(window=10.0, consecutive_failures=None, failure_rate=None)
    for t in range(11):
        fail(core, float(t))
    assert core.snapshot(10.0).calls == 11
    # 11 buckets later every slot is stale, and reused slots start empty
    fail(core, 21.0)
    assert core.snapshot(21.0).calls == 1
    assert core.export(21.0).buckets == ((21, 1, 1, 0),)


def test_outcome_before_the_newest_bucket_lands_in_the_newest() -> None:
    core = make(window=10.0, consecutive_failures=None, failure_rate=None)
    fail(core, 5.0)
    fail(core, 2.0)  # a clock that stepped back
    core.success(take(core, 1.0), 1.0)
    assert core.export(5.0).buckets == ((5, 3, 2, 0),)


def test_export_buckets() -> None:
    core = make(window=10.0, consecutive_failures=None, failure_rate=None)
    fail(core, 0.5)
    succeed(core, 1.2)
    succeed(core, 1.7, slow=True)
    fail(core, 5.0, slow=True)
    exported = core.export(5.5)
    assert exported.buckets == ((0, 1, 1, 0), (1, 2, 0, 1), (5, 1, 1, 1))
    assert exported.width == 1.0
    assert exported.state is CLOSED
    assert exported.consecutive_failures == 1
    assert core.export(11.0).buckets == ((1, 2, 0, 1), (5, 1, 1, 1))
    assert core.export(12.0).buckets == ((5, 1, 1, 1),)
    assert core.export(16.0).buckets == ()


def test_export_state_fields() -> None:
    core = make(consecutive_failures=1, open_duration=10.0)
    fail(core, 3.0, retry_at=25.0)
    exported = core.export(4.0)
    assert exported == CoreState(
        state=OPEN,
        open_until=25.0,
        open_count=1,
        not_before=25.0,
        consecutive_failures=1,
        width=3.0,
        buckets=((1, 1, 1, 0),),
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        exported.state = CLOSED  # type: ignore[misc]


def test_export_of_a_fresh_core() -> None:
    exported = make().export(100.0)
    assert exported.buckets == ()
    assert exported.state is CLOSED
    assert (exported.open_count, exported.not_before, exported.consecutive_failures) == (0, None, 0)


def test_merged_buckets() -> None:
    a = make(window=10.0, consecutive_failures=None, failure_rate=None)
    b = make(window=10.0, consecutive_failures=None, failure_rate=None)
    fail(a, 1.0)
    succeed(a, 3.0, slow=True)
    succeed(b, 1.5)
    fail(b, 2.0, slow=True)
    sa, sb = a.export(4.0), b.export(4.0)
    expected = ((1, 2, 1, 0), (2, 1, 1, 1), (3, 1, 0, 1))
    assert sa.merged_buckets(sb) == expected
    assert sb.merged_buckets(sa) == expected
    assert sa.merged_buckets(make(window=10.0).export(4.0)) == sa.buckets


def test_merged_buckets_rejects_different_widths() -> None:
    with pytest.raises(ValueError, match="width"):
        make(window=10.0).export(0.0).merged_buckets(make(window=20.0).export(0.0))


# -- open periods ----------------------------------------------------------------------------


def reopen(core: BreakerCore, retry_at: float | None = None) -> float:
    """From OPEN, wait out the period, fail one trial and return the new open period."""
    assert core.state is OPEN
    now = core.open_until
    permit = take(core, now)
    assert core.state is HALF_OPEN
    core.record(permit, now, True, False, retry_at)
    assert core.state is OPEN
    return core.open_until - now


@pytest.mark.parametrize(
    ("config", "periods"),
    [
        ({"open_duration": 10.0, "open_backoff": 2.0, "max_open_duration": 1000.0},
         [10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0, 1000.0, 1000.0]),
        ({"open_duration": 10.0, "open_backoff": 3.0, "max_open_duration": 50.0},
         [10.0, 30.0, 50.0, 50.0]),
        ({"open_duration": 7.0, "open_backoff": 1.0, "max_open_duration": 300.0},
         [7.0, 7.0, 7.0, 7.0]),
        ({"open_duration": 4.0, "open_backoff": 1.5, "max_open_duration": 8.0},
         [4.0, 6.0, 8.0, 8.0]),
        # float overflow of the backoff is capped, not an error
        ({"open_duration": 10.0, "open_backoff": 1e200, "max_open_duration": 60.0},
         [10.0, 60.0, 60.0, 60.0]),
    ],
)  # fmt: skip
def test_backoff(config: dict[str, Any], periods: list[float]) -> None:
    core = make(consecutive_failures=1, **config)
    trip(core, 0.0)
    seen = [core.open_until]
    for n in range(2, len(periods) + 1):
        seen.append(reopen(core))
        assert core.open_count == n
    assert seen == pytest.approx(periods)
    # n-th period = open_duration * backoff^(n-1), capped
    od, ob, cap = config["open_duration"], config["open_backoff"], config["max_open_duration"]
    for n, period in enumerate(seen, start=1):
        log_period = math.log(od) + (n - 1) * math.log(ob)
        assert period == pytest.approx(min(math.exp(min(log_period, 700.0)), cap))


def test_backoff_resets_on_close() -> None:
    core = make(consecutive_failures=1, open_duration=10.0, open_backoff=2.0)
    trip(core, 0.0)
    reopen(core)
    reopen(core)
    assert core.open_count == 3
    now = core.open_until
    succeed(core, now)  # the trial closes the breaker
    assert core.state is CLOSED
    assert core.open_count == 0
    trip(core, now)
    assert core.open_until - now == 10.0
    assert core.open_count == 1


def test_backoff_resets_on_reset() -> None:
    core = make(consecutive_failures=1, open_duration=10.0, open_backoff=2.0)
    trip(core, 0.0)
    reopen(core)
    now = core.open_until
    core.reset(now)
    trip(core, now)
    assert core.open_until - now == 10.0
    assert core.open_count == 1


@pytest.mark.parametrize(
    ("retry_at", "respect", "open_until"),
    [
        (100.0, True, 100.0),  # raises the period
        (5.0, True, 10.0),  # shorter than open_duration: no effect
        (-50.0, True, 10.0),  # in the past
        (1000.0, True, 300.0),  # capped at max_open_duration
        (100.0, False, 10.0),  # ignored
    ],
)
def test_retry_after_on_trip(retry_at: float, respect: bool, open_until: float) -> None:
    core = make(consecutive_failures=1, open_duration=10.0, respect_retry_after=respect)
    fail(core, 0.0, retry_at=retry_at)
    assert core.state is OPEN
    assert core.open_until == open_until
    assert core.open_count == 1  # Retry-After does not change n
    assert core.not_before == (retry_at if respect else None)


def test_retry_after_does_not_change_n() -> None:
    core = make(consecutive_failures=1, open_duration=10.0, open_backoff=2.0)
    fail(core, 0.0, retry_at=100.0)
    assert core.open_until == 100.0
    assert reopen(core) == 20.0  # second period: 10 x 2, not based on the 100 s
    assert core.open_count == 2


def test_retry_after_replaced_by_a_later_failure() -> None:
    core = make(consecutive_failures=3, failure_rate=None, open_duration=10.0)
    fail(core, 0.0, retry_at=200.0)
    fail(core, 1.0, retry_at=50.0)  # replaces, even though earlier
    assert core.not_before == 50.0
    fail(core, 2.0)  # no Retry-After: the earlier one stands
    assert core.state is OPEN
    assert core.open_until == 50.0


def test_retry_after_from_a_success_is_ignored() -> None:
    core = make(consecutive_failures=1, open_duration=10.0)
    core.record(take(core, 0.0), 0.0, False, False, 99.0)
    assert core.not_before is None


def test_retry_after_on_a_failed_trial() -> None:
    core = make(consecutive_failures=1, open_duration=10.0, open_backoff=2.0)
    trip(core, 0.0)
    assert reopen(core, retry_at=10.0 + 150.0) == 150.0
    # a slow success trial carries no Retry-After
    now = core.open_until
    permit = take(core, now)
    core.record(permit, now, False, True, now + 1000.0)
    assert core.state is OPEN
    assert core.open_until - now == 40.0


def test_retry_after_set_while_closed_applies_to_a_later_trip() -> None:
    core = make(consecutive_failures=2, failure_rate=None, open_duration=10.0)
    fail(core, 0.0, retry_at=120.0)
    succeed(core, 1.0)
    fail(core, 2.0)
    fail(core, 3.0)
    assert core.open_until == 120.0


def test_retry_after_forgotten_on_close() -> None:
    core = make(consecutive_failures=1, open_duration=10.0, max_open_duration=300.0)
    fail(core, 0.0, retry_at=1000.0)
    assert core.open_until == 300.0
    succeed(core, 300.0)  # the trial closes; not-before (1000) still lies ahead
    assert core.state is CLOSED
    assert core.not_before is None
    trip(core, 301.0)
    assert core.open_until == 311.0


def test_retry_after_forgotten_on_reset() -> None:
    core = make(consecutive_failures=2, failure_rate=None, open_duration=10.0)
    fail(core, 0.0, retry_at=1000.0)
    core.reset(1.0)
    assert core.not_before is None
    trip(core, 2.0)
    assert core.open_until == 12.0


@pytest.mark.parametrize(
    ("rnd", "jitter", "config", "period"),
    [
        (0.5, 0.2, {}, 11.0),
        (0.0, 1.0, {}, 10.0),
        (0.999, 1.0, {}, 19.99),
        (0.5, 0.0, {}, 10.0),
        # jitter comes after the cap and after Retry-After
        (0.5, 0.2, {"max_open_duration": 10.0, "retry_at": 1000.0}, 11.0),
        (0.5, 0.5, {"retry_at": 40.0}, 50.0),
    ],
)
def test_jitter(rnd: float, jitter: float, config: dict[str, Any], period: float) -> None:
    calls: list[None] = []

    def random() -> float:
        calls.append(None)
        return rnd

    retry_at = config.pop("retry_at", None)
    core = make(random, consecutive_failures=1, open_duration=10.0, open_jitter=jitter, **config)
    fail(core, 0.0, retry_at=retry_at)
    assert core.open_until == pytest.approx(period)
    assert len(calls) == (1 if jitter else 0)


def test_jitter_stretches_backoff_periods_too() -> None:
    core = make(
        lambda: 0.5, consecutive_failures=1, open_duration=10.0, open_jitter=0.5, open_backoff=2.0
    )
    trip(core, 0.0)
    assert core.open_until == 12.5
    assert reopen(core) == pytest.approx(25.0)


def test_default_backoff_keeps_every_open_period_the_same() -> None:
    core = make(consecutive_failures=1, open_duration=10.0)
    trip(core, 0.0)
    assert core.open_until == 10.0
    for _ in range(5):
        start = core.open_until
        assert reopen(core) == pytest.approx(10.0)
        assert core.open_until > start


# -- half-open -------------------------------------------------------------------------------


def half_open(core: BreakerCore, now: float = 0.0) -> float:
    """Trip at ``now`` and return the time the open period ends (not yet looked at)."""
    trip(core, now)
    reasons(core)
    return core.open_until


def test_open_rejects_until_the_period_ends() -> None:
    core = make(consecutive_failures=1, open_duration=10.0)
    end = half_open(core)
    assert core.acquire(math.nextafter(end, 0)) is None
    assert core.state is OPEN
    assert core.acquire(end) is not None
    assert core.state is HALF_OPEN
    assert reasons(core) == [(OPEN, HALF_OPEN, "open_period_ended", end)]


def test_poll_moves_open_to_half_open_at_the_first_look() -> None:
    core = make(consecutive_failures=1, open_duration=10.0)
    end = half_open(core)
    core.poll(end - 0.001)
    assert core.state is OPEN
    core.poll(end + 3.0)
    assert core.state is HALF_OPEN
    assert reasons(core) == [(OPEN, HALF_OPEN, "open_period_ended", end + 3.0)]


@pytest.mark.parametrize("k", [1, 2, 5])
def test_half_open_max_calls_slots(k: int) -> None:
    core = make(consecutive_failures=1, half_open_max_calls=k, success_threshold=100)
    end = half_open(core)
    permits = [take(core, end) for _ in range(k)]
    assert len(set(permits)) == k
    assert core.slots_used == k
    assert core.acquire(end) is None
    assert core.snapshot(end).trials_in_flight == k
    # one settles: one more may pass
    core.record(permits[0], end, False)
    assert core.state is HALF_OPEN
    assert core.slots_used == k - 1
    permits.append(take(core, end))
    assert core.acquire(end) is None


@pytest.mark.parametrize(("max_calls", "threshold"), [(1, 1), (1, 3), (2, 5), (3, 2)])
def test_success_threshold(max_calls: int, threshold: int) -> None:
    core = make(consecutive_failures=1, half_open_max_calls=max_calls, success_threshold=threshold)
    end = half_open(core)
    for i in range(threshold):
        succeed(core, end + i)
        assert core.state is (CLOSED if i == threshold - 1 else HALF_OPEN)
    assert reasons(core) == [
        (OPEN, HALF_OPEN, "open_period_ended", end),
        (HALF_OPEN, CLOSED, "trials_succeeded", end + threshold - 1),
    ]
    # closing clears the window and the counts
    snap = core.snapshot(end + threshold)
    assert (snap.calls, snap.failures, snap.consecutive_failures, snap.open_count) == (0, 0, 0, 0)


@pytest.mark.parametrize(("failed", "slow"), [(True, False), (False, True), (True, True)])
def test_one_failed_or_slow_trial_reopens(failed: bool, slow: bool) -> None:
    core = make(consecutive_failures=1, success_threshold=3, open_duration=10.0, open_backoff=2.0)
    end = half_open(core)
    succeed(core, end)
    succeed(core, end + 1)
    permit = take(core, end + 2)
    core.record(permit, end + 2, failed, slow)
    assert core.state is OPEN
    assert core.open_until == end + 2 + 20.0
    assert reasons(core) == [
        (OPEN, HALF_OPEN, "open_period_ended", end),
        (HALF_OPEN, OPEN, "trial_failed", end + 2),
    ]
    # the successes of the failed cycle are forgotten
    assert core.trial_successes == 0


def test_success_fast_path_settles_trials() -> None:
    core = make(consecutive_failures=1)
    end = half_open(core)
    core.success(take(core, end), end)
    assert core.state is CLOSED


def test_headers_ok_frees_the_slot() -> None:
    core = make(consecutive_failures=1, half_open_max_calls=1, success_threshold=2)
    end = half_open(core)
    first = take(core, end)
    assert core.acquire(end) is None
    core.headers_ok(first)
    assert core.slots_used == 0
    core.headers_ok(first)  # twice: no double free
    assert core.slots_used == 0
    second = take(core, end)
    assert core.slots_used == 1
    assert core.acquire(end) is None
    core.record(first, end + 1, False)  # settles later as a success
    assert core.slots_used == 1
    assert core.state is HALF_OPEN
    core.record(second, end + 2, False)
    assert core.state is CLOSED


def test_headers_ok_then_failure_reopens() -> None:
    core = make(consecutive_failures=1)
    end = half_open(core)
    permit = take(core, end)
    core.headers_ok(permit)
    core.record(permit, end + 1, True)
    assert core.state is OPEN


def test_headers_ok_outside_half_open_or_unknown_does_nothing() -> None:
    core = make(consecutive_failures=1)
    permit = take(core, 0.0)
    core.headers_ok(permit)  # closed: nothing to free
    assert core.slots_used == 0
    end = half_open(core, 1.0)
    trial = take(core, end)
    core.headers_ok(trial + 1000)
    core.headers_ok(permit)
    assert core.slots_used == 1


def test_unsettled_trial_holding_its_slot_times_out_as_failed() -> None:
    core = make(
        consecutive_failures=1,
        open_duration=10.0,
        max_open_duration=100.0,
        success_threshold=2,
        open_backoff=2.0,
    )
    end = half_open(core)
    permit = take(core, end)
    assert core.next_transition_at() == end + 100.0
    core.poll(end + 100.0 - 0.001)
    assert core.state is HALF_OPEN
    core.poll(end + 100.0)
    assert core.state is OPEN
    assert core.open_until == end + 100.0 + 20.0
    assert core.open_count == 2
    assert reasons(core)[-1] == (HALF_OPEN, OPEN, "trial_timed_out", end + 100.0)
    # its late outcome is stale
    core.record(permit, end + 101.0, False)
    assert core.state is OPEN
    assert core.trial_successes == 0


def test_unsettled_trial_after_headers_ok_counts_as_success_at_that_moment() -> None:
    core = make(consecutive_failures=1, open_duration=10.0, max_open_duration=100.0)
    end = half_open(core)
    permit = take(core, end)
    core.headers_ok(permit)
    core.poll(end + 99.0)
    assert core.state is HALF_OPEN
    core.poll(end + 150.0)
    assert core.state is CLOSED
    assert reasons(core)[-1] == (HALF_OPEN, CLOSED, "trials_succeeded", end + 150.0)
    # settling it later changes nothing
    core.record(permit, end + 151.0, True)
    assert core.state is CLOSED
    assert core.snapshot(end + 151.0).calls == 0


def test_expired_successful_trial_counts_toward_the_threshold() -> None:
    core = make(consecutive_failures=1, max_open_duration=100.0, success_threshold=2)
    end = half_open(core)
    permit = take(core, end)
    core.headers_ok(permit)
    core.poll(end + 100.0)
    assert core.state is HALF_OPEN
    assert core.trial_successes == 1
    assert permit not in core.trials
    succeed(core, end + 101.0)
    assert core.state is CLOSED


def test_acquire_after_an_expiry_that_closes_lets_the_call_pass() -> None:
    # Regression: acquire() used to return None (a rejection) although the
    # expiry it just ran had closed the breaker.
    core = make(consecutive_failures=1, max_open_duration=100.0)
    end = half_open(core)
    core.headers_ok(take(core, end))
    permit = core.acquire(end + 100.0)
    assert core.state is CLOSED
    assert permit == core.cycle
    core.record(permit, end + 100.0, False)
    assert core.snapshot(end + 100.0).calls == 1


def test_acquire_after_an_expiry_that_reopens_is_rejected() -> None:
    core = make(consecutive_failures=1, max_open_duration=100.0, half_open_max_calls=2)
    end = half_open(core)
    take(core, end)
    assert core.acquire(end + 100.0) is None
    assert core.state is OPEN


def test_half_open_keeps_the_window_until_it_closes() -> None:
    core = make(consecutive_failures=3, failure_rate=None)
    trip(core, 0.0)
    end = core.open_until
    core.poll(end)
    assert core.state is HALF_OPEN
    assert core.snapshot(end).consecutive_failures == 3
    succeed(core, end)
    assert core.snapshot(end).consecutive_failures == 0


# -- stale permits and release ---------------------------------------------------------------


def counts(core: BreakerCore, now: float) -> tuple[Any, ...]:
    snap = core.snapshot(now)
    return (
        snap.state,
        snap.calls,
        snap.failures,
        snap.slow_calls,
        snap.consecutive_failures,
        core.open_until,
        core.slots_used,
        core.trial_successes,
        core.not_before,
    )


@pytest.mark.parametrize(("failed", "slow"), [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("where", ["open", "half_open", "closed_again", "after_reset", "forced"])
def test_stale_permit_changes_nothing(where: str, failed: bool, slow: bool) -> None:
    core = make(consecutive_failures=2, failure_rate=None, slow_call_duration=1.0)
    stale = take(core, 0.0)
    fail(core, 0.0)
    fail(core, 0.0)
    assert core.state is OPEN
    now = core.open_until
    if where == "half_open":
        core.poll(now)
    elif where == "closed_again":
        succeed(core, now)
    elif where == "after_reset":
        core.reset(now)
    elif where == "forced":
        core.force_open(now)
    before = counts(core, now)
    changes = list(core.changes)
    core.record(stale, now, failed, slow, now + 1000.0)
    if not failed:
        core.success(stale, now)
    assert counts(core, now) == before
    assert core.changes == changes


def test_stale_trial_from_an_earlier_half_open_cycle() -> None:
    core = make(consecutive_failures=1, half_open_max_calls=1)
    end = half_open(core)
    old_trial = take(core, end)
    core.release(old_trial)
    fail(core, end)  # a second trial fails: open again
    end2 = core.open_until
    core.poll(end2)
    assert core.state is HALF_OPEN
    core.record(old_trial, end2, False)
    assert core.state is HALF_OPEN
    assert core.trial_successes == 0
    core.record(old_trial, end2, True)
    assert core.state is HALF_OPEN


def test_release_in_closed_records_nothing() -> None:
    core = make(consecutive_failures=1)
    permit = take(core, 0.0)
    core.release(permit)
    core.release(permit)
    assert core.snapshot(0.0).calls == 0
    assert core.state is CLOSED


def test_release_gives_a_trial_slot_back() -> None:
    core = make(consecutive_failures=1, half_open_max_calls=1)
    end = half_open(core)
    permit = take(core, end)
    assert core.acquire(end) is None
    core.release(permit)
    assert core.state is HALF_OPEN
    assert core.slots_used == 0
    assert core.trial_successes == 0
    assert permit not in core.trials
    core.release(permit)  # twice: nothing
    assert core.slots_used == 0
    core.record(permit, end, False)  # and no outcome afterwards
    assert core.state is HALF_OPEN
    succeed(core, end)
    assert core.state is CLOSED


def test_release_after_headers_ok_does_not_free_twice() -> None:
    core = make(consecutive_failures=1, half_open_max_calls=2, success_threshold=5)
    end = half_open(core)
    a = take(core, end)
    take(core, end)
    core.headers_ok(a)
    core.release(a)
    assert core.slots_used == 1
    assert core.trial_successes == 0


def test_disabled_permit() -> None:
    assert DISABLED_PERMIT == 0
    core = make(consecutive_failures=1)
    core.disable(0.0)
    permits = {take(core, float(t)) for t in range(5)}
    assert permits == {DISABLED_PERMIT}
    assert core.fast_permit == DISABLED_PERMIT
    for t in range(5):
        core.record(DISABLED_PERMIT, float(t), True)
        core.success(DISABLED_PERMIT, float(t))
    assert core.state is DISABLED
    assert core.snapshot(5.0).calls == 0
    # a disabled permit is never a cycle or a trial, in any state
    core.reset(6.0)
    core.record(DISABLED_PERMIT, 6.0, True)
    assert core.snapshot(6.0).calls == 0
    end = half_open(core, 7.0)
    core.poll(end)
    core.record(DISABLED_PERMIT, end, True)
    assert core.state is HALF_OPEN


# -- manual control --------------------------------------------------------------------------


def core_in(state: CircuitState) -> BreakerCore:
    """A core in ``state`` with a non-trivial window, counts and trials."""
    core = make(
        consecutive_failures=3,
        failure_rate=None,
        half_open_max_calls=3,
        success_threshold=5,
        slow_call_duration=1.0,
    )
    succeed(core, 0.5, slow=True)
    fail(core, 1.5, retry_at=50.0)
    fail(core, 2.5, slow=True)
    if state is CLOSED:
        return core
    if state is FORCED_OPEN:
        core.force_open(3.0)
        return core
    if state is DISABLED:
        core.disable(3.0)
        return core
    fail(core, 3.0)
    assert core.state is OPEN
    if state is OPEN:
        return core
    end = core.open_until
    a = take(core, end)
    take(core, end)
    core.headers_ok(a)
    succeed(core, end)
    assert core.state is HALF_OPEN
    return core


def after(state: CircuitState) -> float:
    """A clock reading later than anything ``core_in(state)`` did, before an OPEN core's end."""
    return 51.0 if state is HALF_OPEN else 10.0


@pytest.mark.parametrize("state", list(CircuitState))
def test_force_open(state: CircuitState) -> None:
    core = core_in(state)
    now = after(state)
    calls = core.snapshot(now).calls
    assert core.state is state
    assert calls > 0 or state is HALF_OPEN  # the half-open core's window has aged
    core.force_open(now)
    assert core.state is FORCED_OPEN
    assert core.acquire(now) is None
    assert core.acquire(1e9) is None
    core.poll(1e9)
    assert core.state is FORCED_OPEN
    assert core.next_transition_at() is None
    snap = core.snapshot(now)
    assert snap.retry_after is None
    assert snap.trials_in_flight == 0
    assert core.trials == {}
    assert snap.calls == calls  # the window is kept
    core.reset(200.0)
    assert core.state is CLOSED


@pytest.mark.parametrize("state", list(CircuitState))
def test_disable(state: CircuitState) -> None:
    core = core_in(state)
    now = after(state)
    core.disable(now)
    assert core.state is DISABLED
    for t in range(20):
        permit = take(core, now + t)
        assert permit == DISABLED_PERMIT
        core.record(permit, now + t, True)
    assert core.state is DISABLED
    assert core.next_transition_at() is None
    assert core.snapshot(1e9).state is DISABLED


@pytest.mark.parametrize("state", list(CircuitState))
def test_reset(state: CircuitState) -> None:
    core = core_in(state)
    now = after(state)
    core.reset(now)
    assert core.state is CLOSED
    assert core.trials == {}
    assert (core.slots_used, core.trial_successes, core.open_count) == (0, 0, 0)
    assert core.not_before is None
    assert core.fast_permit == core.cycle
    snap = core.snapshot(now)
    assert (snap.calls, snap.failures, snap.slow_calls, snap.consecutive_failures) == (0, 0, 0, 0)
    assert core.export(now).buckets == ()


def test_self_transitions_emit_no_event_but_start_a_new_cycle() -> None:
    core = make()
    old = take(core, 0.0)
    core.reset(0.0)
    assert core.changes == []
    assert take(core, 0.0) != old
    core.force_open(1.0)
    core.force_open(2.0)
    core.disable(3.0)
    core.disable(4.0)
    assert reasons(core) == [
        (CLOSED, FORCED_OPEN, "force_open", 1.0),
        (FORCED_OPEN, DISABLED, "disable", 3.0),
    ]


# -- next_transition_at, snapshot ------------------------------------------------------------


def test_next_transition_at() -> None:
    core = make(consecutive_failures=1, open_duration=10.0, max_open_duration=50.0,
                half_open_max_calls=3, success_threshold=9)  # fmt: skip
    assert core.next_transition_at() is None
    trip(core, 5.0)
    assert core.next_transition_at() == 15.0
    core.poll(15.0)
    assert core.state is HALF_OPEN
    assert core.next_transition_at() is None  # no trial: nothing happens by itself
    first = take(core, 16.0)
    take(core, 18.0)
    assert core.next_transition_at() == 16.0 + 50.0
    core.release(first)
    assert core.next_transition_at() == 18.0 + 50.0
    core.force_open(20.0)
    assert core.next_transition_at() is None
    core.disable(20.0)
    assert core.next_transition_at() is None


def test_snapshot_fields() -> None:
    core = BreakerCore(
        "api",
        BreakerConfig(consecutive_failures=3, failure_rate=None, slow_call_duration=1.0),
        lambda: 0.0,
    )
    empty = core.snapshot(1.0)
    assert empty == BreakerSnapshot(
        name="api",
        state=CLOSED,
        calls=0,
        failures=0,
        slow_calls=0,
        consecutive_failures=0,
        failure_rate=None,
        slow_call_rate=None,
        retry_after=None,
        open_count=0,
        trials_in_flight=0,
        at=1.0,
    )
    succeed(core, 2.0, slow=True)
    fail(core, 2.0)
    fail(core, 2.0)
    fail(core, 2.0)
    snap = core.snapshot(12.0)
    assert snap.state is OPEN
    assert (snap.calls, snap.failures, snap.slow_calls, snap.consecutive_failures) == (4, 3, 1, 3)
    assert snap.failure_rate == 0.75
    assert snap.slow_call_rate == 0.25
    assert snap.retry_after == 20.0  # open until 32
    assert snap.open_count == 1
    assert snap.at == 12.0
    assert snap.as_dict() == {
        "name": "api",
        "state": "open",
        "calls": 4,
        "failures": 3,
        "slow_calls": 1,
        "consecutive_failures": 3,
        "failure_rate": 0.75,
        "slow_call_rate": 0.25,
        "retry_after": 20.0,
        "open_count": 1,
        "trials_in_flight": 0,
        "at": 12.0,
        "last_failure": None,
        "total_calls": 4,
        "total_failures": 3,
        "total_slow_calls": 1,
        "total_ignored": 0,
        "total_rejected": 0,
        "total_shadow_rejected": 0,
        "total_transitions": 1,
        "open_seconds": 10.0,
    }
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.calls = 0  # type: ignore[misc]
    # the snapshot is a look: it moves open to half-open
    later = core.snapshot(32.0)
    assert later.state is HALF_OPEN
    assert later.retry_after is None
    take(core, 32.0)
    assert core.snapshot(32.0).trials_in_flight == 1


# -- the transition table --------------------------------------------------------------------


def test_transition_table_is_exactly_this() -> None:
    expected = {
        (CLOSED, "trip"): OPEN,
        (OPEN, "open_period_ended"): HALF_OPEN,
        (HALF_OPEN, "trial_failed"): OPEN,
        (HALF_OPEN, "trial_timed_out"): OPEN,
        (HALF_OPEN, "trials_succeeded"): CLOSED,
    }
    for state in CircuitState:
        expected[(state, "force_open")] = FORCED_OPEN
        expected[(state, "disable")] = DISABLED
        expected[(state, "reset")] = CLOSED
        # Adopted from a fleet's storage: from any other state.
        if state is not OPEN:
            expected[(state, "fleet_open")] = OPEN
        if state is not HALF_OPEN:
            expected[(state, "fleet_half_open")] = HALF_OPEN
        if state is not CLOSED:
            expected[(state, "fleet_close")] = CLOSED
    assert expected == TRANSITIONS
    assert {trigger for _, trigger in TRANSITIONS} == set(TRIGGERS)


def all_slots(core: BreakerCore) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in BreakerCore.__slots__:
        value = getattr(core, name)
        out[name] = value if name in ("config", "_random") else copy.deepcopy(value)
    return out


def pairs(legal: bool) -> Iterator[tuple[CircuitState, str]]:
    for state in CircuitState:
        for trigger in TRIGGERS:
            if ((state, trigger) in TRANSITIONS) is legal:
                yield state, trigger


ILLEGAL = list(pairs(False))
LEGAL = list(pairs(True))


def test_illegal_pairs_exist() -> None:
    assert len(ILLEGAL) == len(CircuitState) * len(TRIGGERS) - len(TRANSITIONS) == 23


@pytest.mark.parametrize(("state", "trigger"), ILLEGAL)
def test_illegal_transition_raises_and_changes_nothing(state: CircuitState, trigger: str) -> None:
    core = core_in(state)
    assert core.state is state
    before = all_slots(core)
    with pytest.raises(IllegalTransition, match=trigger):
        core._transition(trigger, 500.0, "some reason")
    after = all_slots(core)
    assert after == before
    for name in ("config", "_random"):
        assert after[name] is before[name]


@pytest.mark.parametrize(("state", "trigger"), LEGAL)
def test_legal_transition_goes_where_the_table_says(state: CircuitState, trigger: str) -> None:
    core = core_in(state)
    reasons(core)
    cycle = core.cycle
    core._transition(trigger, 500.0)
    new = TRANSITIONS[(state, trigger)]
    assert core.state is new
    assert core.cycle > cycle
    assert core.trials == {}
    assert core.slots_used == 0
    if new is state:
        assert core.changes == []
    else:
        assert core.changes == [StateChange("b", state, new, trigger, 500.0)]
    expected_fast = {CLOSED: core.cycle, DISABLED: DISABLED_PERMIT}.get(new)
    assert core.fast_permit == expected_fast


def test_illegal_transition_is_a_runtime_error() -> None:
    assert issubclass(IllegalTransition, RuntimeError)


def test_state_change_events_of_a_lifecycle() -> None:
    core = BreakerCore(
        "svc",
        BreakerConfig(
            consecutive_failures=2,
            failure_rate=0.5,
            minimum_calls=4,
            slow_call_duration=1.0,
            slow_call_rate=0.5,
            open_duration=10.0,
            max_open_duration=100.0,
        ),
        lambda: 0.0,
    )
    fail(core, 0.0)
    fail(core, 1.0)  # consecutive_failures at 1.0, open until 11
    core.poll(11.0)
    fail(core, 11.0)  # trial_failed, open until 31
    take(core, 40.0)  # open_period_ended at 40; trial left hanging
    core.poll(140.0)  # trial_timed_out, open until 180
    succeed(core, 180.0)  # open_period_ended + trials_succeeded
    for letter in "FSFS":  # failure_rate
        (fail if letter == "F" else succeed)(core, 181.0)
    core.force_open(182.0)
    core.reset(183.0)
    for letter in "sSsS":  # slow_call_rate
        succeed(core, 184.0, slow=letter == "s")
    core.disable(185.0)
    core.reset(186.0)
    events = core.changes
    assert all(isinstance(e, StateChange) and e.name == "svc" for e in events)
    assert reasons(core) == [
        (CLOSED, OPEN, "consecutive_failures", 1.0),
        (OPEN, HALF_OPEN, "open_period_ended", 11.0),
        (HALF_OPEN, OPEN, "trial_failed", 11.0),
        (OPEN, HALF_OPEN, "open_period_ended", 40.0),
        (HALF_OPEN, OPEN, "trial_timed_out", 140.0),
        (OPEN, HALF_OPEN, "open_period_ended", 180.0),
        (HALF_OPEN, CLOSED, "trials_succeeded", 180.0),
        (CLOSED, OPEN, "failure_rate", 181.0),
        (OPEN, FORCED_OPEN, "force_open", 182.0),
        (FORCED_OPEN, CLOSED, "reset", 183.0),
        (CLOSED, OPEN, "slow_call_rate", 184.0),
        (OPEN, DISABLED, "disable", 185.0),
        (DISABLED, CLOSED, "reset", 186.0),
    ]


# -- outcomes learnt late (record_late) -----------------------------------------------------


def test_late_outcome_is_filed_in_the_bucket_of_when_it_settled() -> None:
    core = make(window=10.0, consecutive_failures=None, failure_rate=None)
    fail(core, 5.0)
    permit = take(core, 2.0)
    assert core.record_late(permit, 2.5, 5.0) is True
    assert core.export(5.0).buckets == ((2, 1, 0, 0), (5, 1, 1, 0))


def test_late_outcome_that_aged_out_is_left_out_of_the_window() -> None:
    core = make(window=10.0, consecutive_failures=None, failure_rate=None)
    permit = take(core, 0.0)
    # at 11.0 the window holds buckets 1..11 (the newest and ten before it)
    assert core.record_late(permit, 0.5, 11.0) is False
    assert core.export(11.0).buckets == ()
    assert core.snapshot(11.0).calls == 0
    # the oldest bucket still in the window takes it
    assert core.record_late(take(core, 1.0), 1.0, 11.0) is True
    assert core.export(11.0).buckets == ((1, 1, 0, 0),)


def test_late_outcome_after_the_newest_bucket_lands_in_the_newest() -> None:
    core = make(window=10.0, consecutive_failures=None, failure_rate=None)
    fail(core, 5.0)
    # settled at 7.0, learnt at 5.5: the clock stepped back in between
    assert core.record_late(take(core, 5.0), 7.0, 5.5, failed=True, slow=True) is True
    assert core.export(5.5).buckets == ((5, 2, 2, 1),)


def test_late_outcome_without_a_time_is_filed_now() -> None:
    core = make(window=10.0, consecutive_failures=None, failure_rate=None)
    assert core.record_late(take(core, 0.0), None, 7.0) is True
    assert core.export(7.0).buckets == ((7, 1, 0, 0),)


def test_stale_late_successes_do_not_hide_a_failure_burst() -> None:
    core = make(window=30.0, consecutive_failures=None, failure_rate=0.5, minimum_calls=5)
    permits = [(take(core, t / 40), t / 40) for t in range(200)]  # admitted at 0..5
    for permit, at in permits:
        core.record_late(permit, at, 40.0)  # learnt only at 40: aged out by then
    for _ in range(4):
        fail(core, 40.0)
    assert core.state is CLOSED  # fewer than minimum_calls
    fail(core, 40.0)
    assert core.state is OPEN
    assert reasons(core) == [(CLOSED, OPEN, "failure_rate", 40.0)]


def test_late_outcomes_count_for_the_consecutive_rule_even_when_aged_out() -> None:
    core = make(window=10.0, consecutive_failures=3, failure_rate=None)
    fail(core, 0.0)
    fail(core, 0.0)
    # a success that settled after those failures resets the count, aged or not
    assert core.record_late(take(core, 0.0), 0.1, 50.0) is False
    assert core.snapshot(50.0).consecutive_failures == 0
    fail(core, 50.0)
    fail(core, 50.0)
    # a late failure counts too, and trips at the time it is learnt
    assert core.record_late(take(core, 50.0), 1.0, 60.0, failed=True) is False
    assert core.state is OPEN
    assert reasons(core) == [(CLOSED, OPEN, "consecutive_failures", 60.0)]


def test_late_trial_outcome_decides_the_trial_when_learnt() -> None:
    core = make(consecutive_failures=1, open_duration=10.0)
    fail(core, 0.0)
    trial = take(core, 10.0)
    reasons(core)
    assert core.record_late(trial, 11.0, 12.0) is True
    assert core.state is CLOSED
    assert reasons(core) == [(HALF_OPEN, CLOSED, "trials_succeeded", 12.0)]


def test_late_outcome_of_a_stale_permit_changes_nothing() -> None:
    core = make(consecutive_failures=1, open_duration=10.0)
    permit = take(core, 0.0)
    fail(core, 0.0)
    core.poll(10.0)
    reasons(core)
    assert core.record_late(permit, 0.0, 10.0, failed=True) is True
    assert core.state is HALF_OPEN
    assert core.changes == []


# -- the success fast path ------------------------------------------------------------------


def test_fast_successes_are_counted_in_their_own_bucket() -> None:
    core = make(window=10.0, consecutive_failures=None, failure_rate=None)
    succeed(core, 1.0)  # the first outcome sets up the newest bucket
    for _ in range(3):
        core.success(take(core, 1.5), 1.5)
    assert core.pending_successes == 3  # the fast path: only counted
    fail(core, 4.0)
    assert core.export(4.0).buckets == ((1, 4, 0, 0), (4, 1, 1, 0))
    assert core.pending_successes == 0


def test_fast_success_resets_the_consecutive_count() -> None:
    core = make(window=10.0, consecutive_failures=2, failure_rate=None)
    fail(core, 0.0)
    core.snapshot(12.0)  # the failure has aged out; the count has not
    core.success(take(core, 12.0), 12.0)
    assert core.pending_successes == 1
    fail(core, 12.0)
    assert core.state is CLOSED  # the success came between the two failures
    assert core.snapshot(12.0).consecutive_failures == 1


def test_a_trip_counts_the_fast_successes_before_it() -> None:
    core = make(consecutive_failures=None, failure_rate=0.5, minimum_calls=4)
    succeed(core, 0.0)
    core.success(take(core, 0.0), 0.0)
    fail(core, 0.0)
    assert core.state is CLOSED  # 1 of 3 calls
    fail(core, 0.0)
    assert core.state is OPEN  # 2 of 4
    snap = core.snapshot(0.0)
    assert (snap.calls, snap.failures) == (4, 2)


def test_a_closed_fast_path_opens_again_with_the_next_success() -> None:
    # What a shell does when it holds outcomes the core has not seen yet.
    core = make(window=10.0, consecutive_failures=None, failure_rate=None)
    succeed(core, 1.0)
    core.success(take(core, 1.5), 1.5)
    assert core.pending_successes == 1
    core.close_fast_path()
    core.success(take(core, 1.5), 1.5)  # the slow path: everything counted
    assert core.pending_successes == 0
    assert core.snapshot(1.5).calls == 3
    core.success(take(core, 1.5), 1.5)  # and the fast path again
    assert core.pending_successes == 1


def test_a_slow_success_opens_the_fast_path_only_if_no_rule_can_fire() -> None:
    core = make(window=10.0, consecutive_failures=None, failure_rate=0.5, minimum_calls=3)
    fail(core, 1.0)
    core.close_fast_path()
    core.success(take(core, 1.5), 1.5)
    core.success(take(core, 1.5), 1.5)
    assert core.pending_successes == 0  # the failure is still in the window
    assert core.state is CLOSED  # 1 of 3
    core.snapshot(12.0)  # the failure has aged out
    core.close_fast_path()
    core.success(take(core, 12.0), 12.0)
    core.success(take(core, 12.0), 12.0)
    assert core.pending_successes == 1


def test_no_fast_path_while_the_window_holds_a_failure_or_a_slow_call() -> None:
    core = make(window=10.0, consecutive_failures=None, failure_rate=0.5, minimum_calls=3)
    succeed(core, 0.0, slow=True)
    core.success(take(core, 0.0), 0.0)
    assert core.pending_successes == 0
    fail(core, 1.0)
    core.success(take(core, 1.0), 1.0)
    assert core.pending_successes == 0
    assert core.snapshot(1.0).calls == 4
    core.snapshot(12.0)  # both aged out
    core.success(take(core, 12.0), 12.0)
    assert core.pending_successes == 1


# -- readings that are not finite --------------------------------------------------------------

NOT_FINITE = [math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("now", NOT_FINITE)
def test_record_refuses_a_reading_that_is_not_finite(now: float) -> None:
    core = make(consecutive_failures=1)
    succeed(core, 0.0)
    before = core.export(0.0)
    for failed in (True, False):
        with pytest.raises(ValueError, match="finite"):
            core.record(core.cycle, now, failed)
    with pytest.raises(ValueError, match="finite"):
        core.record_late(core.cycle, 0.0, now)
    with pytest.raises(ValueError, match="finite"):
        core.record_late(core.cycle, now, 0.0)
    assert core.export(0.0) == before
    assert core.state is CLOSED


@pytest.mark.parametrize("now", [math.nan, math.inf])
def test_success_refuses_nan_and_inf(now: float) -> None:
    core = make()
    succeed(core, 0.0)
    with pytest.raises(ValueError, match="finite"):
        core.success(core.cycle, now)
    assert core.snapshot(0.0).calls == 1


@pytest.mark.parametrize("now", NOT_FINITE)
def test_looks_and_admission_refuse_a_reading_that_is_not_finite(now: float) -> None:
    core = make(consecutive_failures=1, open_duration=10.0)
    assert core.acquire(now) == core.cycle  # closed: no reading needed
    fail(core, 0.0)
    for look in (core.acquire, core.poll, core.snapshot, core.export):
        with pytest.raises(ValueError, match="finite"):
            look(now)
    for manual in (core.force_open, core.disable, core.reset):
        with pytest.raises(ValueError, match="finite"):
            manual(now)
    assert core.state is OPEN
    assert core.open_until == 10.0


def test_a_trial_is_not_decided_by_a_reading_that_is_not_finite() -> None:
    core = make(consecutive_failures=1, open_duration=10.0)
    fail(core, 0.0)
    trial = take(core, 10.0)
    with pytest.raises(ValueError, match="finite"):
        core.success(trial, math.nan)
    assert core.state is HALF_OPEN
    assert trial in core.trials
