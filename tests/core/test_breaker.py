"""The ``CircuitBreaker`` shell: running functions, errors, classify, listeners, manual control."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import inspect
import logging
import pickle
import threading
import weakref
from collections.abc import Callable
from typing import Any

import pytest

from circuitbreaker_http import (
    BreakerConfig,
    BreakerSnapshot,
    CallInfo,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    StateChange,
    Verdict,
)
from circuitbreaker_http._errors import _called, new_open_error
from circuitbreaker_http.testing import ManualClock

CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN
FORCED_OPEN = CircuitState.FORCED_OPEN
DISABLED = CircuitState.DISABLED

LOGGER = "circuitbreaker_http"


class Boom(Exception):
    pass


def boom() -> None:
    raise Boom("upstream down")


def ok() -> str:
    return "ok"


def breaker(
    clock: ManualClock | None = None,
    listener: Callable[[StateChange], object] | None = None,
    **config: Any,
) -> CircuitBreaker:
    return CircuitBreaker(
        "svc",
        BreakerConfig(**config),
        clock=clock or ManualClock(),
        on_state_change=listener,
    )


def tripped(clock: ManualClock, **config: Any) -> CircuitBreaker:
    config.setdefault("consecutive_failures", 1)
    config.setdefault("open_duration", 10.0)
    b = breaker(clock, **config)
    with pytest.raises(Boom):
        b.call(boom)
    assert b.state is OPEN
    return b


# -- call / call_async / decorator -----------------------------------------------------------


def test_call_returns_and_records_a_success() -> None:
    b = breaker()

    def add(a: int, b: int, *, c: int = 0) -> int:
        return a + b + c

    assert b.call(add, 1, 2, c=3) == 6
    snap = b.snapshot()
    assert (snap.calls, snap.failures, snap.consecutive_failures) == (1, 0, 0)


def test_call_records_a_failure_and_reraises_the_same_exception() -> None:
    b = breaker(consecutive_failures=2, failure_rate=None)
    error = Boom("x")

    def raiser() -> None:
        raise error

    with pytest.raises(Boom) as info:
        b.call(raiser)
    assert info.value is error
    snap = b.snapshot()
    assert (snap.calls, snap.failures, snap.consecutive_failures) == (1, 1, 1)
    assert b.state is CLOSED
    with pytest.raises(Boom):
        b.call(raiser)
    assert b.state is OPEN


@pytest.mark.anyio
async def test_call_async() -> None:
    b = breaker(consecutive_failures=2, failure_rate=None)

    async def double(x: int) -> int:
        return 2 * x

    async def fails() -> None:
        raise Boom("async")

    assert await b.call_async(double, 21) == 42
    with pytest.raises(Boom):
        await b.call_async(fails)
    snap = b.snapshot()
    assert (snap.calls, snap.failures) == (2, 1)
    with pytest.raises(Boom):
        await b.call_async(fails)
    assert b.state is OPEN
    with pytest.raises(CircuitOpenError):
        await b.call_async(double, 1)


def test_decorator_on_a_plain_function() -> None:
    b = breaker(consecutive_failures=1)
    calls: list[int] = []

    @b
    def fetch(x: int) -> int:
        """Fetch x."""
        calls.append(x)
        if x < 0:
            raise Boom("negative")
        return x * 10

    assert fetch.__name__ == "fetch"
    assert fetch.__doc__ == "Fetch x."
    assert fetch.__qualname__.endswith("fetch")
    assert fetch.__wrapped__.__name__ == "fetch"  # type: ignore[attr-defined]
    assert not inspect.iscoroutinefunction(fetch)
    assert fetch(3) == 30
    assert b.snapshot().calls == 1
    with pytest.raises(Boom):
        fetch(-1)
    assert b.state is OPEN
    with pytest.raises(CircuitOpenError):
        fetch(4)
    assert calls == [3, -1]


@pytest.mark.anyio
async def test_decorator_on_an_async_function() -> None:
    b = breaker(consecutive_failures=1)

    @b
    async def fetch(x: int) -> int:
        """Fetch x asynchronously."""
        if x < 0:
            raise Boom("negative")
        return x * 10

    assert inspect.iscoroutinefunction(fetch)
    assert fetch.__name__ == "fetch"
    assert fetch.__doc__ == "Fetch x asynchronously."
    assert hasattr(fetch, "__wrapped__")
    assert await fetch(3) == 30
    assert b.snapshot().calls == 1
    with pytest.raises(Boom):
        await fetch(-1)
    assert b.state is OPEN
    with pytest.raises(CircuitOpenError):
        await fetch(1)


# -- CircuitOpenError ------------------------------------------------------------------------


def test_open_rejects_without_running_fn() -> None:
    clock = ManualClock()
    b = tripped(clock, open_duration=10.0)
    clock.advance(4.0)
    ran: list[None] = []
    with pytest.raises(CircuitOpenError) as info:
        b.call(lambda: ran.append(None))
    assert ran == []
    error = info.value
    assert error.name == "svc"
    assert error.state is OPEN
    assert error.retry_after == pytest.approx(6.0)
    assert len(error.args) == 1
    assert isinstance(error.args[0], str)
    assert "svc" in error.args[0]
    assert str(error) == error.args[0]
    # a rejection is not recorded
    assert b.snapshot().calls == 1


def test_forced_open_error() -> None:
    b = breaker()
    b.force_open()
    with pytest.raises(CircuitOpenError) as info:
        b.call(ok)
    assert info.value.state is FORCED_OPEN
    assert info.value.retry_after is None
    assert "svc" in str(info.value)


@pytest.mark.parametrize(
    ("state", "retry_after"),
    [(OPEN, 2.5), (OPEN, None), (HALF_OPEN, None), (FORCED_OPEN, None)],
)
def test_circuit_open_error_pickles(state: CircuitState, retry_after: float | None) -> None:
    error = CircuitOpenError("api", state, retry_after)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is CircuitOpenError
    assert (copy.name, copy.state, copy.retry_after) == ("api", state, retry_after)
    assert copy.args == error.args
    assert len(copy.args) == 1


class MixedOpenError(CircuitOpenError, ConnectionError):
    """Like the client-specific subclasses: a CircuitOpenError that is also another error."""


def test_circuit_open_error_subclass_pickles_with_its_message() -> None:
    error = MixedOpenError("api", OPEN, 1.0, "custom message")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is MixedOpenError
    assert copy.args == ("custom message",)
    assert (copy.name, copy.state, copy.retry_after) == ("api", OPEN, 1.0)


def test_circuit_open_error_takes_last_failure_by_position_or_keyword() -> None:
    # The breaker passes it fifth, by position (a keyword costs a third of a
    # rejection); users may name it.
    by_position = CircuitOpenError("api", OPEN, 1.0, None, "503")
    by_keyword = CircuitOpenError("api", OPEN, 1.0, last_failure="503")
    for error in (by_position, by_keyword, pickle.loads(pickle.dumps(by_position))):
        assert (error.name, error.retry_after, error.last_failure) == ("api", 1.0, "503")
    assert CircuitOpenError("api", OPEN).last_failure is None


def test_an_error_built_without_init_equals_the_class_call() -> None:
    # The breaker's rejections are built by new_open_error, which skips the
    # Python __init__: what a user reads must not tell the two apart.
    fast = new_open_error(CircuitOpenError, "api", OPEN, 1.5, None, "503")
    called = CircuitOpenError("api", OPEN, retry_after=1.5, last_failure="503")
    assert type(fast) is CircuitOpenError
    for error in (fast, called, pickle.loads(pickle.dumps(fast))):
        assert (error.name, error.state, error.retry_after, error.last_failure) == (
            "api",
            OPEN,
            1.5,
            "503",
        )
        assert error.args == called.args == (str(error),)
        assert repr(error) == repr(called)
    assert new_open_error is not _called  # this interpreter takes the fast way


def test_circuit_open_error_attributes_can_be_set() -> None:
    error = new_open_error(CircuitOpenError, "api", OPEN, 1.5, None, None)
    error.name = "other"
    error.retry_after = None
    error.last_failure = "ReadTimeout"
    assert (error.name, error.state, error.retry_after, error.last_failure) == (
        "other",
        OPEN,
        None,
        "ReadTimeout",
    )
    assert str(error) == "circuit 'other' is open"
    error.args = ("replaced",)
    assert (str(error), error.args) == ("replaced", ("replaced",))


def test_the_breaker_rejects_with_the_plain_class() -> None:
    b = breaker()
    b.force_open()
    for attempt in (lambda: b.call(ok), b.__enter__, b.acquire):
        with pytest.raises(CircuitOpenError) as info:
            attempt()
        assert type(info.value) is CircuitOpenError
        assert (info.value.name, info.value.state) == ("svc", FORCED_OPEN)
        assert str(info.value) == "circuit 'svc' is forced open"


def test_a_rejection_carries_the_last_failure() -> None:
    clock = ManualClock()
    b = tripped(clock)
    with pytest.raises(CircuitOpenError) as info:
        b.call(lambda: None)
    assert info.value.last_failure is not None
    assert info.value.last_failure == b.snapshot().last_failure


def test_half_open_with_all_slots_taken() -> None:
    clock = ManualClock()
    b = tripped(clock, half_open_max_calls=1)
    clock.advance(10.0)
    seen: list[CircuitOpenError] = []

    def trial() -> str:
        # while this trial holds the only slot, a call from another thread is
        # short-circuited (one from this thread would be part of the trial)
        def other() -> None:
            with pytest.raises(CircuitOpenError) as info:
                b.call(ok)
            seen.append(info.value)

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        return "trial done"

    assert b.call(trial) == "trial done"
    (error,) = seen
    assert error.state is HALF_OPEN
    assert error.retry_after is None
    assert "half-open" in str(error)
    assert b.state is CLOSED


def test_circuit_open_error_from_fn_is_not_recorded() -> None:
    b = breaker(consecutive_failures=1)

    def nested() -> None:
        raise CircuitOpenError("inner", OPEN, 3.0)

    for _ in range(3):
        with pytest.raises(CircuitOpenError) as info:
            b.call(nested)
        assert info.value.name == "inner"
    assert b.state is CLOSED
    assert b.snapshot().calls == 0


def test_circuit_open_error_from_a_trial_gives_its_slot_back() -> None:
    clock = ManualClock()
    b = tripped(clock, half_open_max_calls=1)
    clock.advance(10.0)

    def nested() -> None:
        raise CircuitOpenError("inner", OPEN, 3.0)

    with pytest.raises(CircuitOpenError):
        b.call(nested)
    assert b.state is HALF_OPEN
    assert b.snapshot().trials_in_flight == 0
    assert b.call(ok) == "ok"  # the next call is the trial
    assert b.state is CLOSED


@pytest.mark.anyio
async def test_circuit_open_error_from_an_async_fn_is_not_recorded() -> None:
    b = breaker(consecutive_failures=1)

    async def nested() -> None:
        raise CircuitOpenError("inner", OPEN, 3.0)

    with pytest.raises(CircuitOpenError):
        await b.call_async(nested)
    assert b.state is CLOSED
    assert b.snapshot().calls == 0


# -- classify --------------------------------------------------------------------------------


def test_classify_gets_callinfo() -> None:
    clock = ManualClock(100.0)
    infos: list[CallInfo] = []

    def classify(info: CallInfo) -> Verdict | None:
        infos.append(info)
        return None

    b = breaker(clock, classify=classify)
    error = Boom("e")

    def slow_ok() -> str:
        clock.advance(1.5)
        return "ok"

    def slow_fail() -> None:
        clock.advance(0.25)
        raise error

    b.call(slow_ok)
    with pytest.raises(Boom):
        b.call(slow_fail)
    assert infos == [
        CallInfo("svc", "", "", None, None, None, 1.5),
        CallInfo("svc", "", "", None, None, error, 0.25),
    ]
    assert infos[0].method == "" and infos[0].url == ""
    assert infos[0].status is None and infos[0].headers is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        infos[0].status = 200  # type: ignore[misc]


@pytest.mark.parametrize(
    ("verdict", "raises", "calls", "failures", "state"),
    [
        (Verdict.SUCCESS, True, 1, 0, CLOSED),  # an exception classified as success
        (Verdict.FAILURE, False, 1, 1, OPEN),  # a return classified as failure
        (Verdict.IGNORE, True, 0, 0, CLOSED),
        (Verdict.IGNORE, False, 0, 0, CLOSED),
        (None, True, 1, 1, OPEN),  # default rule: exception is a failure
        (None, False, 1, 0, CLOSED),  # default rule: return is a success
    ],
)
def test_classify_verdicts(
    verdict: Verdict | None, raises: bool, calls: int, failures: int, state: CircuitState
) -> None:
    b = breaker(consecutive_failures=1, classify=lambda info: verdict)
    if raises:
        with pytest.raises(Boom):  # the exception always reaches the caller
            b.call(boom)
    else:
        assert b.call(ok) == "ok"
    snap = b.snapshot()
    assert (snap.calls, snap.failures, snap.state) == (calls, failures, state)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("verdict", "raises", "calls", "failures"),
    [
        (Verdict.SUCCESS, True, 1, 0),
        (Verdict.FAILURE, False, 1, 1),
        (Verdict.IGNORE, True, 0, 0),
        (None, True, 1, 1),
    ],
)
async def test_classify_verdicts_async(
    verdict: Verdict | None, raises: bool, calls: int, failures: int
) -> None:
    b = breaker(consecutive_failures=None, failure_rate=None, classify=lambda info: verdict)

    async def fn() -> str:
        if raises:
            raise Boom("e")
        return "ok"

    if raises:
        with pytest.raises(Boom):
            await b.call_async(fn)
    else:
        assert await b.call_async(fn) == "ok"
    snap = b.snapshot()
    assert (snap.calls, snap.failures) == (calls, failures)


def test_classify_ignore_gives_a_trial_slot_back() -> None:
    clock = ManualClock()
    b = tripped(
        clock, classify=lambda info: Verdict.IGNORE if isinstance(info.error, KeyError) else None
    )
    clock.advance(10.0)

    def lookup() -> None:
        raise KeyError("not about the upstream")

    with pytest.raises(KeyError):
        b.call(lookup)
    assert b.state is HALF_OPEN
    assert b.snapshot().trials_in_flight == 0
    b.call(ok)
    assert b.state is CLOSED


@pytest.mark.parametrize("raises", [True, False])
def test_raising_classify_is_logged_and_the_default_rule_decides(
    raises: bool, caplog: pytest.LogCaptureFixture
) -> None:
    def classify(info: CallInfo) -> Verdict | None:
        raise RuntimeError("classify bug")

    b = breaker(consecutive_failures=1, classify=classify)
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        if raises:
            with pytest.raises(Boom):
                b.call(boom)
        else:
            assert b.call(ok) == "ok"
    records = [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.ERROR]
    assert len(records) == 1
    assert records[0].exc_info is not None
    assert isinstance(records[0].exc_info[1], RuntimeError)
    assert "svc" in records[0].getMessage()
    snap = b.snapshot()
    assert (snap.calls, snap.failures) == (1, 1 if raises else 0)
    assert b.state is (OPEN if raises else CLOSED)


def test_classify_returning_a_non_verdict_is_logged_and_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    b = breaker(consecutive_failures=1, classify=lambda info: "failure")
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        b.call(ok)
    assert any(r.name == LOGGER and "'failure'" in r.getMessage() for r in caplog.records)
    assert b.state is CLOSED
    assert b.snapshot().calls == 1


# -- slow calls ------------------------------------------------------------------------------


@pytest.mark.parametrize(("duration", "slow"), [(1.5, True), (1.0, False), (0.0, False)])
def test_slow_call_measured_with_the_clock(duration: float, slow: bool) -> None:
    clock = ManualClock()
    b = breaker(
        clock,
        slow_call_duration=1.0,
        slow_call_rate=1.0,
        minimum_calls=1,
        failure_rate=None,
        consecutive_failures=None,
    )

    def work() -> str:
        clock.advance(duration)
        return "done"

    assert b.call(work) == "done"
    snap = b.snapshot()
    assert snap.slow_calls == (1 if slow else 0)
    assert snap.state is (OPEN if slow else CLOSED)


def test_slow_failure_counts_as_both() -> None:
    clock = ManualClock()
    b = breaker(clock, slow_call_duration=1.0, consecutive_failures=None, failure_rate=None)

    def slow_boom() -> None:
        clock.advance(2.0)
        raise Boom("slow")

    with pytest.raises(Boom):
        b.call(slow_boom)
    snap = b.snapshot()
    assert (snap.calls, snap.failures, snap.slow_calls) == (1, 1, 1)


@pytest.mark.anyio
async def test_slow_async_call() -> None:
    clock = ManualClock()
    changes: list[StateChange] = []
    b = breaker(
        clock,
        changes.append,
        slow_call_duration=0.5,
        slow_call_rate=0.5,
        minimum_calls=2,
        failure_rate=None,
        consecutive_failures=None,
    )

    async def work(seconds: float) -> float:
        clock.advance(seconds)
        return seconds

    await b.call_async(work, 0.1)
    await b.call_async(work, 0.75)
    assert b.state is OPEN
    assert [c.reason for c in changes] == ["slow_call_rate"]


def test_slow_trial_reopens() -> None:
    clock = ManualClock()
    b = tripped(clock, slow_call_duration=1.0)
    clock.advance(10.0)

    def slow_ok() -> str:
        clock.advance(1.01)
        return "ok"

    assert b.call(slow_ok) == "ok"
    assert b.state is OPEN


# -- listeners -------------------------------------------------------------------------------


def test_on_state_change_gets_frozen_events_in_order() -> None:
    clock = ManualClock(5.0)
    changes: list[StateChange] = []
    b = tripped(clock, listener=changes.append, success_threshold=1)
    clock.advance(10.0)
    b.call(ok)
    b.force_open()
    b.disable()
    b.reset()
    assert [(c.name, c.old, c.new, c.reason, c.at) for c in changes] == [
        ("svc", CLOSED, OPEN, "consecutive_failures", 5.0),
        ("svc", OPEN, HALF_OPEN, "open_period_ended", 15.0),
        ("svc", HALF_OPEN, CLOSED, "trials_succeeded", 15.0),
        ("svc", CLOSED, FORCED_OPEN, "force_open", 15.0),
        ("svc", FORCED_OPEN, DISABLED, "disable", 15.0),
        ("svc", DISABLED, CLOSED, "reset", 15.0),
    ]
    with pytest.raises(dataclasses.FrozenInstanceError):
        changes[0].new = CLOSED  # type: ignore[misc]


def test_plain_success_emits_no_event() -> None:
    changes: list[StateChange] = []
    b = breaker(listener=changes.append)
    for _ in range(10):
        b.call(ok)
    assert changes == []


def test_raising_listener_is_logged_and_never_reaches_the_caller(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[StateChange] = []

    def listener(change: StateChange) -> None:
        seen.append(change)
        raise RuntimeError("listener bug")

    clock = ManualClock()
    b = breaker(clock, listener, consecutive_failures=1)
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        with pytest.raises(Boom):
            b.call(boom)  # the caller sees its own error, not the listener's
        b.force_open()  # not propagated from a manual action either
        b.reset()
        assert [c.new for c in seen] == [OPEN, FORCED_OPEN, CLOSED]
        # Once a minute per listener at most: a listener that always raises
        # cannot flood the log.
        errors = [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.ERROR]
        assert len(errors) == 1
        clock.advance(59.0)
        b.force_open()
        assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1
        clock.advance(1.0)
        b.reset()
        errors = [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.ERROR]
    assert len(errors) == 2
    assert all(r.exc_info and isinstance(r.exc_info[1], RuntimeError) for r in errors)
    assert "listener" in errors[0].getMessage()
    assert b.call(ok) == "ok"


def run_with_timeout(fn: Callable[[], object], timeout: float = 10.0) -> None:
    """Run ``fn`` in a thread so that a deadlock fails the test instead of hanging it."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "deadlock"
    if errors:
        raise errors[0]


