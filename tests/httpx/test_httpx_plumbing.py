"""Transport plumbing: the inner transport, closing, mounts, shared registries, retry loops.

Every test runs with httpx and with httpx2 (the ``flavour`` fixture of ``conftest.py``).
Composition with httpx-retries and mocking with respx, which know httpx only, are in
``test_httpx_only.py``.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
from hx_support import BASE, COUNT_ONLY, TRIP1, Flavour, Upstream, make_client

from circuitbreaker_http import BreakerConfig, BreakerRegistry, CircuitOpenError
from circuitbreaker_http.testing import ManualClock

# -- transport plumbing ------------------------------------------------------------------------


def test_default_inner_transport_gets_the_keyword_arguments(flavour: Flavour) -> None:
    hx, cb = flavour
    limits = hx.Limits(max_connections=7, max_keepalive_connections=3)
    transport = cb.CircuitBreakerTransport(verify=False, http2=False, limits=limits, retries=2)
    try:
        inner = transport.transport
        assert type(inner) is hx.HTTPTransport
        pool = inner._pool
        assert pool._max_connections == 7
        assert pool._max_keepalive_connections == 3
        assert pool._retries == 2
        assert pool._http2 is False
        assert pool._ssl_context.verify_mode == ssl.CERT_NONE
    finally:
        transport.close()


@pytest.mark.anyio
async def test_default_async_inner_transport_gets_the_keyword_arguments(flavour: Flavour) -> None:
    hx, cb = flavour
    transport = cb.AsyncCircuitBreakerTransport(
        limits=hx.Limits(max_connections=5), retries=1, verify=False
    )
    try:
        inner = transport.transport
        assert type(inner) is hx.AsyncHTTPTransport
        assert inner._pool._max_connections == 5
        assert inner._pool._retries == 1
        assert inner._pool._ssl_context.verify_mode == ssl.CERT_NONE
    finally:
        await transport.aclose()


def test_constructor_errors(flavour: Flavour) -> None:
    hx, cb = flavour
    mock = hx.MockTransport(Upstream(hx))
    with pytest.raises(TypeError):
        cb.CircuitBreakerTransport(mock, verify=False)
    with pytest.raises(TypeError):
        cb.AsyncCircuitBreakerTransport(mock, retries=1)
    registry = BreakerRegistry()
    for extra in ({"config": TRIP1}, {"rules": {}}, {"key": lambda m, u: "k"}):
        with pytest.raises(TypeError):
            cb.CircuitBreakerTransport(mock, registry=registry, **extra)
        with pytest.raises(TypeError):
            cb.AsyncCircuitBreakerTransport(mock, registry=registry, **extra)
    transport = cb.CircuitBreakerTransport(mock, registry=registry)
    assert transport.registry is registry
    built = cb.CircuitBreakerTransport(mock, config=TRIP1, rules={"a.test": COUNT_ONLY})
    assert built.registry.default is TRIP1
    assert built.registry.config_for("http://a.test") is COUNT_ONLY


def spy_transport(hx: ModuleType) -> Any:
    """An inner transport of ``hx``, sync and async, that answers 200 and counts its closes."""

    class SpyTransport(hx.BaseTransport, hx.AsyncBaseTransport):
        def __init__(self) -> None:
            self.closed = 0

        def handle_request(self, request: hx.Request) -> hx.Response:
            return hx.Response(200)

        async def handle_async_request(self, request: hx.Request) -> hx.Response:
            return hx.Response(200)

        def close(self) -> None:
            self.closed += 1

        async def aclose(self) -> None:
            self.closed += 1

    return SpyTransport()


def test_close_closes_the_inner_transport(flavour: Flavour) -> None:
    hx, cb = flavour
    spy = spy_transport(hx)
    with hx.Client(transport=cb.CircuitBreakerTransport(spy)) as client:
        client.get("http://a.test/")
    assert spy.closed == 1
    spy = spy_transport(hx)
    cb.CircuitBreakerTransport(spy).close()
    assert spy.closed == 1


@pytest.mark.anyio
async def test_aclose_closes_the_inner_transport(flavour: Flavour) -> None:
    hx, cb = flavour
    spy = spy_transport(hx)
    async with hx.AsyncClient(transport=cb.AsyncCircuitBreakerTransport(spy)) as client:
        await client.get("http://a.test/")
    assert spy.closed == 1


def test_mounts_and_a_registry_shared_by_two_clients(flavour: Flavour) -> None:
    hx, cb = flavour
    upstream = Upstream(hx)
    registry = BreakerRegistry(TRIP1, clock=ManualClock())
    one = hx.Client(
        mounts={
            "http://": cb.CircuitBreakerTransport(hx.MockTransport(upstream), registry=registry)
        }
    )
    two = hx.Client(
        transport=cb.CircuitBreakerTransport(hx.MockTransport(upstream), registry=registry)
    )
    with one, two:
        assert one.get("http://a.test/status/503").status_code == 503
        with pytest.raises(CircuitOpenError):
            two.get("http://a.test/")
        assert two.get("http://b.test/").status_code == 200
    assert len(upstream.calls) == 2
    assert sorted(b.name for b in registry) == ["http://a.test", "http://b.test"]


@pytest.mark.anyio
async def test_a_registry_shared_by_sync_and_async_transports(flavour: Flavour) -> None:
    hx, cb = flavour
    upstream = Upstream(hx)
    registry = BreakerRegistry(TRIP1, clock=ManualClock())
    sync_client = hx.Client(
        transport=cb.CircuitBreakerTransport(hx.MockTransport(upstream), registry=registry)
    )
    async_client = hx.AsyncClient(
        transport=cb.AsyncCircuitBreakerTransport(hx.MockTransport(upstream), registry=registry)
    )
    with sync_client:
        sync_client.get(f"{BASE}/status/500")
    async with async_client:
        with pytest.raises(CircuitOpenError):
            await async_client.get(f"{BASE}/")
    assert len(upstream.calls) == 1


# -- retry loops ------------------------------------------------------------------------------


def test_retry_predicates_should_exclude_circuit_open_errors(flavour: Flavour) -> None:
    hx = flavour.hx
    upstream = Upstream(hx)
    config = BreakerConfig(consecutive_failures=2, failure_rate=None, open_duration=10.0)
    client, _registry = make_client(flavour, upstream, config)

    def with_retries(send: Callable[[], hx.Response], retry_if: Any) -> tuple[int, Any]:
        """A tiny tenacity/stamina-style loop: up to 10 attempts while ``retry_if(exc)``."""
        attempts = 0
        while True:
            attempts += 1
            try:
                return attempts, send()
            except Exception as exc:
                if attempts >= 10 or not retry_if(exc):
                    return attempts, exc

    def naive(exc: Exception) -> bool:
        return isinstance(exc, hx.TransportError)

    def careful(exc: Exception) -> bool:
        return isinstance(exc, hx.TransportError) and not isinstance(exc, CircuitOpenError)

    with client:
        attempts, outcome = with_retries(lambda: client.get("/raise/connect_error"), careful)
        # two real failures open the circuit; the third attempt is refused and not retried
        assert attempts == 3 and isinstance(outcome, CircuitOpenError)
        assert len(upstream.calls) == 2
        attempts, outcome = with_retries(lambda: client.get("/"), naive)
        # a naive predicate retries into the open circuit until it gives up
        assert attempts == 10 and isinstance(outcome, CircuitOpenError)
    assert len(upstream.calls) == 2
