"""What an open circuit answers through the aiohttp middleware: the error, or a fallback.

A fallback's answer is a complete ``aiohttp.ClientResponse`` (status, headers,
``read()``, ``text()``, ``json()``, ``content``), marked ``X-Circuit-Breaker:
open``; the breaker is forced open through the registry, so nothing here waits.
"""

from __future__ import annotations

import asyncio
import gzip
import pickle
from typing import Any

import aiohttp
import pytest
from aio_support import FORCED_OPEN, OPEN, ScriptedServer, head, registry_for, session_for, snap

from circuitbreaker_http import (
    CircuitOpenError,
    CircuitState,
    FallbackResponse,
    LastKnownGood,
)
from circuitbreaker_http.aiohttp import (
    CircuitBreakerMiddleware,
    CircuitOpenClientError,
    breaker_info,
)
from circuitbreaker_http.testing import ManualClock
from circuitbreaker_http.testing._server import FlakyServer

pytestmark = pytest.mark.anyio


async def _trip(session: aiohttp.ClientSession, server: FlakyServer) -> None:
    async with session.get(server.url + "/status/503") as response:
        assert response.status == 503


# -- the error ---------------------------------------------------------------------------------


async def test_the_short_circuit_error(flaky_server: FlakyServer) -> None:
    registry = registry_for()
    registry.get(flaky_server.url).force_open()
    async with session_for(registry) as session:
        with pytest.raises(CircuitOpenClientError) as caught:
            await session.get(flaky_server.url + "/json", headers={"X-Trace": "1"})
    error = caught.value
    assert isinstance(error, CircuitOpenError)
    assert isinstance(error, aiohttp.ClientConnectionError)
    assert isinstance(error, aiohttp.ClientError)
    assert (error.name, error.state, error.retry_after) == (flaky_server.url, FORCED_OPEN, None)
    assert error.args == (f"circuit {flaky_server.url!r} is forced open",)
    assert str(error) == error.args[0]
    assert error.request_info is not None
    assert error.request_info.headers["X-Trace"] == "1"
    assert flaky_server.requests == 0


def test_the_short_circuit_error_by_hand_and_pickled() -> None:
    error = CircuitOpenClientError("k", CircuitState.OPEN, 2.5)
    assert (error.request, error.request_info) == (None, None)
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is CircuitOpenClientError
    assert (again.name, again.state, again.retry_after, str(again)) == (
        "k",
        CircuitState.OPEN,
        2.5,
        str(error),
    )


async def test_a_retry_loop_on_client_errors_can_skip_the_open_circuit(
    flaky_server: FlakyServer,
) -> None:
    registry = registry_for()
    registry.get(flaky_server.url).force_open()
    attempts = 0
    async with session_for(registry) as session:
        for _ in range(3):
            attempts += 1
            try:
                await session.get(flaky_server.url + "/")
            except CircuitOpenError:
                break  # as the docs advise: do not retry into an open circuit
            except aiohttp.ClientConnectionError:
                continue
    assert attempts == 1


# -- FallbackResponse --------------------------------------------------------------------------


async def test_a_fallback_response_is_a_complete_client_response(
    flaky_server: FlakyServer,
) -> None:
    registry = registry_for()
    fallback = FallbackResponse(503, json={"busy": True}, headers={"X-Mine": "yes"})
    async with session_for(registry, fallback=fallback) as session:
        await _trip(session, flaky_server)
        async with session.get(flaky_server.url + "/json") as response:
            assert isinstance(response, aiohttp.ClientResponse)
            assert response.status == 503
            assert response.reason == "Service Unavailable"
            assert not response.ok
            assert response.headers["X-Circuit-Breaker"] == "open"
            assert response.headers["Retry-After"] == "10"
            assert response.headers["x-mine"] == "yes"
            assert response.content_type == "application/json"
            assert (b"X-Circuit-Breaker", b"open") in response.raw_headers
            assert await response.json() == {"busy": True}
            assert await response.text() == '{"busy":true}'
            assert await response.read() == b'{"busy":true}'
            assert str(response.url) == flaky_server.url + "/json"
            assert response.method == "GET"
            assert response.request_info.url == response.url
            assert breaker_info(response) == {
                "key": flaky_server.url,
                "state": "open",
                "fallback": True,
            }
            with pytest.raises(aiohttp.ClientResponseError) as caught:
                response.raise_for_status()
            assert caught.value.status == 503
    assert flaky_server.requests == 1


async def test_a_fallback_responses_body_can_be_streamed(flaky_server: FlakyServer) -> None:
    registry = registry_for()
    registry.get(flaky_server.url).force_open()
    fallback = FallbackResponse(200, content=b"line one\nline two\n")
    async with session_for(registry, fallback=fallback) as session:
        async with session.get(flaky_server.url + "/") as response:
            assert [line async for line in response.content] == [b"line one\n", b"line two\n"]
            assert "Retry-After" not in response.headers  # forced open: no trial time known
        # raise_for_status=True lets a 2xx fallback through, as a real one
        async with session.get(flaky_server.url + "/", raise_for_status=True) as response:
            assert await response.text() == "line one\nline two\n"