def test_listener_calling_back_into_the_breaker_does_not_deadlock() -> None:
    clock = ManualClock()
    seen: list[tuple[CircuitState, CircuitState]] = []
    snapshots: list[BreakerSnapshot] = []
    holder: list[CircuitBreaker] = []

    def listener(change: StateChange) -> None:
        b = holder[0]
        seen.append((change.old, change.new))
        snapshots.append(b.snapshot())
        assert b.state is change.new or change.new is OPEN
        if change.new is OPEN:
            b.force_open()  # a transition from inside a listener

    b = breaker(clock, listener, consecutive_failures=1)
    holder.append(b)

    def scenario() -> None:
        with pytest.raises(Boom):
            b.call(boom)

    run_with_timeout(scenario)
    # the nested transition is delivered after the one being handled, in order
    assert seen == [(CLOSED, OPEN), (OPEN, FORCED_OPEN)]
    assert [s.state for s in snapshots] == [OPEN, FORCED_OPEN]
    assert b.state is FORCED_OPEN


def test_listener_may_read_state_which_moves_open_to_half_open() -> None:
    clock = ManualClock()
    seen: list[tuple[CircuitState, CircuitState]] = []
    holder: list[CircuitBreaker] = []

    def listener(change: StateChange) -> None:
        seen.append((change.old, change.new))
        if change.new is OPEN:
            clock.advance(100.0)
            assert holder[0].state is HALF_OPEN

    b = breaker(clock, listener, consecutive_failures=1, open_duration=10.0)
    holder.append(b)

    def scenario() -> None:
        with pytest.raises(Boom):
            b.call(boom)

    run_with_timeout(scenario)
    assert seen == [(CLOSED, OPEN), (OPEN, HALF_OPEN)]


