"""Last-Known-Good through both integrations: a stored ``Age`` is served as one value.

The httpx transport is fed by ``httpx.MockTransport``, the requests adapter by
the loopback ``FlakyServer``; time moves on a ``ManualClock``.
"""

from __future__ import annotations

import httpx
import requests

from circuitbreaker_http import BreakerConfig, BreakerRegistry, LastKnownGood
from circuitbreaker_http.httpx import CircuitBreakerTransport
from circuitbreaker_http.requests import CircuitBreakerAdapter
from circuitbreaker_http.testing import FlakyServer, ManualClock

TRIP1 = BreakerConfig(
    consecutive_failures=1, failure_rate=None, open_duration=10.0, max_open_duration=3600.0
)


def test_httpx_serves_the_stored_age_plus_the_time_since_as_one_value() -> None:
    def upstream(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/down":
            return httpx.Response(503)
        return httpx.Response(200, headers={"Age": "100", "ETag": "x1"}, content=b"ok")

    clock = ManualClock()
    lkg = LastKnownGood(clock=clock)
    transport = CircuitBreakerTransport(
        httpx.MockTransport(upstream),
        registry=BreakerRegistry(TRIP1, clock=clock),
        fallback=lkg,
    )
    with httpx.Client(transport=transport, base_url="http://api.test") as client:
        assert client.get("/doc").headers["age"] == "100"  # the upstream's own, untouched
        client.get("/down")  # trips the breaker
        clock.advance(7)
        stale = client.get("/doc")
    assert stale.extensions["circuit_breaker"]["stale"] is True
    assert stale.headers.get_list("age") == ["107"]
    assert stale.headers["etag"] == "x1"


def test_requests_serves_the_stored_age_plus_the_time_since_as_one_value(
    flaky_server: FlakyServer,
) -> None:
    clock = ManualClock()
    lkg = LastKnownGood(clock=clock)
    adapter = CircuitBreakerAdapter(registry=BreakerRegistry(TRIP1, clock=clock), fallback=lkg)
    url = flaky_server.url + "/json?header=Age:100"
    with requests.Session() as session:
        session.mount("http://", adapter)
        assert session.get(url).headers["Age"] == "100"
        session.get(flaky_server.url + "/status/503")  # trips the breaker
        clock.advance(7)
        stale = session.get(url)
    assert stale.circuit_breaker["stale"] is True  # type: ignore[attr-defined]
    # requests joins repeated fields with ", ": one value means no comma.
    assert stale.headers["Age"] == "107"
    assert [v for k, v in stale.raw.headers.items() if k.lower() == "age"] == ["107"]
