"""Outcomes settled by the garbage collector: ``CircuitBreaker.record_later``.

A response dropped without being closed settles from its finaliser, which must
never wait for the breaker's lock. The outcome is filed at the time it settled
(so stale successes cannot hide a failure burst), and the queue holding it
stays short even when nothing else ever touches the breaker.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from circuitbreaker_http import BreakerConfig, CircuitBreaker, CircuitState, StateChange
from circuitbreaker_http.testing import ManualClock

CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN


def make(clock: ManualClock, **config: Any) -> CircuitBreaker:
    config.setdefault("consecutive_failures", None)
    return CircuitBreaker("svc", BreakerConfig(**config), clock=clock)


def fail(b: CircuitBreaker) -> None:
    b.record(b.acquire(), True)


@pytest.mark.parametrize("lock_busy", [False, True])
def test_stale_collected_successes_do_not_hide_a_failure_burst(lock_busy: bool) -> None:
    # 200 streamed responses dropped unread between t=0 and t=5, then at t=40
    # every call fails. Filed when they settled, the successes have left the
    # window by t=40; filed at t=40 they would dilute ten failures to 5%.
    clock = ManualClock()
    b = make(clock, failure_rate=0.5, minimum_calls=5, window=30.0)
    if lock_busy:
        b._lock.acquire()  # a finaliser never gets it: nothing is drained early
    try:
        for i in range(200):
            clock.set(i * 5 / 200)
            b.record_later(b.acquire())
    finally:
        if lock_busy:
            b._lock.release()
    clock.set(40.0)
    failures = 0
    while b.state is CLOSED and failures < 10:
        fail(b)
        failures += 1
    assert b.state is OPEN
    assert failures == 5  # tripped at minimum_calls: nothing else is in the window
    snap = b.snapshot()
    assert (snap.calls, snap.failures) == (5, 5)


def test_collected_successes_still_in_the_window_count() -> None:
    clock = ManualClock()
    b = make(clock, failure_rate=0.5, minimum_calls=5, window=30.0)
    b._lock.acquire()
    try:
        for _ in range(20):
            b.record_later(b.acquire())
    finally:
        b._lock.release()
    clock.set(20.0)
    for _ in range(10):
        fail(b)
    assert b.state is CLOSED  # 10 failures of 30 calls
    snap = b.snapshot()
    assert (snap.calls, snap.failures) == (30, 10)


def test_the_queue_stays_short_with_no_other_call() -> None:
    clock = ManualClock()
    b = make(clock)
    longest = 0
    for _ in range(100_000):
        b.record_later(b.acquire())
        longest = max(longest, len(b._deferred))
    assert longest <= 33
    assert b.deferred_dropped == 0
    assert b.snapshot().calls == 100_000  # every one of them filed


def test_a_full_queue_drops_and_counts_while_the_lock_is_taken() -> None:
    clock = ManualClock()
    b = make(clock)
    b._lock.acquire()  # as if the collector ran inside a locked section
    try:
        for _ in range(5_000):
            b.record_later(b.acquire())  # must not wait for the lock
        queued = len(b._deferred)
    finally:
        b._lock.release()
    assert queued < 5_000
    assert b.deferred_dropped == 5_000 - queued
    assert b.snapshot().calls == queued


@pytest.mark.parametrize("bad", [RuntimeError("clock broke"), math.nan, math.inf, "noon"])
def test_a_failing_clock_never_escapes_record_later(bad: Exception | float | str) -> None:
    now = [0.0]
    broken = [True]

    def clock() -> float:
        if broken[0]:
            if isinstance(bad, Exception):
                raise bad
            return bad
        return now[0]

    b = CircuitBreaker("svc", BreakerConfig(window=10.0), clock=clock)
    broken[0] = False
    permit = b.acquire()
    broken[0] = True
    for _ in range(40):  # past the point where record_later drains by itself
        b.record_later(permit)
    now[0] = 7.0
    broken[0] = False
    # with no time of their own they are filed when learnt
    assert b.export_state().buckets == ((7, 40, 0, 0),)


def test_events_of_a_drain_inside_record_later_wait_for_the_next_caller() -> None:
    clock = ManualClock()
    changes: list[StateChange] = []
    b = CircuitBreaker(
        "svc",
        BreakerConfig(consecutive_failures=1, open_duration=10.0),
        clock=clock,
        on_state_change=changes.append,
    )
    stale = b.acquire()
    fail(b)
    clock.advance(10.0)
    trial = b.acquire()
    assert b.permit_state(trial) is HALF_OPEN
    b.trial_slot_free(trial)  # its headers said 200
    for _ in range(32):
        b.record_later(stale)
    before = len(changes)
    b.record_later(trial)  # the 33rd: drained right here, lock-free for the caller
    assert not b._deferred
    assert len(changes) == before  # no listener runs inside a finaliser
    assert b.call(lambda: "ok") == "ok"
    assert [(c.old, c.new) for c in changes[before:]] == [(HALF_OPEN, CLOSED)]


def test_a_collected_slow_success_counts_as_slow() -> None:
    clock = ManualClock()
    b = make(clock, slow_call_duration=1.0, slow_call_rate=1.0, minimum_calls=2)
    b.record_later(b.acquire(), 0.5)
    b.record_later(b.acquire(), 2.0)
    snap = b.snapshot()
    assert (snap.calls, snap.slow_calls) == (2, 1)
