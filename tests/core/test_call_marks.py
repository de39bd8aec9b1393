"""How a breaker tells that a call runs inside another call through it.

A synchronous call flips a mark that the first synchronous call in a context
left in the breaker's context variable (see ``_breaker``'s docstring); what may
span an ``await`` sets the variable for its duration. These tests pin the
cases where the two meet, where contexts are copied within a thread or to
another one, and the rejections that read the mark without the thread's token.
Queued (deferred) outcomes close the core's success fast path, so that the next
call files them.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
import threading
from collections.abc import Callable, Generator
from typing import Any

import pytest

from circuitbreaker_http import BreakerConfig, CircuitBreaker, CircuitOpenError, CircuitState
from circuitbreaker_http.testing import ManualClock

CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
FORCED_OPEN = CircuitState.FORCED_OPEN
JOIN = 30.0


class Boom(Exception):
    pass


def ok() -> str:
    return "ok"


def boom() -> None:
    raise Boom


# Every test runs twice: untimed, and with a slow-call rule, which takes
# call()'s timed path (its own frame after the mark is read). Set by _timing.
SLOW_AFTER: float | None = None


@pytest.fixture(autouse=True, params=[None, 1000.0], ids=["untimed", "timed"])
def _timing(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "SLOW_AFTER", request.param)


def make(clock: ManualClock | None = None, **config: Any) -> CircuitBreaker:
    config.setdefault("consecutive_failures", None)
    config.setdefault("failure_rate", None)
    config.setdefault("slow_call_duration", SLOW_AFTER)
    return CircuitBreaker("svc", BreakerConfig(**config), clock=clock or ManualClock())


def counts(b: CircuitBreaker) -> tuple[int, int]:
    snap = b.snapshot()
    return snap.calls, snap.failures


def in_thread(fn: Callable[[], object]) -> list[object]:
    """Run ``fn`` in another thread; return what it returned or raised."""
    out: list[object] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(JOIN)
    assert not thread.is_alive()
    return out


def trip(b: CircuitBreaker) -> None:
    """Trip ``b`` from another thread (a failure of the low-level protocol)."""
    assert in_thread(lambda: b.record(b.acquire(), True)) == [None]
    assert b.state is OPEN


# -- sync and async calls inside each other ----------------------------------------------------


def test_async_calls_of_an_event_loop_run_inside_a_call_are_part_of_it() -> None:
    b = make()

    async def inner() -> str:
        return "inner"

    async def main() -> str:
        async with b:
            first = await b.call_async(inner)
        return first + b.call(ok)

    assert b.call(lambda: asyncio.run(main())) == "innerok"
    assert counts(b) == (1, 0)


def test_sync_calls_inside_a_with_block_are_part_of_it() -> None:
    b = make()
    with b:
        assert b.call(ok) == "ok"
        assert b.call(lambda: b.call(ok)) == "ok"
    assert counts(b) == (1, 0)
    assert b.call(ok) == "ok"  # the mark put back after the block is not running
    assert counts(b) == (2, 0)


def test_a_generator_step_driven_inside_a_call_leaves_the_call_marked() -> None:
    b = make()

    @b
    def gen() -> Generator[int, None, None]:
        yield 1
        yield 2

    it = gen()
    assert next(it) == 1  # the iteration is a call of its own, still running

    def fn() -> str:
        assert next(it) == 2
        return b.call(ok)  # still inside fn's call once the step is done

    assert b.call(fn) == "ok"
    assert counts(b) == (1, 0)  # fn's call
    assert list(it) == []
    assert counts(b) == (2, 0)  # and the iteration


def test_a_call_nested_in_an_open_breaker_runs() -> None:
    b = make(consecutive_failures=1, open_duration=10.0)

    def fn() -> str:
        trip(b)  # another thread trips it meanwhile
        return b.call(ok)  # part of the call already running: not refused

    assert b.call(fn) == "ok"
    with pytest.raises(CircuitOpenError):
        b.call(ok)


# -- copied contexts -------------------------------------------------------------------------


def test_a_context_copied_during_a_call_is_part_of_it_only_in_the_same_thread() -> None:
    b = make()
    seen: list[object] = []

    def fn() -> str:
        ctx = contextvars.copy_context()
        seen.extend(in_thread(lambda: ctx.run(b.call, ok)))  # another thread: its own call
        return ctx.run(b.call, ok)  # this thread: part of fn's call

    assert b.call(fn) == "ok"
    assert seen == ["ok"]
    assert counts(b) == (2, 0)


def test_blocks_generators_and_async_calls_in_another_thread_are_their_own() -> None:
    b = make()

    async def inner() -> str:
        return "inner"

    @b
    def gen() -> Generator[int, None, None]:
        yield 1

    def elsewhere() -> str:
        with b:  # not part of the call running in the first thread
            pass
        assert list(gen()) == [1]  # nor this
        return asyncio.run(b.call_async(inner))  # nor this: its task copies ctx

    def fn() -> list[object]:
        ctx = contextvars.copy_context()  # holds this thread's running mark
        return in_thread(lambda: ctx.run(elsewhere))

    assert b.call(fn) == ["inner"]
    assert counts(b) == (4, 0)


def test_another_threads_mark_does_not_stop_a_rejection() -> None:
    b = make(consecutive_failures=1, open_duration=10.0)
    seen: list[object] = []

    def fn() -> str:
        ctx = contextvars.copy_context()  # holds this thread's running mark
        trip(b)
        seen.extend(in_thread(lambda: ctx.run(b.call, ok)))
        return b.call(ok)  # this thread: part of fn's call

    assert b.call(fn) == "ok"
    assert len(seen) == 1
    assert isinstance(seen[0], CircuitOpenError)


def test_a_thread_sharing_a_copied_context_marks_its_own_calls() -> None:
    # Two threads running copies of one context that already holds a mark:
    # each one's calls are its own, and nested calls in each are part of them.
    b = make()
    assert b.call(ok) == "ok"  # this context now holds a mark
    ctx = contextvars.copy_context()
    inside = threading.Event()
    release = threading.Event()

    def slow() -> str:
        inside.set()
        assert release.wait(JOIN)
        return b.call(ok)  # nested in the other thread's call

    results: list[object] = []
    thread = threading.Thread(target=lambda: results.append(ctx.run(b.call, slow)))
    thread.start()
    assert inside.wait(JOIN)
    assert ctx.copy().run(b.call, ok) == "ok"  # not part of the other thread's call
    assert b.call(lambda: b.call(ok)) == "ok"
    release.set()
    thread.join(JOIN)
    assert results == ["ok"]
    assert counts(b) == (4, 0)


def test_a_task_created_in_a_call_and_run_after_it_is_its_own() -> None:
    b = make()

    async def inner() -> str:
        return "inner"

    async def main() -> str:
        tasks: list[asyncio.Task[str]] = []

        def fn() -> None:
            tasks.append(asyncio.get_running_loop().create_task(b.call_async(inner)))

        b.call(fn)
        return await tasks[0]  # the call that created it has finished

    assert asyncio.run(main()) == "inner"
    assert counts(b) == (2, 0)


# -- rejections ------------------------------------------------------------------------------


@pytest.mark.parametrize("forced", [False, True])
def test_an_inlined_rejection_is_the_errors_own(forced: bool) -> None:
    clock = ManualClock()
    b = make(clock, consecutive_failures=1, open_duration=10.0)
    b.call(ok)  # the context holds a mark that is not running
    if forced:
        b.force_open()
    else:
        with pytest.raises(Boom):
            b.call(boom)
        clock.advance(4.0)
    with pytest.raises(CircuitOpenError) as caught:
        b.call(ok)
    state, retry_after = (FORCED_OPEN, None) if forced else (OPEN, 6.0)
    last = None if forced else "Boom"
    expected = CircuitOpenError("svc", state, retry_after, last_failure=last)
    assert type(caught.value) is CircuitOpenError
    assert vars(caught.value) == vars(expected)
    assert str(caught.value) == str(expected)


def test_a_rejection_in_a_fresh_context_or_thread() -> None:
    b = make()
    b.force_open()
    with pytest.raises(CircuitOpenError):
        contextvars.Context().run(b.call, ok)
    [raised] = in_thread(lambda: b.call(ok))
    assert isinstance(raised, CircuitOpenError)


# -- queued outcomes and the success fast path -----------------------------------------------


@pytest.mark.parametrize("settle", ["call", "record"])
def test_the_next_success_files_a_queued_outcome(settle: str) -> None:
    b = make()
    b.call(ok)  # the fast path is open
    b.record_later(b.acquire())
    assert len(b._deferred) == 1
    if settle == "call":
        b.call(ok)
    else:
        b.record(b.acquire(), False)
    assert not b._deferred
    assert counts(b) == (3, 0)
    b.call(ok)  # and the fast path is open again
    assert b._core.pending_successes == 1


def test_with_the_lock_taken_a_queued_outcome_waits_for_the_next_bucket() -> None:
    clock = ManualClock()
    b = make(clock, window=10.0)
    b.call(ok)
    b._lock.acquire()  # as when the collector interrupts a holder of the lock
    try:
        b.record_later(b.acquire())
    finally:
        b._lock.release()
    b.call(ok)
    assert len(b._deferred) == 1  # the fast path did not look
    clock.advance(1.0)  # the next bucket
    b.call(ok)
    assert not b._deferred
    assert counts(b) == (4, 0)
