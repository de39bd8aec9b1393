"""A Redis storage's ``stats()`` and the storage metrics the Prometheus collector exports."""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Callable

import pytest

from circuitbreaker_http import BreakerConfig, BreakerRegistry
from circuitbreaker_http.redis import RedisStorage

from .conftest import redis, redis_client


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


def fail_once(registry: BreakerRegistry) -> None:
    breaker = registry.get("http://api.test")
    permit = breaker.acquire()
    breaker.record(permit, True, None, None, 503)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_stats_count_rounds_and_their_durations(redis_prefix: str) -> None:
    client = redis_client()
    storage = RedisStorage(client, prefix=redis_prefix, sync_interval=0.01)
    try:
        registry = BreakerRegistry(BreakerConfig(consecutive_failures=None), storage=storage)
        assert storage.stats()["rounds"] == 0
        fail_once(registry)
        wait_until(lambda: storage.stats()["rounds"] >= 1)
        stats = storage.stats()
        assert stats["up"] is True
        assert stats["errors"] == 0
        buckets = stats["sync_buckets"]
        assert isinstance(buckets, list)
        assert buckets[-1][0] == math.inf
        counts = [n for _, n in buckets]
        assert counts == sorted(counts)  # cumulative
        assert counts[-1] == stats["rounds"]
        assert isinstance(stats["sync_sum"], float) and stats["sync_sum"] > 0
    finally:
        storage.close()
        client.close()


def test_stats_say_down_while_redis_is_unreachable() -> None:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis(
        host="127.0.0.1", port=closed_port(), socket_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    storage = RedisStorage(client, prefix="cbh-test-down", sync_interval=0.01)
    try:
        registry = BreakerRegistry(BreakerConfig(consecutive_failures=None), storage=storage)
        fail_once(registry)
        wait_until(lambda: int(storage.stats()["errors"]) >= 1)  # type: ignore[call-overload]
        assert storage.stats()["up"] is False
    finally:
        storage.close()
        client.close()


def test_the_collector_exports_the_storage_metrics(redis_prefix: str) -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    from circuitbreaker_http.prometheus import BreakerCollector

    client = redis_client()
    storage = RedisStorage(client, prefix=redis_prefix, sync_interval=0.01)
    try:
        registry = BreakerRegistry(BreakerConfig(consecutive_failures=None), storage=storage)
        fail_once(registry)
        wait_until(lambda: storage.stats()["rounds"] >= 1)
        exposition = prometheus_client.CollectorRegistry()
        exposition.register(BreakerCollector(registry))
        text = prometheus_client.generate_latest(exposition).decode()
        assert "circuitbreaker_http_storage_up 1.0" in text
        assert "circuitbreaker_http_storage_errors_total 0.0" in text
        assert 'circuitbreaker_http_storage_sync_seconds_bucket{le="+Inf"}' in text
    finally:
        storage.close()
        client.close()
