"""``AsyncRedisStorage`` under asyncio: httpx.AsyncClient through the breakers on loopback.

The contract class and the registry tests run on it too (parametrised in
``test_contract.py`` and ``test_fleet_registry.py``); these tests cover what
only an event loop shows: one syncer task per registry, started by the first
breaker created inside a running loop, and ``aclose()`` ending them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import pytest

from circuitbreaker_http import BreakerConfig, BreakerRegistry, CircuitOpenError, CircuitState
from circuitbreaker_http.testing import FlakyServer

from .conftest import redis, redis_client

httpx = pytest.importorskip("httpx")

from circuitbreaker_http.httpx import AsyncCircuitBreakerTransport  # noqa: E402
from circuitbreaker_http.redis import AsyncRedisStorage  # noqa: E402

pytestmark = pytest.mark.anyio

CONFIG = BreakerConfig(
    consecutive_failures=None, minimum_calls=6, failure_rate=0.5, open_duration=30.0
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis.asyncio runs on asyncio alone


@pytest.fixture
def server() -> Any:
    redis_client().close()  # skips without a server
    with FlakyServer() as flaky:
        yield flaky


def sync_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "circuitbreaker_http-sync"]


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not met in time")


def new_client() -> Any:
    return redis.asyncio.Redis(host="127.0.0.1", port=6379, socket_timeout=0.5)


async def test_async_clients_below_minimum_calls_trip_the_fleet(
    server: FlakyServer, redis_prefix: str
) -> None:
    storages = [
        AsyncRedisStorage(new_client(), prefix=redis_prefix, sync_interval=0.02) for _ in range(2)
    ]
    registries = [BreakerRegistry(CONFIG, storage=s) for s in storages]
    clients = [
        httpx.AsyncClient(transport=AsyncCircuitBreakerTransport(registry=r)) for r in registries
    ]
    key = server.url
    try:
        # Several breakers per registry, still one task each.
        for registry in registries:
            for i in range(5):
                registry.get(f"other-{i}")
        assert len(sync_tasks()) == 2
        for client in clients:
            for _ in range(3):  # 3 of 6 calls needed, in each process
                response = await client.get(f"{server.url}/status/503")
                assert response.status_code == 503
        await until(lambda: all(r.get(key).state is CircuitState.OPEN for r in registries))
        before = server.requests
        for client in clients:
            with pytest.raises(CircuitOpenError):
                await client.get(f"{server.url}/status/200")
        assert server.requests == before  # refused locally, nothing reached the upstream
    finally:
        for client in clients:
            await client.aclose()
        for storage in storages:
            await storage.aclose()
            await storage.client.aclose()
    assert sync_tasks() == []


def test_the_task_starts_with_the_first_breaker_in_a_running_loop(
    server: FlakyServer, redis_prefix: str
) -> None:
    # Built outside any loop: nothing can run yet.
    storage = AsyncRedisStorage(new_client(), prefix=redis_prefix, sync_interval=0.02)
    registry = BreakerRegistry(CONFIG, storage=storage)
    peer_storage = AsyncRedisStorage(new_client(), prefix=redis_prefix, sync_interval=0.02)
    peer = BreakerRegistry(CONFIG, storage=peer_storage)

    async def main() -> None:
        assert sync_tasks() == []
        transport = AsyncCircuitBreakerTransport(registry=registry)
        async with httpx.AsyncClient(transport=transport) as client:
            await client.get(f"{server.url}/status/200")  # creates the breaker: task starts
            assert len(sync_tasks()) == 1
            key = server.url
            peer.get(key)  # the peer's breaker, created in the loop too
            assert len(sync_tasks()) == 2
            for _ in range(5):  # with the success: 6 calls, 5 failed, a local trip
                await client.get(f"{server.url}/status/503")
            assert registry.get(key).state is CircuitState.OPEN
            await until(lambda: peer.get(key).state is CircuitState.OPEN)
        for made in (storage, peer_storage):
            await made.aclose()
            await made.client.aclose()
        assert sync_tasks() == []

    asyncio.run(main())


def test_async_with_starts_registries_made_before_the_loop_ran(redis_prefix: str) -> None:
    redis_client().close()  # skips without a server
    storage = AsyncRedisStorage(new_client(), prefix=redis_prefix, sync_interval=0.02)
    registry = BreakerRegistry(CONFIG, storage=storage)
    breaker = registry.get("k")  # no loop: no task yet

    async def main() -> None:
        async with storage:
            assert len(sync_tasks()) == 1
            breaker.record(breaker.acquire(), False)  # an outcome alone wakes nothing
            found: list[list[str]] = []

            async def listed() -> None:
                deadline = time.monotonic() + 5.0
                while time.monotonic() < deadline:
                    found.append(await storage.breakers())
                    if found[-1] == ["k"]:
                        return
                    await asyncio.sleep(0.01)

            await listed()
            assert found[-1] == ["k"]  # the round ran: the key is in Redis
        assert sync_tasks() == []
        await storage.client.aclose()

    asyncio.run(main())


@pytest.mark.parametrize("stubborn_for", [1, None], ids=["once", "always"])
def test_aclose_cancels_again_a_task_that_swallowed_its_cancellation(
    stubborn_for: int | None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # redis.asyncio can swallow a cancellation inside a read (redis/redis-py#2028).
    monkeypatch.setattr("circuitbreaker_http.redis._CLOSE_WAIT", 0.05)
    storage = AsyncRedisStorage(new_client(), prefix="cbh-test-unused", sync_interval=0.02)
    cancels: list[int] = []
    stubborn = [True]

    async def swallowing() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancels.append(1)
                if not stubborn[0] or (stubborn_for is not None and len(cancels) > stubborn_for):
                    raise

    async def main() -> tuple[asyncio.Task[None], int]:
        task = asyncio.create_task(swallowing())
        await asyncio.sleep(0)  # let it start waiting
        storage._listener = task  # as the storage's own pub/sub task
        # Returns, whatever the task does (a bound, so a hang fails the test).
        await asyncio.wait_for(storage.aclose(), 5.0)
        seen = len(cancels)
        stubborn[0] = False  # now let it end, so the loop can close
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await storage.client.aclose()
        return task, seen

    with caplog.at_level("WARNING", logger="circuitbreaker_http"):
        task, seen = asyncio.run(main())
    assert task.cancelled()
    if stubborn_for == 1:
        assert seen == 2  # the second cancellation ended it
        assert "did not stop" not in caplog.text
    else:
        assert seen == 3  # cancelled three times, then given up on
        assert "1 task(s) did not stop when cancelled" in caplog.text
