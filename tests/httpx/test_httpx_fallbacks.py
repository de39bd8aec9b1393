"""Fallbacks through the httpx transports: ``FallbackResponse``, callables, ``LastKnownGood``.

Every test runs with httpx and with httpx2 (the ``flavour`` fixture of ``conftest.py``),
over ``MockTransport``.
"""

from __future__ import annotations

import gzip
from typing import Any

import anyio
import pytest
from hx_support import (
    BASE,
    COUNT_ONLY,
    KEY,
    OPEN,
    Flavour,
    Upstream,
    chunks,
    make_async_client,
    make_client,
    snap,
)

from circuitbreaker_http import (
    BreakerRegistry,
    CircuitOpenError,
    FallbackResponse,
    LastKnownGood,
)
from circuitbreaker_http.testing import ManualClock

# -- fallbacks ---------------------------------------------------------------------------------


def test_fallback_response(flavour: Flavour) -> None:
    hx = flavour.hx
    clock = ManualClock()
    upstream = Upstream(hx)
    fallback = FallbackResponse(503, json={"error": "upstream down"}, headers={"X-Why": "open"})
    client, registry = make_client(flavour, upstream, clock=clock, fallback=fallback)
    with client:
        upstream_503 = client.get("/status/503")
        # an upstream's own failure is returned as it is
        assert upstream_503.text == "upstream 503"
        assert "x-circuit-breaker" not in upstream_503.headers
        clock.advance(2.5)
        first = client.get("/a")
        second = client.get("/b")
    assert len(upstream.calls) == 1
    assert first.status_code == 503
    assert first.json() == {"error": "upstream down"}
    assert first.headers["content-type"] == "application/json"
    assert first.headers["x-why"] == "open"
    assert first.headers["x-circuit-breaker"] == "open"
    assert first.headers["retry-after"] == "8"  # 7.5 s, rounded up
    assert first.request.url == f"{BASE}/a"
    assert second.request.url == f"{BASE}/b"
    assert first is not second
    assert first.extensions["circuit_breaker"] == {"key": KEY, "state": "open", "fallback": True}
    assert snap(registry).calls == 1


def test_fallback_response_keeps_its_own_retry_after_and_forced_open_has_none(
    flavour: Flavour,
) -> None:
    hx = flavour.hx
    client, registry = make_client(
        flavour,
        Upstream(hx),
        fallback=FallbackResponse(200, content=b"cached", headers={"Retry-After": "1"}),
    )
    with client:
        client.get("/status/500")
        response = client.get("/")
        assert response.headers.get_list("retry-after") == ["1"]
        assert response.content == b"cached"
        registry.get(KEY).force_open()
        forced = client.get("/")
        assert forced.headers.get_list("retry-after") == ["1"]
    client, registry = make_client(flavour, Upstream(hx), fallback=FallbackResponse())
    with client:
        registry.get(KEY).force_open()
        forced = client.get("/")
    assert forced.status_code == 503
    assert "retry-after" not in forced.headers
    assert forced.headers["x-circuit-breaker"] == "open"
    assert forced.extensions["circuit_breaker"]["state"] == "forced_open"


def test_sync_callable_fallback(flavour: Flavour) -> None:
    hx = flavour.hx
    calls: list[tuple[hx.Request, CircuitOpenError]] = []

    def fallback(request: hx.Request, error: CircuitOpenError) -> hx.Response:
        calls.append((request, error))
        return hx.Response(299, json={"from": "fallback", "path": request.url.path})

    upstream = Upstream(hx)
    client, _registry = make_client(flavour, upstream, fallback=fallback)
    with client:
        client.get("/status/500")
        response = client.get("/x")
    assert response.status_code == 299
    assert response.json() == {"from": "fallback", "path": "/x"}
    assert response.headers["x-circuit-breaker"] == "open"
    assert response.headers["retry-after"] == "10"
    request, error = calls[0]
    assert request.url == f"{BASE}/x"
    assert isinstance(error, CircuitOpenError) and isinstance(error, hx.TransportError)
    assert (error.name, error.state, error.retry_after) == (KEY, OPEN, 10.0)
    assert len(upstream.calls) == 1


