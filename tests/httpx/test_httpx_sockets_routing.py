"""The httpx transports end to end over loopback sockets: keys, rules, fallbacks, plumbing.

The routing half of ``test_httpx_sockets.py`` (see its docstring): every test runs with
httpx and with httpx2 (the ``flavour`` fixture of ``conftest.py``) against ``FlakyServer``.
"""

from __future__ import annotations

import anyio
import pytest
from hx_support import (
    CLOSED,
    COUNT_ONLY,
    OPEN,
    TRIP1,
    Flavour,
    async_client,
    registry_for,
    snap,
    sync_client,
)

from circuitbreaker_http import (
    BreakerConfig,
    CircuitOpenError,
    FallbackResponse,
    LastKnownGood,
    by_route,
    options,
)
from circuitbreaker_http.testing import ManualClock
from circuitbreaker_http.testing._server import FlakyServer

# -- keys and rules ----------------------------------------------------------------------------


def test_hosts_are_isolated(
    flavour: Flavour, flaky_server: FlakyServer, second_server: FlakyServer
) -> None:
    registry = registry_for()
    with sync_client(flavour, registry) as client:
        client.get(f"{flaky_server.url}/status/503")
        with pytest.raises(CircuitOpenError):
            client.get(f"{flaky_server.url}/json")
        assert client.get(f"{second_server.url}/json").status_code == 200
        # the same server by another name is another origin, with its own breaker
        localhost = f"http://localhost:{flaky_server.port}"
        assert client.get(f"{localhost}/json").status_code == 200
    assert registry.get(localhost).state is CLOSED
    assert (flaky_server.requests, second_server.requests) == (2, 1)


def test_rules_configure_each_host(
    flavour: Flavour, flaky_server: FlakyServer, second_server: FlakyServer
) -> None:
    strict = BreakerConfig(consecutive_failures=1, failure_rate=None, open_duration=5.0)
    lenient = BreakerConfig(consecutive_failures=3, failure_rate=None, open_duration=7.0)
    payments = BreakerConfig(consecutive_failures=2, failure_rate=None, open_duration=9.0)
    rules = {
        f"127.0.0.1:{flaky_server.port}": strict,
        "127.0.0.*": lenient,
        f"127.0.0.1:{second_server.port}/api/payments/*": payments,
    }
    registry = registry_for(COUNT_ONLY, rules=rules, key=by_route("/api/payments/{id}"))
    second_server.set_mode("failing", status=503)
    with sync_client(flavour, registry) as client:
        client.get(f"{flaky_server.url}/status/503")
        with pytest.raises(CircuitOpenError):
            client.get(f"{flaky_server.url}/json")
        for _ in range(2):
            client.get(f"{second_server.url}/api/payments/1")
        with pytest.raises(CircuitOpenError) as caught:
            client.get(f"{second_server.url}/api/payments/2")
        assert caught.value.name == f"{second_server.url}/api/payments/{{id}}"
        assert caught.value.retry_after == 9.0
        for _ in range(2):
            assert client.get(f"{second_server.url}/api/orders/1").status_code == 503
        assert registry.get(second_server.url).state is CLOSED  # 3 needed
        assert client.get(f"{second_server.url}/api/orders/1").status_code == 503
        assert registry.get(second_server.url).state is OPEN
        localhost = f"http://localhost:{flaky_server.port}"
        for _ in range(5):
            client.get(f"{localhost}/status/503")
    assert registry.get(flaky_server.url).config is strict
    assert registry.get(second_server.url).config is lenient
    assert registry.get(localhost).config is COUNT_ONLY
    assert registry.get(localhost).state is CLOSED


@pytest.mark.parametrize(
    ("path", "suffix"),
    [
        ("/api/users/42", "/api/users/{id}"),
        ("/api/users/42/", "/api/users/{id}"),
        ("/api/users/me", "/api/users/me"),
        ("/api/users", ""),
        ("/json", ""),
    ],
)
def test_route_keys(flavour: Flavour, flaky_server: FlakyServer, path: str, suffix: str) -> None:
    registry = registry_for(key=by_route("/api/users/{id}", "/api/users/me"))
    with sync_client(flavour, registry) as client:
        response = client.get(f"{flaky_server.url}{path}?x=1")
    assert response.extensions["circuit_breaker"]["key"] == flaky_server.url + suffix


