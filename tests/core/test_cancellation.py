"""A call cancelled by its caller records nothing and gives a half-open trial slot back.

Each scenario runs twice: on a closed breaker that one failure would trip, and on
a half-open breaker that one successful trial would close. A cancellation must do
neither, and the trial it interrupted must free its slot for the next call.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest
import trio

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

VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {},
    "timed": {"slow_call_duration": 0.5},
    "classify": {"classify": "failure"},  # replaced by a recording hook below
}


class Setup:
    """A breaker in the chosen state, plus what a test checks afterwards."""

    def __init__(self, where: str, variant: str) -> None:
        self.where = where
        self.clock = ManualClock()
        self.changes: list[StateChange] = []
        self.classified: list[CallInfo] = []
        config: dict[str, Any] = dict(VARIANTS[variant])
        if "classify" in config:
            config["classify"] = self._classify
        self.breaker = CircuitBreaker(
            "cancel",
            BreakerConfig(
                consecutive_failures=1,
                open_duration=10.0,
                half_open_max_calls=1,
                success_threshold=1,
                **config,
            ),
            clock=self.clock,
            on_state_change=self.changes.append,
        )
        if where == "half_open":
            with pytest.raises(ZeroDivisionError):
                self.breaker.call(lambda: 1 / 0)
            self.clock.advance(10.0)
            assert self.breaker.state is HALF_OPEN
        self.before = self.breaker.snapshot()
        self.changes_before = list(self.changes)
        self.classified_before = list(self.classified)

    def _classify(self, info: CallInfo) -> Verdict | None:
        self.classified.append(info)
        # Errors fail; a cancellation classified by mistake would show here.
        return Verdict.FAILURE if info.error is not None else None

    def check_nothing_recorded(self) -> None:
        b = self.breaker
        snap = b.snapshot()
        expected_state = CLOSED if self.where == "closed" else HALF_OPEN
        assert snap.state is expected_state  # not tripped, not closed, not reopened
        assert (snap.calls, snap.failures, snap.consecutive_failures) == (
            self.before.calls,
            self.before.failures,
            self.before.consecutive_failures,
        )
        assert snap.trials_in_flight == 0  # the slot is back
        assert self.changes == self.changes_before
        assert self.classified == self.classified_before  # a cancellation is not classified

    def check_next_call_passes(self) -> None:
        b = self.breaker
        assert b.call(lambda: "next") == "next"  # in half-open: the next trial
        assert b.state is CLOSED
        if self.where == "half_open":
            assert self.changes[-1].reason == "trials_succeeded"


WHERE = pytest.mark.parametrize("where", ["closed", "half_open"])
VARIANT = pytest.mark.parametrize("variant", list(VARIANTS))


# -- asyncio ---------------------------------------------------------------------------------


@WHERE
@VARIANT
def test_asyncio_task_cancel(where: str, variant: str) -> None:
    setup = Setup(where, variant)

    async def main() -> None:
        started = asyncio.Event()

        async def hang() -> None:
            started.set()
            setup.clock.advance(5.0)  # long enough to be slow, had it finished
            await asyncio.Event().wait()

        task = asyncio.ensure_future(setup.breaker.call_async(hang))
        await started.wait()
        if where == "half_open":
            with pytest.raises(CircuitOpenError):  # the trial holds the only slot
                await setup.breaker.call_async(hang)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    setup.check_nothing_recorded()
    setup.check_next_call_passes()


@WHERE
@VARIANT
def test_asyncio_wait_for_timeout(where: str, variant: str) -> None:
    setup = Setup(where, variant)
    started: list[None] = []

    async def hang() -> None:
        started.append(None)
        await asyncio.Event().wait()

    async def main() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(setup.breaker.call_async(hang), timeout=0.01)

    asyncio.run(main())
    assert started == [None]
    setup.check_nothing_recorded()
    setup.check_next_call_passes()


# -- trio ------------------------------------------------------------------------------------


@WHERE
@VARIANT
def test_trio_cancel_scope(where: str, variant: str) -> None:
    setup = Setup(where, variant)

    async def main() -> None:
        started = trio.Event()
        scope = trio.CancelScope()

        async def hang() -> None:
            started.set()
            await trio.sleep_forever()

        async def runner() -> None:
            with scope:
                await setup.breaker.call_async(hang)
            assert scope.cancelled_caught

        async with trio.open_nursery() as nursery:
            nursery.start_soon(runner)
            await started.wait()
            scope.cancel()

    trio.run(main)
    setup.check_nothing_recorded()
    setup.check_next_call_passes()


# -- anyio timeouts on both backends ---------------------------------------------------------


async def hang_forever(started: list[None]) -> None:
    started.append(None)
    await anyio.sleep_forever()


@pytest.mark.anyio
@WHERE
@VARIANT
@pytest.mark.parametrize("delay", [0.0, 0.01])
async def test_anyio_fail_after(where: str, variant: str, delay: float) -> None:
    setup = Setup(where, variant)
    started: list[None] = []
    with pytest.raises(TimeoutError), anyio.fail_after(delay):
        await setup.breaker.call_async(hang_forever, started)
    assert started == [None]  # fn ran and was cancelled inside
    setup.check_nothing_recorded()
    setup.check_next_call_passes()


@pytest.mark.anyio
@WHERE
@VARIANT
@pytest.mark.parametrize("delay", [0.0, 0.01])
async def test_anyio_move_on_after(where: str, variant: str, delay: float) -> None:
    setup = Setup(where, variant)
    started: list[None] = []
    with anyio.move_on_after(delay) as scope:
        await setup.breaker.call_async(hang_forever, started)
    assert scope.cancelled_caught
    assert started == [None]
    setup.check_nothing_recorded()
    setup.check_next_call_passes()


@pytest.mark.anyio
@WHERE
async def test_anyio_cancel_scope_from_another_task(where: str) -> None:
    setup = Setup(where, "plain")
    started = anyio.Event()

    async def hang() -> None:
        started.set()
        await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:

        async def runner() -> None:
            await setup.breaker.call_async(hang)

        tg.start_soon(runner)
        await started.wait()
        tg.cancel_scope.cancel()
    setup.check_nothing_recorded()
    setup.check_next_call_passes()


# -- KeyboardInterrupt -----------------------------------------------------------------------


@WHERE
@VARIANT
def test_keyboard_interrupt_in_a_sync_fn(where: str, variant: str) -> None:
    setup = Setup(where, variant)

    def interrupted() -> None:
        setup.clock.advance(5.0)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        setup.breaker.call(interrupted)
    setup.check_nothing_recorded()
    setup.check_next_call_passes()


@WHERE
def test_keyboard_interrupt_through_the_decorator(where: str) -> None:
    setup = Setup(where, "plain")

    @setup.breaker
    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted()
    setup.check_nothing_recorded()
    setup.check_next_call_passes()


@WHERE
def test_other_base_exceptions_record_nothing(where: str) -> None:
    setup = Setup(where, "plain")

    def exits() -> None:
        raise SystemExit(3)

    with pytest.raises(SystemExit):
        setup.breaker.call(exits)
    setup.check_nothing_recorded()
    setup.check_next_call_passes()


def test_repeated_cancellations_never_trip_or_leak_slots() -> None:
    setup = Setup("half_open", "plain")

    async def main() -> None:
        for _ in range(20):
            started = asyncio.Event()

            async def hang(event: asyncio.Event = started) -> None:
                event.set()
                await asyncio.Event().wait()

            task = asyncio.ensure_future(setup.breaker.call_async(hang))
            await started.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())
    setup.check_nothing_recorded()
    setup.check_next_call_passes()
