"""The requests adapter's fallbacks: checked when built, complete when served.

Real ``requests.Session`` objects (and ``adapter.send`` called directly, as
code that drives an adapter by hand does) against the ``flaky_server``
fixture; time moves on a ``ManualClock``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import requests
from rq_support import TRIP1, extension, mounted

from circuitbreaker_http import (
    BreakerRegistry,
    CircuitBreaker,
    FallbackResponse,
    LastKnownGood,
)
from circuitbreaker_http._fallback import StoredResponse
from circuitbreaker_http._outcome import FallbackPlan, Gate
from circuitbreaker_http.requests import CircuitBreakerAdapter
from circuitbreaker_http.testing import FlakyServer, ManualClock


def tripped(server: FlakyServer, fallback: Any) -> tuple[CircuitBreakerAdapter, CircuitBreaker]:
    clock = ManualClock()
    registry = BreakerRegistry(TRIP1, clock=clock)
    breaker = registry.get(server.url)
    breaker.record(breaker.acquire(), True)
    return CircuitBreakerAdapter(registry=registry, fallback=fallback), breaker


# -- the shape is checked when the adapter is built ----------------------------------------------


@pytest.mark.parametrize(
    "fallback",
    [
        lambda: None,
        lambda request: None,
        lambda request, error, extra: None,
        LastKnownGood(otherwise=lambda request: None),
    ],
    ids=["no-arguments", "one-argument", "three-arguments", "lkg-otherwise"],
)
def test_a_fallback_that_cannot_take_request_and_error_is_refused_when_built(
    fallback: Any,
) -> None:
    with pytest.raises(TypeError, match=r"\(request, error\)"):
        CircuitBreakerAdapter(fallback=fallback)


def test_fallbacks_of_the_right_shape_are_accepted() -> None:
    def two(request: Any, error: Any) -> None:
        return None

    def flexible(*args: Any) -> None:
        return None

    for fallback in (None, FallbackResponse(503), LastKnownGood(), two, flexible):
        CircuitBreakerAdapter(fallback=fallback).close()


# -- a synthetic response is complete ------------------------------------------------------------


def _assert_complete(
    response: requests.Response,
    request: requests.PreparedRequest,
    status: int,
    reason: str,
    body: bytes,
) -> None:
    assert (response.status_code, response.reason) == (status, reason)
    assert response.request is request
    assert response.url == request.url
    assert isinstance(response.elapsed, timedelta)
    assert response.headers["X-Circuit-Breaker"] == "open"
    assert response.raw.headers["X-Circuit-Breaker"] == "open"
    assert (response.raw.status, response.raw.reason) == (status, reason)
    # raw is a readable stream of the same bytes, as on a network response.
    assert response.raw.read() == body
    assert extension(response)["fallback"] is True


def test_a_fallback_response_sent_by_hand_is_complete(flaky_server: FlakyServer) -> None:
    fallback = FallbackResponse(418, content=b"teapot", headers={"X-From": "fallback"})
    adapter, _ = tripped(flaky_server, fallback)
    request = requests.Request("GET", flaky_server.url + "/json?q=1").prepare()
    response = adapter.send(request, stream=True)
    _assert_complete(response, request, 418, "I'm a Teapot", b"teapot")
    assert response.headers["X-From"] == "fallback"
    assert response.headers["Content-Length"] == "6"
    assert response.headers["Retry-After"] == "10"
    assert flaky_server.requests == 0


def test_a_last_known_good_response_is_complete(flaky_server: FlakyServer) -> None:
    clock = ManualClock()
    lkg = LastKnownGood(clock=clock)
    registry = BreakerRegistry(TRIP1, clock=clock)
    adapter = CircuitBreakerAdapter(registry=registry, fallback=lkg)
    url = flaky_server.url + "/bytes/300?header=X-Kept:yes"
    with mounted(adapter) as session:
        fresh = session.get(url)
    assert len(lkg) == 1
    breaker = registry.get(flaky_server.url)
    breaker.record(breaker.acquire(), True)
    clock.advance(4)
    flaky_server.reset_counters()
    get = requests.Request("GET", url).prepare()
    stale = adapter.send(get, stream=True)
    _assert_complete(stale, get, 200, "OK", fresh.content)
    assert stale.headers["X-Kept"] == "yes"
    assert stale.headers["Age"] == "4"
    assert stale.headers["Content-Length"] == "300"
    assert extension(stale)["stale"] is True
    head = requests.Request("HEAD", url).prepare()
    stale_head = adapter.send(head, stream=True)
    _assert_complete(stale_head, head, 200, "OK", b"")
    # What the upstream would say to HEAD: the length of the body a GET gets.
    assert stale_head.headers["Content-Length"] == "300"
    assert flaky_server.requests == 0


def test_the_stored_headers_are_served_as_the_fallback_plan_gives_them(
    flaky_server: FlakyServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The adapter adds nothing of its own to a stored response's headers but its
    # marks (X-Circuit-Breaker, Retry-After, the framing): the stale marks and
    # Age are the plan's, one value each.
    lkg = LastKnownGood()
    adapter, _ = tripped(flaky_server, lkg)
    request = requests.Request("GET", flaky_server.url + "/doc").prepare()
    entry = StoredResponse(200, "OK", (("ETag", "x1"),), b"body", 0.0, ())
    plan = FallbackPlan(
        stored=entry,
        headers=[("ETag", "x1"), ("Age", "107"), ("Warning", '110 - "Response is Stale"')],
        content=b"body",
    )
    monkeypatch.setattr(Gate, "fallback_for", lambda self, method, url, header, key: plan)
    response = adapter.send(request)
    assert list(response.raw.headers.items()) == [
        ("ETag", "x1"),
        ("Age", "107"),
        ("Warning", '110 - "Response is Stale"'),
        ("Content-Length", "4"),
        ("X-Circuit-Breaker", "open"),
        ("Retry-After", "10"),
    ]
    assert plan.headers == [
        ("ETag", "x1"),
        ("Age", "107"),
        ("Warning", '110 - "Response is Stale"'),
    ]  # the plan itself is left as it was
