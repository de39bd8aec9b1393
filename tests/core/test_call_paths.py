"""Every way of running code through a ``CircuitBreaker`` besides ``call``'s plain path.

Generator functions and async generator functions keep their kind and settle
when their iteration does; ``with breaker:`` and ``async with breaker:`` run a
block; a call made while a call through the same breaker is running in the
same thread or task is part of it; what cannot be called records nothing; a
clock that fails never costs a function its result.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import math
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator
from typing import Any

import anyio
import pytest

from circuitbreaker_http import (
    BreakerConfig,
    CallInfo,
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
LOGGER = "circuitbreaker_http"
JOIN = 30.0  # seconds a thread may take before the test gives up on it


class Boom(Exception):
    pass


def ok() -> str:
    return "ok"


def boom() -> None:
    raise Boom("upstream down")


def make(clock: ManualClock | None = None, **config: Any) -> CircuitBreaker:
    config.setdefault("consecutive_failures", None)
    config.setdefault("failure_rate", None)
    return CircuitBreaker("svc", BreakerConfig(**config), clock=clock or ManualClock())


def half_open(clock: ManualClock, **config: Any) -> CircuitBreaker:
    """A breaker just turned half-open (one failure trips it, open for 10 s)."""
    config.setdefault("consecutive_failures", 1)
    config.setdefault("open_duration", 10.0)
    b = make(clock, **config)
    with pytest.raises(Boom):
        b.call(boom)
    clock.advance(10.0)
    assert b.state is HALF_OPEN
    return b


def counts(b: CircuitBreaker) -> tuple[int, int, int]:
    snap = b.snapshot()
    return snap.calls, snap.failures, snap.slow_calls


def in_thread(fn: Callable[[], object]) -> list[BaseException]:
    """Run ``fn`` in another thread (its own context); return what it raised."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(JOIN)
    assert not thread.is_alive()
    return raised


# -- generator functions ---------------------------------------------------------------------


def test_a_decorated_generator_function_is_still_one() -> None:
    b = make()

    def numbers(n: int) -> Iterator[int]:
        """Count to n."""
        yield from range(n)

    decorated = b(numbers)
    assert inspect.isgeneratorfunction(decorated)
    assert decorated.__name__ == "numbers"
    assert decorated.__doc__ == "Count to n."
    assert decorated.__wrapped__ is numbers  # type: ignore[attr-defined]
    assert list(decorated(3)) == [0, 1, 2]


def test_creating_the_generator_records_nothing_and_iterating_it_admits() -> None:
    clock = ManualClock()
    b = make(clock, consecutive_failures=1, open_duration=10.0)

    @b
    def gen() -> Generator[int, None, None]:
        yield 1

    created = gen()
    assert counts(b) == (0, 0, 0)
    with pytest.raises(Boom):
        b.call(boom)
    assert b.state is OPEN
    # created while closed, started while open: admission is at the first next()
    with pytest.raises(CircuitOpenError):
        next(created)
    with pytest.raises(StopIteration):
        next(created)  # a rejected iteration is over
    assert counts(b) == (1, 1, 0)


def test_exhaustion_is_a_success_and_the_return_value_passes_through() -> None:
    b = make()

    @b
    def gen() -> Generator[int, None, str]:
        yield 1
        yield 2
        return "done"

    def outer() -> Iterator[int]:
        result = yield from gen()
        assert result == "done"
        yield 3

    it = outer()
    assert next(it) == 1
    assert counts(b) == (0, 0, 0)  # still running
    assert list(it) == [2, 3]
    assert counts(b) == (1, 0, 0)


def test_an_error_while_iterating_is_a_failure() -> None:
    b = make()

    @b
    def gen() -> Generator[int, None, None]:
        yield 1
        raise Boom("mid-stream")

    it = gen()
    assert next(it) == 1
    assert counts(b) == (0, 0, 0)  # not settled while it runs
    with pytest.raises(Boom, match="mid-stream"):
        next(it)
    assert counts(b) == (1, 1, 0)
    assert b.snapshot().consecutive_failures == 1