def test_route_keys_isolate_routes_of_one_server(
    flavour: Flavour, flaky_server: FlakyServer
) -> None:
    registry = registry_for(key=by_route("/status/{code}", "/api/{name}"))
    flaky_server.set_mode("failing")
    with sync_client(flavour, registry) as client:
        assert client.get(f"{flaky_server.url}/api/a").status_code == 503
        with pytest.raises(CircuitOpenError):
            client.get(f"{flaky_server.url}/api/b")
        assert client.get(f"{flaky_server.url}/status/200").status_code == 200
        assert client.get(f"{flaky_server.url}/json").status_code == 200
    assert flaky_server.requests == 3


def test_key_normalisation_on_the_wire(flavour: Flavour, flaky_server: FlakyServer) -> None:
    registry = registry_for()
    with sync_client(flavour, registry) as client:
        upper = client.get(f"HTTP://127.0.0.1:{flaky_server.port}/json")
        assert upper.extensions["circuit_breaker"]["key"] == flaky_server.url
        try:
            v6 = FlakyServer("::1").start()
        except OSError:  # pragma: no cover - a host without IPv6
            pytest.skip("no IPv6 loopback")
        with v6:
            response = client.get(f"http://[::1]:{v6.port}/json")
            assert response.extensions["circuit_breaker"]["key"] == f"http://[::1]:{v6.port}"
            assert v6.url == f"http://[::1]:{v6.port}"


def test_custom_key_returning_none_bypasses(flavour: Flavour, flaky_server: FlakyServer) -> None:
    def key(method: str, url: str) -> str | None:
        return None if "/status/" in url else "everything"

    registry = registry_for(key=key)
    with sync_client(flavour, registry) as client:
        for _ in range(3):
            response = client.get(f"{flaky_server.url}/status/503")
            assert "circuit_breaker" not in response.extensions
        assert client.get(f"{flaky_server.url}/json").extensions["circuit_breaker"] == {
            "key": "everything",
            "state": "closed",
        }
    assert [b.name for b in registry] == ["everything"]
    assert flaky_server.requests == 4


# -- Retry-After -------------------------------------------------------------------------------

DATE = "Sun, 06 Nov 1994 08:49:37 GMT"
DATE_PLUS_120 = "Sun, 06 Nov 1994 08:51:37 GMT"


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"retry_after": "120"}, 120.0),
        ({"retry_after": DATE_PLUS_120, "date": DATE}, 120.0),
        ({"retry_after": "9" * 40}, 300.0),
        ({"retry_after": "soon"}, 10.0),
        ({"retry_after": "-5"}, 10.0),
        ({"retry_after": "1e3"}, 10.0),
        ({"retry_after": "Fri, 31 Feb 2025 99:00:00 GMT"}, 10.0),
        ({"retry_after": DATE_PLUS_120, "date": "garbage"}, 10.0),  # read against the wall clock
    ],
)
def test_retry_after_from_the_server(
    flavour: Flavour, flaky_server: FlakyServer, params: dict[str, str], expected: float
) -> None:
    registry = registry_for()
    with sync_client(flavour, registry) as client:
        response = client.get(f"{flaky_server.url}/status/503", params=params)
        assert response.headers["retry-after"] == params["retry_after"]
    assert snap(registry, flaky_server).retry_after == pytest.approx(expected)


@pytest.mark.anyio
async def test_async_retry_after_from_the_server(
    flavour: Flavour, flaky_server: FlakyServer
) -> None:
    registry = registry_for()
    flaky_server.set_mode("failing", status=429, retry_after=60)
    async with async_client(flavour, registry) as client:
        await client.get(f"{flaky_server.url}/api/x")
        with pytest.raises(CircuitOpenError) as caught:
            await client.get(f"{flaky_server.url}/api/x")
    assert caught.value.retry_after == pytest.approx(60.0)


# -- per-request control -----------------------------------------------------------------------