# -- looks: .state and snapshot() ------------------------------------------------------------


def test_state_moves_open_to_half_open_at_the_first_look() -> None:
    clock = ManualClock()
    changes: list[StateChange] = []
    b = tripped(clock, listener=changes.append, open_duration=10.0)
    clock.advance(9.999)
    assert b.state is OPEN
    clock.set(25.0)
    assert b.state is HALF_OPEN
    assert changes[-1] == StateChange("svc", OPEN, HALF_OPEN, "open_period_ended", 25.0)
    clock.advance(5.0)
    assert b.state is HALF_OPEN
    assert len(changes) == 2


def test_snapshot_moves_open_to_half_open_too() -> None:
    clock = ManualClock()
    changes: list[StateChange] = []
    b = tripped(clock, listener=changes.append, open_duration=10.0)
    clock.set(12.0)
    snap = b.snapshot()
    assert snap.state is HALF_OPEN
    assert snap.retry_after is None
    assert changes[-1].at == 12.0


def test_snapshot_of_an_open_breaker() -> None:
    clock = ManualClock()
    b = breaker(clock, consecutive_failures=None, failure_rate=0.5, minimum_calls=4)
    for fn in (ok, boom, ok, boom):
        with contextlib.suppress(Boom):
            b.call(fn)
    clock.advance(3.0)
    snap = b.snapshot()
    assert isinstance(snap, BreakerSnapshot)
    assert snap.name == "svc"
    assert snap.state is OPEN
    assert (snap.calls, snap.failures, snap.slow_calls) == (4, 2, 0)
    assert snap.failure_rate == 0.5
    assert snap.retry_after == pytest.approx(27.0)
    assert snap.at == 3.0


