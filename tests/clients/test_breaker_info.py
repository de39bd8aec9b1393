"""``breaker_info(response)`` of every client module, through real clients on loopback.

Each client keeps the breaker marks where that client keeps such things
(httpx's ``response.extensions``, an attribute on requests' and aiohttp's
responses); ``breaker_info`` is the typed way to read them, the same for
every client: the very dict the response carries, or ``None`` when the
request went through no breaker.
"""

from __future__ import annotations

import asyncio
import copy
import pickle
from collections.abc import Callable
from typing import Any

import aiohttp
import httpx
import httpx2
import pytest
import requests

import circuitbreaker_http.aiohttp as cb_aiohttp
import circuitbreaker_http.httpx as cb_httpx
import circuitbreaker_http.httpx2 as cb_httpx2
import circuitbreaker_http.requests as cb_requests
from circuitbreaker_http import (
    BreakerConfig,
    BreakerRegistry,
    CircuitState,
    FallbackResponse,
    options,
)
from circuitbreaker_http._info import BreakerInfo
from circuitbreaker_http.testing import ManualClock
from circuitbreaker_http.testing._server import FlakyServer

# One GET through a client: (breaker_info(response), what the response carries
# under the raw name, the status). ``registry`` None means a client without breakers.
Fetch = Callable[[str, "BreakerRegistry | None", Any], tuple["BreakerInfo | None", object, int]]


def fetch_httpx(url: str, registry: BreakerRegistry | None, fallback: Any) -> Any:
    if registry is None:
        with httpx.Client() as plain:
            response = plain.get(url)
    else:
        transport = cb_httpx.CircuitBreakerTransport(registry=registry, fallback=fallback)
        with httpx.Client(transport=transport) as client:
            response = client.get(url)
    return (
        cb_httpx.breaker_info(response),
        response.extensions.get("circuit_breaker"),
        response.status_code,
    )


def fetch_httpx_async(url: str, registry: BreakerRegistry | None, fallback: Any) -> Any:
    async def run() -> httpx.Response:
        transport: httpx.AsyncBaseTransport | None = None
        if registry is not None:
            transport = cb_httpx.AsyncCircuitBreakerTransport(registry=registry, fallback=fallback)
        async with httpx.AsyncClient(transport=transport) as client:
            return await client.get(url)

    response = asyncio.run(run())
    return (
        cb_httpx.breaker_info(response),
        response.extensions.get("circuit_breaker"),
        response.status_code,
    )


def fetch_httpx2(url: str, registry: BreakerRegistry | None, fallback: Any) -> Any:
    transport: httpx2.BaseTransport | None = None
    if registry is not None:
        transport = cb_httpx2.CircuitBreakerTransport(registry=registry, fallback=fallback)
    with httpx2.Client(transport=transport) as client:
        response = client.get(url)
    return (
        cb_httpx2.breaker_info(response),
        response.extensions.get("circuit_breaker"),
        response.status_code,
    )


def fetch_httpx2_async(url: str, registry: BreakerRegistry | None, fallback: Any) -> Any:
    async def run() -> httpx2.Response:
        transport: httpx2.AsyncBaseTransport | None = None
        if registry is not None:
            transport = cb_httpx2.AsyncCircuitBreakerTransport(registry=registry, fallback=fallback)
        async with httpx2.AsyncClient(transport=transport) as client:
            return await client.get(url)

    response = asyncio.run(run())
    return (
        cb_httpx2.breaker_info(response),
        response.extensions.get("circuit_breaker"),
        response.status_code,
    )


def fetch_requests(url: str, registry: BreakerRegistry | None, fallback: Any) -> Any:
    with requests.Session() as session:
        if registry is not None:
            adapter = cb_requests.CircuitBreakerAdapter(registry=registry, fallback=fallback)
            session.mount("http://", adapter)
        response = session.get(url, timeout=10)
    return (
        cb_requests.breaker_info(response),
        getattr(response, "circuit_breaker", None),
        response.status_code,
    )


def fetch_aiohttp(url: str, registry: BreakerRegistry | None, fallback: Any) -> Any:
    async def run() -> Any:
        middlewares: list[cb_aiohttp.CircuitBreakerMiddleware] = []
        if registry is not None:
            middlewares.append(
                cb_aiohttp.CircuitBreakerMiddleware(registry=registry, fallback=fallback)
            )
        async with (
            aiohttp.ClientSession(middlewares=middlewares) as session,
            session.get(url) as response,
        ):
            await response.read()
            return (
                cb_aiohttp.breaker_info(response),
                getattr(response, "circuit_breaker", None),
                response.status,
            )

    return asyncio.run(run())


FETCHES: dict[str, Fetch] = {
    "httpx": fetch_httpx,
    "httpx-async": fetch_httpx_async,
    "httpx2": fetch_httpx2,
    "httpx2-async": fetch_httpx2_async,
    "requests": fetch_requests,
    "aiohttp": fetch_aiohttp,
}