def test_close_and_garbage_collection_are_successes() -> None:
    b = make()

    @b
    def gen() -> Generator[int, None, None]:
        yield 1
        raise Boom("never reached")

    it = gen()
    next(it)
    assert counts(b) == (0, 0, 0)
    it.close()
    assert counts(b) == (1, 0, 0)
    dropped = gen()
    next(dropped)
    assert counts(b) == (1, 0, 0)
    del dropped
    gc.collect()
    assert counts(b) == (2, 0, 0)


def test_an_error_while_closing_is_a_failure() -> None:
    b = make()

    @b
    def gen() -> Generator[int, None, None]:
        try:
            yield 1
        finally:
            raise Boom("cleanup failed")

    it = gen()
    next(it)
    with pytest.raises(Boom, match="cleanup failed"):
        it.close()
    assert counts(b) == (1, 1, 0)


def test_send_and_throw_pass_through() -> None:
    b = make()
    seen: list[object] = []

    @b
    def echo() -> Generator[object, object, None]:
        value: object = None
        while True:
            try:
                value = yield value
                seen.append(value)
            except KeyError as exc:
                value = f"caught {exc}"

    it = echo()
    assert next(it) is None
    assert it.send("a") == "a"
    assert it.send(2) == 2
    assert it.throw(KeyError("k")) == "caught 'k'"
    assert it.send(None) is None
    assert seen == ["a", 2, None]
    assert counts(b) == (0, 0, 0)
    with pytest.raises(Boom):
        it.throw(Boom("not caught"))  # escapes the generator: a failure
    assert counts(b) == (1, 1, 0)


def test_another_breakers_open_error_while_iterating_is_not_recorded() -> None:
    clock = ManualClock()
    b = make(clock)
    other = half_open(ManualClock())
    other.force_open()

    @b
    def gen() -> Iterator[str]:
        yield other.call(ok)

    with pytest.raises(CircuitOpenError):
        list(gen())
    assert counts(b) == (0, 0, 0)


def test_a_cancellation_while_iterating_records_nothing_and_frees_the_trial_slot() -> None:
    clock = ManualClock()
    b = half_open(clock)

    @b
    def gen() -> Generator[int, None, None]:
        yield 1
        raise KeyboardInterrupt

    it = gen()
    next(it)
    assert in_thread(lambda: b.call(ok)) != []  # the trial holds the only slot
    with pytest.raises(KeyboardInterrupt):
        next(it)
    assert b.state is HALF_OPEN
    assert b.snapshot().trials_in_flight == 0
    assert b.call(ok) == "ok"
    assert b.state is CLOSED


def test_a_generator_trial_holds_its_slot_until_the_iteration_ends() -> None:
    clock = ManualClock()
    b = half_open(clock)

    @b
    def gen() -> Generator[int, None, None]:
        yield 1
        yield 2

    it = gen()
    assert next(it) == 1
    (refused,) = in_thread(lambda: b.call(ok))
    assert isinstance(refused, CircuitOpenError)
    assert refused.state is HALF_OPEN
    assert list(it) == [2]
    assert b.state is CLOSED


def test_a_generators_duration_is_its_own_time_not_the_consumers() -> None:
    clock = ManualClock()
    calls: list[CallInfo] = []

    def classify(info: CallInfo) -> Verdict | None:
        calls.append(info)
        return None

    b = make(clock, slow_call_duration=1.0, classify=classify)

    @b
    def gen() -> Generator[int, None, None]:
        clock.advance(0.25)
        yield 1
        clock.advance(0.5)
        yield 2

    for _ in gen():
        clock.advance(100.0)  # the consumer's own time
    assert [info.duration for info in calls] == [0.75]
    assert counts(b) == (1, 0, 0)  # not slow


def test_classify_decides_a_generators_outcome() -> None:
    def classify(info: CallInfo) -> Verdict | None:
        if isinstance(info.error, KeyError):
            return Verdict.IGNORE
        return Verdict.FAILURE if info.error is None else None

    b = make(classify=classify)

    @b
    def gen(error: Exception | None) -> Iterator[int]:
        yield 1
        if error is not None:
            raise error

    assert list(gen(None)) == [1]  # exhausted, but classify says failure
    with pytest.raises(KeyError):
        list(gen(KeyError("x")))  # ignored
    assert counts(b) == (1, 1, 0)


# -- async generator functions ---------------------------------------------------------------


