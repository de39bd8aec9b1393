"""Cancellation (asyncio, trio, anyio) and concurrent half-open trials (threads, tasks).

Every test runs with httpx and with httpx2 (the ``flavour`` fixture of ``conftest.py``),
and each async one under asyncio and trio, over ``MockTransport``. Threads and tasks meet
on events and conditions, never on sleeps.
"""

from __future__ import annotations

import asyncio
import threading

import anyio
import pytest
from hx_support import (
    CLOSED,
    COUNT_ONLY,
    HALF_OPEN,
    Flavour,
    Upstream,
    async_open_then_half_open,
    chunks,
    make_async_client,
    make_client,
    open_then_half_open,
    snap,
)

from circuitbreaker_http import (
    BreakerConfig,
    CircuitOpenError,
)
from circuitbreaker_http.testing import ManualClock

# -- cancellation records nothing ------------------------------------------------------------


@pytest.mark.anyio
async def test_cancelled_while_awaiting_headers_records_nothing_and_frees_the_slot(
    flavour: Flavour,
) -> None:
    hx = flavour.hx
    clock = ManualClock()
    entered = anyio.Event()

    async def handler(request: hx.Request) -> hx.Response:
        if request.url.path == "/status/500":
            return hx.Response(500)
        if request.url.path == "/hang":
            entered.set()
            await anyio.sleep_forever()
        return hx.Response(200)

    client, registry = make_async_client(flavour, handler, clock=clock)
    async with client:
        await async_open_then_half_open(client, clock, registry)
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.get, "/hang")
            await entered.wait()
            assert snap(registry).trials_in_flight == 1
            tg.cancel_scope.cancel()
        s = snap(registry)
        # neither a failed trial (open again) nor a successful one (closed)
        assert (s.state, s.trials_in_flight, s.open_count) == (HALF_OPEN, 0, 1)
        response = await client.get("/ok")
        assert response.extensions["circuit_breaker"]["state"] == "half_open"
    assert snap(registry).state is CLOSED


@pytest.mark.anyio
async def test_cancelled_while_reading_the_body_records_nothing_and_frees_the_slot(
    flavour: Flavour,
) -> None:
    hx = flavour.hx
    clock = ManualClock()
    upstream = Upstream(hx)
    client, registry = make_async_client(flavour, upstream, clock=clock)
    async with client:
        await async_open_then_half_open(client, clock, registry)
        stream = upstream.next_stream = chunks(hx, count=3, block_at=1)
        stream.reached, stream.release = anyio.Event(), anyio.Event()

        async def read() -> None:
            async with client.stream("GET", "/stream") as response:
                await response.aread()

        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            await stream.reached.wait()
            tg.cancel_scope.cancel()
        s = snap(registry)
        # neither a failed trial (open again) nor a successful one (closed)
        assert (s.state, s.trials_in_flight, s.open_count) == (HALF_OPEN, 0, 1)
        assert stream.closed
        assert (await client.get("/")).status_code == 200
    assert snap(registry).state is CLOSED


@pytest.mark.anyio
async def test_closed_state_cancellation_records_nothing(flavour: Flavour) -> None:
    hx = flavour.hx
    upstream = Upstream(hx)
    client, registry = make_async_client(flavour, upstream, COUNT_ONLY)
    async with client:
        stream = upstream.next_stream = chunks(hx, count=3, block_at=1)
        stream.reached, stream.release = anyio.Event(), anyio.Event()
        with anyio.CancelScope() as scope:
            async with client.stream("GET", "/stream") as response:
                async for _ in response.aiter_raw():
                    scope.cancel()
        assert scope.cancelled_caught
        assert snap(registry).calls == 0


@pytest.mark.anyio
@pytest.mark.parametrize("where", ["headers", "body"])
async def test_anyio_fail_after_records_nothing(flavour: Flavour, where: str) -> None:
    hx = flavour.hx
    clock = ManualClock()
    upstream = Upstream(hx)

    async def handler(request: hx.Request) -> hx.Response:
        if request.url.path == "/hang":
            await anyio.sleep_forever()
        return upstream(request)

    client, registry = make_async_client(flavour, handler, clock=clock)
    async with client:
        await async_open_then_half_open(client, clock, registry)
        stream = upstream.next_stream = chunks(hx, count=3, block_at=0)
        stream.reached, stream.release = anyio.Event(), anyio.Event()
        path = "/hang" if where == "headers" else "/stream"
        with pytest.raises(TimeoutError):
            with anyio.fail_after(0.05):
                await client.get(path)
        s = snap(registry)
        # neither a failed trial (open again) nor a successful one (closed)
        assert (s.state, s.trials_in_flight, s.open_count) == (HALF_OPEN, 0, 1)
        assert (await client.get("/")).extensions["circuit_breaker"]["state"] == "half_open"
    assert snap(registry).state is CLOSED


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_asyncio_task_cancel_and_wait_for_record_nothing(flavour: Flavour) -> None:
    hx = flavour.hx
    clock = ManualClock()
    entered = asyncio.Event()

    async def handler(request: hx.Request) -> hx.Response:
        if request.url.path == "/status/500":
            return hx.Response(500)
        if request.url.path == "/hang":
            entered.set()
            await asyncio.Event().wait()
        return hx.Response(200)

    client, registry = make_async_client(flavour, handler, clock=clock)
    async with client:
        await async_open_then_half_open(client, clock, registry)
        task = asyncio.ensure_future(client.get("/hang"))
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        s = snap(registry)
        # neither a failed trial (open again) nor a successful one (closed)
        assert (s.state, s.trials_in_flight, s.open_count) == (HALF_OPEN, 0, 1)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.get("/hang"), 0.05)
        assert snap(registry).trials_in_flight == 0
        assert (await client.get("/")).status_code == 200
    assert snap(registry).state is CLOSED


