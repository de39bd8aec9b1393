"""httpx and httpx2 side by side: separate error types, one registry, ``alias_httpx()``.

The other files run every test once per client library; these tests are about the
two together. ``httpx2.alias_httpx()`` is process-wide and must come before anything
imports httpx, so its test runs in a fresh interpreter.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import httpx
import httpx2
import pytest
from hx_support import BASE, KEY, TRIP1, Flavour, Upstream, snap

import circuitbreaker_http
import circuitbreaker_http.httpx
import circuitbreaker_http.httpx2
from circuitbreaker_http import (
    BreakerRegistry,
    CircuitOpenError,
    CircuitState,
    FallbackResponse,
    LastKnownGood,
)
from circuitbreaker_http.testing import ManualClock
from circuitbreaker_http.testing._server import FlakyServer

HTTPX = Flavour(httpx, circuitbreaker_http.httpx)
HTTPX2 = Flavour(httpx2, circuitbreaker_http.httpx2)
OTHER = {"httpx": HTTPX2, "httpx2": HTTPX}


# -- separate types ----------------------------------------------------------------------------


def test_each_short_circuit_error_is_its_own_clients_transport_error_only(
    flavour: Flavour,
) -> None:
    hx, cb = flavour
    other = OTHER[flavour.name].hx
    error = cb.CircuitOpenTransportError
    assert issubclass(error, CircuitOpenError)
    assert issubclass(error, hx.TransportError)
    assert not issubclass(error, other.TransportError)
    assert issubclass(cb.CircuitBreakerTransport, hx.BaseTransport)
    assert not issubclass(cb.CircuitBreakerTransport, other.BaseTransport)
    assert issubclass(cb.AsyncCircuitBreakerTransport, hx.AsyncBaseTransport)
    assert not issubclass(cb.AsyncCircuitBreakerTransport, other.AsyncBaseTransport)
    assert error is not OTHER[flavour.name].cb.CircuitOpenTransportError
    assert (error.__module__, cb.CircuitBreakerTransport.__module__) == (cb.__name__, cb.__name__)

    transport = cb.CircuitBreakerTransport(hx.MockTransport(Upstream(hx)))
    transport.registry.get(KEY).force_open()
    with hx.Client(transport=transport, base_url=BASE) as client:
        try:
            client.get("/")
        except other.TransportError:
            pytest.fail(f"an {flavour.name} short circuit is an {other.__name__}.TransportError")
        except hx.TransportError as exc:
            caught = exc
        else:
            pytest.fail("not short-circuited")
    assert type(caught) is error
    assert isinstance(caught.request, hx.Request)


def test_the_top_level_names_are_httpxs() -> None:
    for name in ("CircuitBreakerTransport", "AsyncCircuitBreakerTransport"):
        assert getattr(circuitbreaker_http, name) is getattr(circuitbreaker_http.httpx, name)
        assert getattr(circuitbreaker_http, name) is not getattr(circuitbreaker_http.httpx2, name)
    error = circuitbreaker_http.CircuitOpenTransportError
    assert error is circuitbreaker_http.httpx.CircuitOpenTransportError
    assert issubclass(error, httpx.TransportError)
    assert not issubclass(error, httpx2.TransportError)


# -- one registry, both clients ------------------------------------------------------------------


def test_one_registry_serves_an_httpx_and_an_httpx2_client_at_once() -> None:
    clock = ManualClock()
    registry = BreakerRegistry(TRIP1, clock=clock)
    up1, up2 = Upstream(httpx), Upstream(httpx2)
    one = httpx.Client(
        transport=circuitbreaker_http.httpx.CircuitBreakerTransport(
            httpx.MockTransport(up1), registry=registry
        ),
        base_url=BASE,
    )
    two = httpx2.Client(
        transport=circuitbreaker_http.httpx2.CircuitBreakerTransport(
            httpx2.MockTransport(up2), registry=registry
        ),
        base_url=BASE,
    )
    with one, two:
        # a trip through httpx short-circuits httpx2, with httpx2's error
        assert one.get("/status/503").status_code == 503
        with pytest.raises(circuitbreaker_http.httpx2.CircuitOpenTransportError) as caught2:
            two.get("/")
        assert isinstance(caught2.value, httpx2.TransportError)
        assert not isinstance(caught2.value, httpx.TransportError)
        assert (caught2.value.name, caught2.value.state) == (KEY, CircuitState.OPEN)
        # a trial through httpx2 closes the breaker for httpx too
        clock.advance(10.0)
        trial = two.get("/")
        assert trial.extensions["circuit_breaker"] == {"key": KEY, "state": "half_open"}
        assert one.get("/").extensions["circuit_breaker"] == {"key": KEY, "state": "closed"}
        # and the other way round
        assert two.get("/status/500").status_code == 500
        with pytest.raises(circuitbreaker_http.httpx.CircuitOpenTransportError) as caught1:
            one.get("/")
        assert isinstance(caught1.value, httpx.TransportError)
        assert not isinstance(caught1.value, httpx2.TransportError)
    assert [b.name for b in registry] == [KEY]
    s = snap(registry)
    assert (s.state, s.open_count) == (CircuitState.OPEN, 1)  # closed in between: n=1 again
    assert (len(up1.calls), len(up2.calls)) == (2, 2)


@pytest.mark.anyio
async def test_one_registry_serves_httpx_and_httpx2_async_and_sync_clients() -> None:
    registry = BreakerRegistry(TRIP1, clock=ManualClock())
    up1, up2 = Upstream(httpx), Upstream(httpx2)
    sync_one = httpx.Client(
        transport=circuitbreaker_http.httpx.CircuitBreakerTransport(
            httpx.MockTransport(up1), registry=registry
        ),
        base_url=BASE,
    )
    async_one = httpx.AsyncClient(
        transport=circuitbreaker_http.httpx.AsyncCircuitBreakerTransport(
            httpx.MockTransport(up1), registry=registry
        ),
        base_url=BASE,
    )
    async_two = httpx2.AsyncClient(
        transport=circuitbreaker_http.httpx2.AsyncCircuitBreakerTransport(
            httpx2.MockTransport(up2), registry=registry
        ),
        base_url=BASE,
    )
    async with async_one, async_two:
        assert (await async_two.get("/status/502")).status_code == 502
        with pytest.raises(circuitbreaker_http.httpx.CircuitOpenTransportError):
            await async_one.get("/")
        with sync_one, pytest.raises(circuitbreaker_http.httpx.CircuitOpenTransportError):
            sync_one.get("/")
        registry.get(KEY).reset()
        async with anyio.create_task_group() as tg:
            for client in (async_one, async_two):
                tg.start_soon(client.get, "/")
    assert snap(registry).calls == 2
    assert (len(up1.calls), len(up2.calls)) == (1, 2)


def test_a_last_known_good_stored_through_httpx_is_served_to_httpx2() -> None:
    lkg = LastKnownGood(clock=ManualClock())
    registry = BreakerRegistry(TRIP1, clock=ManualClock())
    one = httpx.Client(
        transport=circuitbreaker_http.httpx.CircuitBreakerTransport(
            httpx.MockTransport(Upstream(httpx)), registry=registry, fallback=lkg
        ),
        base_url=BASE,
    )
    two = httpx2.Client(
        transport=circuitbreaker_http.httpx2.CircuitBreakerTransport(
            httpx2.MockTransport(Upstream(httpx2)),
            registry=registry,
            fallback=LastKnownGood(otherwise=FallbackResponse(599)),
        ),
        base_url=BASE,
    )
    three = httpx2.Client(
        transport=circuitbreaker_http.httpx2.CircuitBreakerTransport(
            httpx2.MockTransport(Upstream(httpx2)), registry=registry, fallback=lkg
        ),
        base_url=BASE,
    )
    with one, two, three:
        assert one.get("/doc?header=ETag:x1").content == b"ok"
        registry.get(KEY).force_open()
        stale = three.get("/doc?header=ETag:x1")
        other_store = two.get("/doc?header=ETag:x1")
    assert isinstance(stale, httpx2.Response)
    assert (stale.status_code, stale.content, stale.headers["etag"]) == (200, b"ok", "x1")
    assert stale.extensions["circuit_breaker"]["stale"] is True
    assert other_store.status_code == 599  # each LastKnownGood keeps its own store


def test_one_registry_serves_httpx_and_httpx2_over_real_sockets(
    flaky_server: FlakyServer,
) -> None:
    registry = BreakerRegistry(TRIP1, clock=ManualClock())
    url = flaky_server.url
    one = httpx.Client(
        transport=circuitbreaker_http.httpx.CircuitBreakerTransport(registry=registry)
    )
    two = httpx2.Client(
        transport=circuitbreaker_http.httpx2.CircuitBreakerTransport(registry=registry)
    )
    with one, two:
        with two.stream("GET", f"{url}/stream?chunks=3") as response:
            response.read()
        with pytest.raises(httpx.RemoteProtocolError):
            one.get(f"{url}/short")
        with pytest.raises(circuitbreaker_http.httpx2.CircuitOpenTransportError):
            two.get(f"{url}/json")
    s = snap(registry, url)
    assert (s.state, s.calls, s.failures) == (CircuitState.OPEN, 2, 1)
    assert flaky_server.requests == 2


# -- httpx2.alias_httpx() --------------------------------------------------------------------

ALIASED = textwrap.dedent(
    """
    import asyncio
    import sys

    import httpx2

    assert "httpx" not in sys.modules, "something imported httpx before the alias"
    httpx2.alias_httpx()

    import httpx

    import circuitbreaker_http
    import circuitbreaker_http.httpx as cb
    from circuitbreaker_http import BreakerConfig, BreakerRegistry, CircuitOpenError
    from circuitbreaker_http.testing import ManualClock
    from circuitbreaker_http.testing._server import FlakyServer

    assert httpx is httpx2
    assert issubclass(cb.CircuitOpenTransportError, httpx2.TransportError)
    assert issubclass(cb.CircuitBreakerTransport, httpx2.BaseTransport)
    assert circuitbreaker_http.CircuitBreakerTransport is cb.CircuitBreakerTransport

    TRIP1 = BreakerConfig(consecutive_failures=1, failure_rate=None, open_duration=10.0)


    def short_circuit(send, url):
        try:
            send(url)
        except httpx2.TransportError as exc:
            assert isinstance(exc, CircuitOpenError), exc
            assert isinstance(exc, cb.CircuitOpenTransportError), exc
            assert isinstance(exc.request, httpx2.Request)
            assert exc.request.url == url
            return exc
        raise AssertionError("not short-circuited")


    # an httpx2 client and MockTransport around circuitbreaker_http.httpx
    handler = lambda request: httpx2.Response(503, content=b"down")
    registry = BreakerRegistry(TRIP1, clock=ManualClock())
    transport = cb.CircuitBreakerTransport(httpx2.MockTransport(handler), registry=registry)
    with httpx2.Client(transport=transport) as client:
        response = client.get("http://up.test/")
        assert (response.status_code, response.content) == (503, b"down")
        assert response.extensions["circuit_breaker"]["key"] == "http://up.test"
        error = short_circuit(client.get, "http://up.test/x")
        assert error.name == "http://up.test"

    # the default inner transport is httpx2's, over a real socket, bodies streamed
    with FlakyServer() as server:
        registry = BreakerRegistry(TRIP1, clock=ManualClock())
        transport = cb.CircuitBreakerTransport(registry=registry)
        assert type(transport.transport) is httpx2.HTTPTransport
        with httpx2.Client(transport=transport) as client:
            with client.stream("GET", server.url + "/stream?chunks=3") as response:
                assert response.status_code == 200
                response.read()
            try:
                client.get(server.url + "/short")
            except httpx2.RemoteProtocolError:
                pass
            else:
                raise AssertionError("the cut body did not fail")
            short_circuit(client.get, server.url + "/json")
        assert server.requests == 2, server.requests
        assert server.errors == [], server.errors


    async def main():
        transport = cb.AsyncCircuitBreakerTransport(
            httpx2.MockTransport(handler), registry=BreakerRegistry(TRIP1, clock=ManualClock())
        )
        async with httpx2.AsyncClient(transport=transport) as client:
            assert (await client.get("http://up.test/")).status_code == 503
            try:
                await client.get("http://up.test/")
            except httpx2.TransportError as exc:
                assert isinstance(exc, cb.CircuitOpenTransportError)
            else:
                raise AssertionError("not short-circuited")


    asyncio.run(main())
    print("ok")
    """
)


def test_after_alias_httpx_the_httpx_module_serves_httpx2_clients() -> None:
    root = Path(circuitbreaker_http.__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", ALIASED],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=root,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok", (result.stdout, result.stderr)