async def test_a_fallback_under_raise_for_status_raises_like_a_real_response(
    flaky_server: FlakyServer,
) -> None:
    registry = registry_for()
    registry.get(flaky_server.url).force_open()
    async with session_for(registry, fallback=FallbackResponse(503)) as session:
        with pytest.raises(aiohttp.ClientResponseError) as caught:
            await session.get(flaky_server.url + "/", raise_for_status=True)
    assert caught.value.status == 503


async def test_each_short_circuit_builds_its_fallback_anew(flaky_server: FlakyServer) -> None:
    registry = registry_for()
    registry.get(flaky_server.url).force_open()
    async with session_for(registry, fallback=FallbackResponse(503, content=b"x")) as session:
        first = await session.get(flaky_server.url + "/")
        second = await session.get(flaky_server.url + "/")
        assert first is not second
        assert await first.read() == await second.read() == b"x"
        first.release()
        second.release()


# -- callables ---------------------------------------------------------------------------------


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_a_callable_fallback_may_answer_a_fallback_response(
    flaky_server: FlakyServer, asynchronous: bool
) -> None:
    seen: list[tuple[Any, CircuitOpenError]] = []

    def answer(request: aiohttp.ClientRequest, error: CircuitOpenError) -> FallbackResponse:
        seen.append((request, error))
        return FallbackResponse(299, content=b"from the callable", headers={"Retry-After": "7"})

    async def answer_async(request: aiohttp.ClientRequest, error: CircuitOpenError) -> Any:
        await asyncio.sleep(0)
        return answer(request, error)

    registry = registry_for()
    fallback = answer_async if asynchronous else answer
    async with session_for(registry, fallback=fallback) as session:
        await _trip(session, flaky_server)
        async with session.get(flaky_server.url + "/json") as response:
            assert response.status == 299
            assert response.headers["Retry-After"] == "7"  # the fallback's own wins
            assert response.headers["X-Circuit-Breaker"] == "open"
            assert await response.read() == b"from the callable"
    [(request, error)] = seen
    assert isinstance(request, aiohttp.ClientRequest)
    assert str(request.url) == flaky_server.url + "/json"
    assert isinstance(error, CircuitOpenClientError) and error.state is OPEN


async def test_a_callable_fallback_may_answer_from_another_upstream(
    flaky_server: FlakyServer,
) -> None:
    with FlakyServer() as mirror:
        async with aiohttp.ClientSession() as backup:

            async def from_mirror(request: aiohttp.ClientRequest, error: Any) -> Any:
                return await backup.get(mirror.url + request.url.path)

            registry = registry_for()
            registry.get(flaky_server.url).force_open()
            async with (
                session_for(registry, fallback=from_mirror) as session,
                session.get(flaky_server.url + "/json") as response,
            ):
                assert response.status == 200
                assert (await response.json())["server"] == "FlakyServer"
                assert response.headers["X-Circuit-Breaker"] == "open"
                assert response.headers["Content-Type"] == "application/json"
                assert breaker_info(response) == {
                    "key": flaky_server.url,
                    "state": "forced_open",
                    "fallback": True,
                }
        assert mirror.requests == 1
    assert flaky_server.requests == 0


async def test_a_fallback_returning_something_else_is_a_type_error(
    flaky_server: FlakyServer,
) -> None:
    registry = registry_for()
    registry.get(flaky_server.url).force_open()
    async with session_for(registry, fallback=lambda request, error: "nope") as session:
        with pytest.raises(TypeError, match=r"aiohttp\.ClientResponse"):
            await session.get(flaky_server.url + "/")


async def test_a_fallback_that_raises_propagates_and_records_nothing(
    flaky_server: FlakyServer,
) -> None:
    def boom(request: Any, error: Any) -> Any:
        raise LookupError("no fallback today")

    clock = ManualClock()
    registry = registry_for(clock=clock)
    async with session_for(registry, fallback=boom) as session:
        await _trip(session, flaky_server)
        with pytest.raises(LookupError):
            await session.get(flaky_server.url + "/")
    s = snap(registry, flaky_server)
    assert (s.state, s.calls, s.failures) == (OPEN, 1, 1)


@pytest.mark.parametrize(
    "fallback",
    [42, "text", object(), lambda: None, lambda a, b, c: None, LastKnownGood(otherwise=lambda: 1)],
)
def test_a_fallback_of_the_wrong_shape_fails_when_the_middleware_is_built(fallback: Any) -> None:
    with pytest.raises(TypeError):
        CircuitBreakerMiddleware(fallback=fallback)


