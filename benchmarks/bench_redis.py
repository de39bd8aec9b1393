"""What RedisStorage costs a process: per request, in Redis commands, per sync round.

1. Per-request overhead of an httpx request through a registry on
   ``RedisStorage`` (its syncer running) against a memory-only registry, in
   paired interleaved repeats of one run (aim: <= +0.5 us).
2. Redis commands sent from the request thread while requests run (aim: 0),
   counted by a connection class that records the thread of every command,
   and round trips per ``sync_interval`` at steady state and while idle.
3. One round's wall time and Redis CPU (``INFO commandstats`` usec of
   EVALSHA) for 1, 10, 100 and 1,000 changed breakers.
4. Propagation of a trip from one process to another (spawned) one, both on
   ``RedisStorage`` with ``sync_interval=0.1`` and the same prefix: p50 and
   p99 over ``--trips`` trips, one fresh key per trip (aim: p50 <= 5 ms,
   p99 <= 50 ms). Both processes stamp with ``time.monotonic()``, which is
   ``CLOCK_MONOTONIC`` on Linux and so one clock for every process of a host.

Prints, asserts nothing. Needs a Redis server (default 127.0.0.1:6379).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import statistics
import sys
import threading
import time
import uuid
from typing import Any, ClassVar

import _common
import httpx
import redis

from circuitbreaker_http import BreakerConfig, BreakerRegistry
from circuitbreaker_http.httpx import CircuitBreakerTransport
from circuitbreaker_http.redis import RedisStorage
from circuitbreaker_http.storage import BreakerReport, FleetSettings

URL = "http://bench.test/users/42"


class Counting(redis.Connection):
    """A connection that counts commands and round trips, by the thread that sent them."""

    lock = threading.Lock()
    commands: ClassVar[dict[int, int]] = {}
    trips: ClassVar[dict[int, int]] = {}

    def _count(self, n: int) -> None:
        me = threading.get_ident()
        with Counting.lock:
            Counting.commands[me] = Counting.commands.get(me, 0) + n
            Counting.trips[me] = Counting.trips.get(me, 0) + 1

    def pack_commands(self, commands: Any) -> Any:
        commands = list(commands)
        self._count(len(commands))
        return super().pack_commands(commands)

    def pack_command(self, *args: Any) -> Any:
        self._count(1)
        return super().pack_command(*args)


def snapshot() -> tuple[dict[int, int], dict[int, int]]:
    with Counting.lock:
        return dict(Counting.commands), dict(Counting.trips)


def client_on(host: str, port: int, counting: bool = False) -> Any:
    kwargs: dict[str, Any] = {"host": host, "port": port, "socket_timeout": 0.1}
    if counting:
        kwargs["connection_class"] = Counting
    return redis.Redis(connection_pool=redis.ConnectionPool(**kwargs))


def handler(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, text="ok")


def http_client(registry: BreakerRegistry) -> httpx.Client:
    return httpx.Client(
        transport=CircuitBreakerTransport(httpx.MockTransport(handler), registry=registry)
    )


def per_request(clients: dict[str, httpx.Client], repeats: int, n: int) -> dict[str, list[float]]:
    """Seconds per request of each client, one sample each per repeat, order rotated."""
    samples: dict[str, list[float]] = {name: [] for name in clients}
    names = list(clients)
    for turn in range(repeats):
        for name in _common.rotated(names, turn):
            get = clients[name].get
            start = time.perf_counter_ns()
            for _ in range(n):
                get(URL)
            samples[name].append((time.perf_counter_ns() - start) / n / 1000)
    return samples


def section1(host: str, port: int, repeats: int, n: int) -> None:
    print("1. per-request overhead (httpx, MockTransport), us per request")
    client = client_on(host, port)
    storage = RedisStorage(client, prefix=f"bench-{uuid.uuid4().hex[:8]}", sync_interval=0.1)
    clients = {
        "memory-only registry": http_client(BreakerRegistry()),
        "RedisStorage registry": http_client(BreakerRegistry(storage=storage)),
    }
    for c in clients.values():
        c.get(URL)  # create the breakers
    samples = per_request(clients, repeats, n)
    for name, values in samples.items():
        print(f"   {name:<24} {statistics.median(values):7.2f} us")
    diffs = [
        r - m
        for r, m in zip(
            samples["RedisStorage registry"], samples["memory-only registry"], strict=True
        )
    ]
    q = statistics.quantiles(diffs, n=4)
    print(
        f"   RedisStorage - memory   {statistics.median(diffs):+7.2f} us"
        f"  [p25 {q[0]:+.2f} .. p75 {q[2]:+.2f}]  (aim <= +0.5 us; {repeats} paired repeats)"
    )
    storage.close()
    client.close()


def section2(host: str, port: int, seconds: float) -> None:
    print("2. Redis commands and round trips")
    client = client_on(host, port, counting=True)
    interval = 0.1
    storage = RedisStorage(client, prefix=f"bench-{uuid.uuid4().hex[:8]}", sync_interval=interval)
    registry = BreakerRegistry(BreakerConfig(), storage=storage)
    http = http_client(registry)
    keys = [f"http://bench{i}.test/" for i in range(10)]
    for key in keys:
        http.get(key)
    time.sleep(3 * interval)  # first rounds, the script loaded
    me = threading.get_ident()
    before_cmds, before_trips = snapshot()
    start = time.monotonic()
    sent = 0
    while time.monotonic() - start < seconds:
        for key in keys:
            http.get(key)
        sent += len(keys)
    elapsed = time.monotonic() - start
    after_cmds, after_trips = snapshot()
    on_path = after_cmds.get(me, 0) - before_cmds.get(me, 0)
    others = {t for t in after_trips if t != me}
    trips = sum(after_trips[t] - before_trips.get(t, 0) for t in others)
    cmds = sum(after_cmds[t] - before_cmds.get(t, 0) for t in others)
    rounds = elapsed / interval
    print(f"   {sent} requests on {len(keys)} breakers in {elapsed:.1f} s")
    print(f"   Redis commands from the request thread: {on_path} (aim 0)")
    print(
        f"   syncer: {trips} round trips in {rounds:.0f} sync intervals ="
        f" {trips / rounds:.2f} per interval (aim <= 1), {cmds / max(trips, 1):.1f} commands each"
    )
    time.sleep(2 * interval)  # the last counts flushed
    before_cmds, before_trips = snapshot()
    time.sleep(seconds)
    after_cmds, after_trips = snapshot()
    idle = sum(after_trips[t] - before_trips.get(t, 0) for t in after_trips if t != me)
    print(f"   idle for {seconds:.1f} s: {idle} round trips (aim 0)")
    storage.close()
    http.close()
    client.close()


def section3(host: str, port: int, rounds: int) -> None:
    print("3. one round for N changed breakers: wall time, Redis CPU (EVALSHA usec)")
    client = client_on(host, port)
    storage = RedisStorage(client, prefix=f"bench-{uuid.uuid4().hex[:8]}")
    settings = FleetSettings.of(BreakerConfig())

    def evalsha_usec() -> int:
        stats = client.info("commandstats").get("cmdstat_evalsha", {})
        return int(stats.get("usec", 0))

    for n in (1, 10, 100, 1000):
        reports = [
            BreakerReport(key=f"k{i}", settings=settings, fleet_cycle=1, calls=10, failures=1)
            for i in range(n)
        ]
        storage.exchange(reports)
        walls, cpus = [], []
        for _ in range(rounds):
            usec = evalsha_usec()
            start = time.perf_counter()
            storage.exchange(reports)
            walls.append((time.perf_counter() - start) * 1000)
            cpus.append((evalsha_usec() - usec) / 1000)
        print(
            f"   {n:>5} breakers: {statistics.median(walls):8.2f} ms wall,"
            f" {statistics.median(cpus):8.2f} ms Redis CPU per round"
            f" ({statistics.median(cpus) * 1000 / n:.1f} us per breaker)"
        )
    client.close()


PROPAGATION_CONFIG = {"consecutive_failures": 1, "open_duration": 60.0}


def observer(host: str, port: int, prefix: str, inbox: Any, out: Any) -> None:
    """Process B: track each key it is given, then poll its state until it is open."""
    client = client_on(host, port)
    storage = RedisStorage(client, prefix=prefix, sync_interval=0.1)
    registry = BreakerRegistry(BreakerConfig(**PROPAGATION_CONFIG), storage=storage)
    out.put("ready")
    while True:
        key = inbox.get()
        if key is None:
            break
        breaker = registry.get(key)  # tracked: the storage knows its notifications' name
        out.put("tracking")
        deadline = time.monotonic() + 2.0
        seen = None
        while time.monotonic() < deadline:
            if breaker.state.value == "open":
                seen = time.monotonic()
                break
            time.sleep(0.0001)
        out.put(seen)
    storage.close()
    client.close()


def section4(host: str, port: int, trips: int) -> None:
    print("4. propagation of a trip to another process (sync_interval=0.1), ms")
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    ctx = mp.get_context("spawn")
    inbox, out = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=observer, args=(host, port, prefix, inbox, out), daemon=True)
    proc.start()
    client = client_on(host, port)
    storage = RedisStorage(client, prefix=prefix, sync_interval=0.1)
    registry = BreakerRegistry(BreakerConfig(**PROPAGATION_CONFIG), storage=storage)
    latencies: list[float] = []
    missed = 0
    try:
        assert out.get(timeout=30) == "ready"
        for i in range(trips):
            key = f"http://prop{i}.test/"
            breaker = registry.get(key)
            inbox.put(key)
            assert out.get(timeout=10) == "tracking"
            time.sleep(0.02)  # let B's listener and syncer settle
            permit = breaker.acquire()
            breaker.record(permit, failed=True)  # consecutive_failures=1: this trips
            tripped = time.monotonic()
            seen = out.get(timeout=10)
            if seen is None:
                missed += 1
            else:
                latencies.append((seen - tripped) * 1000)
    finally:
        inbox.put(None)
        proc.join(10)
        storage.close()
        with contextlib.suppress(redis.RedisError):
            names = list(client.scan_iter(match=f"{prefix}:*", count=1000))
            if names:
                client.delete(*names)
        client.close()
    if len(latencies) >= 2:
        q = statistics.quantiles(latencies, n=100, method="inclusive")
        print(
            f"   {len(latencies)} trips seen, {missed} not within 2 s:"
            f" p50 {statistics.median(latencies):.2f} ms, p99 {q[98]:.2f} ms,"
            f" max {max(latencies):.2f} ms (aim p50 <= 5, p99 <= 50)"
        )
    else:
        print(f"   {len(latencies)} trips seen, {missed} not within 2 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=6379)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--trips", type=int, default=None, help="trips for section 4")
    parser.add_argument(
        "--only", type=int, choices=(1, 2, 3, 4), default=None, help="run one section"
    )
    args = parser.parse_args()
    repeats = args.repeats or (11 if args.quick else 31)
    n = 2000 if args.quick else 5000
    try:
        client_on(args.host, args.port).ping()
    except redis.RedisError as exc:
        sys.exit(f"bench_redis: no Redis at {args.host}:{args.port} ({exc})")
    print(
        f"circuitbreaker-http {_common.version_of('circuitbreaker-http')},"
        f" redis-py {redis.__version__}, httpx {httpx.__version__}"
    )
    trips = args.trips or (100 if args.quick else 200)
    sections = {
        1: lambda: section1(args.host, args.port, repeats, n),
        2: lambda: section2(args.host, args.port, 1.0 if args.quick else 3.0),
        3: lambda: section3(args.host, args.port, 5 if args.quick else 15),
        4: lambda: section4(args.host, args.port, trips),
    }
    for number, run in sections.items():
        if args.only in (None, number):
            run()


if __name__ == "__main__":
    main()
