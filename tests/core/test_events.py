"""Counters, events, subscriptions, logging and shadow mode of one breaker and a registry."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from circuitbreaker_http import (
    BreakerConfig,
    BreakerRegistry,
    CallRecorded,
    CallRejected,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    StateChange,
    Verdict,
)
from circuitbreaker_http.testing import ManualClock

CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN
FORCED_OPEN = CircuitState.FORCED_OPEN
LOGGER = "circuitbreaker_http"


class Boom(Exception):
    pass


def ok() -> str:
    return "ok"


def boom() -> None:
    raise Boom("down")


def make(clock: ManualClock, **kwargs: Any) -> CircuitBreaker:
    base: dict[str, Any] = {"consecutive_failures": 2, "failure_rate": None, "open_duration": 10.0}
    return CircuitBreaker("svc", BreakerConfig(**{**base, **kwargs}), clock=clock)


def fail(b: CircuitBreaker) -> None:
    with pytest.raises(Boom):
        b.call(boom)


# -- counters --------------------------------------------------------------------------------


def test_counters_add_up_over_a_whole_cycle() -> None:
    clock = ManualClock()
    b = make(clock, slow_call_duration=0.5)

    def slow() -> str:
        clock.advance(1.0)
        return "slow"

    for _ in range(3):
        b.call(ok)
    b.call(slow)
    fail(b)
    fail(b)  # trips
    for _ in range(4):
        with pytest.raises(CircuitOpenError):
            b.call(ok)
    clock.advance(10.0)
    b.call(ok)  # the trial closes it
    snap = b.snapshot()
    assert snap.state is CLOSED
    assert snap.total_calls == 7
    assert snap.total_failures == 2
    assert snap.total_slow_calls == 1
    assert snap.total_rejected == 4
    assert snap.total_shadow_rejected == 0
    assert snap.total_transitions == 3  # open, half-open, closed
    assert snap.open_seconds == pytest.approx(10.0)
    assert snap.last_failure == "Boom"
    assert snap.as_dict()["total_calls"] == 7
    # Closing cleared the window, not the totals.
    assert snap.calls == 0


def test_open_seconds_count_while_open_half_open_and_forced_open() -> None:
    clock = ManualClock()
    b = make(clock)
    clock.advance(5.0)
    fail(b)
    fail(b)
    clock.advance(3.0)
    assert b.snapshot().open_seconds == pytest.approx(3.0)  # still open: counted so far
    clock.advance(7.0)
    assert b.state is HALF_OPEN
    clock.advance(2.0)
    b.call(ok)
    assert b.snapshot().open_seconds == pytest.approx(12.0)
    clock.advance(100.0)
    b.force_open()
    clock.advance(4.0)
    b.disable()
    clock.advance(50.0)
    assert b.snapshot().open_seconds == pytest.approx(16.0)


def test_ignored_calls_are_counted_but_cancellations_are_not() -> None:
    clock = ManualClock()

    def classify(call: Any) -> Verdict | None:
        return Verdict.IGNORE if isinstance(call.error, KeyError) else None

    b = make(clock, classify=classify)

    def lookup() -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        b.call(lookup)

    async def cancelled() -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(b.call_async(cancelled))
    snap = b.snapshot()
    assert (snap.total_ignored, snap.total_calls, snap.total_failures) == (1, 0, 0)


def test_last_failure_is_on_the_error_and_the_snapshot() -> None:
    clock = ManualClock()
    b = make(clock)
    assert b.snapshot().last_failure is None
    fail(b)
    fail(b)
    with pytest.raises(CircuitOpenError) as caught:
        b.call(ok)
    assert caught.value.last_failure == "Boom"
    b.force_open()
    with pytest.raises(CircuitOpenError) as caught:
        b.call(ok)
    assert caught.value.last_failure == "Boom"


def test_a_failed_status_is_the_last_failure() -> None:
    b = make(ManualClock())
    permit = b.acquire()
    b.record(permit, True, 0.1, None, 503)
    assert b.snapshot().last_failure == "503"
    permit = b.acquire()
    b.record(permit, True, 0.1, None, None, TimeoutError("slow"))
    assert b.snapshot().last_failure == "TimeoutError"


# -- events ----------------------------------------------------------------------------------


def test_subscribers_get_only_the_types_they_asked_for_in_order() -> None:
    clock = ManualClock()
    b = make(clock)
    everything: list[object] = []
    calls: list[CallRecorded] = []
    b.subscribe(everything.append)
    b.subscribe(calls.append, CallRecorded)
    b.call(ok)
    fail(b)
    fail(b)
    with pytest.raises(CircuitOpenError):
        b.call(ok)
    kinds = [type(e).__name__ for e in everything]
    # A call's event comes before the transition it caused.
    assert kinds == ["CallRecorded", "CallRecorded", "CallRecorded", "StateChange", "CallRejected"]
    assert [c.outcome for c in calls] == [Verdict.SUCCESS, Verdict.FAILURE, Verdict.FAILURE]
    assert [c.error for c in calls] == [None, "Boom", "Boom"]
    assert all(c.name == "svc" and c.status is None and not c.slow for c in calls)
    assert all(c.duration is not None and c.duration >= 0 for c in calls)
    rejected = everything[-1]
    assert isinstance(rejected, CallRejected)
    assert (rejected.state, rejected.retry_after, rejected.enforced) == (OPEN, 10.0, True)
    change = everything[3]
    assert isinstance(change, StateChange) and change.new is OPEN


def test_unsubscribing_stops_delivery_and_reopens_the_fast_path() -> None:
    clock = ManualClock()
    b = make(clock)
    seen: list[object] = []
    unsubscribe = b.subscribe(seen.append, CallRecorded)
    assert b.timed  # a CallRecorded subscriber needs durations
    b.call(ok)
    unsubscribe()
    unsubscribe()  # twice is harmless
    assert not b.timed
    b.call(ok)
    assert len(seen) == 1
    assert b.snapshot().total_calls == 2


def test_a_success_status_event_carries_the_status() -> None:
    b = make(ManualClock())
    seen: list[CallRecorded] = []
    b.subscribe(seen.append, CallRecorded)
    b.record(b.acquire(), False, 0.25, None, 200)
    assert seen == [CallRecorded("svc", Verdict.SUCCESS, False, 0.25, 200, None, 0.0)]


def test_an_ignored_call_is_an_ignore_event() -> None:
    b = make(ManualClock())
    seen: list[CallRecorded] = []
    b.subscribe(seen.append, CallRecorded)
    b.release(b.acquire(), ignored=True)
    b.release(b.acquire())  # a cancellation: nothing
    assert [e.outcome for e in seen] == [Verdict.IGNORE]


@pytest.mark.parametrize("bad", [int, object, "StateChange"])
def test_subscribing_to_something_that_is_not_an_event_type_is_a_type_error(bad: Any) -> None:
    b = make(ManualClock())
    with pytest.raises(TypeError):
        b.subscribe(print, bad)
    with pytest.raises(TypeError, match="callable"):
        b.subscribe("not callable")  # type: ignore[arg-type]


def test_a_raising_listener_is_logged_once_a_minute_and_never_reaches_the_caller(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    b = make(clock)

    def bad(event: object) -> None:
        raise RuntimeError("listener bug")

    b.subscribe(bad, CallRecorded)
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        for _ in range(50):
            assert b.call(ok) == "ok"
        clock.advance(60.0)
        assert b.call(ok) == "ok"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2


def test_registry_subscribers_see_present_and_future_breakers() -> None:
    clock = ManualClock()
    registry = BreakerRegistry(BreakerConfig(consecutive_failures=1), clock=clock)
    first = registry.get("a")
    seen: list[StateChange] = []
    unsubscribe = registry.subscribe(seen.append, StateChange)
    second = registry.get("b")
    for b in (first, second):
        with pytest.raises(Boom):
            b.call(boom)
    assert [(c.name, c.new) for c in seen] == [("a", OPEN), ("b", OPEN)]
    unsubscribe()
    first.reset()
    registry.get("c").force_open()
    assert len(seen) == 2


def test_no_subscriber_keeps_the_core_fast_path() -> None:
    # The success fast path is what keeps a plain success cheap; subscribing
    # to other types must not close it.
    b = make(ManualClock())
    b.subscribe(print, StateChange, CallRejected)
    assert not b.timed
    for _ in range(3):
        b.call(ok)
    assert b.snapshot().total_calls == 3


# -- logging ---------------------------------------------------------------------------------


def test_the_warning_says_why_it_opened(caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock()
    b = CircuitBreaker(
        "https://api.example.com",
        BreakerConfig(consecutive_failures=None, failure_rate=0.5, minimum_calls=4),
        clock=clock,
    )
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        b.call(ok)
        b.call(ok)
        permit = b.acquire()
        b.record(permit, True, 0.1, None, 503)
        assert not [r for r in caplog.records if r.levelno >= logging.INFO]  # nothing per call
        permit = b.acquire()
        b.record(permit, True, 0.1, None, 503)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    for part in ("https://api.example.com", "failure_rate", "4 calls", "50% failed", "503", "30s"):
        assert part in message, message


def test_info_for_half_open_close_and_manual_changes(caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock()
    b = make(clock)
    fail(b)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        fail(b)
        clock.advance(10.0)
        b.call(ok)
        b.force_open()
        b.disable()
        b.reset()
    levels = [(r.levelno, r.getMessage().split("(")[0].strip()) for r in caplog.records]
    assert [lvl for lvl, _ in levels] == [logging.WARNING] + [logging.INFO] * 5


def test_rejections_log_at_debug_once_a_second(caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock()
    b = make(clock, open_duration=100.0)
    fail(b)
    fail(b)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        for _ in range(1000):
            with pytest.raises(CircuitOpenError):
                b.call(ok)
        clock.advance(1.0)
        for _ in range(1000):
            with pytest.raises(CircuitOpenError):
                b.acquire()
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(debug) == 2
    assert "short-circuited" in debug[0].getMessage()


# -- shadow mode -----------------------------------------------------------------------------


def test_shadow_mode_lets_every_call_through_and_reports_what_it_would_have_done() -> None:
    clock = ManualClock()
    b = make(clock, enforce=False)
    rejected: list[CallRejected] = []
    b.subscribe(rejected.append, CallRejected)
    fail(b)
    fail(b)
    assert b.state is OPEN
    ran = [b.call(ok) for _ in range(3)]
    assert ran == ["ok"] * 3
    permit = b.acquire()
    assert permit == 0  # records nothing
    snap = b.snapshot()
    assert (snap.total_rejected, snap.total_shadow_rejected) == (0, 4)
    assert snap.total_calls == 2  # the shadow-passed calls record nothing
    assert [e.enforced for e in rejected] == [False] * 4
    assert all(e.state is OPEN for e in rejected)
    # The states move on as an enforcing breaker's would: a trial after the
    # open period closes it.
    clock.advance(10.0)
    b.call(ok)
    assert b.state is CLOSED


def test_shadow_mode_forced_open_passes_too() -> None:
    b = make(ManualClock(), enforce=False)
    b.force_open()
    assert b.call(ok) == "ok"
    assert b.snapshot().total_shadow_rejected == 1


def test_metrics_row_matches_the_snapshot() -> None:
    clock = ManualClock()
    b = make(clock, slow_call_duration=0.5)
    b.call(ok)
    fail(b)
    fail(b)
    with pytest.raises(CircuitOpenError):
        b.call(ok)
    clock.advance(3.0)
    row = b.metrics()
    s = b.snapshot()
    assert row == (
        s.state,
        s.total_calls,
        s.total_failures,
        s.total_ignored,
        s.total_slow_calls,
        s.total_rejected,
        s.total_shadow_rejected,
        s.total_transitions,
        s.open_seconds,
        s.calls,
        s.failures,
        s.slow_calls,
        s.retry_after,
    )
    assert row[0] is OPEN and row[12] == pytest.approx(7.0)