def test_next_transition_at() -> None:
    clock = ManualClock(1.0)
    b = breaker(clock)
    assert b.next_transition_at() is None
    b2 = tripped(clock, open_duration=10.0)
    assert b2.next_transition_at() == 11.0


# -- manual control --------------------------------------------------------------------------


def test_force_open_disable_reset() -> None:
    clock = ManualClock()
    b = breaker(clock, consecutive_failures=1)
    b.call(ok)
    b.force_open()
    assert b.state is FORCED_OPEN
    clock.advance(1e6)
    assert b.state is FORCED_OPEN
    with pytest.raises(CircuitOpenError):
        b.call(ok)
    b.disable()
    assert b.state is DISABLED
    for _ in range(20):
        with pytest.raises(Boom):
            b.call(boom)  # every call passes...
    assert b.state is DISABLED
    assert b.snapshot().failures == 0  # ...and nothing is recorded
    b.reset()
    assert b.state is CLOSED
    assert b.snapshot().calls == 0
    with pytest.raises(Boom):
        b.call(boom)
    assert b.state is OPEN


def test_disabled_breaker_does_not_call_classify() -> None:
    infos: list[CallInfo] = []
    b = breaker(classify=lambda info: infos.append(info))
    b.disable()
    b.call(ok)
    assert infos == []


