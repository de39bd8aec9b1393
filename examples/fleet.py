"""Two processes share breaker state through Redis: one trips, the other sees it open.

Run it as it is: ``python examples/fleet.py`` (needs httpx and redis-py, and
a Redis server on 127.0.0.1:6379; without one it says so and exits 0). A
:class:`~circuitbreaker_http.testing.FlakyServer` plays a failing upstream.
Process 1 (this one) sends requests that get 503 through httpx until its
breaker trips; process 2 (spawned) has sent one good request and none that
failed, yet its breaker for the same upstream opens within milliseconds and
refuses its next request without reaching the upstream. Both use a prefix of
their own, and the example deletes its Redis keys before it ends (in about
two seconds).
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import sys
import threading
import time
import uuid
from typing import Any

import httpx

from circuitbreaker_http import BreakerConfig, BreakerRegistry, CircuitOpenError, StateChange
from circuitbreaker_http.httpx import CircuitBreakerTransport
from circuitbreaker_http.testing import FlakyServer

HOST, PORT = "127.0.0.1", 6379
CONFIG = BreakerConfig(consecutive_failures=3, open_duration=30.0)


def fleet_registry(prefix: str) -> tuple[Any, Any, BreakerRegistry]:
    """A Redis client, a RedisStorage on ``prefix`` and a registry on it."""
    import redis

    from circuitbreaker_http.redis import RedisStorage

    client = redis.Redis(host=HOST, port=PORT, socket_timeout=0.1, socket_connect_timeout=0.5)
    storage = RedisStorage(client, prefix=prefix, sync_interval=0.1)
    return client, storage, BreakerRegistry(CONFIG, storage=storage)


def process_2(prefix: str, url: str, out: Any) -> None:
    """The other process: one good request, then it waits to hear of the trip."""
    client, storage, registry = fleet_registry(prefix)
    opened = threading.Event()
    seen: list[tuple[float, StateChange]] = []

    def show(change: StateChange) -> None:
        seen.append((time.monotonic(), change))
        if change.new.value == "open":
            opened.set()

    registry.subscribe(show, StateChange)
    with httpx.Client(transport=CircuitBreakerTransport(registry=registry)) as http:
        status = http.get(f"{url}/").status_code  # the breaker exists: this process tracks it
        out.put(("ready", f"process 2: GET / -> {status}; breaker closed; now only waiting"))
        if not opened.wait(5.0):
            out.put(("done", "process 2: never saw the breaker open (is Redis shared?)"))
        else:
            at, change = next((at, c) for at, c in seen if c.new.value == "open")
            lines = [
                f"process 2: {change.name} {change.old.value} -> {change.new.value}"
                f" ({change.reason}), without a failing request of its own",
            ]
            try:
                http.get(f"{url}/")
                lines.append("process 2: GET / went through (unexpected)")
            except CircuitOpenError as exc:
                lines.append(f"process 2: GET / refused locally: {type(exc).__name__}")
            out.put(("done", "\n".join(lines), at))
    storage.close()
    client.close()


def redis_answers() -> str | None:
    """None if a Redis server answers on HOST:PORT, else why not."""
    try:
        import redis
    except ImportError:
        return "redis-py is not installed (pip install 'circuitbreaker-http[redis]')"
    try:
        client = redis.Redis(host=HOST, port=PORT, socket_timeout=0.5, socket_connect_timeout=0.5)
        client.ping()
        client.close()
    except redis.RedisError as exc:
        return f"no Redis answers on {HOST}:{PORT} ({exc})"
    return None


def main() -> None:
    why = redis_answers()
    if why is not None:
        print(f"fleet example skipped: {why}")
        return
    prefix = f"cbh-example-{uuid.uuid4().hex[:8]}"
    client, storage, registry = fleet_registry(prefix)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    with FlakyServer() as server:
        other = ctx.Process(target=process_2, args=(prefix, server.url, out), daemon=True)
        other.start()
        try:
            _, text, *_ = out.get(timeout=20)
            print(text)
            with httpx.Client(transport=CircuitBreakerTransport(registry=registry)) as http:
                sent, tripped = 0, time.monotonic()
                while True:
                    try:
                        response = http.get(f"{server.url}/status/503")
                    except CircuitOpenError:
                        break
                    tripped = time.monotonic()  # the last failure is the one that trips
                    sent += 1
                    print(f"process 1: GET /status/503 -> {response.status_code}")
                (breaker,) = registry
                print(
                    f"process 1: breaker {breaker.name} is {breaker.state.value}"
                    f" after {sent} failures; its next request was refused"
                )
            _, text, *rest = out.get(timeout=10)
            print(text)
            if rest:
                # time.monotonic() is CLOCK_MONOTONIC on Linux: one clock for both processes.
                print(f"process 2 saw it open {(rest[0] - tripped) * 1000:.1f} ms after the trip")
            by_path = server.requests_by_path
            print(
                f"upstream saw {by_path['/status/503']} failing requests (process 1's)"
                f" and {by_path['/']} to / (process 2's good one, not the refused one)"
            )
        except queue.Empty:
            print("process 2 did not answer in time", file=sys.stderr)
        finally:
            other.join(10)
            storage.close()
            names = list(client.scan_iter(match=f"{prefix}:*", count=1000))
            if names:
                client.delete(*names)
            print(f"cleaned up: {len(names)} Redis keys under {prefix}:")
            client.close()


if __name__ == "__main__":
    main()