def test_per_request_control(flavour: Flavour, flaky_server: FlakyServer) -> None:
    registry = registry_for()
    url = flaky_server.url
    with sync_client(flavour, registry) as client:
        registry.get(url).force_open()
        with options(bypass=True):
            assert client.get(f"{url}/json").status_code == 200
            with pytest.raises(CircuitOpenError):
                client.get(f"{url}/json", extensions={"circuit_breaker": {"bypass": False}})
        bypass = {"circuit_breaker": {"bypass": True}}
        assert client.get(f"{url}/json", extensions=bypass).status_code == 200
        with options(key="elsewhere"):
            response = client.get(f"{url}/json")
            assert response.extensions["circuit_breaker"] == {
                "key": "elsewhere",
                "state": "closed",
            }
            third = client.get(f"{url}/json", extensions={"circuit_breaker": {"key": "third"}})
            assert third.extensions["circuit_breaker"]["key"] == "third"
        with pytest.raises(CircuitOpenError):
            client.get(f"{url}/json")
    assert flaky_server.requests == 4


@pytest.mark.anyio
async def test_async_per_request_control(flavour: Flavour, flaky_server: FlakyServer) -> None:
    clock = ManualClock()
    registry = registry_for(TRIP1, clock)
    url = flaky_server.url
    async with async_client(flavour, registry) as client:
        await client.get(f"{url}/status/500")
        with options(bypass=True):
            assert (await client.get(f"{url}/json")).status_code == 200
        clock.advance(10.0)
        trial = await client.get(f"{url}/json")
        assert trial.extensions["circuit_breaker"] == {"key": url, "state": "half_open"}
        after = await client.get(f"{url}/json")
        assert after.extensions["circuit_breaker"] == {"key": url, "state": "closed"}
    assert flaky_server.requests == 4


# -- fallbacks ---------------------------------------------------------------------------------


def test_fallback_response_answers_only_short_circuits(
    flavour: Flavour, flaky_server: FlakyServer
) -> None:
    clock = ManualClock()
    registry = registry_for(TRIP1, clock)
    fallback = FallbackResponse(200, json={"degraded": True})
    with sync_client(flavour, registry, fallback=fallback) as client:
        upstream = client.get(f"{flaky_server.url}/status/503")
        assert upstream.status_code == 503
        assert "x-circuit-breaker" not in upstream.headers
        clock.advance(0.25)
        response = client.get(f"{flaky_server.url}/json")
    assert flaky_server.requests == 1
    assert response.json() == {"degraded": True}
    assert response.headers["x-circuit-breaker"] == "open"
    assert response.headers["retry-after"] == "10"  # 9.75 s, rounded up
    assert response.extensions["circuit_breaker"]["fallback"] is True


@pytest.mark.anyio
async def test_async_callable_fallback(flavour: Flavour, flaky_server: FlakyServer) -> None:
    hx = flavour.hx
    seen: list[CircuitOpenError] = []

    async def fallback(request: hx.Request, error: CircuitOpenError) -> hx.Response:
        seen.append(error)
        await anyio.sleep(0)
        return hx.Response(203, text="from the fallback")

    registry = registry_for()
    async with async_client(flavour, registry, fallback=fallback) as client:
        await client.get(f"{flaky_server.url}/status/502")
        response = await client.get(f"{flaky_server.url}/json")
    assert (response.status_code, response.text) == (203, "from the fallback")
    assert response.headers["x-circuit-breaker"] == "open"
    assert isinstance(seen[0], hx.TransportError)
    assert flaky_server.requests == 1