@pytest.mark.parametrize("anyio_backend", ["trio"])
@pytest.mark.anyio
async def test_trio_cancel_scope_records_nothing(flavour: Flavour) -> None:
    import trio

    hx = flavour.hx

    clock = ManualClock()
    upstream = Upstream(hx)
    client, registry = make_async_client(flavour, upstream, clock=clock)
    async with client:
        await async_open_then_half_open(client, clock, registry)
        stream = upstream.next_stream = chunks(hx, count=3, block_at=1)
        stream.reached, stream.release = anyio.Event(), anyio.Event()
        with trio.CancelScope() as scope:
            async with client.stream("GET", "/stream") as response:
                async for _ in response.aiter_raw():
                    scope.cancel()
        assert scope.cancelled_caught
        s = snap(registry)
        # neither a failed trial (open again) nor a successful one (closed)
        assert (s.state, s.trials_in_flight, s.open_count) == (HALF_OPEN, 0, 1)
        assert (await client.get("/")).status_code == 200
    assert snap(registry).state is CLOSED


# -- concurrent trials ------------------------------------------------------------------------


def test_concurrent_trials_from_threads_never_exceed_half_open_max_calls(flavour: Flavour) -> None:
    hx = flavour.hx
    clock = ManualClock()
    cond = threading.Condition()
    release = threading.Event()
    inside = max_inside = rejected = 0
    config = BreakerConfig(
        consecutive_failures=1,
        failure_rate=None,
        open_duration=10.0,
        half_open_max_calls=3,
        success_threshold=3,
    )

    def handler(request: hx.Request) -> hx.Response:
        nonlocal inside, max_inside
        if request.url.path == "/status/500":
            return hx.Response(500)
        with cond:
            inside += 1
            max_inside = max(max_inside, inside)
            cond.notify_all()
        release.wait(10)
        with cond:
            inside -= 1
        return hx.Response(200)

    client, registry = make_client(flavour, handler, config, clock)
    threads_n = 24
    barrier = threading.Barrier(threads_n)

    def worker() -> None:
        nonlocal rejected
        barrier.wait()
        try:
            client.get("/trial")
        except CircuitOpenError as exc:
            assert exc.state is HALF_OPEN and exc.retry_after is None
            with cond:
                rejected += 1
                cond.notify_all()

    with client:
        open_then_half_open(client, clock, registry)
        threads = [threading.Thread(target=worker) for _ in range(threads_n)]
        for thread in threads:
            thread.start()
        try:
            with cond:
                met = cond.wait_for(lambda: inside + rejected == threads_n, timeout=10)
                assert met, (inside, rejected)
                assert (inside, rejected) == (3, threads_n - 3)
        finally:
            release.set()
            for thread in threads:
                thread.join(10)
    assert max_inside == 3
    assert snap(registry).state is CLOSED


@pytest.mark.anyio
async def test_concurrent_trials_from_tasks_never_exceed_half_open_max_calls(
    flavour: Flavour,
) -> None:
    hx = flavour.hx
    clock = ManualClock()
    inside = max_inside = arrived = rejected = 0
    tasks_n = 30
    everyone = anyio.Event()
    release = anyio.Event()
    config = BreakerConfig(
        consecutive_failures=1,
        failure_rate=None,
        open_duration=10.0,
        half_open_max_calls=4,
        success_threshold=10,
    )

    def arrive() -> None:
        nonlocal arrived
        arrived += 1
        if arrived == tasks_n:
            everyone.set()

    async def handler(request: hx.Request) -> hx.Response:
        nonlocal inside, max_inside
        if request.url.path == "/status/500":
            return hx.Response(500)
        inside += 1
        max_inside = max(max_inside, inside)
        arrive()
        await release.wait()
        inside -= 1
        return hx.Response(200)

    async def worker() -> None:
        nonlocal rejected
        try:
            await client.get("/trial")
        except CircuitOpenError as exc:
            assert exc.state is HALF_OPEN
            rejected += 1
            arrive()

    client, registry = make_async_client(flavour, handler, config, clock)
    async with client:
        await async_open_then_half_open(client, clock, registry)
        async with anyio.create_task_group() as tg:
            for _ in range(tasks_n):
                tg.start_soon(worker)
            await everyone.wait()
            assert (inside, rejected) == (4, tasks_n - 4)
            release.set()
    assert max_inside == 4
    s = snap(registry)
    assert (s.state, s.trials_in_flight) == (HALF_OPEN, 0)  # 4 successes of the 10 needed
