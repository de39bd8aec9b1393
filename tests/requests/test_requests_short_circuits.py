"""The requests adapter: short circuits, fallbacks and per-request options.

See test_requests_adapter.py for how these tests meet the server.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import requests
from rq_support import (
    OPEN,
    TRIP1,
    breaker_of,
    mounted,
)

from circuitbreaker_http import (
    BreakerRegistry,
    CircuitOpenError,
    FallbackResponse,
    LastKnownGood,
    options,
)
from circuitbreaker_http.requests import CircuitBreakerAdapter, CircuitOpenRequestsError
from circuitbreaker_http.testing import FlakyServer, ManualClock

# -- short circuits and fallbacks ----------------------------------------------------------------


def _tripped(srv: FlakyServer, **kwargs: Any) -> tuple[CircuitBreakerAdapter, ManualClock]:
    clock = ManualClock()
    registry = BreakerRegistry(TRIP1, clock=clock)
    adapter = CircuitBreakerAdapter(registry=registry, **kwargs)
    registry.get(srv.url).force_open()
    registry.get(srv.url).reset()
    breaker = registry.get(srv.url)
    breaker.record(breaker.acquire(), True)
    assert breaker.state is OPEN
    srv.reset_counters()
    return adapter, clock


def test_a_short_circuit_never_reaches_the_server_or_the_pool(srv: FlakyServer) -> None:
    adapter, _ = _tripped(srv)
    with mounted(adapter) as session, pytest.raises(CircuitOpenRequestsError) as caught:
        session.get(srv.url + "/json")
    error = caught.value
    assert isinstance(error, CircuitOpenError)
    assert isinstance(error, requests.exceptions.ConnectionError)
    assert isinstance(error.request, requests.PreparedRequest)
    assert error.request.url == srv.url + "/json"
    assert error.response is None
    assert (error.name, error.state, error.retry_after) == (srv.url, OPEN, 10.0)
    assert str(error) == f"circuit {srv.url!r} is open; a trial may pass in 10.000s"
    assert srv.requests == 0
    assert len(adapter.poolmanager.pools) == 0


def test_a_fallback_response_is_a_complete_response(srv: FlakyServer) -> None:
    fallback = FallbackResponse(200, json={"degraded": True}, headers={"X-From": "cache"})
    adapter, _ = _tripped(srv, fallback=fallback)
    with mounted(adapter) as session:
        response = session.get(srv.url + "/json?a=1")
        streamed = session.get(srv.url + "/json", stream=True)
    assert srv.requests == 0
    assert (response.status_code, response.reason, response.ok) == (200, "OK", True)
    assert response.json() == {"degraded": True}
    assert response.content == b'{"degraded":true}'
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["x-from"] == "cache"
    assert response.headers["X-Circuit-Breaker"] == "open"
    assert response.headers["Retry-After"] == "10"
    assert response.headers["Content-Length"] == str(len(response.content))
    assert response.url == srv.url + "/json?a=1"
    assert isinstance(response.request, requests.PreparedRequest)
    assert isinstance(response.elapsed, timedelta)
    assert response.encoding == "utf-8"
    assert response.circuit_breaker == {"key": srv.url, "state": "open", "fallback": True}
    # raw is a readable stream of the same bytes.
    assert streamed.raw.read() == b'{"degraded":true}'
    assert streamed.raw.headers["X-Circuit-Breaker"] == "open"


def test_retry_after_is_rounded_up_and_a_fallbacks_own_is_kept(srv: FlakyServer) -> None:
    # A fallback's own Retry-After is kept; X-Circuit-Breaker always says "open".
    adapter, clock = _tripped(srv, fallback=FallbackResponse(503))
    clock.advance(0.5)
    with mounted(adapter) as session:
        assert session.get(srv.url).headers["Retry-After"] == "10"  # 9.5 s, rounded up
    own = FallbackResponse(503, headers={"Retry-After": "1", "X-Circuit-Breaker": "mine"})
    adapter, _ = _tripped(srv, fallback=own)
    with mounted(adapter) as session:
        response = session.get(srv.url)
    assert (response.headers["Retry-After"], response.headers["X-Circuit-Breaker"]) == (
        "1",
        "open",
    )


def test_a_callable_fallback_gets_the_request_and_the_error(srv: FlakyServer) -> None:
    seen: list[tuple[requests.PreparedRequest, CircuitOpenError]] = []

    def fallback(request: requests.PreparedRequest, error: CircuitOpenError) -> requests.Response:
        seen.append((request, error))
        response = requests.Response()
        response.status_code = 299
        response._content = b"from the fallback"
        response.circuit_breaker = {"source": "callable"}  # type: ignore[attr-defined]
        return response

    adapter, _ = _tripped(srv, fallback=fallback)
    with mounted(adapter) as session:
        response = session.post(srv.url + "/echo", data=b"x")
    assert (response.status_code, response.text) == (299, "from the fallback")
    assert response.headers["X-Circuit-Breaker"] == "open"
    assert response.circuit_breaker == {
        "key": srv.url,
        "state": "open",
        "fallback": True,
        "source": "callable",
    }
    request, error = seen[0]
    assert request.method == "POST" and isinstance(error, CircuitOpenRequestsError)
    assert error.request is request
    assert srv.requests == 0


def test_a_fallback_that_raises_propagates_and_records_nothing(srv: FlakyServer) -> None:
    def fallback(request: Any, error: Any) -> requests.Response:
        raise LookupError("no cached answer")

    adapter, _ = _tripped(srv, fallback=fallback)
    before = breaker_of(adapter, srv).snapshot()
    with mounted(adapter) as session, pytest.raises(LookupError, match="no cached"):
        session.get(srv.url)
    after = breaker_of(adapter, srv).snapshot()
    assert (after.calls, after.failures, after.state) == (before.calls, before.failures, OPEN)

    def wrong(request: Any, error: Any) -> object:
        return "not a response"

    adapter, _ = _tripped(srv, fallback=wrong)
    with mounted(adapter) as session, pytest.raises(TypeError, match=r"requests\.Response"):
        session.get(srv.url)


def test_last_known_good_is_fed_by_complete_gets_and_served_when_open(srv: FlakyServer) -> None:
    clock = ManualClock()
    lkg = LastKnownGood(clock=clock, otherwise=FallbackResponse(503, content=b"nothing stored"))
    registry = BreakerRegistry(TRIP1, clock=clock)
    adapter = CircuitBreakerAdapter(registry=registry, fallback=lkg)
    with mounted(adapter) as session:
        fresh = session.get(srv.url + "/json?header=X-Kept:yes")
        assert len(lkg) == 1
        # Not stored: a partial read, private without credentials, no-store, a POST.
        with session.get(srv.url + "/bytes/5000", stream=True) as partial:
            next(partial.iter_content(10))
        session.get(srv.url + "/bytes/10?header=Cache-Control:private")
        session.get(srv.url + "/bytes/11?header=Cache-Control:no-store")
        session.post(srv.url + "/json")
        assert len(lkg) == 1
        # Streamed and read to the end: stored.
        with session.get(srv.url + "/stream?chunks=2", stream=True) as streamed:
            assert len(streamed.content) == 32
        assert len(lkg) == 2
        session.get(srv.url + "/status/503")  # trips the breaker
        srv.reset_counters()
        clock.advance(3)
        stale = session.get(srv.url + "/json?header=X-Kept:yes")
        head = session.head(srv.url + "/json?header=X-Kept:yes")
        other = session.get(srv.url + "/bytes/5000")
    assert srv.requests == 0
    assert (stale.status_code, stale.content) == (200, fresh.content)
    assert stale.json() == fresh.json()
    assert stale.headers["X-Kept"] == "yes"
    assert stale.headers["Age"] == "3"
    assert stale.headers["Warning"] == '110 - "Response is Stale"'
    assert stale.headers["X-Circuit-Breaker"] == "open"
    assert stale.circuit_breaker == {
        "key": srv.url,
        "state": "open",
        "fallback": True,
        "stale": True,
    }
    assert (head.status_code, head.content) == (200, b"")
    assert (other.status_code, other.content) == (503, b"nothing stored")


# -- options() ---------------------------------------------------------------------------------


def test_options_bypass_and_key(srv: FlakyServer) -> None:
    adapter = CircuitBreakerAdapter(config=TRIP1)
    with mounted(adapter) as session:
        with options(bypass=True):
            response = session.get(srv.url + "/status/503")
        assert not hasattr(response, "circuit_breaker")
        assert len(adapter.registry) == 0
        with options(key="payments"):
            response = session.get(srv.url + "/status/503")
        assert response.circuit_breaker == {"key": "payments", "state": "closed"}
        assert adapter.registry.get("payments").state is OPEN
        # The origin's own breaker was never used, and bypass gets past an open one.
        with options(key="payments"), options(bypass=True):
            assert session.get(srv.url + "/json").status_code == 200
