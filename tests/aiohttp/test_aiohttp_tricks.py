"""What the middleware relies on in aiohttp beyond its documented API: each fails loudly here.

``circuitbreaker_http.aiohttp`` keeps every such reliance in one small
function or one class. If an aiohttp release changes what one of them relies
on, a test in this file fails with a message naming the function to revisit,
before any behaviour test has to be puzzled over.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
from typing import Any

import aiohttp
import pytest
import yarl
from aio_support import COUNT_ONLY, ScriptedServer, head, registry_for, session_for, snap
from multidict import CIMultiDict

import circuitbreaker_http.aiohttp as aiohttp_module
from circuitbreaker_http.aiohttp import (
    BUILT_ON_READS,
    WATCHED_READS,
    _set_headers,
    _synthetic_response,
    _total_timeout_fired,
    _WatchedBody,
    reader_settled,
    url_origin,
)
from circuitbreaker_http.testing._server import FlakyServer

pytestmark = pytest.mark.anyio


async def _capture_request(
    flaky_server: FlakyServer, timeout: aiohttp.ClientTimeout, path: str = "/json"
) -> tuple[aiohttp.ClientRequest, BaseException | None]:
    captured: list[aiohttp.ClientRequest] = []

    async def capture(request: aiohttp.ClientRequest, handler: Any) -> aiohttp.ClientResponse:
        captured.append(request)
        response: aiohttp.ClientResponse = await handler(request)
        return response

    error: BaseException | None = None
    async with aiohttp.ClientSession(middlewares=[capture], timeout=timeout) as session:
        try:
            async with session.get(flaky_server.url + path) as response:
                await response.read()
        except asyncio.TimeoutError as exc:
            error = exc
    return captured[0], error


# -- _total_timeout_fired ----------------------------------------------------------------------


async def test_each_hop_carries_the_sessions_timer_which_tells_it_fired(
    flaky_server: FlakyServer,
) -> None:
    request, error = await _capture_request(flaky_server, aiohttp.ClientTimeout(total=5.0))
    assert error is None
    timer = getattr(request, "_timer", None)
    assert callable(getattr(timer, "assert_timeout", None)), (
        "aiohttp's ClientRequest no longer keeps its timer in _timer with assert_timeout(): "
        "revisit circuitbreaker_http.aiohttp._total_timeout_fired"
    )
    assert _total_timeout_fired(request) is False
    request, error = await _capture_request(
        flaky_server, aiohttp.ClientTimeout(total=0.1), "/delay/5"
    )
    assert isinstance(error, asyncio.TimeoutError)
    assert _total_timeout_fired(request) is True, (
        "a fired total timeout no longer shows through ClientRequest._timer.assert_timeout(): "
        "revisit circuitbreaker_http.aiohttp._total_timeout_fired"
    )


async def test_without_a_total_timeout_nothing_fires(flaky_server: FlakyServer) -> None:
    request, _ = await _capture_request(flaky_server, aiohttp.ClientTimeout(total=None))
    assert _total_timeout_fired(request) is False


def test_a_request_without_a_timer_never_timed_out() -> None:
    assert _total_timeout_fired(object()) is False  # type: ignore[arg-type]


# -- _WatchedBody ------------------------------------------------------------------------------


def test_the_stream_readers_waiting_methods_are_the_watched_ones() -> None:
    waiting = {
        name
        for klass in aiohttp.StreamReader.__mro__[:-1]
        for name, value in vars(klass).items()
        if inspect.iscoroutinefunction(value) and not name.startswith("_")
    }
    assert waiting == set(WATCHED_READS), (
        "aiohttp's StreamReader has other coroutine methods now: watch them in "
        f"circuitbreaker_http.aiohttp._WatchedBody ({sorted(waiting ^ set(WATCHED_READS))})"
    )


def test_every_stream_reader_member_is_watched_inherited_on_purpose_or_passed_through() -> None:
    for klass in aiohttp.StreamReader.__mro__[:-1]:
        for name in vars(klass):
            if name.startswith("__") and name != "__aiter__":
                continue
            if name.startswith("_") and not callable(vars(klass)[name]):
                continue  # the reader's own state stays the inner reader's
            ours = inspect.getattr_static(_WatchedBody, name)
            if name in BUILT_ON_READS:
                assert ours is vars(klass)[name], name
            else:
                assert ours is not vars(klass)[name], f"{name} would run on missing state"


async def test_the_iterators_are_built_on_the_watched_reads() -> None:
    # BUILT_ON_READS are inherited: they must call the reads through self.
    calls: list[str] = []

    class Spy(_WatchedBody):
        __slots__ = ()

    def spying(name: str) -> Any:
        async def read(self: Spy, *args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            return await getattr(_WatchedBody, name)(self, *args, **kwargs)

        return read

    for name in WATCHED_READS:
        setattr(Spy, name, spying(name))

    loop = asyncio.get_running_loop()
    from aiohttp.base_protocol import BaseProtocol

    for method in BUILT_ON_READS:
        inner = aiohttp.StreamReader(BaseProtocol(loop), 2**16, loop=loop)
        inner.feed_data(b"a\nb\n")
        inner.feed_eof()
        spy = Spy(inner, None, False)  # type: ignore[arg-type]  # no outcome: reads pass on
        iterator = getattr(spy, method)(*([1] if method == "iter_chunked" else []))
        got = [part async for part in iterator]
        assert got, method
        assert calls, f"StreamReader.{method} no longer reads through self: override it"
        calls.clear()


async def test_release_and_close_tell_the_body_by_its_error_methods(
    scripted: ScriptedServer,
) -> None:
    # _WatchedBody learns of release()/close() through content.exception() and
    # content.set_exception(...), which ClientResponse calls on its content.
    seen: list[str] = []

    class Spy(aiohttp.StreamReader):
        __slots__ = ()

        def exception(self) -> BaseException | None:
            seen.append("exception")
            return super().exception()

        def set_exception(self, *args: Any, **kwargs: Any) -> None:
            seen.append("set_exception")
            super().set_exception(*args, **kwargs)

    for how in ("release", "close"):
        seen.clear()

        async with aiohttp.ClientSession() as session:
            request = asyncio.ensure_future(session.get(scripted.url + "/"))
            exchange = await scripted.exchange()
            await exchange.send(head(200, 10) + b"abcd")
            response = await request
            response.content.__class__ = Spy
            getattr(response, how)()
            exchange.close()
        assert seen == ["exception", "set_exception"], (
            f"ClientResponse.{how}() no longer tells its content: revisit "
            "circuitbreaker_http.aiohttp._WatchedBody.exception/set_exception"
        )


async def test_a_watched_response_is_freed_without_the_cycle_collector(
    scripted: ScriptedServer,
) -> None:
    # The outcome keeps (method, url), not the ClientRequest that holds the
    # response: dropping the response frees it (and settles it) at once.
    registry = registry_for(COUNT_ONLY)
    async with session_for(registry) as session:
        request = asyncio.ensure_future(session.get(scripted.url + "/"))
        exchange = await scripted.exchange()
        await exchange.send(head(200, 8) + b"abcd")
        response = await request
        assert isinstance(response.content, _WatchedBody)
        await exchange.send(b"efgh")
        await response.content.wait_eof()
        gc.collect()
        gc.disable()
        try:
            del response, request
            assert snap(registry, scripted).calls == 1
        finally:
            gc.enable()


# -- _set_headers and _synthetic_response ------------------------------------------------------


async def test_headers_can_be_replaced_even_after_they_were_read(
    flaky_server: FlakyServer,
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(flaky_server.url + "/json") as response,
    ):
        assert response.headers["Content-Type"] == "application/json"
        assert response.raw_headers
        headers = CIMultiDict(response.headers)
        headers["X-Added"] = "1"
        _set_headers(response, headers)
        assert response.headers["x-added"] == "1", (
            "ClientResponse.headers no longer reads _headers (or caches elsewhere): "
            "revisit circuitbreaker_http.aiohttp._set_headers"
        )
        assert (b"X-Added", b"1") in response.raw_headers
        assert response.content_type == "application/json"


async def test_a_synthetic_response_behaves_like_one_off_the_wire() -> None:
    async with aiohttp.ClientSession() as session:
        captured: list[aiohttp.ClientRequest] = []

        async def stop(request: aiohttp.ClientRequest, handler: Any) -> aiohttp.ClientResponse:
            captured.append(request)
            return _synthetic_response(
                request, 201, "Created", [("Content-Type", "text/plain; charset=utf-8")], b"hi"
            )

        async with session.get("http://example.invalid/x", middlewares=[stop]) as response:
            assert (response.status, response.reason) == (201, "Created")
            assert response.version == aiohttp.HttpVersion11
            assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
            assert await response.text() == "hi"
            assert response.get_encoding() == "utf-8"
            assert response.connection is None
            assert response.history == ()
            assert str(response.url) == "http://example.invalid/x"
        assert response.closed
        await response.wait_for_close()
        assert captured[0].method == "GET"


# -- url_origin and reader_settled: the hot path's slot reads ------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "http://127.0.0.1:8080/a?b=1",
        "HTTPS://User:Pw@B\u00fccher.Example/x",
        "http://[::1]:81/",
        "http://h",
    ],
)
def test_url_origin_reads_what_yarls_public_api_gives(text: str) -> None:
    url = yarl.URL(text)
    assert url_origin(url) == (url.scheme, url.raw_authority), (
        "yarl changed URL._scheme/_netloc: revisit circuitbreaker_http.aiohttp.url_origin"
    )
    assert aiohttp_module._YARL_PARTS, "the middleware's hot path is off: see url_origin"


async def test_reader_settled_reads_what_the_reader_methods_give(
    flaky_server: FlakyServer,
) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(flaky_server.url + "/") as small,
    ):
        in_memory = small.content
        assert reader_settled(in_memory) is True
        assert in_memory.is_eof() and in_memory.exception() is None
        in_memory.set_exception(ValueError("cut"))
        assert reader_settled(in_memory) is False and in_memory.exception() is not None
    assert aiohttp_module._READER_SLOTS, (
        "aiohttp changed StreamReader._eof/_exception: revisit "
        "circuitbreaker_http.aiohttp.reader_settled"
    )
