"""Fixtures for storage tests: a Redis client on 127.0.0.1:6379 with a unique prefix."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

redis = pytest.importorskip("redis")


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
