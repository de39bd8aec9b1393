"""Figures: ``GET /breakers`` for 10,000 breakers within 200 ms, over a real server."""

from __future__ import annotations

import statistics
import time

import pytest

from circuitbreaker_http import BreakerRegistry
from circuitbreaker_http.status import asgi_app, wsgi_app

from .servers import serve

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")


@pytest.mark.parametrize("make", [asgi_app, wsgi_app], ids=["asgi", "wsgi"])
def test_breakers_json_for_ten_thousand_breakers_within_200_ms(make: object) -> None:
    registry = BreakerRegistry(max_breakers=20_000)
    for i in range(10_000):
        breaker = registry.get(f"https://svc-{i:05d}.example.com")
        if i % 3 == 0:
            breaker.call(lambda: None)
    for i in range(0, 10_000, 100):
        registry.get(f"https://svc-{i:05d}.example.com").force_open()
    app = make(registry)  # type: ignore[operator]
    try:
        with serve(app) as url, httpx.Client(timeout=30) as client:
            times = []
            for _ in range(8):
                start = time.perf_counter()
                answer = client.get(url + "breakers")
                times.append(time.perf_counter() - start)
                assert answer.status_code == 200
                assert len(answer.json()["breakers"]) == 10_000
                # Traffic between two refreshes: what changed is read afresh.
                registry.get("https://svc-00001.example.com").call(lambda: None)
    finally:
        app.close()
    warm = times[1:]
    print(
        f"\nGET /breakers, 10,000 breakers: first {times[0] * 1000:.0f} ms, then median "
        f"{statistics.median(warm) * 1000:.0f} ms, best {min(warm) * 1000:.0f} ms "
        f"({len(answer.content) / 1e6:.1f} MB)"
    )
    # The page asks every 2 s: the steady state (after the first) is what must fit.
    # The figure (<= 200 ms, about 80 ms measured) is reported, not asserted to the
    # millisecond: a loaded CI machine must not fail it. This guards against a
    # regression of an order of magnitude.
    assert statistics.median(warm) <= 1.0