def test_last_known_good(flavour: Flavour, flaky_server: FlakyServer) -> None:
    lkg = LastKnownGood(clock=ManualClock())
    registry = registry_for()
    url = flaky_server.url
    with sync_client(flavour, registry, fallback=lkg) as client:
        fresh = client.get(f"{url}/json")
        with client.stream("GET", f"{url}/bytes/5000") as response:
            for _ in response.iter_raw():
                break
        with client.stream("GET", f"{url}/stream?chunks=3&size=5") as response:
            streamed = response.read()
        client.get(f"{url}/status/200?header=Cache-Control:no-store")
        client.get(f"{url}/status/200?header=Set-Cookie:s=1")
        client.get(f"{url}/status/503")
        before = flaky_server.requests
        stale = client.get(f"{url}/json")
        assert stale.json() == fresh.json()
        assert stale.headers["warning"] == '110 - "Response is Stale"'
        assert stale.headers["age"] == "0"
        assert stale.extensions["circuit_breaker"]["stale"] is True
        assert client.get(f"{url}/stream?chunks=3&size=5").content == streamed
        assert client.head(f"{url}/json").content == b""
        # The Set-Cookie response was stored (without it) for a request without
        # cookies; the client now sends that cookie under /status: not for it.
        for path in (
            "/bytes/5000",
            "/status/200?header=Cache-Control:no-store",
            "/status/200?header=Set-Cookie:s=1",
        ):
            with pytest.raises(CircuitOpenError):
                client.get(f"{url}{path}")
        with pytest.raises(CircuitOpenError):
            client.get(f"{url}/json", headers={"Authorization": "Bearer x"})
        assert flaky_server.requests == before


# -- retry loops (httpx-retries, which knows httpx only: test_httpx_only.py) -----------------


def test_a_retry_loop_that_skips_open_circuits(flavour: Flavour, flaky_server: FlakyServer) -> None:
    """What tenacity's ``retry_if_exception`` or stamina's ``on=`` should say."""
    hx = flavour.hx
    registry = registry_for(BreakerConfig(consecutive_failures=2, failure_rate=None))

    def should_retry(exc: BaseException) -> bool:
        return isinstance(exc, hx.TransportError) and not isinstance(exc, CircuitOpenError)

    attempts = 0
    with sync_client(flavour, registry) as client:
        for _ in range(10):
            attempts += 1
            try:
                client.get(f"{flaky_server.url}/reset")
            except Exception as exc:
                if should_retry(exc):
                    continue
                assert isinstance(exc, CircuitOpenError)
                break
    assert attempts == 3
    assert flaky_server.requests == 2


# -- transport plumbing ------------------------------------------------------------------------


def test_keyword_arguments_reach_the_default_transport(
    flavour: Flavour, flaky_server: FlakyServer
) -> None:
    hx, cb = flavour
    transport = cb.CircuitBreakerTransport(
        config=COUNT_ONLY, limits=hx.Limits(max_connections=1), verify=False, http2=False
    )
    with hx.Client(transport=transport, timeout=hx.Timeout(10.0, pool=0.05)) as client:
        assert client.get(f"{flaky_server.url}/json").status_code == 200
        with client.stream("GET", f"{flaky_server.url}/stream") as held:
            with pytest.raises(hx.PoolTimeout):
                client.get(f"{flaky_server.url}/json")
            held.read()  # read to the end, the connection goes back to the pool
        assert client.get(f"{flaky_server.url}/json").status_code == 200
    assert flaky_server.connections == 1  # keep-alive through the one connection
    assert transport.transport._pool.connections == []  # closed with the client


@pytest.mark.anyio
async def test_aclose_closes_the_inner_transport(
    flavour: Flavour, flaky_server: FlakyServer
) -> None:
    hx, cb = flavour
    transport = cb.AsyncCircuitBreakerTransport()
    async with hx.AsyncClient(transport=transport) as client:
        assert (await client.get(f"{flaky_server.url}/json")).status_code == 200
        assert len(transport.transport._pool.connections) == 1
    assert transport.transport._pool.connections == []


def test_mounts_and_a_shared_registry(
    flavour: Flavour, flaky_server: FlakyServer, second_server: FlakyServer
) -> None:
    hx, cb = flavour
    registry = registry_for()
    mounted = hx.Client(mounts={"http://": cb.CircuitBreakerTransport(registry=registry)})
    plain = sync_client(flavour, registry)
    with mounted, plain:
        assert mounted.get(f"{flaky_server.url}/status/500").status_code == 500
        with pytest.raises(CircuitOpenError):
            plain.get(f"{flaky_server.url}/json")
        with pytest.raises(CircuitOpenError):
            mounted.get(f"{flaky_server.url}/json")
        assert plain.get(f"{second_server.url}/json").status_code == 200
    assert flaky_server.requests == 1
