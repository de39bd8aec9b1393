"""A Redis server of the test's own, killed mid-run and restarted, while httpx requests flow.

Proves API.md's outage rules end to end: no error reaches a caller, breaking
goes on locally (a failing upstream still trips), one WARNING per outage and
one INFO on recovery, and the state (window counts counted meanwhile, the
local trip) is written into the new server once it answers.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from redis.backoff import NoBackoff
from redis.retry import Retry

from circuitbreaker_http import BreakerConfig, BreakerRegistry, CircuitOpenError, CircuitState
from circuitbreaker_http.testing import FlakyServer

from .conftest import redis

httpx = pytest.importorskip("httpx")

from circuitbreaker_http.httpx import CircuitBreakerTransport  # noqa: E402
from circuitbreaker_http.redis import RedisStorage  # noqa: E402

REDIS_SERVER = shutil.which("redis-server")
pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="no redis-server executable")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def poll(
    check: Callable[[], bool], timeout: float = 10.0, every: Callable[[], Any] = lambda: None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        every()
        if check():
            return
        time.sleep(0.005)
    raise AssertionError("condition not met in time")


class OwnRedis:
    """``redis-server`` on a port of its own, no persistence: a restart starts empty."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.probe = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=0.5)

    def start(self) -> None:
        assert REDIS_SERVER is not None
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def up() -> bool:
            try:
                return bool(self.probe.ping())
            except redis.RedisError:
                return False

        poll(up)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(5.0)
        self.probe.connection_pool.disconnect()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()
        self.probe.close()


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    server = OwnRedis()
    server.start()
    yield server
    server.close()


def test_a_redis_restart_reaches_no_caller_and_state_is_written_again(
    own_redis: OwnRedis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "circuitbreaker_http")
    prefix = f"cbh-outage-{uuid.uuid4().hex[:8]}"
    # No retries in the client (redis-py >= 6 retries 3 times with seconds of
    # backoff by default): the storage has a backoff of its own.
    client = redis.Redis(
        host="127.0.0.1",
        port=own_redis.port,
        socket_timeout=0.1,
        socket_connect_timeout=0.1,
        retry=Retry(NoBackoff(), 0),
    )
    storage = RedisStorage(client, prefix=prefix, sync_interval=0.02)
    config = BreakerConfig(consecutive_failures=3, minimum_calls=50, open_duration=30.0)
    registry = BreakerRegistry(config, storage=storage)
    errors: list[BaseException] = []
    short_circuits = 0
    with (
        FlakyServer() as healthy,
        FlakyServer() as failing,
        httpx.Client(transport=CircuitBreakerTransport(registry=registry), timeout=5.0) as http,
    ):

        def send(url: str) -> None:
            nonlocal short_circuits
            try:
                http.get(url)
            except CircuitOpenError:
                short_circuits += 1
            except Exception as exc:  # anything else is an error that reached a caller
                errors.append(exc)

        def warnings() -> list[logging.LogRecord]:
            return [r for r in caplog.records if "storage unreachable" in r.getMessage()]

        def recoveries() -> list[logging.LogRecord]:
            return [r for r in caplog.records if "reachable again" in r.getMessage()]

        state_key, window_key = storage.keys_of(healthy.url)[:2]
        fail_state = storage.keys_of(failing.url)[0]
        ok = f"{healthy.url}/status/200"
        send(ok)
        poll(lambda: own_redis.probe.exists(state_key) == 1)

        own_redis.kill()
        sent_down = 0

        def one_more() -> None:
            nonlocal sent_down
            send(ok)
            sent_down += 1

        poll(lambda: len(warnings()) == 1, every=one_more)  # requests flow meanwhile
        for _ in range(50):
            one_more()
        for _ in range(3):
            send(f"{failing.url}/status/503")  # trips on this process's own calls
        assert registry.get(failing.url).state is CircuitState.OPEN
        send(f"{failing.url}/status/503")
        assert short_circuits == 1  # local breaking while Redis is away
        assert registry.get(healthy.url).state is CircuitState.CLOSED

        sent_before_restart = sent_down
        own_redis.start()  # empty: a new server on the same port
        poll(lambda: len(recoveries()) == 1, every=one_more)
        assert errors == []
        assert len(warnings()) == 1  # one per outage, however many rounds failed
        probe = own_redis.probe
        # Written again: the trip proposed during the outage opens the fleet in the
        # new server, and what was counted meanwhile merged back into its window.
        poll(lambda: probe.hget(fail_state, "state") == b"open")
        counted = sum(int(v) for f, v in probe.hgetall(window_key).items() if f.startswith(b"c:"))
        assert counted >= sent_before_restart
        assert probe.pttl(state_key) > 0 and probe.pttl(fail_state) > 0
    storage.close()
    client.close()
    assert errors == []
