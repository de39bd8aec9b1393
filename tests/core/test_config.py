"""BreakerConfig: defaults, validation (messages name the field), immutability."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import pytest

from circuitbreaker_http import BreakerConfig, CallInfo, CircuitBreaker, CircuitState, Verdict
from circuitbreaker_http._core import DEFAULT_FAILURE_STATUSES
from circuitbreaker_http.testing import ManualClock

NAN = math.nan
INF = math.inf

EXPECTED_DEFAULT_STATUSES = frozenset({408, 429, *range(500, 600)}) - {501, 505}


def test_defaults() -> None:
    config = BreakerConfig()
    assert config.consecutive_failures == 5
    assert config.failure_rate == 0.5
    assert config.minimum_calls == 10
    assert config.window == 30.0
    assert config.window_calls is None
    assert config.slow_call_duration is None
    assert config.slow_call_rate == 1.0
    assert config.open_duration == 30.0
    assert config.open_backoff == 1.0
    assert config.max_open_duration == 300.0
    assert config.open_jitter == 0.0
    assert config.half_open_max_calls == 1
    assert config.success_threshold == 1
    assert config.failure_statuses == EXPECTED_DEFAULT_STATUSES
    assert config.respect_retry_after is True
    assert config.classify is None
    assert config.enforce is True


def test_every_field_has_a_default_checked_above() -> None:
    # A new field must get a default test: keep this list in step with test_defaults.
    names = [f.name for f in dataclasses.fields(BreakerConfig)]
    assert names == [
        "consecutive_failures",
        "failure_rate",
        "minimum_calls",
        "window",
        "window_calls",
        "slow_call_duration",
        "slow_call_rate",
        "open_duration",
        "open_backoff",
        "max_open_duration",
        "open_jitter",
        "half_open_max_calls",
        "success_threshold",
        "failure_statuses",
        "respect_retry_after",
        "classify",
        "enforce",
    ]


def test_default_failure_statuses() -> None:
    statuses = BreakerConfig().failure_statuses
    assert isinstance(statuses, frozenset)
    assert statuses == DEFAULT_FAILURE_STATUSES == EXPECTED_DEFAULT_STATUSES
    assert {408, 429, 500, 502, 503, 504, 599} <= statuses
    for status in (501, 505, 200, 204, 301, 400, 401, 403, 404, 409, 499, 600):
        assert status not in statuses
    assert len(statuses) == 2 + 100 - 2


def test_default_failure_statuses_are_not_shared_mutable_state() -> None:
    # frozenset: nothing to mutate, and each config compares equal.
    assert BreakerConfig().failure_statuses == BreakerConfig().failure_statuses
    assert not hasattr(BreakerConfig().failure_statuses, "add")


VALID: list[tuple[str, Any]] = [
    ("consecutive_failures", None),
    ("consecutive_failures", 1),
    ("consecutive_failures", 10**9),
    ("failure_rate", None),
    ("failure_rate", 1),
    ("failure_rate", 1.0),
    ("failure_rate", 1e-9),
    ("minimum_calls", 1),
    ("window", 0.001),
    ("window", 5),
    ("window", 1e-6),  # the shortest
    ("window", 1e9),  # the longest
    ("slow_call_duration", None),
    ("slow_call_duration", 0.5),
    ("slow_call_duration", 2),
    ("slow_call_rate", 1.0),
    ("slow_call_rate", 0.01),
    ("open_duration", 0.01),
    ("open_backoff", 1),
    ("open_backoff", 1.0),
    ("open_backoff", 3.5),
    ("max_open_duration", 30.0),  # equal to open_duration is fine
    ("open_jitter", 0),
    ("open_jitter", 1),
    ("open_jitter", 0.25),
    ("half_open_max_calls", 7),
    ("success_threshold", 3),
    ("respect_retry_after", False),
    ("classify", lambda call: Verdict.IGNORE),
    ("enforce", False),
]


@pytest.mark.parametrize(("field", "value"), VALID)
def test_valid_values_are_kept(field: str, value: Any) -> None:
    config = BreakerConfig(**{field: value})
    assert getattr(config, field) is value or getattr(config, field) == value


BAD: list[tuple[str, Any]] = [
    # consecutive_failures: None or an int >= 1
    ("consecutive_failures", 0),
    ("consecutive_failures", -1),
    ("consecutive_failures", True),
    ("consecutive_failures", False),
    ("consecutive_failures", 1.0),
    ("consecutive_failures", 2.5),
    ("consecutive_failures", "5"),
    ("consecutive_failures", INF),
    ("consecutive_failures", NAN),
    # failure_rate: None or 0 < x <= 1
    ("failure_rate", 0),
    ("failure_rate", 0.0),
    ("failure_rate", -0.5),
    ("failure_rate", 1.0000001),
    ("failure_rate", 2),
    ("failure_rate", NAN),
    ("failure_rate", INF),
    ("failure_rate", -INF),
    ("failure_rate", True),
    ("failure_rate", "0.5"),
    # minimum_calls: an int >= 1
    ("minimum_calls", 0),
    ("minimum_calls", -3),
    ("minimum_calls", True),
    ("minimum_calls", 1.0),
    ("minimum_calls", None),
    ("minimum_calls", INF),
    # window: a number > 0
    ("window", 0),
    ("window", 0.0),
    ("window", -1.0),
    ("window", NAN),
    ("window", INF),
    ("window", True),
    ("window", None),
    ("window", "30"),
    ("window", -INF),
    ("window", 1e-305),  # passed once, then every call overflowed after fn ran
    ("window", 5e-324),
    ("window", 9.99e-7),
    ("window", 1.01e9),
    # slow_call_duration: None or a number > 0
    ("slow_call_duration", 0),
    ("slow_call_duration", -0.1),
    ("slow_call_duration", NAN),
    ("slow_call_duration", INF),
    ("slow_call_duration", True),
    ("slow_call_duration", "1"),
    # slow_call_rate: 0 < x <= 1
    ("slow_call_rate", 0),
    ("slow_call_rate", -1),
    ("slow_call_rate", 1.5),
    ("slow_call_rate", NAN),
    ("slow_call_rate", INF),
    ("slow_call_rate", None),
    ("slow_call_rate", True),
    # open_duration: a number > 0
    ("open_duration", 0),
    ("open_duration", -30),
    ("open_duration", NAN),
    ("open_duration", INF),
    ("open_duration", True),
    ("open_duration", None),
    ("open_duration", 1e10),
    # open_backoff: a number >= 1
    ("open_backoff", 0.99),
    ("open_backoff", 0),
    ("open_backoff", -2),
    ("open_backoff", NAN),
    ("open_backoff", INF),
    ("open_backoff", True),
    ("open_backoff", None),
    # max_open_duration: a number >= open_duration (30 by default)
    ("max_open_duration", 29.999),
    ("max_open_duration", 0),
    ("max_open_duration", -1),
    ("max_open_duration", NAN),
    ("max_open_duration", INF),
    ("max_open_duration", True),
    ("max_open_duration", None),
    ("max_open_duration", 1.5e9),
    # open_jitter: 0 <= x <= 1
    ("open_jitter", -0.01),
    ("open_jitter", 1.01),
    ("open_jitter", NAN),
    ("open_jitter", INF),
    ("open_jitter", True),
    ("open_jitter", False),
    ("open_jitter", None),
    # half_open_max_calls: an int >= 1
    ("half_open_max_calls", 0),
    ("half_open_max_calls", -1),
    ("half_open_max_calls", True),
    ("half_open_max_calls", 2.0),
    ("half_open_max_calls", None),
    # success_threshold: an int >= 1
    ("success_threshold", 0),
    ("success_threshold", -1),
    ("success_threshold", True),
    ("success_threshold", 1.5),
    ("success_threshold", None),
    # failure_statuses: an iterable of ints (HTTP statuses)
    ("failure_statuses", "500"),
    ("failure_statuses", b"500"),
    ("failure_statuses", 500),
    ("failure_statuses", None),
    ("failure_statuses", [500, "502"]),
    ("failure_statuses", [500.0]),
    ("failure_statuses", [True]),
    ("failure_statuses", [None]),
    ("failure_statuses", [99]),
    ("failure_statuses", [1000]),
    ("failure_statuses", ["5xx"]),
    # enforce: a bool
    ("enforce", 1),
    ("enforce", None),
    ("enforce", "no"),
    # respect_retry_after: a bool
    ("respect_retry_after", 1),
    ("respect_retry_after", 0),
    ("respect_retry_after", "yes"),
    ("respect_retry_after", None),
    # classify: None or a callable
    ("classify", "module.func"),
    ("classify", 1),
    ("classify", Verdict.FAILURE),
]


@pytest.mark.parametrize(("field", "value"), BAD, ids=[f"{f}={v!r}" for f, v in BAD])
def test_bad_value_raises_value_error_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=re.escape(f"BreakerConfig.{field} must")):
        BreakerConfig(**{field: value})


@pytest.mark.parametrize(("open_duration", "max_open_duration"), [(10.0, 9.99), (60, 30), (1, 0.5)])
def test_max_open_duration_below_open_duration(
    open_duration: float, max_open_duration: float
) -> None:
    with pytest.raises(ValueError, match=re.escape("BreakerConfig.max_open_duration must")):
        BreakerConfig(open_duration=open_duration, max_open_duration=max_open_duration)


def test_max_open_duration_may_equal_open_duration_and_grows_with_it() -> None:
    config = BreakerConfig(open_duration=400.0, max_open_duration=400.0)
    assert config.max_open_duration == config.open_duration == 400.0
    # The default max (300) is below an open_duration of 400: the pair is judged together.
    with pytest.raises(ValueError, match="max_open_duration"):
        BreakerConfig(open_duration=400.0)


@pytest.mark.parametrize(
    "statuses",
    [
        [500, 503],
        (500, 503),
        {500, 503},
        frozenset({500, 503}),
        range(500, 504, 3),  # 500, 503
        (s for s in (500, 503)),
        {500: "x", 503: "y"}.keys(),
        [503, 500, 503],  # duplicates collapse
    ],
)
def test_failure_statuses_accepts_any_iterable_and_stores_a_frozenset(statuses: Any) -> None:
    config = BreakerConfig(failure_statuses=statuses)
    assert type(config.failure_statuses) is frozenset
    assert config.failure_statuses == frozenset({500, 503})


def test_failure_statuses_may_be_empty() -> None:
    config = BreakerConfig(failure_statuses=[])  # type: ignore[arg-type]
    assert config.failure_statuses == frozenset()


def test_failure_statuses_is_not_aliased_to_the_argument() -> None:
    given = {500}
    config = BreakerConfig(failure_statuses=given)  # type: ignore[arg-type]
    given.add(502)
    assert config.failure_statuses == frozenset({500})


def test_keyword_only() -> None:
    with pytest.raises(TypeError):
        BreakerConfig(5)  # type: ignore[call-arg]


def test_frozen() -> None:
    config = BreakerConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.window = 10.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.failure_statuses = frozenset()  # type: ignore[misc]
    assert config.window == 30.0


def test_slotted() -> None:
    config = BreakerConfig()
    assert not hasattr(config, "__dict__")
    with pytest.raises((AttributeError, TypeError)):
        config.extra = 1  # type: ignore[attr-defined]


def test_equal_and_hashable_values() -> None:
    assert BreakerConfig(window=10) == BreakerConfig(window=10)
    assert BreakerConfig(window=10) != BreakerConfig(window=11)
    assert hash(BreakerConfig(window=10)) == hash(BreakerConfig(window=10))


def test_replace_makes_a_variant() -> None:
    base = BreakerConfig(window=10.0, failure_statuses=[500])  # type: ignore[arg-type]
    variant = dataclasses.replace(base, consecutive_failures=2)
    assert variant.consecutive_failures == 2
    assert variant.window == 10.0
    assert variant.failure_statuses == frozenset({500})
    assert base.consecutive_failures == 5
    variant2 = dataclasses.replace(base, failure_statuses=(502, 503))  # type: ignore[arg-type]
    assert variant2.failure_statuses == frozenset({502, 503})
    assert type(variant2.failure_statuses) is frozenset


def test_replace_validates() -> None:
    base = BreakerConfig()
    with pytest.raises(ValueError, match=re.escape("BreakerConfig.minimum_calls must")):
        dataclasses.replace(base, minimum_calls=0)
    with pytest.raises(ValueError, match=re.escape("BreakerConfig.max_open_duration must")):
        dataclasses.replace(base, open_duration=301.0)


def test_classify_is_stored_as_given() -> None:
    def classify(call: CallInfo) -> Verdict | None:
        return None

    config = BreakerConfig(classify=classify)
    assert config.classify is classify


def test_the_longest_open_periods() -> None:
    config = BreakerConfig(open_duration=1e9, max_open_duration=1e9)
    assert config.max_open_duration == 1e9
    with pytest.raises(ValueError, match=re.escape("BreakerConfig.open_duration must")):
        BreakerConfig(open_duration=2e9, max_open_duration=2e9)


@pytest.mark.parametrize("field", ["window", "open_duration", "max_open_duration"])
def test_bounds_are_in_the_message(field: str) -> None:
    values: dict[str, Any] = {field: 1e12}
    with pytest.raises(ValueError, match=re.escape("1e+09")):
        BreakerConfig(**values)


def test_replace_method_returns_a_validated_copy() -> None:
    base = BreakerConfig(window=10.0)
    variant = base.replace(minimum_calls=3, failure_rate=0.25)
    assert (variant.window, variant.minimum_calls, variant.failure_rate) == (10.0, 3, 0.25)
    assert base.minimum_calls == 10
    with pytest.raises(ValueError, match=re.escape("BreakerConfig.window must")):
        base.replace(window=1e-305)
    with pytest.raises(TypeError):
        base.replace(no_such_field=1)


@pytest.mark.parametrize("window", [1e-6, 1e-3, 1e9])
@pytest.mark.parametrize("start", [0.0, 1.7e9, 1e15, -1e12])
def test_every_valid_window_works_with_realistic_clock_readings(
    window: float, start: float
) -> None:
    # The arithmetic of the window (now // (window / 10) and the bucket ends)
    # must hold for any reading a monotonic or wall clock gives.
    clock = ManualClock(start)
    breaker = CircuitBreaker(
        "w",
        BreakerConfig(window=window, consecutive_failures=3, failure_rate=0.5, minimum_calls=4),
        clock=clock,
    )
    assert breaker.call(lambda: "ok") == "ok"
    clock.advance(window / 3)
    assert breaker.call(lambda: "ok") == "ok"
    for _ in range(2):
        with pytest.raises(ZeroDivisionError):
            breaker.call(lambda: 1 / 0)
    snap = breaker.snapshot()
    assert (snap.calls, snap.failures, snap.state) == (4, 2, CircuitState.OPEN)


@pytest.mark.parametrize("statuses", [[[500]], [{"a": 1}], [500, [503]]])
def test_unhashable_failure_statuses_raise_value_error_naming_the_field(statuses: object) -> None:
    with pytest.raises(ValueError, match="failure_statuses"):
        BreakerConfig(failure_statuses=statuses)  # type: ignore[arg-type]