def test_reset_clears_window_backoff_and_retry_after() -> None:
    clock = ManualClock()
    b = breaker(clock, consecutive_failures=1, open_duration=10.0, open_backoff=2.0)
    permit = b.acquire()
    b.record(permit, True, retry_after=200.0)
    assert b.snapshot().retry_after == pytest.approx(200.0)
    b.reset()
    snap = b.snapshot()
    assert (snap.state, snap.calls, snap.consecutive_failures, snap.open_count) == (
        CLOSED,
        0,
        0,
        0,
    )
    with pytest.raises(Boom):
        b.call(boom)
    assert b.snapshot().retry_after == pytest.approx(10.0)


# -- the low-level protocol ------------------------------------------------------------------


def test_low_level_protocol() -> None:
    clock = ManualClock()
    b = breaker(clock, consecutive_failures=1, open_duration=10.0, slow_call_duration=1.0)
    permit = b.acquire()
    b.release(permit)
    assert b.snapshot().calls == 0
    permit = b.acquire()
    b.record(permit, False, duration=2.0)
    assert b.snapshot().slow_calls == 1
    permit = b.acquire()
    b.record(permit, True, retry_after=30.0)
    assert b.state is OPEN
    assert b.snapshot().retry_after == pytest.approx(30.0)
    with pytest.raises(CircuitOpenError) as info:
        b.acquire()
    assert info.value.retry_after == pytest.approx(30.0)
    clock.advance(30.0)
    trial = b.acquire()
    with pytest.raises(CircuitOpenError):
        b.acquire()
    b.trial_slot_free(trial)  # a success status arrived: the slot is free...
    second = b.acquire()
    b.release(second)
    b.record(trial, False, duration=0.1)  # ...and the outcome settles later
    assert b.state is CLOSED