@pytest.mark.anyio
async def test_async_callable_fallback(flavour: Flavour) -> None:
    hx = flavour.hx

    async def fallback(request: hx.Request, error: CircuitOpenError) -> hx.Response:
        await anyio.sleep(0)
        return hx.Response(200, text=f"fallback for {error.name}")

    def sync_fallback(request: hx.Request, error: CircuitOpenError) -> hx.Response:
        return hx.Response(200, text="sync")

    upstream = Upstream(hx)
    client, registry = make_async_client(flavour, upstream, fallback=fallback)
    async with client:
        await client.get("/status/500")
        response = await client.get("/")
    assert response.text == f"fallback for {KEY}"
    assert response.headers["x-circuit-breaker"] == "open"
    client, registry = make_async_client(flavour, upstream, fallback=sync_fallback)
    async with client:
        registry.get(KEY).force_open()
        assert (await client.get("/")).text == "sync"
        # FallbackResponse works on the async transport too
    client, registry = make_async_client(flavour, upstream, fallback=FallbackResponse(json=[1]))
    async with client:
        registry.get(KEY).force_open()
        assert (await client.get("/")).json() == [1]
    assert len(upstream.calls) == 1


def test_async_fallback_on_the_sync_transport_is_a_type_error(flavour: Flavour) -> None:
    hx, cb = flavour

    async def fallback(request: hx.Request, error: CircuitOpenError) -> hx.Response:
        raise AssertionError

    with pytest.raises(TypeError):
        cb.CircuitBreakerTransport(hx.MockTransport(Upstream(hx)), fallback=fallback)
    with pytest.raises(TypeError):
        cb.CircuitBreakerTransport(hx.MockTransport(Upstream(hx)), fallback="503")
    # the same for the ``otherwise`` of a LastKnownGood, which is called the same way
    with pytest.raises(TypeError):
        cb.CircuitBreakerTransport(
            hx.MockTransport(Upstream(hx)), fallback=LastKnownGood(otherwise=fallback)
        )


def test_fallback_that_raises_propagates_and_records_nothing(flavour: Flavour) -> None:
    hx = flavour.hx

    class Boom(Exception):
        pass

    def fallback(request: hx.Request, error: CircuitOpenError) -> hx.Response:
        raise Boom

    clock = ManualClock()
    upstream = Upstream(hx)
    client, registry = make_client(flavour, upstream, clock=clock, fallback=fallback)
    with client:
        client.get("/status/500")
        before = snap(registry)
        for _ in range(3):
            with pytest.raises(Boom):
                client.get("/")
        after = snap(registry)
        assert (after.calls, after.failures, after.open_count) == (
            before.calls,
            before.failures,
            before.open_count,
        )
        clock.advance(10.0)
        # the open period ran as before: a trial passes
        assert client.get("/").extensions["circuit_breaker"]["state"] == "half_open"


def test_fallback_returning_something_else_is_a_type_error(flavour: Flavour) -> None:
    hx = flavour.hx
    client, registry = make_client(
        flavour, Upstream(hx), fallback=lambda request, error: "not a response"
    )
    with client:
        registry.get(KEY).force_open()
        with pytest.raises(TypeError):
            client.get("/")


# -- last known good ---------------------------------------------------------------------------


def lkg_client(
    flavour: Flavour, upstream: Upstream, lkg: LastKnownGood
) -> tuple[Any, BreakerRegistry, ManualClock]:
    clock = ManualClock()
    client, registry = make_client(flavour, upstream, clock=clock, fallback=lkg)
    return client, registry, clock


def test_last_known_good_serves_the_last_good_get_while_open(flavour: Flavour) -> None:
    hx = flavour.hx
    lkg_clock = ManualClock()
    lkg = LastKnownGood(clock=lkg_clock)
    upstream = Upstream(hx)
    client, _registry, clock = lkg_client(flavour, upstream, lkg)
    with client:
        client.get("/doc?v=1", headers={"Accept": "text/plain"})
        good = client.get("/doc?v=1&header=ETag:x1")
        assert good.headers["etag"] == "x1"
        client.get("/status/500")
        lkg_clock.advance(42.0)
        clock.advance(2.5)
        stale = client.get("/doc?v=1&header=ETag:x1")
        head = client.head("/doc?v=1&header=ETag:x1")
        with pytest.raises(CircuitOpenError):
            client.get("/doc?v=2")  # another URL: nothing stored
        with pytest.raises(CircuitOpenError):
            client.post("/doc?v=1&header=ETag:x1")
    assert stale.status_code == 200
    assert stale.content == b"ok"
    assert stale.headers["etag"] == "x1"
    assert stale.headers["age"] == "42"
    assert stale.headers["warning"] == '110 - "Response is Stale"'
    assert stale.headers["x-circuit-breaker"] == "open"
    assert stale.headers["retry-after"] == "8"
    ext = stale.extensions["circuit_breaker"]
    assert ext["stale"] is True and ext["fallback"] is True and ext["key"] == KEY
    assert head.status_code == 200 and head.content == b"" and head.headers["etag"] == "x1"
    assert len(upstream.calls) == 3


