"""Fixtures for storage tests: a Redis client on 127.0.0.1:6379 with a unique prefix.

``AsyncRedisStorage`` runs on a loop thread of its own here, so the contract
class and the registry tests (sync code) are parametrised over it too.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest

redis = pytest.importorskip("redis")
pytest.importorskip("redis.asyncio")

T = TypeVar("T")


def redis_client() -> Any:
    client = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=1.0)
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip("no Redis server on 127.0.0.1:6379")
    return client


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A prefix no other test uses; its keys are deleted afterwards."""
    prefix = f"cbh-test-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis_client()
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


class LoopThread:
    """An asyncio loop on its own thread, so sync tests can drive an async storage."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5.0)
        self.loop.close()


class Blocking:
    """A sync face on an ``AsyncRedisStorage`` (the contract's calls, run on its loop)."""

    def __init__(self, storage: Any, loop: LoopThread) -> None:
        self.storage = storage
        self._loop = loop
        self.process_id = storage.process_id
        self.min_reporters = storage.min_reporters
        self.sync_interval = storage.sync_interval

    def exchange(self, reports: Any) -> Any:
        return self._loop.run(self.storage.exchange(reports))

    def breakers(self) -> list[str]:
        return self._loop.run(self.storage.breakers())  # type: ignore[no-any-return]


class AsyncRedisFactory:
    """Makes ``AsyncRedisStorage`` objects on one loop thread, and closes them after."""

    def __init__(self) -> None:
        redis_client().close()  # skips without a server
        self.thread = LoopThread()
        self.made: list[Any] = []

    def storage(self, prefix: str, **kwargs: Any) -> Any:
        from circuitbreaker_http.redis import AsyncRedisStorage

        async def make() -> Any:
            client = redis.asyncio.Redis(host="127.0.0.1", port=6379, socket_timeout=1.0)
            return AsyncRedisStorage(client, prefix=prefix, **kwargs)

        storage = self.thread.run(make())
        self.made.append(storage)
        return storage

    def close(self) -> None:
        async def close_all() -> None:
            for storage in self.made:
                await storage.aclose()
                await storage.client.aclose()

        self.thread.run(close_all())
        self.thread.close()
