"""Several processes (spawn) sharing breaker state through a real Redis, over httpx on loopback."""

from __future__ import annotations

import multiprocessing as mp
import queue
import time
from typing import Any

import pytest

from circuitbreaker_http.testing import FlakyServer

from .conftest import redis_client

pytest.importorskip("httpx")

WORKERS = 3
DEADLINE = 20.0


def worker(
    prefix: str,
    base: str,
    min_reporters: int,
    settings: dict[str, Any],
    role: str,
    inbox: Any,
    out: Any,
) -> None:
    """One process of the fleet: an httpx client through a registry on RedisStorage."""
    import threading

    import httpx
    import redis

    from circuitbreaker_http import BreakerConfig, BreakerRegistry, CircuitOpenError
    from circuitbreaker_http.httpx import CircuitBreakerTransport
    from circuitbreaker_http.redis import RedisStorage

    client = redis.Redis(host="127.0.0.1", port=6379, socket_timeout=0.1)
    storage = RedisStorage(client, prefix=prefix, sync_interval=0.02, min_reporters=min_reporters)
    config = BreakerConfig(
        **{
            "consecutive_failures": 3,
            "minimum_calls": 6,
            "failure_rate": 0.5,
            "open_duration": 30.0,
            **settings,
        }
    )
    registry = BreakerRegistry(config, storage=storage)
    key = base
    errors = 0
    with httpx.Client(transport=CircuitBreakerTransport(registry=registry)) as http:
        http.get(f"{base}/")  # know the key
        out.put(("ready", role, None))
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            try:
                command = inbox.get(timeout=0.05)
            except queue.Empty:
                continue
            if command == "stop":
                break
            if command == "fail2":
                for _ in range(2):
                    try:
                        http.get(f"{base}/status/503")
                    except CircuitOpenError:
                        errors += 1
            elif command == "fail3":
                for _ in range(3):
                    http.get(f"{base}/status/503")
            elif command.startswith("hammer"):
                # Four threads send slow requests for a while; refusals are expected.
                until = time.monotonic() + float(command.split()[1])

                def hammer(until: float = until) -> None:
                    while time.monotonic() < until:
                        try:
                            http.get(f"{base}/delay/2")
                        except CircuitOpenError:
                            time.sleep(0.002)

                threads = [threading.Thread(target=hammer) for _ in range(4)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
            elif command == "force_open":
                registry.get(key).force_open()
            elif command == "reset":
                registry.get(key).reset()
            elif command.startswith("state"):
                out.put(("state", role, registry.get(key).state.value))
                continue
            out.put(("done", role, command))
    storage.close()
    client.close()
    out.put(("bye", role, errors))


class Fleet:
    def __init__(self, prefix: str, base: str, min_reporters: int = 1, **settings: Any) -> None:
        ctx = mp.get_context("spawn")
        self.out = ctx.Queue()
        self.inboxes = [ctx.Queue() for _ in range(WORKERS)]
        self.procs = [
            ctx.Process(
                target=worker,
                args=(prefix, base, min_reporters, settings, str(i), self.inboxes[i], self.out),
                daemon=True,
            )
            for i in range(WORKERS)
        ]
        for proc in self.procs:
            proc.start()
        self.expect("ready", WORKERS)

    def expect(self, kind: str, n: int) -> list[tuple[str, str, Any]]:
        got = []
        deadline = time.monotonic() + DEADLINE
        while len(got) < n:
            item = self.out.get(timeout=max(0.1, deadline - time.monotonic()))
            if item[0] == kind:
                got.append(item)
        return got

    def send(self, i: int, command: str) -> None:
        self.inboxes[i].put(command)
        self.expect("done", 1)

    def send_all(self, command: str) -> None:
        """The same command to every process at once; wait for all to finish it."""
        for inbox in self.inboxes:
            inbox.put(command)
        self.expect("done", WORKERS)

    def states(self) -> list[str]:
        for inbox in self.inboxes:
            inbox.put("state")
        return [state for _, _, state in sorted(self.expect("state", WORKERS))]

    def poll(self, wanted: list[str]) -> None:
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            states = self.states()
            if states == wanted:
                return
            time.sleep(0.02)
        raise AssertionError(f"states {states}, wanted {wanted}")

    def close(self) -> None:
        for inbox in self.inboxes:
            inbox.put("stop")
        for proc in self.procs:
            proc.join(10.0)
            if proc.is_alive():
                proc.kill()


@pytest.fixture
def fleet_parts(redis_prefix: str) -> Any:
    redis_client().close()  # skips without a server
    with FlakyServer() as server:
        yield redis_prefix, f"http://127.0.0.1:{server.port}", server


def test_a_fleet_trips_from_windows_each_below_minimum_calls(fleet_parts: Any) -> None:
    fleet = Fleet(*fleet_parts[:2])
    try:
        for i in range(WORKERS):
            fleet.send(i, "fail2")  # 2 failures each (+1 success): below 6 calls alone
        fleet.poll(["open"] * WORKERS)
    finally:
        fleet.close()


def test_manual_states_apply_to_every_process(fleet_parts: Any) -> None:
    fleet = Fleet(*fleet_parts[:2])
    try:
        fleet.send(0, "force_open")
        fleet.poll(["forced_open"] * WORKERS)
        fleet.send(2, "reset")
        fleet.poll(["closed"] * WORKERS)
    finally:
        fleet.close()


def test_min_reporters_keeps_one_failing_process_trip_local(fleet_parts: Any) -> None:
    fleet = Fleet(*fleet_parts[:2], min_reporters=2)
    try:
        fleet.send(0, "fail3")  # consecutive_failures=3 trips process 0 only
        assert fleet.states() == ["open", "closed", "closed"]
        time.sleep(0.2)  # ten sync rounds: the others must not follow
        assert fleet.states() == ["open", "closed", "closed"]
    finally:
        fleet.close()


def test_exactly_half_open_max_calls_trials_reach_the_upstream_fleet_wide(
    fleet_parts: Any,
) -> None:
    prefix, base, server = fleet_parts
    # Trials take 2 s (/delay/2): none settles while the fleet is hammered, so
    # every request the upstream receives meanwhile is a trial.
    fleet = Fleet(prefix, base, open_duration=0.5, half_open_max_calls=2, success_threshold=2)
    try:
        fleet.send(0, "fail3")
        fleet.poll(["open"] * WORKERS)
        server.reset_counters()
        # 3 processes x 4 threads for 1.2 s: the open period ends, the fleet goes
        # half-open, leases are claimed off the request path, trials start.
        fleet.send_all("hammer 1.2")
        assert server.requests_by_path["/delay/2"] == 2
        assert server.requests == 2
    finally:
        fleet.close()