@pytest.mark.parametrize(
    ("store_headers", "query", "ask_headers"),
    [
        # Stored under the credentials' digest: never for a request without them.
        ({"Authorization": "Bearer a"}, "", {}),
        ({}, "", {"Authorization": "Bearer a"}),  # nor the other way round
        ({"Cookie": "s=1"}, "", {}),
        ({}, "", {"Cookie": "s=1"}),
        ({}, "header=Cache-Control:no-store", {}),
        ({}, "header=Cache-Control:private, max-age=60", {}),
        # Stored without its Set-Cookie, but the client's cookie jar sends the
        # cookie next time: a credentialed request, which that copy is not for.
        ({}, "header=Set-Cookie:s=1", {}),
        ({}, "header=Vary:*", {}),
        ({"Accept": "a/a"}, "header=Vary:Accept", {"Accept": "b/b"}),
        ({}, "header=Vary:Accept-Language", {"Accept-Language": "fr"}),
    ],
)
def test_last_known_good_never_mixes_users_or_variants(
    flavour: Flavour, store_headers: dict[str, str], query: str, ask_headers: dict[str, str]
) -> None:
    hx = flavour.hx
    lkg = LastKnownGood(otherwise=FallbackResponse(599))
    client, registry, _clock = lkg_client(flavour, Upstream(hx), lkg)
    with client:
        client.get(f"/doc?{query}", headers=store_headers)
        registry.get(KEY).force_open()
        response = client.get(f"/doc?{query}", headers=ask_headers)
    assert response.status_code == 599
    assert "stale" not in response.extensions["circuit_breaker"]


def test_last_known_good_honours_vary(flavour: Flavour) -> None:
    hx = flavour.hx
    lkg = LastKnownGood()
    upstream = Upstream(hx)

    def handler(request: hx.Request) -> hx.Response:
        upstream.calls.append(request)
        lang = request.headers.get("accept-language", "")
        return hx.Response(200, headers={"Vary": "Accept-Language"}, text=f"in {lang}")

    client, registry = make_client(flavour, handler, fallback=lkg)
    with client:
        client.get("/", headers={"Accept-Language": "fr"})
        client.get("/", headers={"Accept-Language": "de"})
        registry.get(KEY).force_open()
        assert client.get("/", headers={"Accept-Language": "fr"}).text == "in fr"
        assert client.get("/", headers={"Accept-Language": "de"}).text == "in de"
        with pytest.raises(CircuitOpenError):
            client.get("/", headers={"Accept-Language": "it"})
    assert len(lkg) == 2


def served_urls(
    flavour: Flavour,
    lkg: LastKnownGood,
    store: list[str],
    ask: list[str],
    age: float = 0.0,
    clock: ManualClock | None = None,
) -> list[str]:
    """Store ``store`` through a closed breaker, force it open, wait ``age`` on ``clock``
    (``lkg``'s): what is served?"""
    hx = flavour.hx

    def sized(request: hx.Request) -> hx.Response:
        return hx.Response(200, content=b"x" * int(request.url.params["n"]))

    client, registry = make_client(flavour, sized, fallback=lkg)
    served = []
    with client:
        for url in store:
            client.get(url)
        registry.get(KEY).force_open()
        if clock is not None:
            clock.advance(age)
        for url in ask:
            try:
                client.get(url)
            except CircuitOpenError:
                continue
            served.append(url)
    return served


def test_last_known_good_is_bounded_in_entries(flavour: Flavour) -> None:
    lkg = LastKnownGood(max_entries=2, clock=ManualClock())
    urls = ["/1?n=1", "/2?n=1", "/3?n=1"]
    assert served_urls(flavour, lkg, urls, urls) == ["/2?n=1", "/3?n=1"]
    assert len(lkg) == 2


def test_last_known_good_is_bounded_in_bytes(flavour: Flavour) -> None:
    lkg = LastKnownGood(max_bytes=10, max_entry_bytes=8, clock=ManualClock())
    urls = ["/a?n=4", "/b?n=4", "/c?n=4", "/d?n=9"]
    # /d is larger than max_entry_bytes; /c pushes the total past max_bytes and /a goes
    assert served_urls(flavour, lkg, urls, urls) == ["/b?n=4", "/c?n=4"]
    assert lkg.bytes_stored == 8


def test_last_known_good_is_bounded_in_age(flavour: Flavour) -> None:
    urls = ["/a?n=1"]
    for age, served in ((60.0, urls), (60.5, [])):
        clock = ManualClock()
        lkg = LastKnownGood(max_age=60, clock=clock)
        assert served_urls(flavour, lkg, urls, urls, age, clock) == served


