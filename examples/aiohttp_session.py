"""An aiohttp session: many concurrent tasks through one breaker per route.

Run it as it is: ``python examples/aiohttp_session.py``. It starts a flaky
upstream on loopback and ends in about 2 seconds.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import aiohttp

from circuitbreaker_http import BreakerConfig, CircuitOpenError, LastKnownGood, by_route
from circuitbreaker_http.aiohttp import CircuitBreakerMiddleware, breaker_info
from circuitbreaker_http.testing import FlakyServer


async def burst(session: aiohttp.ClientSession, url: str, n: int) -> Counter[str]:
    seen: Counter[str] = Counter()

    async def one() -> None:
        try:
            async with session.get(url) as response:
                await response.read()
        except CircuitOpenError:
            seen["rejected"] += 1
        else:
            marks = breaker_info(response) or {}
            seen["stale" if marks.get("stale") else str(response.status)] += 1

    await asyncio.gather(*(one() for _ in range(n)))
    return seen


async def main() -> None:
    with FlakyServer() as upstream:
        middleware = CircuitBreakerMiddleware(
            config=BreakerConfig(failure_rate=0.5, minimum_calls=10, open_duration=0.5),
            # one breaker per route template, so /api/items/{id} failing spares /json
            key=by_route("/api/items/{id}", "/json"),
            # while open, GETs are answered with the last good response, marked stale
            fallback=LastKnownGood(max_age=60),
        )
        timeout = aiohttp.ClientTimeout(total=2.0)
        async with aiohttp.ClientSession(middlewares=[middleware], timeout=timeout) as session:
            url = upstream.url + "/api/items/7"
            print("healthy:     ", dict(await burst(session, url, 20)))
            upstream.set_mode("failing", status=502)
            # 40 requests at once: all are in flight before the first failure lands
            print("failing:     ", dict(await burst(session, url, 40)))
            print("still open:  ", dict(await burst(session, url, 20)))
            async with session.get(upstream.url + "/json") as health:
                print("other route: ", health.status, "(its own breaker, still closed)")
            upstream.set_mode("healthy")
            await asyncio.sleep(0.6)
            # half-open lets one trial through; the others get the stale copy
            print("half-open:   ", dict(await burst(session, url, 20)))
            print("closed again:", dict(await burst(session, url, 20)))
            for snap in middleware.registry.snapshot():
                print(f"  {snap.name}: {snap.state.value}")


if __name__ == "__main__":
    asyncio.run(main())
