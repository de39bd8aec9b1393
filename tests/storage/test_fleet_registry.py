"""Registries sharing state through a storage, in one process (memory and Redis)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from circuitbreaker_http import BreakerConfig, BreakerRegistry, CircuitOpenError, CircuitState
from circuitbreaker_http.storage import MemoryStorage

from .conftest import AsyncRedisFactory, redis_client

CONFIG = BreakerConfig(
    consecutive_failures=None,
    minimum_calls=6,
    failure_rate=0.5,
    window=10.0,
    open_duration=0.3,
    max_open_duration=2.0,
    half_open_max_calls=1,
)


def poll(check: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.005)
    raise AssertionError("condition not met in time")


@pytest.fixture(params=["memory", "redis", "redis-async"])
def storages(request: pytest.FixtureRequest, redis_prefix: str) -> Iterator[Callable[..., Any]]:
    """Makes storages on one fleet state; for ``redis-async`` the syncer tasks run
    on a loop thread while the tests drive the breakers from this one."""
    made: list[Any] = []
    clients: list[Any] = []
    first: list[MemoryStorage] = []
    factory = AsyncRedisFactory() if request.param == "redis-async" else None

    def make(**kwargs: Any) -> Any:
        kwargs.setdefault("sync_interval", 0.02)
        if factory is not None:
            return factory.storage(redis_prefix, **kwargs)
        if request.param == "memory":
            storage = first[0].peer(**kwargs) if first else MemoryStorage(**kwargs)
            first.append(storage)
        else:
            from circuitbreaker_http.redis import RedisStorage

            client = redis_client()
            clients.append(client)
            storage = RedisStorage(client, prefix=redis_prefix, **kwargs)
        made.append(storage)
        return storage

    make.kind = request.param  # type: ignore[attr-defined]
    yield make
    for storage in made:
        storage.close()
    for client in clients:
        client.close()
    if factory is not None:
        factory.close()


def fail(registry: BreakerRegistry, key: str, n: int) -> None:
    breaker = registry.get(key)
    for _ in range(n):
        breaker.record(breaker.acquire(), True)


def test_windows_below_minimum_calls_trip_the_fleet(storages: Callable[..., Any]) -> None:
    a = BreakerRegistry(CONFIG, storage=storages())
    b = BreakerRegistry(CONFIG, storage=storages())
    fail(a, "k", 3)
    fail(b, "k", 3)  # each alone is below minimum_calls (6)
    assert a.get("k").state is CircuitState.CLOSED
    poll(lambda: a.get("k").state is CircuitState.OPEN and b.get("k").state is CircuitState.OPEN)
    assert a.get("k").snapshot().retry_after is not None


def test_manual_states_reach_every_registry(storages: Callable[..., Any]) -> None:
    a = BreakerRegistry(CONFIG, storage=storages())
    b = BreakerRegistry(CONFIG, storage=storages())
    b.get("k").record(b.get("k").acquire(), False)  # b knows the key
    a.get("k").force_open()
    poll(lambda: b.get("k").state is CircuitState.FORCED_OPEN)
    with pytest.raises(CircuitOpenError):
        b.get("k").acquire()
    b.get("k").reset()
    poll(lambda: a.get("k").state is CircuitState.CLOSED)
    a.get("k").disable()
    poll(lambda: b.get("k").state is CircuitState.DISABLED)


def test_min_reporters_keeps_one_process_trip_local(storages: Callable[..., Any]) -> None:
    config = CONFIG.replace(consecutive_failures=3)
    a = BreakerRegistry(config, storage=storages(min_reporters=2))
    b = BreakerRegistry(config, storage=storages(min_reporters=2))
    b.get("k").record(b.get("k").acquire(), False)
    fail(a, "k", 3)
    assert a.get("k").state is CircuitState.OPEN
    time.sleep(0.15)  # several sync rounds: the fleet must not follow
    assert b.get("k").state is CircuitState.CLOSED
    assert a.get("k").state is CircuitState.OPEN  # and a's own trip stays


def test_half_open_trials_are_leased_fleet_wide(storages: Callable[..., Any]) -> None:
    a = BreakerRegistry(CONFIG, storage=storages())
    b = BreakerRegistry(CONFIG, storage=storages())
    b.get("k").record(b.get("k").acquire(), False)
    fail(a, "k", 6)
    poll(lambda: b.get("k").state is CircuitState.OPEN)
    time.sleep(0.3)
    permits: list[tuple[BreakerRegistry, int]] = []

    def try_both() -> bool:
        for registry in (a, b):
            with contextlib.suppress(CircuitOpenError):
                permits.append((registry, registry.get("k").acquire()))
        return bool(permits)

    poll(try_both)
    time.sleep(0.1)  # more rounds: no second lease may be granted anywhere
    try_both()
    assert len(permits) == 1  # half_open_max_calls=1 across both
    registry, permit = permits[0]
    registry.get("k").record(permit, False)
    poll(
        lambda: a.get("k").state is CircuitState.CLOSED and b.get("k").state is CircuitState.CLOSED
    )


def test_a_storage_that_raises_is_caught_logged_once_and_merged_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    storage = MemoryStorage(sync_interval=0.01)
    real = storage.exchange
    down = [True]

    def flaky(reports: Any) -> Any:
        if down[0]:
            raise ConnectionError("Redis is away")
        return real(reports)

    storage.exchange = flaky  # type: ignore[method-assign]
    caplog.set_level(logging.INFO, "circuitbreaker_http")
    try:
        registry = BreakerRegistry(CONFIG, storage=storage)
        peer = BreakerRegistry(CONFIG, storage=storage.peer(sync_interval=0.01))
        peer.get("k").record(peer.get("k").acquire(), False)
        fail(registry, "k", 3)
        time.sleep(0.3)  # several failed rounds (0.1 s backoff and more)
        warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(warnings) == 1
        fail(registry, "k", 3)  # local breaking on: 6 of 7 failed locally
        assert registry.get("k").state is CircuitState.OPEN
        down[0] = False
        poll(lambda: peer.get("k").state is CircuitState.OPEN, timeout=8.0)
        assert any("reachable again" in r.getMessage() for r in caplog.records)
    finally:
        storage.close()


def test_clocks_an_hour_apart_agree_on_the_open_period(storages: Callable[..., Any]) -> None:
    """The open period is the fleet's (Redis' clock): each registry's own clock is irrelevant."""
    config = CONFIG.replace(open_duration=5.0, max_open_duration=10.0, open_jitter=0.0)
    a = BreakerRegistry(config, storage=storages())
    b = BreakerRegistry(config, storage=storages(), clock=lambda: time.monotonic() + 3600.0)
    b.get("k").record(b.get("k").acquire(), False)
    fail(a, "k", 6)
    poll(lambda: b.get("k").state is CircuitState.OPEN)
    poll(lambda: a.get("k").snapshot().retry_after is not None)
    left_a = a.get("k").snapshot().retry_after
    left_b = b.get("k").snapshot().retry_after
    assert left_a is not None and left_b is not None
    assert 4.0 < left_b <= 5.0
    assert abs(left_a - left_b) < 0.25  # a sync round and a round trip apart at most


