"""Typical user code of the client integrations, checked with ``mypy --strict`` (never run).

One function per client: build the client the way the README does, send a
request, read the breaker marks with that client's ``breaker_info``, handle
the short-circuit error both as ``CircuitOpenError`` and as the client's own
exception. See ``user_code.py`` for why nothing here runs.
"""

from __future__ import annotations

import aiohttp
import httpx
import httpx2
import requests
from typing_extensions import assert_type

import circuitbreaker_http
import circuitbreaker_http.aiohttp as cb_aiohttp
import circuitbreaker_http.httpx as cb_httpx
import circuitbreaker_http.httpx2 as cb_httpx2
import circuitbreaker_http.requests as cb_requests
from circuitbreaker_http import (
    BreakerConfig,
    BreakerRegistry,
    CircuitOpenError,
    CircuitState,
    FallbackResponse,
    by_route,
    options,
)

registry = BreakerRegistry(
    BreakerConfig(failure_statuses=[500, 502, 503, 504]),
    rules={"payments.example.com": BreakerConfig(failure_rate=0.2)},
    key=by_route("/users/{id}"),
)


def describe(info: cb_httpx.BreakerInfo | None) -> str:
    """What users do with the marks; the one ``BreakerInfo`` type serves every client."""
    if info is None:
        return "no breaker"
    assert_type(info["key"], str)
    state = info["state"]
    assert_type(CircuitState(state), CircuitState)
    if state == "half_open":
        return f"trial request to {info['key']}"
    if info.get("fallback", False) or info.get("stale") is True:
        return "served by a fallback"
    return state


def same_info_type_everywhere() -> None:
    # One TypedDict, re-exported by each client module.
    assert cb_httpx.BreakerInfo is cb_httpx2.BreakerInfo is cb_requests.BreakerInfo
    assert cb_aiohttp.BreakerInfo is cb_httpx.BreakerInfo


# -- httpx ------------------------------------------------------------------------------------


def httpx_sync() -> None:
    transport = cb_httpx.CircuitBreakerTransport(registry=registry)
    assert_type(transport.registry, BreakerRegistry)
    with httpx.Client(transport=transport, base_url="https://api.example.com") as client:
        try:
            response = client.get("/users/42")
        except CircuitOpenError as error:
            print(f"{error.name} is {error.state.value}; retry in {error.retry_after}")
            return
        info = cb_httpx.breaker_info(response)
        assert_type(info, cb_httpx.BreakerInfo | None)
        print(describe(info))
        for hop in response.history:
            print(describe(cb_httpx.breaker_info(hop)))
    # Built from the top-level names, with the inner transport's own options.
    top = circuitbreaker_http.CircuitBreakerTransport(config=BreakerConfig(), retries=2)
    with httpx.Client(transport=top) as client, options(bypass=True):
        client.get("https://status.example.com/health")
    wrapped = httpx.HTTPTransport(http2=False)
    httpx.Client(transport=cb_httpx.CircuitBreakerTransport(wrapped, config=BreakerConfig()))


async def httpx_async() -> None:
    transport = cb_httpx.AsyncCircuitBreakerTransport(
        config=BreakerConfig(slow_call_duration=1.0), fallback=FallbackResponse(503)
    )
    async with httpx.AsyncClient(transport=transport) as client:
        try:
            response = await client.get("https://api.example.com/users/42")
        except httpx.TransportError as error:
            # The short circuit is a TransportError too: a retry helper must skip it.
            if isinstance(error, CircuitOpenError):
                assert_type(error.retry_after, float | None)
            raise
        assert_type(cb_httpx.breaker_info(response), cb_httpx.BreakerInfo | None)
    await transport.aclose()


def httpx_open_error() -> None:
    error = cb_httpx.CircuitOpenTransportError("https://api.example.com", CircuitState.OPEN, 3.0)
    assert isinstance(error, httpx.TransportError)
    assert_type(error.name, str)


# -- httpx2 -----------------------------------------------------------------------------------


def httpx2_sync() -> None:
    transport = cb_httpx2.CircuitBreakerTransport(registry=registry)
    with httpx2.Client(transport=transport) as client:
        response = client.get("https://api.example.com/users/1")
        info = cb_httpx2.breaker_info(response)
        assert_type(info, cb_httpx2.BreakerInfo | None)
        print(describe(info))


async def httpx2_async() -> None:
    transport = cb_httpx2.AsyncCircuitBreakerTransport(config=BreakerConfig())
    async with httpx2.AsyncClient(transport=transport) as client:
        try:
            response = await client.get("https://api.example.com/")
        except cb_httpx2.CircuitOpenTransportError as error:
            assert_type(error.state, CircuitState)
            return
        assert_type(cb_httpx2.breaker_info(response), cb_httpx2.BreakerInfo | None)


# -- requests ---------------------------------------------------------------------------------


def requests_session() -> None:
    adapter = cb_requests.CircuitBreakerAdapter(registry=registry, max_retries=2)
    assert_type(adapter.registry, BreakerRegistry)
    session = requests.Session()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    try:
        response = session.get("https://api.example.com/users/42", timeout=5)
    except requests.ConnectionError as error:
        if isinstance(error, CircuitOpenError):
            print(f"short-circuited: {error}")
        return
    # response.circuit_breaker is no attribute of requests.Response for a type
    # checker; breaker_info is the typed way to it.
    info = cb_requests.breaker_info(response)
    assert_type(info, cb_requests.BreakerInfo | None)
    print(describe(info))
    for hop in response.history:
        print(describe(cb_requests.breaker_info(hop)))
    top = circuitbreaker_http.CircuitBreakerAdapter(config=BreakerConfig(), pool_maxsize=20)
    session.mount("https://", top)
    session.close()


def requests_open_error() -> None:
    error = cb_requests.CircuitOpenRequestsError("k", CircuitState.HALF_OPEN)
    assert_type(error, cb_requests.CircuitOpenRequestsError)
    assert isinstance(error, requests.exceptions.ConnectionError)
    assert_type(error.retry_after, float | None)


# -- aiohttp ----------------------------------------------------------------------------------


async def aiohttp_session() -> None:
    middleware = cb_aiohttp.CircuitBreakerMiddleware(registry=registry)
    assert_type(middleware.registry, BreakerRegistry)
    top = circuitbreaker_http.CircuitBreakerMiddleware(config=BreakerConfig())
    async with aiohttp.ClientSession(middlewares=[middleware, top]) as session:
        try:
            async with session.get("https://api.example.com/users/42") as response:
                info = cb_aiohttp.breaker_info(response)
                assert_type(info, cb_aiohttp.BreakerInfo | None)
                print(describe(info), await response.text())
        except cb_aiohttp.CircuitOpenClientError as error:
            assert isinstance(error, aiohttp.ClientConnectionError)
            assert_type(error.retry_after, float | None)
        except aiohttp.ClientConnectionError:
            raise
        async with session.get("https://api.example.com/", middlewares=[middleware]) as response:
            assert_type(cb_aiohttp.breaker_info(response), cb_aiohttp.BreakerInfo | None)


# -- one registry, every client ---------------------------------------------------------------


def one_registry_for_every_client() -> None:
    shared = BreakerRegistry()
    httpx.Client(transport=cb_httpx.CircuitBreakerTransport(registry=shared))
    httpx2.Client(transport=cb_httpx2.CircuitBreakerTransport(registry=shared))
    requests.Session().mount("https://", cb_requests.CircuitBreakerAdapter(registry=shared))
    cb_aiohttp.CircuitBreakerMiddleware(registry=shared)
    for breaker in shared:
        print(breaker.name, breaker.state.value)