# -- construction ----------------------------------------------------------------------------


def test_attributes_and_default_config() -> None:
    b = CircuitBreaker("name")
    assert b.name == "name"
    assert b.config == BreakerConfig()
    assert b.state is CLOSED
    assert "name" in repr(b)
    config = BreakerConfig(window=10.0)
    assert CircuitBreaker("x", config).config is config


@pytest.mark.parametrize(
    "kwargs",
    [
        {"config": {"window": 10.0}},
        {"config": "default"},
        {"config": 5},
        {"clock": 3.0},
        {"on_state_change": "print"},
    ],
)
def test_invalid_arguments_raise_type_error(kwargs: dict[str, Any]) -> None:
    with pytest.raises(TypeError):
        CircuitBreaker("svc", **kwargs)


def test_name_must_be_a_string() -> None:
    with pytest.raises(TypeError):
        CircuitBreaker(42)  # type: ignore[arg-type]


def test_a_breaker_with_its_own_clock_holds_no_reference_cycle() -> None:
    # Its timer guards the clock without pointing back at the breaker, so a
    # breaker a registry drops is freed at once, not at the next collection.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        b = CircuitBreaker("svc", BreakerConfig(slow_call_duration=1.0), clock=ManualClock())
        assert b.call(lambda: "ok") == "ok"
        gone = weakref.ref(b)
        del b
        assert gone() is None
    finally:
        if was_enabled:
            gc.enable()