def test_a_decorated_async_generator_function_is_still_one() -> None:
    b = make()

    async def numbers(n: int) -> AsyncIterator[int]:
        """Count to n."""
        for i in range(n):
            yield i

    decorated = b(numbers)
    assert inspect.isasyncgenfunction(decorated)
    assert not inspect.iscoroutinefunction(decorated)
    assert decorated.__name__ == "numbers"
    assert decorated.__doc__ == "Count to n."


@pytest.mark.anyio
async def test_async_generator_exhaustion_error_and_aclose() -> None:
    b = make()

    @b
    async def gen(fail: bool) -> AsyncGenerator[int, None]:
        yield 1
        await anyio.sleep(0)
        yield 2
        if fail:
            raise Boom("mid-stream")

    created = gen(False)
    assert counts(b) == (0, 0, 0)
    assert [x async for x in created] == [1, 2]
    assert counts(b) == (1, 0, 0)
    with pytest.raises(Boom):
        async for _ in gen(True):
            pass
    assert counts(b) == (2, 1, 0)
    it = gen(True)
    assert await it.__anext__() == 1
    await it.aclose()
    assert counts(b) == (3, 1, 0)


@pytest.mark.anyio
async def test_async_generator_asend_and_athrow_pass_through() -> None:
    b = make()
    seen: list[object] = []

    @b
    async def echo() -> AsyncGenerator[object, object]:
        value: object = None
        while True:
            try:
                value = yield value
                await anyio.sleep(0)
                seen.append(value)
            except KeyError as exc:
                value = f"caught {exc}"

    it = echo()
    assert await it.asend(None) is None
    assert await it.asend("a") == "a"
    assert await it.athrow(KeyError("k")) == "caught 'k'"
    assert await it.asend(3) == 3
    assert seen == ["a", 3]
    with pytest.raises(Boom):
        await it.athrow(Boom("not caught"))
    assert counts(b) == (1, 1, 0)


@pytest.mark.anyio
async def test_async_generator_rejected_at_the_first_step() -> None:
    clock = ManualClock()
    b = make(clock, consecutive_failures=1, open_duration=10.0)

    @b
    async def gen() -> AsyncGenerator[int, None]:
        yield 1

    with pytest.raises(Boom):
        b.call(boom)
    it = gen()
    with pytest.raises(CircuitOpenError):
        await it.__anext__()
    with pytest.raises(StopAsyncIteration):
        await it.__anext__()


def test_async_generator_cancelled_records_nothing_and_frees_the_trial_slot() -> None:
    clock = ManualClock()
    b = half_open(clock)

    @b
    async def gen() -> AsyncGenerator[int, None]:
        yield 1
        await asyncio.Event().wait()
        yield 2  # pragma: no cover - cancelled before

    async def main() -> None:
        it = gen()
        assert await it.__anext__() == 1
        task = asyncio.ensure_future(it.__anext__())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert b.state is HALF_OPEN
        assert b.snapshot().trials_in_flight == 0
        await it.aclose()

    asyncio.run(main())
    assert b.call(ok) == "ok"
    assert b.state is CLOSED


@pytest.mark.anyio
async def test_async_generator_duration_is_its_own_time() -> None:
    clock = ManualClock()
    durations: list[float] = []

    def classify(info: CallInfo) -> Verdict | None:
        durations.append(info.duration)
        return None

    b = make(clock, classify=classify)

    @b
    async def gen() -> AsyncGenerator[int, None]:
        clock.advance(0.5)
        yield 1

    async for _ in gen():
        clock.advance(60.0)
    assert durations == [0.5]


# -- with breaker: / async with breaker: -----------------------------------------------------


def test_with_block_outcomes() -> None:
    clock = ManualClock()
    b = make(clock)
    with b as entered:
        assert entered is b
    assert counts(b) == (1, 0, 0)
    with pytest.raises(Boom), b:
        boom()
    assert counts(b) == (2, 1, 0)
    with pytest.raises(KeyboardInterrupt), b:
        raise KeyboardInterrupt
    assert counts(b) == (2, 1, 0)