@pytest.fixture(params=sorted(FETCHES))
def fetch(request: pytest.FixtureRequest) -> Fetch:
    return FETCHES[str(request.param)]


def test_a_response_through_a_breaker_carries_its_key_and_state(
    fetch: Fetch, flaky_server: FlakyServer
) -> None:
    registry = BreakerRegistry()
    for path, status in (("/", 200), ("/status/503", 503)):
        info, raw, got = fetch(flaky_server.url + path, registry, None)
        assert got == status
        assert info == {"key": flaky_server.url, "state": "closed"}
        assert info is raw  # the very mapping the response carries, not a copy
    assert registry.get(flaky_server.url).snapshot().calls == 2


def test_a_trial_says_half_open(fetch: Fetch, flaky_server: FlakyServer) -> None:
    clock = ManualClock()
    config = BreakerConfig(consecutive_failures=1, open_duration=10.0)
    registry = BreakerRegistry(config, clock=clock)
    fetch(flaky_server.url + "/status/503", registry, None)
    assert registry.get(flaky_server.url).state is CircuitState.OPEN
    clock.advance(10.0)
    info, _, status = fetch(flaky_server.url + "/", registry, None)
    assert status == 200
    assert info == {"key": flaky_server.url, "state": "half_open"}


def test_a_fallbacks_response_says_so(fetch: Fetch, flaky_server: FlakyServer) -> None:
    registry = BreakerRegistry()
    registry.get(flaky_server.url).force_open()
    info, raw, status = fetch(flaky_server.url + "/", registry, FallbackResponse(503))
    assert status == 503
    assert info is not None and info is raw
    assert (info["key"], info["state"], info.get("fallback")) == (
        flaky_server.url,
        "forced_open",
        True,
    )
    assert "stale" not in info
    assert flaky_server.requests == 0


def test_marks_are_read_only_and_their_copies_are_plain_dicts(
    fetch: Fetch, flaky_server: FlakyServer
) -> None:
    # Responses one breaker lets through closed share their marks: a change
    # would show on all of them, so every kind of mark refuses changes alike.
    clock = ManualClock()
    registry = BreakerRegistry(
        BreakerConfig(consecutive_failures=1, open_duration=10.0), clock=clock
    )
    marks = [fetch(flaky_server.url + "/", registry, None)[1]]
    marks.append(fetch(flaky_server.url + "/status/503", registry, None)[1])  # trips it
    marks.append(fetch(flaky_server.url + "/", registry, FallbackResponse(503))[1])
    clock.advance(10.0)
    marks.append(fetch(flaky_server.url + "/", registry, None)[1])  # the trial
    assert [m["state"] for m in marks] == ["closed", "closed", "open", "half_open"]  # type: ignore[index]
    for mark in marks:
        assert isinstance(mark, dict)
        with pytest.raises(TypeError, match="read-only"):
            mark["state"] = "closed"
        with pytest.raises(TypeError, match="read-only"):
            mark.update(key="other")
        with pytest.raises(TypeError, match="read-only"):
            mark.pop("key")
        copied = dict(mark)
        copied["note"] = "mine"
        assert type(copy.copy(mark)) is dict and type(pickle.loads(pickle.dumps(mark))) is dict
        assert "note" not in mark and copied["key"] == flaky_server.url


def test_no_breaker_no_info(fetch: Fetch, flaky_server: FlakyServer) -> None:
    assert fetch(flaky_server.url + "/", None, None)[:2] == (None, None)
    registry = BreakerRegistry()
    with options(bypass=True):
        info, raw, status = fetch(flaky_server.url + "/", registry, None)
    assert (info, raw, status) == (None, None, 200)
    assert len(registry) == 0


def test_marks_that_are_not_a_breakers_read_as_none() -> None:
    # Another library's value under the same name, or a partial one, is no breaker's.
    for value in ({"bypass": True}, {"key": "k"}, "closed", None, [("key", "k")]):
        response = httpx.Response(200, extensions={"circuit_breaker": value})
        assert cb_httpx.breaker_info(response) is None, value
        response2 = httpx2.Response(200, extensions={"circuit_breaker": value})
        assert cb_httpx2.breaker_info(response2) is None, value
        plain = requests.Response()
        plain.circuit_breaker = value  # type: ignore[attr-defined]
        assert cb_requests.breaker_info(plain) is None, value
    assert cb_requests.breaker_info(requests.Response()) is None


def test_every_client_module_exports_it() -> None:
    for module in (cb_httpx, cb_httpx2, cb_requests, cb_aiohttp):
        assert "breaker_info" in module.__all__ and "BreakerInfo" in module.__all__
        assert module.BreakerInfo is BreakerInfo
        assert module.breaker_info.__doc__
        assert module.breaker_info.__module__ == module.__name__
