"""An async httpx client: many concurrent tasks through one breaker per host.

Run it as it is: ``python examples/httpx_async.py`` (asyncio), or
``python examples/httpx_async.py trio`` when trio is installed. It starts a
flaky upstream on loopback and ends in about 2 seconds.
"""

from __future__ import annotations

import sys
from collections import Counter

import anyio
import httpx

from circuitbreaker_http import BreakerConfig, CircuitOpenError, LastKnownGood, by_route
from circuitbreaker_http.httpx import AsyncCircuitBreakerTransport
from circuitbreaker_http.testing import FlakyServer


async def burst(client: httpx.AsyncClient, url: str, n: int) -> Counter[str]:
    seen: Counter[str] = Counter()

    async def one() -> None:
        try:
            response = await client.get(url)
        except CircuitOpenError:
            seen["rejected"] += 1
        else:
            marks = response.extensions.get("circuit_breaker", {})
            seen["stale" if marks.get("stale") else str(response.status_code)] += 1

    async with anyio.create_task_group() as tasks:
        for _ in range(n):
            tasks.start_soon(one)
    return seen


async def main() -> None:
    with FlakyServer() as upstream:
        transport = AsyncCircuitBreakerTransport(
            config=BreakerConfig(failure_rate=0.5, minimum_calls=10, open_duration=0.5),
            # one breaker per route template, so /api/items/{id} failing spares /json
            key=by_route("/api/items/{id}", "/json"),
            # while open, GETs are answered with the last good response, marked stale
            fallback=LastKnownGood(max_age=60),
        )
        async with httpx.AsyncClient(transport=transport, timeout=2.0) as client:
            url = upstream.url + "/api/items/7"
            print("healthy:     ", dict(await burst(client, url, 20)))
            upstream.set_mode("failing", status=502)
            # 40 requests at once: all are in flight before the first failure lands
            print("failing:     ", dict(await burst(client, url, 40)))
            print("still open:  ", dict(await burst(client, url, 20)))
            health = await client.get(upstream.url + "/json")
            print("other route: ", health.status_code, "(its own breaker, still closed)")
            upstream.set_mode("healthy")
            await anyio.sleep(0.6)
            # half-open lets one trial through; the others get the stale copy
            print("half-open:   ", dict(await burst(client, url, 20)))
            print("closed again:", dict(await burst(client, url, 20)))
            for snap in transport.registry.snapshot():
                print(f"  {snap.name}: {snap.state.value}")


if __name__ == "__main__":
    anyio.run(main, backend=sys.argv[1] if len(sys.argv) > 1 else "asyncio")