def test_with_block_is_refused_while_open() -> None:
    clock = ManualClock()
    b = make(clock, consecutive_failures=1, open_duration=10.0)
    with pytest.raises(Boom):
        b.call(boom)
    ran = []
    with pytest.raises(CircuitOpenError) as info, b:
        ran.append(True)  # pragma: no cover - refused
    assert ran == []
    assert info.value.state is OPEN
    assert info.value.retry_after == 10.0
    # refused: nothing was pushed, so the next block in this thread is a call of its own
    clock.advance(10.0)
    with b:
        pass
    assert b.state is CLOSED


def test_with_block_trial_failure_reopens() -> None:
    clock = ManualClock()
    b = half_open(clock)
    with pytest.raises(Boom), b:
        boom()
    assert b.state is OPEN


def test_a_cancelled_with_block_gives_the_trial_slot_back() -> None:
    clock = ManualClock()
    b = half_open(clock)
    with pytest.raises(KeyboardInterrupt), b:
        raise KeyboardInterrupt
    assert b.state is HALF_OPEN
    assert b.snapshot().trials_in_flight == 0


def test_with_block_duration_and_classify() -> None:
    clock = ManualClock()
    infos: list[CallInfo] = []

    def classify(info: CallInfo) -> Verdict | None:
        infos.append(info)
        return Verdict.IGNORE if isinstance(info.error, KeyError) else None

    b = make(clock, slow_call_duration=1.0, classify=classify)
    with b:
        clock.advance(2.0)
    with pytest.raises(KeyError), b:
        raise KeyError("x")
    assert [(i.duration, type(i.error)) for i in infos] == [(2.0, type(None)), (0.0, KeyError)]
    assert counts(b) == (1, 0, 1)


def test_nested_with_blocks_are_one_call() -> None:
    b = make()
    with b:
        with b:
            pass
        with pytest.raises(Boom), b:
            boom()
    # the outer block left normally: the inner failure was part of it
    assert counts(b) == (1, 0, 0)
    with pytest.raises(Boom), b, b:
        boom()
    assert counts(b) == (2, 1, 0)


def test_exit_without_enter_is_an_error() -> None:
    b = make()
    with pytest.raises(RuntimeError, match="not entered"):
        b.__exit__(None, None, None)
    b.__enter__()
    in_thread_errors = in_thread(lambda: b.__exit__(None, None, None))
    assert [type(e) for e in in_thread_errors] == [RuntimeError]  # entered in this thread only
    b.__exit__(None, None, None)
    assert counts(b) == (1, 0, 0)