def test_nothing_is_left_once_the_ttls_pass(
    storages: Callable[..., Any], redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every key of an idle breaker expires (the 60 s margin set to 0 so TTLs are ~0.5 s)."""
    if storages.kind == "memory":  # type: ignore[attr-defined]
        pytest.skip("Redis keys only")
    monkeypatch.setattr("circuitbreaker_http.storage._protocol._TTL_MARGIN", 0.0)
    config = CONFIG.replace(window=0.2, max_open_duration=0.3, open_duration=0.05)
    registry = BreakerRegistry(config, storage=storages())
    probe = redis_client()

    def keys() -> list[bytes]:
        return list(probe.scan_iter(match=f"{redis_prefix}:*", count=1000))

    for name in ("k", "x" * 10_000, "a}{b:c"):
        breaker = registry.get(name)
        for failed in (False, True, False):
            breaker.record(breaker.acquire(), failed)
    poll(lambda: len(keys()) == 3 * 3 + 1)  # state, window, reporters per breaker; the index
    ttls = [probe.pttl(key) for key in keys()]
    assert all(0 < ttl <= 520 for ttl in ttls), ttls  # 1.1 x 0.2 s + 0.3 s, in ms
    poll(lambda: keys() == [], timeout=3.0)  # the breakers stay idle: nothing rewrites them
    probe.close()
