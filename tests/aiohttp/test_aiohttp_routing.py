"""Keys, rules, per-request options and sharing through the aiohttp middleware.

The keys must be the very strings the httpx transports and the requests
adapter make for the same URL, so one registry can serve every client.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import requests
from aio_support import CLOSED, OPEN, TRIP1, registry_for, session_for, snap

import circuitbreaker_http
from circuitbreaker_http import (
    BreakerConfig,
    BreakerRegistry,
    CircuitOpenError,
    by_host,
    by_route,
    options,
)
from circuitbreaker_http.aiohttp import (
    CircuitBreakerMiddleware,
    CircuitOpenClientError,
    breaker_info,
)
from circuitbreaker_http.httpx import AsyncCircuitBreakerTransport
from circuitbreaker_http.requests import CircuitBreakerAdapter
from circuitbreaker_http.testing import ManualClock
from circuitbreaker_http.testing._server import FlakyServer

pytestmark = pytest.mark.anyio

ROUTES = ("/users/{id}", "/users/me", "/files/{name}/raw")
URLS = [
    "http://api.example.com/users/42",
    "HTTP://API.Example.COM:80/users/me",
    "https://api.example.com:443/users/42?x=1#f",
    "https://api.example.com:8443/files/a%20b/raw",
    "http://b\u00fccher.example/users/7",
    "http://[::1]:8080/users/7/",
    "http://127.0.0.1:9/nowhere",
    "http://h/caf\u00e9/a b",
]


class _Request:
    """What the gate reads of a request: enough to key it without a session."""

    def __init__(self, url: str, method: str = "GET") -> None:
        from yarl import URL

        self.url = URL(url)
        self.method = method


@pytest.mark.parametrize("url", URLS)
@pytest.mark.parametrize("key", [by_host, by_route(*ROUTES)], ids=["by_host", "by_route"])
def test_keys_are_the_ones_every_other_client_makes(url: str, key: Any) -> None:
    middleware = CircuitBreakerMiddleware(key=key)
    ours = middleware._gate.key_of(_Request(url))  # type: ignore[arg-type]
    # httpx's transport, keyed from its own parsed URL
    transport = AsyncCircuitBreakerTransport(key=key)
    assert ours == transport._gate.key_of(httpx.Request("GET", url))
    # the key function itself, from the URL string
    assert ours == key("GET", url)


def test_remembered_origins_keep_schemes_and_ports_apart() -> None:
    middleware = CircuitBreakerMiddleware()
    urls = [
        "http://h:81/a",
        "https://h:81/a",
        "http://h:82/a",
        "http://h/a",
        "http://h:80/b",
        "https://h/a",
        "https://h:443/",
    ]
    for _ in range(2):  # the second pass is served from the remembered origins
        keys = [middleware._gate.key_of(_Request(url)) for url in urls]  # type: ignore[arg-type]
        assert keys == [by_host("GET", url) for url in urls]
    assert keys == [
        "http://h:81",
        "https://h:81",
        "http://h:82",
        "http://h",
        "http://h",
        "https://h",
        "https://h",
    ]


def test_rotating_hosts_do_not_grow_the_remembered_origins() -> None:
    middleware = CircuitBreakerMiddleware()
    gate = middleware._gate
    for i in range(5000):
        assert gate.key_of(_Request(f"http://h{i}.test/")) == f"http://h{i}.test"  # type: ignore[arg-type]
        assert gate.key_of(_Request(f"http://h.test:{1000 + i}/"))  # type: ignore[arg-type]
    assert len(gate._origins) <= 4096
    assert all(len(entries) <= 8 for entries in gate._origins.values())


def test_a_key_function_without_parts_gets_the_url_string() -> None:
    seen: list[tuple[str, str]] = []

    def key(method: str, url: str) -> str:
        seen.append((method, url))
        return "k"

    middleware = CircuitBreakerMiddleware(key=key)
    assert middleware._gate.key_of(_Request("http://h/p?q=1", "POST")) == "k"  # type: ignore[arg-type]
    assert seen == [("POST", "http://h/p?q=1")]


async def test_a_key_of_none_bypasses_the_breakers(flaky_server: FlakyServer) -> None:
    registry = registry_for(key=lambda method, url: None)
    async with session_for(registry) as session:
        for _ in range(3):
            async with session.get(flaky_server.url + "/status/503") as response:
                assert response.status == 503
                assert breaker_info(response) is None
    assert len(registry) == 0


async def test_route_keys_give_each_route_its_breaker(flaky_server: FlakyServer) -> None:
    registry = registry_for(key=by_route("/status/{code}", "/json"))
    async with session_for(registry) as session:
        async with session.get(flaky_server.url + "/status/503") as response:
            assert breaker_info(response) == {
                "key": flaky_server.url + "/status/{code}",
                "state": "closed",
            }
        with pytest.raises(CircuitOpenClientError):
            await session.get(flaky_server.url + "/status/200")
        async with session.get(flaky_server.url + "/json") as response:
            assert response.status == 200
    assert registry.get(flaky_server.url + "/json").state is CLOSED


async def test_rules_apply_by_pattern(flaky_server: FlakyServer) -> None:
    lenient = BreakerConfig(consecutive_failures=3, failure_rate=None)
    registry = registry_for(TRIP1, rules={f"127.0.0.1:{flaky_server.port}": lenient})
    async with session_for(registry) as session:
        for _ in range(2):
            async with session.get(flaky_server.url + "/status/503"):
                pass
        assert snap(registry, flaky_server).state is CLOSED
        async with session.get(flaky_server.url + "/status/503"):
            pass
        assert snap(registry, flaky_server).state is OPEN


async def test_the_middleware_builds_its_own_registry(flaky_server: FlakyServer) -> None:
    middleware = CircuitBreakerMiddleware(
        config=TRIP1, rules={"elsewhere.test": BreakerConfig()}, key=by_host
    )
    async with (
        aiohttp.ClientSession(middlewares=[middleware]) as session,
        session.get(flaky_server.url + "/status/500"),
    ):
        pass
    assert middleware.registry.get(flaky_server.url).state is OPEN
    assert "CircuitBreakerMiddleware" in repr(middleware)


def test_registry_and_its_parts_exclude_each_other() -> None:
    with pytest.raises(TypeError):
        CircuitBreakerMiddleware(registry=BreakerRegistry(), config=BreakerConfig())
    with pytest.raises(TypeError):
        CircuitBreakerMiddleware(registry=object())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        CircuitBreakerMiddleware(BreakerConfig())  # type: ignore[misc]


async def test_a_per_request_middleware_works_as_a_sessions(flaky_server: FlakyServer) -> None:
    registry = registry_for()
    middleware = CircuitBreakerMiddleware(registry=registry)
    async with aiohttp.ClientSession() as session:
        async with session.get(flaky_server.url + "/status/503", middlewares=[middleware]):
            pass
        with pytest.raises(CircuitOpenClientError):
            await session.get(flaky_server.url + "/", middlewares=[middleware])
        async with session.get(flaky_server.url + "/json") as response:  # no middleware
            assert response.status == 200


async def test_retry_after_of_a_failure_sets_the_open_period(flaky_server: FlakyServer) -> None:
    clock = ManualClock()
    registry = registry_for(clock=clock)
    async with session_for(registry) as session:
        async with session.get(flaky_server.url + "/status/503?retry_after=120"):
            pass
        with pytest.raises(CircuitOpenClientError) as caught:
            await session.get(flaky_server.url + "/")
    assert caught.value.retry_after == 120.0


# -- per-request options -----------------------------------------------------------------------


async def test_options_bypass_skips_the_breakers(flaky_server: FlakyServer) -> None:
    registry = registry_for()
    registry.get(flaky_server.url).force_open()
    async with session_for(registry) as session:
        with options(bypass=True):
            async with session.get(flaky_server.url + "/status/503") as response:
                assert response.status == 503
                assert breaker_info(response) is None
        with pytest.raises(CircuitOpenClientError):
            await session.get(flaky_server.url + "/")
    assert flaky_server.requests == 1


async def test_options_key_picks_the_breaker(flaky_server: FlakyServer) -> None:
    registry = registry_for()
    async with session_for(registry) as session:
        with options(key="payments"):
            async with session.get(flaky_server.url + "/status/503") as response:
                assert breaker_info(response) == {"key": "payments", "state": "closed"}
            with pytest.raises(CircuitOpenClientError) as caught:
                await session.get(flaky_server.url + "/json")
            assert caught.value.name == "payments"
            # nested: keeps the key
            with options(bypass=False), pytest.raises(CircuitOpenClientError):
                await session.get(flaky_server.url + "/json")
        async with session.get(flaky_server.url + "/json") as response:
            assert breaker_info(response) == {"key": flaky_server.url, "state": "closed"}
    assert registry.get("payments").state is OPEN


async def test_options_follow_each_task(flaky_server: FlakyServer) -> None:
    import asyncio

    registry = registry_for()
    registry.get(flaky_server.url).force_open()

    async def bypassing(session: aiohttp.ClientSession) -> int:
        with options(bypass=True):
            async with session.get(flaky_server.url + "/json") as response:
                return response.status

    async def plain(session: aiohttp.ClientSession) -> str:
        try:
            await session.get(flaky_server.url + "/json")
        except CircuitOpenError:
            return "rejected"
        return "sent"

    async with session_for(registry) as session:
        results = await asyncio.gather(bypassing(session), plain(session))
    assert results == [200, "rejected"]


# -- one registry, every client ----------------------------------------------------------------


async def test_one_registry_serves_aiohttp_httpx_and_requests(flaky_server: FlakyServer) -> None:
    registry = registry_for()
    transport = AsyncCircuitBreakerTransport(registry=registry)
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.get(flaky_server.url + "/status/503")
        assert response.extensions["circuit_breaker"]["key"] == flaky_server.url
    assert snap(registry, flaky_server).state is OPEN
    async with session_for(registry) as session:
        with pytest.raises(CircuitOpenClientError):
            await session.get(flaky_server.url + "/json")
    with requests.Session() as sync_session:
        sync_session.mount("http://", CircuitBreakerAdapter(registry=registry))
        with pytest.raises(CircuitOpenError):
            sync_session.get(flaky_server.url + "/json")
    assert len(registry) == 1
    assert flaky_server.requests == 1


async def test_a_failure_through_aiohttp_opens_the_breaker_for_httpx(
    flaky_server: FlakyServer,
) -> None:
    registry = registry_for()
    async with session_for(registry) as session, session.get(flaky_server.url + "/status/502"):
        pass
    transport = AsyncCircuitBreakerTransport(registry=registry)
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(httpx.TransportError):
            await client.get(flaky_server.url + "/json")


# -- the package surface -----------------------------------------------------------------------


def test_the_top_level_names_load_on_first_touch() -> None:
    code = textwrap.dedent(
        """
        import sys
        import circuitbreaker_http
        assert "aiohttp" not in sys.modules
        from circuitbreaker_http import CircuitBreakerMiddleware, CircuitOpenClientError
        import circuitbreaker_http.aiohttp as module
        assert CircuitBreakerMiddleware is module.CircuitBreakerMiddleware
        assert CircuitOpenClientError is module.CircuitOpenClientError
        assert "CircuitBreakerMiddleware" in dir(circuitbreaker_http)
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(circuitbreaker_http.__file__).parent.parent,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_without_aiohttp_the_error_names_the_extra() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["aiohttp"] = None
        import circuitbreaker_http
        try:
            circuitbreaker_http.CircuitBreakerMiddleware
        except ImportError as exc:
            print(exc)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(circuitbreaker_http.__file__).parent.parent,
    )
    assert 'pip install "circuitbreaker-http[aiohttp]"' in done.stdout, done.stderr


def test_the_module_exports() -> None:
    import circuitbreaker_http.aiohttp as module

    assert module.__all__ == sorted(module.__all__)
    for name in module.__all__:
        assert hasattr(module, name), name
    assert module.CircuitBreakerMiddleware.__module__ == "circuitbreaker_http.aiohttp"
    assert module.CircuitBreakerMiddleware.__doc__
    assert module.breaker_info.__doc__