def test_with_blocks_in_many_threads_keep_their_own_permits() -> None:
    # Eight trials in flight at once, each settled by its own thread: all eight
    # successes must count (a permit kept on the breaker object would settle
    # one trial eight times).
    clock = ManualClock()
    b = half_open(clock, half_open_max_calls=8, success_threshold=8)
    inside = threading.Barrier(8, timeout=JOIN)
    errors: list[BaseException] = []

    def block() -> None:
        with b:
            inside.wait()

    threads = [threading.Thread(target=lambda: errors.extend(in_thread(block))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN)
    assert errors == []
    assert b.state is CLOSED


@pytest.mark.anyio
async def test_async_with_blocks_in_interleaved_tasks_keep_their_own_permits() -> None:
    clock = ManualClock()
    b = half_open(clock, half_open_max_calls=2, success_threshold=2)
    a_entered, b_entered, a_left = anyio.Event(), anyio.Event(), anyio.Event()
    changes: list[StateChange] = []

    async def first() -> None:
        async with b:
            a_entered.set()
            await b_entered.wait()
        a_left.set()

    async def second() -> None:
        await a_entered.wait()
        async with b:
            b_entered.set()
            await a_left.wait()
            assert b.state is HALF_OPEN  # one of the two trials has succeeded
            changes.extend([])

    with anyio.fail_after(JOIN):
        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            tg.start_soon(second)
    assert b.state is CLOSED


@pytest.mark.anyio
async def test_async_with_outcomes() -> None:
    b = make()
    async with b:
        await anyio.sleep(0)
    with pytest.raises(Boom):
        async with b:
            boom()
    assert counts(b) == (2, 1, 0)


def test_async_with_cancelled_records_nothing() -> None:
    clock = ManualClock()
    b = half_open(clock)

    async def main() -> None:
        started = asyncio.Event()

        async def block() -> None:
            async with b:
                started.set()
                await asyncio.Event().wait()

        task = asyncio.ensure_future(block())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert b.state is HALF_OPEN
    assert b.snapshot().trials_in_flight == 0


def test_with_block_in_a_generator_closed_by_the_collector_is_a_success() -> None:
    b = make()

    def gen() -> Generator[int, None, None]:
        with b:
            yield 1

    it = gen()
    next(it)
    del it
    gc.collect()
    assert counts(b) == (1, 0, 0)


def test_a_generator_closed_while_this_thread_holds_the_lock_does_not_deadlock() -> None:
    # What the garbage collector does when it runs inside a locked section:
    # the generator's outcome must be deferred, not wait for the lock.
    b = make()

    @b
    def gen() -> Generator[int, None, None]:
        yield 1

    it = gen()
    next(it)
    assert counts(b) == (0, 0, 0)
    b._lock.acquire()
    try:
        it.close()
    finally:
        b._lock.release()
    assert counts(b) == (1, 0, 0)


# -- re-entrancy: a call inside a call through the same breaker --------------------------------


def test_a_decorated_function_calling_another_is_one_call() -> None:
    b = make()

    @b
    def inner() -> str:
        return "inner"

    @b
    def outer() -> str:
        return inner() + b.call(inner)

    assert outer() == "innerinner"
    assert counts(b) == (1, 0, 0)
    assert b.call(outer) == "innerinner"
    assert counts(b) == (2, 0, 0)


def test_an_inner_failure_is_recorded_once() -> None:
    b = make(consecutive_failures=2)

    @b
    def inner() -> None:
        boom()

    with pytest.raises(Boom):
        b.call(inner)
    assert counts(b) == (1, 1, 0)
    assert b.state is CLOSED
    assert b.snapshot().consecutive_failures == 1


def test_an_inner_call_of_a_half_open_trial_is_not_refused() -> None:
    clock = ManualClock()
    b = half_open(clock)

    @b
    def inner() -> str:
        return "inner"

    @b
    def trial() -> str:
        with b:
            return inner()

    assert trial() == "inner"
    assert b.state is CLOSED


def test_calls_from_other_threads_are_not_part_of_the_call() -> None:
    clock = ManualClock()
    b = half_open(clock)
    refused: list[BaseException] = []

    def trial() -> str:
        refused.extend(in_thread(lambda: b.call(ok)))
        return "trial"

    assert b.call(trial) == "trial"
    assert [type(e) for e in refused] == [CircuitOpenError]


def test_calls_through_another_breaker_are_their_own() -> None:
    a, b = make(), make()
    assert a.call(lambda: b.call(lambda: a.call(ok))) == "ok"
    assert counts(a) == (1, 0, 0)
    assert counts(b) == (1, 0, 0)


def test_a_generator_is_running_only_inside_its_steps() -> None:
    b = make()

    @b
    def gen() -> Iterator[str]:
        yield b.call(ok)  # inside a step: part of the iteration
        yield "second"

    it = gen()
    assert next(it) == "ok"
    assert b.call(ok) == "ok"  # between steps: a call of its own
    assert counts(b) == (1, 0, 0)
    assert list(it) == ["second"]
    assert counts(b) == (2, 0, 0)


def test_a_generator_iterated_inside_a_call_is_part_of_it() -> None:
    b = make()

    @b
    def gen() -> Generator[int, None, None]:
        yield 1
        yield 2

    assert b.call(lambda: list(gen())) == [1, 2]
    assert counts(b) == (1, 0, 0)


def test_the_low_level_protocol_is_not_part_of_a_running_call() -> None:
    # The HTTP integrations settle each request on its own, even inside a call.
    b = make()

    def fn() -> None:
        b.record(b.acquire(), True)

    b.call(fn)
    assert counts(b) == (2, 1, 0)


@pytest.mark.anyio
async def test_async_calls_inside_an_async_call_are_one_call() -> None:
    b = make()

    @b
    async def inner() -> str:
        await anyio.sleep(0)
        return "inner"

    @b
    async def outer() -> str:
        sync = b.call(ok)
        async with b:
            return sync + await inner() + await b.call_async(inner)

    assert await outer() == "okinnerinner"
    assert counts(b) == (1, 0, 0)


@pytest.mark.anyio
async def test_calls_from_other_tasks_are_not_part_of_the_call() -> None:
    clock = ManualClock()
    b = half_open(clock)
    trial_running, done = anyio.Event(), anyio.Event()
    refused: list[CircuitOpenError] = []

    async def trial() -> None:
        trial_running.set()
        await done.wait()

    async def other() -> None:
        await trial_running.wait()
        try:
            await b.call_async(anyio.sleep, 0)
        except CircuitOpenError as exc:
            refused.append(exc)
        done.set()

    with anyio.fail_after(JOIN):
        async with anyio.create_task_group() as tg:
            tg.start_soon(b.call_async, trial)
            tg.start_soon(other)
    assert len(refused) == 1
    assert b.state is CLOSED


# -- what cannot be called records nothing ---------------------------------------------------


@pytest.mark.parametrize("thing", [5, None, "fn", object()])
def test_decorating_something_not_callable_is_a_type_error(thing: object) -> None:
    with pytest.raises(TypeError, match="callable"):
        make()(thing)  # type: ignore[type-var]


def test_call_of_something_not_callable_records_nothing() -> None:
    clock = ManualClock()
    b = half_open(clock)
    with pytest.raises(TypeError):
        b.call(5)  # type: ignore[arg-type]
    assert b.state is HALF_OPEN
    assert b.snapshot().trials_in_flight == 0
    assert counts(make()) == (0, 0, 0)


def test_call_async_of_something_returning_no_awaitable_records_nothing() -> None:
    clock = ManualClock()
    b = half_open(clock)

    def sync() -> int:
        return 5

    async def main() -> None:
        with pytest.raises(TypeError, match="awaitable"):
            await b.call_async(sync)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="callable"):
            await b.call_async(5)  # type: ignore[arg-type]

    asyncio.run(main())
    assert b.state is HALF_OPEN
    assert b.snapshot().trials_in_flight == 0  # the permit was given back
    assert b.call(ok) == "ok"
    assert b.state is CLOSED