def test_last_known_good_stores_a_streamed_get_only_when_read_to_the_end(flavour: Flavour) -> None:
    hx = flavour.hx
    lkg = LastKnownGood()
    upstream = Upstream(hx)
    client, registry, _clock = lkg_client(flavour, upstream, lkg)
    with client:
        upstream.next_stream = chunks(hx, count=3)
        with client.stream("GET", "/stream?part=1") as response:
            for _ in response.iter_raw():
                break
        upstream.next_stream = chunks(hx, count=3)
        with client.stream("GET", "/stream?part=0"):
            pass
        upstream.next_stream = chunks(hx, count=3, fail_after=2)
        with pytest.raises(hx.ReadError):
            client.get("/stream?broken=1")
        registry.get(KEY).reset()
        full = upstream.next_stream = chunks(hx, count=3)
        with client.stream("GET", "/stream?full=1") as response:
            response.read()
        registry.get(KEY).force_open()
        for url in ("/stream?part=1", "/stream?part=0", "/stream?broken=1"):
            with pytest.raises(CircuitOpenError):
                client.get(url)
        assert client.get("/stream?full=1").content == full.body
    assert len(lkg) == 1


def test_last_known_good_without_a_stored_response_uses_otherwise(flavour: Flavour) -> None:
    hx = flavour.hx
    for otherwise, expected in [
        (None, CircuitOpenError),
        (FallbackResponse(503, content=b"down"), b"down"),
        (lambda request, error: hx.Response(200, content=b"called"), b"called"),
    ]:
        client, registry = make_client(
            flavour, Upstream(hx), fallback=LastKnownGood(otherwise=otherwise)
        )
        with client:
            registry.get(KEY).force_open()
            if expected is CircuitOpenError:
                with pytest.raises(CircuitOpenError):
                    client.get("/")
            else:
                response = client.get("/")
                assert response.content == expected
                assert response.headers["x-circuit-breaker"] == "open"
                assert "stale" not in response.extensions["circuit_breaker"]


def test_last_known_good_stores_get_only(flavour: Flavour) -> None:
    hx = flavour.hx
    lkg = LastKnownGood()
    client, registry = make_client(flavour, Upstream(hx), fallback=lkg)
    with client:
        assert client.head("/doc").status_code == 200
        client.post("/doc")
        registry.get(KEY).force_open()
        with pytest.raises(CircuitOpenError):
            client.get("/doc")
        with pytest.raises(CircuitOpenError):
            client.head("/doc")
    assert len(lkg) == 0


def test_last_known_good_skips_non_2xx_and_partial_content(flavour: Flavour) -> None:
    hx = flavour.hx
    lkg = LastKnownGood()
    client, _registry = make_client(flavour, Upstream(hx), COUNT_ONLY, fallback=lkg)
    with client:
        client.get("/status/206")
        client.get("/status/404")
        client.get("/status/503")
        client.get("/status/204")
    assert len(lkg) == 1


def test_last_known_good_serves_an_encoded_body_that_still_decodes(flavour: Flavour) -> None:
    hx = flavour.hx
    lkg = LastKnownGood()
    body = b"hello " * 50

    def handler(request: hx.Request) -> hx.Response:
        return hx.Response(200, headers={"Content-Encoding": "gzip"}, content=gzip.compress(body))

    client, registry = make_client(flavour, handler, fallback=lkg)
    with client:
        assert client.get("/").content == body
        registry.get(KEY).force_open()
        stale = client.get("/")
    assert stale.content == body
    assert stale.extensions["circuit_breaker"]["stale"] is True


@pytest.mark.anyio
async def test_async_last_known_good(flavour: Flavour) -> None:
    hx = flavour.hx
    lkg = LastKnownGood()
    upstream = Upstream(hx)
    client, registry = make_async_client(flavour, upstream, fallback=lkg)
    async with client:
        upstream.next_stream = chunks(hx, count=2)
        async with client.stream("GET", "/stream") as response:
            await response.aread()
        await client.get("/plain")
        registry.get(KEY).force_open()
        assert (await client.get("/stream")).content == b"aaaabbbb"
        plain = await client.get("/plain")
        assert plain.content == b"ok" and plain.headers["x-circuit-breaker"] == "open"
        with pytest.raises(CircuitOpenError):
            await client.get("/nothing")

    async def otherwise(request: hx.Request, error: CircuitOpenError) -> hx.Response:
        await anyio.sleep(0)
        return hx.Response(200, text="otherwise")

    client, registry = make_async_client(
        flavour, upstream, fallback=LastKnownGood(otherwise=otherwise)
    )
    async with client:
        registry.get(KEY).force_open()
        response = await client.get("/nothing")
    assert response.text == "otherwise"
    assert response.headers["x-circuit-breaker"] == "open"
