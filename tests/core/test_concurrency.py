"""One breaker, many threads or tasks: exact counts, trial limits, listener order, no deadlock.

Synchronisation is by barriers, events and conditions; nothing sleeps to wait for
another thread. A short thread switch interval makes the interpreter interleave
threads often.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from circuitbreaker_http import (
    BreakerConfig,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    StateChange,
)
from circuitbreaker_http.testing import ManualClock

CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN

THREADS = 16
JOIN_TIMEOUT = 30.0


class Boom(Exception):
    pass


@pytest.fixture(autouse=True)
def fast_switching() -> Iterator[None]:
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def run_threads(target: Callable[[int], None], count: int = THREADS) -> None:
    """Run ``target(i)`` in ``count`` threads; re-raise the first error; fail on a hang."""
    errors: list[BaseException] = []

    def wrapped(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=wrapped, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
    assert not any(t.is_alive() for t in threads), "deadlock: threads still running"
    if errors:
        raise errors[0]


def tripped(clock: ManualClock, **config: Any) -> CircuitBreaker:
    b = CircuitBreaker(
        "race", BreakerConfig(consecutive_failures=1, open_duration=10.0, **config), clock=clock
    )

    def boom() -> None:
        raise Boom

    with pytest.raises(Boom):
        b.call(boom)
    assert b.state is OPEN
    return b


# -- exact counts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"slow_call_duration": 1000.0},  # the timed path
        {"classify": lambda info: None},  # the classify path
    ],
    ids=["plain", "timed", "classify"],
)
def test_threads_record_exact_counts(config: dict[str, Any]) -> None:
    per_thread = 400
    clock = ManualClock()  # never moves: nothing leaves the window
    b = CircuitBreaker(
        "counts",
        BreakerConfig(consecutive_failures=None, failure_rate=None, **config),
        clock=clock,
    )
    barrier = threading.Barrier(THREADS)
    made = [[0, 0] for _ in range(THREADS)]  # successes, failures per thread

    def ok() -> int:
        return 1

    def boom() -> None:
        raise Boom

    def worker(i: int) -> None:
        rng = random.Random(1000 + i)
        barrier.wait(JOIN_TIMEOUT)
        for _ in range(per_thread):
            if rng.random() < 0.37:
                try:
                    b.call(boom)
                except Boom:
                    made[i][1] += 1
            else:
                made[i][0] += b.call(ok)

    run_threads(worker)
    successes = sum(m[0] for m in made)
    failures = sum(m[1] for m in made)
    assert successes + failures == THREADS * per_thread
    snap = b.snapshot()
    assert snap.state is CLOSED
    assert snap.calls == successes + failures
    assert snap.failures == failures
    assert snap.slow_calls == 0


def test_threads_trip_exactly_once() -> None:
    changes: list[StateChange] = []
    b = CircuitBreaker(
        "trip",
        BreakerConfig(consecutive_failures=None, failure_rate=0.5, minimum_calls=50),
        clock=ManualClock(),
        on_state_change=changes.append,
    )
    barrier = threading.Barrier(THREADS)

    def boom() -> None:
        raise Boom

    def worker(i: int) -> None:
        barrier.wait(JOIN_TIMEOUT)
        for _ in range(20):
            with contextlib.suppress(Boom, CircuitOpenError):
                b.call(boom)

    run_threads(worker)
    assert [(c.old, c.new, c.reason) for c in changes] == [(CLOSED, OPEN, "failure_rate")]
    snap = b.snapshot()
    # The window stops at the outcome that tripped it (the 50th failure); calls
    # admitted just before the trip and settled after it are stale, not counted.
    assert (snap.calls, snap.failures) == (50, 50)


# -- half-open: never more than k trials -----------------------------------------------------


@pytest.mark.parametrize("k", [1, 3])
def test_threads_race_for_trial_slots(k: int) -> None:
    clock = ManualClock()
    b = tripped(clock, half_open_max_calls=k, success_threshold=k)
    clock.advance(10.0)
    lock = threading.Lock()
    settled = threading.Condition(lock)
    release = threading.Event()
    barrier = threading.Barrier(THREADS)
    in_flight = 0
    peak = 0
    admitted = 0
    rejected: list[CircuitOpenError] = []

    def trial() -> None:
        nonlocal in_flight, peak, admitted
        with settled:
            in_flight += 1
            peak = max(peak, in_flight)
            admitted += 1
            settled.notify_all()
        assert release.wait(JOIN_TIMEOUT)
        with lock:
            in_flight -= 1

    def worker(i: int) -> None:
        barrier.wait(JOIN_TIMEOUT)
        try:
            b.call(trial)
        except CircuitOpenError as exc:
            with settled:
                rejected.append(exc)
                settled.notify_all()

    runner = threading.Thread(target=run_threads, args=(worker,), daemon=True)
    runner.start()
    with settled:
        assert settled.wait_for(lambda: admitted + len(rejected) == THREADS, JOIN_TIMEOUT)
        # every thread has tried; the admitted ones are all still inside fn
        assert admitted == k
        assert peak == k
        assert b.snapshot().trials_in_flight == k
    release.set()
    runner.join(JOIN_TIMEOUT)
    assert not runner.is_alive()
    assert all(e.state is HALF_OPEN and e.retry_after is None for e in rejected)
    assert len(rejected) == THREADS - k
    assert b.state is CLOSED  # k successful trials, success_threshold = k


@pytest.mark.parametrize("k", [1, 2, 4])
def test_threads_never_exceed_trial_slots_while_trials_come_and_go(k: int) -> None:
    clock = ManualClock()
    b = tripped(clock, half_open_max_calls=k, success_threshold=10**9)
    clock.advance(10.0)
    lock = threading.Lock()
    barrier = threading.Barrier(THREADS)
    in_flight = 0
    peak = 0
    admitted = 0

    def trial() -> None:
        nonlocal in_flight, peak, admitted
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
            admitted += 1
        for _ in range(50):  # a little work, so trials overlap
            pass
        with lock:
            in_flight -= 1

    def worker(i: int) -> None:
        barrier.wait(JOIN_TIMEOUT)
        for _ in range(300):
            try:
                b.call(trial)
            except CircuitOpenError as exc:
                assert exc.state is HALF_OPEN

    run_threads(worker)
    assert 1 <= peak <= k
    assert admitted >= 1
    snap = b.snapshot()
    assert snap.state is HALF_OPEN
    assert snap.trials_in_flight == 0


# -- half-open with 1,000 tasks (asyncio and trio) -------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("k", [1, 5])
async def test_tasks_race_for_trial_slots(k: int) -> None:
    tasks = 1000
    clock = ManualClock()
    b = tripped(clock, half_open_max_calls=k, success_threshold=k)
    clock.advance(10.0)
    release = anyio.Event()
    everyone_tried = anyio.Event()
    in_flight = 0
    peak = 0
    admitted = 0
    rejected: list[CircuitOpenError] = []

    def tried() -> None:
        if admitted + len(rejected) == tasks:
            everyone_tried.set()

    async def trial() -> None:
        nonlocal in_flight, peak, admitted
        in_flight += 1
        peak = max(peak, in_flight)
        admitted += 1
        tried()
        await release.wait()
        in_flight -= 1

    async def one() -> None:
        try:
            await b.call_async(trial)
        except CircuitOpenError as exc:
            rejected.append(exc)
            tried()

    with anyio.fail_after(JOIN_TIMEOUT):
        async with anyio.create_task_group() as tg:
            for _ in range(tasks):
                tg.start_soon(one)
            await everyone_tried.wait()
            assert admitted == k
            assert peak == k
            assert b.snapshot().trials_in_flight == k
            release.set()
    assert len(rejected) == tasks - k
    assert all(e.state is HALF_OPEN and e.retry_after is None for e in rejected)
    assert b.state is CLOSED


@pytest.mark.anyio
@pytest.mark.parametrize("k", [1, 3])
async def test_tasks_never_exceed_trial_slots_while_trials_come_and_go(k: int) -> None:
    clock = ManualClock()
    b = tripped(clock, half_open_max_calls=k, success_threshold=10**9)
    clock.advance(10.0)
    in_flight = 0
    peak = 0
    admitted = 0
    rng = random.Random(7)
    yields = [rng.randrange(4) for _ in range(1000)]

    async def trial(n: int) -> None:
        nonlocal in_flight, peak, admitted
        in_flight += 1
        peak = max(peak, in_flight)
        admitted += 1
        for _ in range(n):
            await anyio.lowlevel.checkpoint()
        in_flight -= 1

    async def one(i: int) -> None:
        for j in range(5):
            try:
                await b.call_async(trial, yields[(i * 5 + j) % len(yields)])
            except CircuitOpenError as exc:
                assert exc.state is HALF_OPEN
            await anyio.lowlevel.checkpoint()

    with anyio.fail_after(JOIN_TIMEOUT):
        async with anyio.create_task_group() as tg:
            for i in range(1000):
                tg.start_soon(one, i)
    assert 1 <= peak <= k
    assert admitted >= 1  # how many get through depends on the scheduler
    assert b.snapshot().trials_in_flight == 0


# -- listeners under concurrency -------------------------------------------------------------


def test_listeners_run_one_at_a_time_in_transition_order() -> None:
    ticks = itertools.count()
    clock: Callable[[], float] = lambda: float(next(ticks))  # noqa: E731 - every read is later
    active = threading.Lock()
    overlaps: list[StateChange] = []
    events: list[StateChange] = []

    def listener(change: StateChange) -> None:
        if not active.acquire(blocking=False):
            overlaps.append(change)
            return
        try:
            events.append(change)
            # Give the GIL away while inside, so another thread could enter
            # a listener now if the breaker let it (this waits for nothing).
            time.sleep(0)
        finally:
            active.release()

    # Nothing trips by itself: every transition is a manual one, whose clock is
    # read under the breaker's lock, so ``at`` orders transitions.
    b = CircuitBreaker(
        "listeners",
        BreakerConfig(consecutive_failures=None, failure_rate=None),
        clock=clock,
        on_state_change=listener,
    )
    barrier = threading.Barrier(THREADS)

    def ok() -> None:
        return None

    def worker(i: int) -> None:
        rng = random.Random(i)
        barrier.wait(JOIN_TIMEOUT)
        for _ in range(200):
            action = rng.choice(["force_open", "disable", "reset", "call", "snapshot"])
            if action == "call":
                with contextlib.suppress(CircuitOpenError):
                    b.call(ok)
            else:
                getattr(b, action)()

    run_threads(worker)
    assert overlaps == []
    assert len(events) > 10
    assert events[0].old is CLOSED
    for before, after in itertools.pairwise(events):
        assert after.at > before.at, "delivered out of transition order"
        assert after.old is before.new, "a transition is missing or out of order"
        assert after.old is not after.new
    assert events[-1].new is b.state