def test_call_async_of_a_sync_function_returning_an_awaitable_works() -> None:
    b = make()

    async def coro() -> str:
        return "ok"

    def factory() -> Any:
        return coro()

    assert asyncio.run(b.call_async(factory)) == "ok"
    assert counts(b) == (1, 0, 0)


# -- a clock that fails ----------------------------------------------------------------------


class FlakyClock:
    """A clock whose readings can be made to raise or to be any float."""

    def __init__(self) -> None:
        self.now = 0.0
        self.bad: float | Exception | None = None
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        bad = self.bad
        if isinstance(bad, Exception):
            raise bad
        return self.now if bad is None else bad


BAD_READINGS: list[float | Exception] = [
    math.nan,
    math.inf,
    RuntimeError("clock broke"),
    "noon",  # type: ignore[list-item]  # a reading that is no number at all
]


def flaky(clock: FlakyClock, **config: Any) -> CircuitBreaker:
    config.setdefault("consecutive_failures", 1)
    config.setdefault("failure_rate", None)
    config.setdefault("open_duration", 10.0)
    return CircuitBreaker("svc", BreakerConfig(**config), clock=clock)


@pytest.mark.parametrize("bad", BAD_READINGS, ids=repr)
@pytest.mark.parametrize("timed", [False, True])
def test_a_failing_clock_never_costs_the_result(
    bad: float | Exception, timed: bool, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FlakyClock()
    b = flaky(clock, slow_call_duration=1.0 if timed else None)
    assert b.call(ok) == "ok"  # a good reading first: the fast path is set up
    clock.bad = bad
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert b.call(ok) == "ok"
        assert b.call(lambda: "again") == "again"
        with pytest.raises(Boom):
            b.call(boom)  # not recorded either: it would have tripped
        b.record(b.acquire(), True)
        b.record_later(b.acquire())
    warnings = [r for r in caplog.records if "clock" in r.getMessage()]
    assert len(warnings) == 1  # once per breaker
    assert warnings[0].levelno == logging.WARNING
    clock.bad = None
    assert b.state is CLOSED
    calls = b.snapshot().calls
    assert calls in (1, 2)  # the first call, and the deferred one filed once the clock is back
    assert b.call(ok) == "ok"
    assert b.snapshot().calls == calls + 1


@pytest.mark.parametrize("bad", BAD_READINGS, ids=repr)
def test_a_failing_clock_from_the_start(bad: float | Exception) -> None:
    clock = FlakyClock()
    clock.bad = bad
    b = flaky(clock)
    assert b.call(ok) == "ok"
    with pytest.raises(Boom):
        b.call(boom)
    clock.bad = None
    assert counts(b) == (0, 0, 0)


@pytest.mark.parametrize("bad", BAD_READINGS, ids=repr)
def test_a_failing_clock_gives_a_trial_slot_back(bad: float | Exception) -> None:
    clock = FlakyClock()
    b = flaky(clock)
    with pytest.raises(Boom):
        b.call(boom)
    clock.now = 10.0

    def trial() -> str:
        clock.bad = bad
        return "trial"

    assert b.call(trial) == "trial"
    clock.bad = None
    assert b.state is HALF_OPEN  # undecided
    assert b.snapshot().trials_in_flight == 0
    assert b.call(ok) == "ok"
    assert b.state is CLOSED


@pytest.mark.parametrize("bad", BAD_READINGS, ids=repr)
def test_a_failing_clock_refuses_to_decide_admission_while_open(bad: float | Exception) -> None:
    clock = FlakyClock()
    b = flaky(clock)
    with pytest.raises(Boom):
        b.call(boom)
    clock.now = 10.0
    clock.bad = bad
    ran: list[bool] = []
    # call()'s inlined rejection compares the reading unguarded (a guard
    # would cost every rejection): one that is no number is a TypeError there.
    with pytest.raises(TypeError if isinstance(bad, str) else (ValueError, RuntimeError)):
        b.call(lambda: ran.append(True))
    with pytest.raises((ValueError, RuntimeError)):
        b.acquire()
    with pytest.raises((ValueError, RuntimeError)):
        _ = b.state
    assert ran == []
    clock.bad = None
    assert b.state is HALF_OPEN
    assert b.snapshot().trials_in_flight == 0


@pytest.mark.parametrize("bad", BAD_READINGS, ids=repr)
def test_a_failing_clock_never_stops_a_forced_open_breaker_refusing(bad: float | Exception) -> None:
    clock = FlakyClock()
    b = flaky(clock)
    b.force_open()
    clock.bad = bad
    ran: list[bool] = []
    with pytest.raises(CircuitOpenError) as refused:
        b.call(lambda: ran.append(True))
    assert refused.value.state is CircuitState.FORCED_OPEN
    with pytest.raises(CircuitOpenError):
        b.acquire()  # the integrations' way in
    assert ran == []


def test_a_clock_that_fails_only_when_timing_the_start() -> None:
    clock = FlakyClock()
    infos: list[CallInfo] = []

    def classify(info: CallInfo) -> Verdict | None:
        infos.append(info)
        return None

    b = flaky(clock, classify=classify)

    def fn() -> str:
        clock.bad = None  # the start was read with the clock broken
        return "ok"

    clock.bad = RuntimeError("start")
    assert b.call(fn) == "ok"
    assert [info.duration for info in infos] == [0.0]  # unknown
    assert counts(b) == (1, 0, 0)


@pytest.mark.parametrize("bad", BAD_READINGS, ids=repr)
def test_call_async_keeps_its_result_when_the_clock_fails(bad: float | Exception) -> None:
    clock = FlakyClock()
    b = flaky(clock, slow_call_duration=1.0)

    async def fn() -> str:
        clock.bad = bad
        return "ok"

    assert asyncio.run(b.call_async(fn)) == "ok"
    clock.bad = None
    assert counts(b) == (0, 0, 0)


@pytest.mark.parametrize("bad", BAD_READINGS, ids=repr)
def test_generators_and_blocks_keep_their_outcome_when_the_clock_fails(
    bad: float | Exception,
) -> None:
    clock = FlakyClock()
    b = flaky(clock, slow_call_duration=1.0)

    @b
    def gen() -> Generator[int, None, None]:
        clock.bad = bad
        yield 1

    assert list(gen()) == [1]
    clock.bad = None
    with b:
        clock.bad = bad
    clock.bad = None
    assert counts(b) == (0, 0, 0)
    assert b.state is CLOSED