def test_a_coroutine_function_fallback_is_accepted() -> None:
    async def answer(request: Any, error: Any) -> Any:
        return FallbackResponse(503)

    CircuitBreakerMiddleware(fallback=answer)
    CircuitBreakerMiddleware(fallback=LastKnownGood(otherwise=answer))


# -- Last-Known-Good ---------------------------------------------------------------------------


async def test_last_known_good_answers_with_the_last_good_body_marked_stale(
    flaky_server: FlakyServer,
) -> None:
    clock = ManualClock()
    lkg = LastKnownGood(clock=clock)
    registry = registry_for()
    url = flaky_server.url + "/json"
    async with session_for(registry, fallback=lkg) as session:
        async with session.get(url) as response:
            fresh = await response.json()
            assert breaker_info(response) == {"key": flaky_server.url, "state": "closed"}
        clock.advance(42.0)
        await _trip(session, flaky_server)
        async with session.get(url) as response:
            assert response.status == 200
            assert await response.json() == fresh
            assert response.headers["Age"] == "42"
            assert response.headers["X-Circuit-Breaker"] == "open"
            assert response.headers["Retry-After"] == "10"
            assert "Content-Length" not in response.headers
            assert breaker_info(response) == {
                "key": flaky_server.url,
                "state": "open",
                "fallback": True,
                "stale": True,
            }
        async with session.head(url) as response:
            assert response.status == 200
            assert await response.read() == b""
        with pytest.raises(CircuitOpenClientError):
            await session.get(flaky_server.url + "/other")  # nothing stored for it
    assert flaky_server.requests == 2


async def test_last_known_good_stores_a_streamed_body_read_to_its_end(
    scripted: ScriptedServer,
) -> None:
    lkg = LastKnownGood()
    registry = registry_for(key=lambda method, url: "k")
    async with session_for(registry, fallback=lkg) as session:
        request = asyncio.ensure_future(session.get(scripted.url + "/doc"))
        exchange = await scripted.exchange()
        await exchange.send(head(200, 8, "Content-Type: text/plain") + b"abcd")
        async with await request as response:
            parts = [await response.content.read(4)]
            await exchange.send(b"efgh")
            parts.append(await response.content.read())
            assert b"".join(parts) == b"abcdefgh"
        # a body closed before its end is not stored
        request = asyncio.ensure_future(session.get(scripted.url + "/partial"))
        exchange = await scripted.exchange(exchange)
        await exchange.send(head(200, 8) + b"abcd")
        async with await request as response:
            assert await response.content.read(4) == b"abcd"
        registry.get("k").force_open()
        async with session.get(scripted.url + "/doc") as response:
            assert await response.text() == "abcdefgh"
            assert response.headers["Content-Type"] == "text/plain"
        with pytest.raises(CircuitOpenClientError):
            await session.get(scripted.url + "/partial")


async def test_last_known_good_keeps_a_decoded_body_without_its_encoding(
    scripted: ScriptedServer,
) -> None:
    lkg = LastKnownGood()
    registry = registry_for(key=lambda method, url: "k")
    body = gzip.compress(b"hello, " * 10)
    async with session_for(registry, fallback=lkg) as session:
        request = asyncio.ensure_future(session.get(scripted.url + "/z"))
        exchange = await scripted.exchange()
        await exchange.send(head(200, len(body), "Content-Encoding: gzip") + body[:10])
        async with await request as response:
            reading = asyncio.ensure_future(response.read())
            await asyncio.sleep(0)
            await exchange.send(body[10:])
            assert await reading == b"hello, " * 10
        registry.get("k").force_open()
        stored = lkg.lookup(scripted.url + "/z", lambda name: None)
        if getattr(aiohttp.StreamReader, "total_compressed_bytes", None) is None:
            # aiohttp < 3.14 does not say it decoded the body: nothing is stored
            assert stored is None
            return
        async with session.get(scripted.url + "/z") as response:
            assert "Content-Encoding" not in response.headers
            assert await response.read() == b"hello, " * 10


async def test_last_known_good_with_otherwise(flaky_server: FlakyServer) -> None:
    lkg = LastKnownGood(otherwise=FallbackResponse(503, content=b"none stored"))
    registry = registry_for()
    registry.get(flaky_server.url).force_open()
    async with (
        session_for(registry, fallback=lkg) as session,
        session.get(flaky_server.url + "/json") as response,
    ):
        assert (response.status, await response.read()) == (503, b"none stored")
        assert breaker_info(response) == {
            "key": flaky_server.url,
            "state": "forced_open",
            "fallback": True,
        }


async def test_an_upstream_failure_is_returned_as_it_is_not_replaced(
    flaky_server: FlakyServer,
) -> None:
    registry = registry_for()
    async with (
        session_for(registry, fallback=FallbackResponse(599)) as session,
        session.get(flaky_server.url + "/status/503") as response,
    ):
        assert response.status == 503
        assert "X-Circuit-Breaker" not in response.headers
