"""The aiohttp middleware end to end: what counts, where an outcome settles, half-open trials.

Real ``aiohttp.ClientSession`` requests over loopback sockets. The upstream is a
``FlakyServer`` (failures by path) or a ``ScriptedServer`` (the test writes each
response itself, so a body can be held half-sent while the test looks at the
breaker). Breaker time is a ``ManualClock`` moved by the test; the only real
waits are the few timeouts under test, each a fraction of a second. Tasks meet
on the server's request counter or on the scripted server's next request,
never on sleeps.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import aiohttp
import anyio
import pytest
from aio_support import (
    CLOSED,
    COUNT_ONLY,
    HALF_OPEN,
    OPEN,
    SLOW1,
    TRIP1,
    ScriptedServer,
    closed_port,
    head,
    registry_for,
    session_for,
    snap,
)

from circuitbreaker_http import BreakerConfig, CallInfo, CircuitOpenError
from circuitbreaker_http.aiohttp import CircuitOpenClientError, breaker_info
from circuitbreaker_http.testing import ManualClock
from circuitbreaker_http.testing._server import FlakyServer

pytestmark = pytest.mark.anyio


# -- statuses ----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 429])
async def test_failure_status_trips_and_later_requests_never_reach_the_server(
    flaky_server: FlakyServer, status: int
) -> None:
    registry = registry_for()
    url = f"{flaky_server.url}/status/{status}"
    async with session_for(registry) as session:
        async with session.get(url) as response:
            assert response.status == status
        assert snap(registry, flaky_server).state is OPEN
        for _ in range(3):
            with pytest.raises(CircuitOpenError) as caught:
                await session.get(url)
    assert flaky_server.requests == 1
    error = caught.value
    assert isinstance(error, CircuitOpenClientError)
    assert isinstance(error, aiohttp.ClientConnectionError)
    assert (error.name, error.state, error.retry_after) == (flaky_server.url, OPEN, 10.0)
    assert error.request is not None and str(error.request.url) == url
    assert error.request_info is not None and str(error.request_info.url) == url


@pytest.mark.parametrize("status", [200, 201, 204, 302, 304, 400, 404, 501, 505])
async def test_success_status_does_not_trip(flaky_server: FlakyServer, status: int) -> None:
    registry = registry_for()
    async with session_for(registry) as session:
        for _ in range(3):
            url = f"{flaky_server.url}/status/{status}"
            async with session.get(url, allow_redirects=False) as response:
                assert response.status == status
                await response.read()
    s = snap(registry, flaky_server)
    assert (s.state, s.calls, s.failures) == (CLOSED, 3, 0)


async def test_a_failure_status_settles_at_once_before_the_body(
    scripted: ScriptedServer,
) -> None:
    registry = registry_for()
    async with session_for(registry) as session:
        request = asyncio.ensure_future(session.get(scripted.url + "/x"))
        exchange = await scripted.exchange()
        await exchange.send(head(503, 10) + b"half")
        async with await request as response:
            assert response.status == 503
            # the body is still arriving: the status alone decided
            assert snap(registry, scripted).state is OPEN
            exchange.close()


async def test_failure_statuses_follow_the_config(flaky_server: FlakyServer) -> None:
    config = BreakerConfig(consecutive_failures=1, failure_rate=None, failure_statuses={404})
    registry = registry_for(config)
    async with session_for(registry) as session:
        async with session.get(f"{flaky_server.url}/status/503") as response:
            assert response.status == 503
        assert snap(registry, flaky_server).state is CLOSED
        async with session.get(f"{flaky_server.url}/status/404") as response:
            assert response.status == 404
        assert snap(registry, flaky_server).state is OPEN


# -- errors ------------------------------------------------------------------------------------


async def test_a_refused_connection_is_a_failure() -> None:
    registry = registry_for()
    url = f"http://127.0.0.1:{closed_port()}"
    async with session_for(registry) as session:
        with pytest.raises(aiohttp.ClientConnectorError):
            await session.get(url + "/")
        with pytest.raises(CircuitOpenClientError):
            await session.get(url + "/")
    s = registry.get(url).snapshot()
    assert (s.state, s.failures) == (OPEN, 1)


@pytest.mark.parametrize("path", ["/reset", "/close"])
async def test_a_connection_dropped_before_the_headers_is_a_failure(
    flaky_server: FlakyServer, path: str
) -> None:
    registry = registry_for(COUNT_ONLY)
    async with session_for(registry) as session:
        with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
            await session.get(flaky_server.url + path)
    s = snap(registry, flaky_server)
    # aiohttp retries an idempotent request once on a dropped connection: two
    # attempts, two requests through the middleware, two failures.
    assert flaky_server.requests == 2
    assert (s.calls, s.failures) == (2, 2)


async def test_a_retry_of_a_dropped_connection_is_short_circuited_once_open(
    flaky_server: FlakyServer,
) -> None:
    registry = registry_for(TRIP1)
    async with session_for(registry) as session:
        with pytest.raises(CircuitOpenClientError):
            await session.get(flaky_server.url + "/reset")
    assert flaky_server.requests == 1
    assert snap(registry, flaky_server).state is OPEN


async def test_a_read_timeout_before_the_headers_is_a_failure(flaky_server: FlakyServer) -> None:
    registry = registry_for()
    timeout = aiohttp.ClientTimeout(total=10.0, sock_read=0.1)
    async with session_for(registry, timeout=timeout) as session:
        with pytest.raises(aiohttp.ServerTimeoutError):
            await session.get(flaky_server.url + "/delay/5")
    s = snap(registry, flaky_server)
    assert (s.state, s.failures) == (OPEN, 1)


async def test_the_total_timeout_while_waiting_for_headers_is_a_failure(
    flaky_server: FlakyServer,
) -> None:
    registry = registry_for()
    async with session_for(registry, timeout=aiohttp.ClientTimeout(total=0.1)) as session:
        with pytest.raises(asyncio.TimeoutError):
            await session.get(flaky_server.url + "/delay/5")
    assert snap(registry, flaky_server).state is OPEN


async def test_the_total_timeout_while_connecting_is_a_failure_not_a_cancellation(
    flaky_server: FlakyServer,
) -> None:
    # aiohttp cancels the task for a total timeout and turns the CancelledError
    # into TimeoutError only outside the middlewares. A middleware after ours
    # that never returns stands in for a connect that hangs.
    async def hang(request: aiohttp.ClientRequest, handler: Any) -> aiohttp.ClientResponse:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    seen: list[CallInfo] = []

    def classify(call: CallInfo) -> None:
        seen.append(call)

    registry = registry_for(TRIP1.replace(classify=classify))
    timeout = aiohttp.ClientTimeout(total=0.05)
    async with session_for(registry, inner=[hang], timeout=timeout) as session:
        with pytest.raises(asyncio.TimeoutError):
            await session.get(flaky_server.url + "/")
    s = snap(registry, flaky_server)
    assert (s.state, s.failures) == (OPEN, 1)
    [call] = seen
    assert isinstance(call.error, asyncio.TimeoutError)
    assert (call.method, call.url, call.status) == ("GET", flaky_server.url + "/", None)


async def test_an_invalid_url_is_not_recorded() -> None:
    registry = registry_for()
    async with session_for(registry) as session:
        with pytest.raises(aiohttp.InvalidURL):
            await session.get("http://")
        with pytest.raises(aiohttp.NonHttpUrlClientError):
            await session.get("ftp://127.0.0.1/")
    assert len(registry) == 0


async def test_a_bug_in_a_later_middleware_records_nothing(flaky_server: FlakyServer) -> None:
    async def buggy(request: aiohttp.ClientRequest, handler: Any) -> aiohttp.ClientResponse:
        raise KeyError("a bug")

    registry = registry_for()
    async with session_for(registry, inner=[buggy]) as session:
        with pytest.raises(KeyError):
            await session.get(flaky_server.url + "/")
    s = snap(registry, flaky_server)
    assert (s.state, s.calls) == (CLOSED, 0)


async def test_raise_for_status_in_a_later_middleware_is_judged_by_its_status(
    flaky_server: FlakyServer,
) -> None:
    async def strict(request: aiohttp.ClientRequest, handler: Any) -> aiohttp.ClientResponse:
        response: aiohttp.ClientResponse = await handler(request)
        response.raise_for_status()
        return response

    registry = registry_for(COUNT_ONLY)
    async with session_for(registry, inner=[strict]) as session:
        with pytest.raises(aiohttp.ClientResponseError):
            await session.get(flaky_server.url + "/status/404")
    s = snap(registry, flaky_server)
    assert (s.calls, s.failures) == (0, 0)  # not the upstream's failure: nothing recorded


async def test_a_malformed_response_is_a_failure(scripted: ScriptedServer) -> None:
    registry = registry_for()
    async with session_for(registry) as session:
        request = asyncio.ensure_future(session.get(scripted.url + "/"))
        exchange = await scripted.exchange()
        await exchange.send(b"HTTP/1.1 2x0 Nonsense\r\n\r\n")
        with pytest.raises(aiohttp.ClientResponseError):
            await request
        exchange.close()
    assert snap(registry, scripted).state is OPEN


async def test_another_breakers_rejection_is_not_recorded(flaky_server: FlakyServer) -> None:
    inner_registry = registry_for()
    inner_registry.get(flaky_server.url).force_open()
    from circuitbreaker_http.aiohttp import CircuitBreakerMiddleware

    registry = registry_for()
    inner = CircuitBreakerMiddleware(registry=inner_registry)
    async with session_for(registry, inner=[inner]) as session:
        with pytest.raises(CircuitOpenClientError) as caught:
            await session.get(flaky_server.url + "/")
    assert caught.value.name == flaky_server.url
    s = snap(registry, flaky_server)
    assert (s.state, s.calls) == (CLOSED, 0)
    assert flaky_server.requests == 0


# -- bodies ------------------------------------------------------------------------------------


async def test_a_success_settles_when_the_body_is_read_to_its_end(
    scripted: ScriptedServer,
) -> None:
    registry = registry_for(COUNT_ONLY)
    async with session_for(registry) as session:
        request = asyncio.ensure_future(session.get(scripted.url + "/"))
        exchange = await scripted.exchange()
        await exchange.send(head(200, 8) + b"abcd")
        async with await request as response:
            assert await response.content.readexactly(4) == b"abcd"
            assert snap(registry, scripted).calls == 0  # the body is still arriving
            await exchange.send(b"efgh")
            assert await response.read() == b"efgh"
            assert snap(registry, scripted).calls == 1
    s = snap(registry, scripted)
    assert (s.calls, s.failures) == (1, 0)


@pytest.mark.parametrize("how", ["release", "close", "context"])
async def test_a_success_settles_when_the_response_is_released_or_closed_unread(
    scripted: ScriptedServer, how: str
) -> None:
    registry = registry_for(COUNT_ONLY)
    async with session_for(registry) as session:
        request = asyncio.ensure_future(session.get(scripted.url + "/"))
        exchange = await scripted.exchange()
        await exchange.send(head(200, 100) + b"abcd")
        response = await request
        assert snap(registry, scripted).calls == 0
        if how == "release":
            response.release()
        elif how == "close":
            response.close()
        else:
            async with response:
                pass
        s = snap(registry, scripted)
        assert (s.calls, s.failures) == (1, 0)
        exchange.close()


async def test_a_dropped_response_settles_as_a_success_when_collected(
    scripted: ScriptedServer,
) -> None:
    registry = registry_for(COUNT_ONLY)
    async with session_for(registry) as session:
        request = asyncio.ensure_future(session.get(scripted.url + "/"))
        exchange = await scripted.exchange()
        await exchange.send(head(200, 8) + b"abcd")
        response = await request
        await exchange.send(b"efgh")
        # The whole body arrives, unread. (Until then aiohttp's connection
        # holds the response: only a response whose body has arrived, or whose
        # connection is gone, can be collected.)
        await response.content.wait_eof()
        assert snap(registry, scripted).calls == 0
        del response, request
        gc.collect()
        s = snap(registry, scripted)
        assert (s.calls, s.failures) == (1, 0)


@pytest.mark.parametrize(
    "read",
    [
        "read",
        "text",
        "json",
        "content.read",
        "content.readany",
        "content.iter_any",
        "content.iter_chunked",
        "content.iter_chunks",
        "content.lines",
    ],
)
async def test_every_way_of_reading_a_body_ends_the_outcome(
    scripted: ScriptedServer, read: str
) -> None:
    registry = registry_for(COUNT_ONLY)
    async with session_for(registry) as session:
        request = asyncio.ensure_future(session.get(scripted.url + "/"))
        exchange = await scripted.exchange()
        body = b'{"a": 1}\n'
        await exchange.send(head(200, len(body), "Content-Type: application/json") + body[:3])
        async with await request as response:
            assert snap(registry, scripted).calls == 0
            reading = asyncio.ensure_future(_read(response, read))
            await asyncio.sleep(0)  # let the read start and wait on the body
            await exchange.send(body[3:])
            got = await reading
            assert got in (body, {"a": 1}, body.decode())
            assert snap(registry, scripted).calls == 1


async def _read(response: aiohttp.ClientResponse, how: str) -> Any:
    if how == "read":
        return await response.read()
    if how == "text":
        return await response.text()
    if how == "json":
        return await response.json()
    content = response.content
    if how == "content.read":
        return await content.read()
    if how == "content.readany":
        parts = []
        while part := await content.readany():
            parts.append(part)
        return b"".join(parts)
    if how == "content.iter_any":
        return b"".join([part async for part in content.iter_any()])
    if how == "content.iter_chunked":
        return b"".join([part async for part in content.iter_chunked(2)])
    if how == "content.iter_chunks":
        return b"".join([part async for part, _ in content.iter_chunks()])
    return b"".join([line async for line in content])


@pytest.mark.parametrize("path", ["/short?length=100&sent=10", "/stream?chunks=4&fail_after=1"])
async def test_a_body_cut_short_is_a_failure_though_the_status_was_200(
    flaky_server: FlakyServer, path: str
) -> None:
    registry = registry_for()
    async with session_for(registry) as session, session.get(flaky_server.url + path) as response:
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
    s = snap(registry, flaky_server)
    assert (s.state, s.failures) == (OPEN, 1)


async def test_a_body_cut_short_is_a_failure_even_when_released_unread(
    scripted: ScriptedServer,
) -> None:
    registry = registry_for()
    async with session_for(registry) as session:
        request = asyncio.ensure_future(session.get(scripted.url + "/"))
        exchange = await scripted.exchange()
        await exchange.send(head(200, 100) + b"abcd")
        response = await request
        exchange.close()
        # wait (on aiohttp's own reader, not the watched one) for the cut to land
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.content._cb_inner.wait_eof()  # type: ignore[attr-defined]
        assert snap(registry, scripted).calls == 0
        response.release()
    s = snap(registry, scripted)
    assert (s.state, s.failures) == (OPEN, 1)


async def test_a_read_timeout_mid_body_is_a_failure(flaky_server: FlakyServer) -> None:
    registry = registry_for()
    timeout = aiohttp.ClientTimeout(total=10.0, sock_read=0.1)
    async with (
        session_for(registry, timeout=timeout) as session,
        session.get(flaky_server.url + "/stall_body?after=4&length=100") as response,
    ):
        assert response.status == 200
        assert snap(registry, flaky_server).calls == 0
        with pytest.raises(aiohttp.ServerTimeoutError):
            await response.read()
    assert snap(registry, flaky_server).state is OPEN


async def test_the_total_timeout_mid_body_is_a_failure(flaky_server: FlakyServer) -> None:
    registry = registry_for()
    async with (
        session_for(registry, timeout=aiohttp.ClientTimeout(total=0.2)) as session,
        session.get(flaky_server.url + "/stall_body?after=4&length=100") as response,
    ):
        with pytest.raises(asyncio.TimeoutError):
            await response.read()
    assert snap(registry, flaky_server).state is OPEN


async def test_a_complete_body_settles_with_the_headers(flaky_server: FlakyServer) -> None:
    # A small body arrives with the headers: nothing is left to watch.
    registry = registry_for(COUNT_ONLY)
    async with session_for(registry) as session:
        async with session.get(flaky_server.url + "/json") as response:
            assert type(response.content) is aiohttp.StreamReader
            assert snap(registry, flaky_server).calls == 1
            assert (await response.json())["ok"] is True
        async with session.head(flaky_server.url + "/json") as response:
            assert response.status == 200
    assert snap(registry, flaky_server).calls == 2


async def test_a_watched_body_is_still_a_stream_reader(scripted: ScriptedServer) -> None:
    registry = registry_for(COUNT_ONLY)
    async with session_for(registry) as session:
        request = asyncio.ensure_future(session.get(scripted.url + "/"))
        exchange = await scripted.exchange()
        await exchange.send(head(200, 8) + b"abcd")
        async with await request as response:
            content = response.content
            assert isinstance(content, aiohttp.StreamReader)
            assert "watched" in repr(content)
            assert content.total_bytes == 4
            assert not content.is_eof() and not content.at_eof()
            assert content.exception() is None
            assert content.read_nowait() == b"abcd"
            await exchange.send(b"efgh")
            await content.wait_eof()
            assert content.is_eof() and content.total_bytes == 8
            assert snap(registry, scripted).calls == 0  # arrived, not yet read
            assert content.read_nowait() == b"efgh"
            assert snap(registry, scripted).calls == 1


# -- cancellation ------------------------------------------------------------------------------


async def test_cancelling_a_request_before_its_headers_records_nothing(
    flaky_server: FlakyServer,
) -> None:
    registry = registry_for()
    async with session_for(registry) as session:
        task = asyncio.ensure_future(session.get(flaky_server.url + "/delay/30"))
        assert await anyio.to_thread.run_sync(flaky_server.wait_for_requests, 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    s = snap(registry, flaky_server)
    assert (s.state, s.calls) == (CLOSED, 0)


async def test_a_caller_timeout_records_nothing(flaky_server: FlakyServer) -> None:
    registry = registry_for()
    async with session_for(registry) as session:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(session.get(flaky_server.url + "/delay/30"), 0.1)
    s = snap(registry, flaky_server)
    assert (s.state, s.calls) == (CLOSED, 0)


async def test_cancelling_a_body_read_records_nothing(scripted: ScriptedServer) -> None:
    registry = registry_for()
    async with session_for(registry) as session:
        request = asyncio.ensure_future(session.get(scripted.url + "/"))
        exchange = await scripted.exchange()
        await exchange.send(head(200, 100) + b"abcd")
        async with await request as response:
            reading = asyncio.ensure_future(response.read())
            await asyncio.sleep(0)  # let the read start and wait on the body
            reading.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reading
        exchange.close()
    s = snap(registry, scripted)
    assert (s.state, s.calls) == (CLOSED, 0)


async def test_a_cancelled_trial_gives_its_slot_back(flaky_server: FlakyServer) -> None:
    clock = ManualClock()
    registry = registry_for(clock=clock)
    async with session_for(registry) as session:
        async with session.get(flaky_server.url + "/status/500"):
            pass
        clock.advance(10.0)
        assert snap(registry, flaky_server).state is HALF_OPEN
        task = asyncio.ensure_future(session.get(flaky_server.url + "/delay/30"))
        assert await anyio.to_thread.run_sync(flaky_server.wait_for_requests, 2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with session.get(flaky_server.url + "/json") as response:
            assert response.status == 200
    assert snap(registry, flaky_server).state is CLOSED


# -- half-open trials --------------------------------------------------------------------------


async def test_a_trial_frees_its_slot_at_a_success_status(scripted: ScriptedServer) -> None:
    clock = ManualClock()
    registry = registry_for(clock=clock)
    registry.get(scripted.url)  # the breaker exists before it trips
    async with session_for(registry) as session:
        first = asyncio.ensure_future(session.get(scripted.url + "/a"))
        exchange = await scripted.exchange()
        await exchange.send(head(503, 0))
        async with await first:
            pass
        clock.advance(10.0)
        assert snap(registry, scripted).state is HALF_OPEN
        # the trial: 200 and a body that is still arriving
        trial = asyncio.ensure_future(session.get(scripted.url + "/b"))
        exchange = await scripted.exchange(exchange)
        await exchange.send(head(200, 8) + b"abcd")
        async with await trial as response:
            assert response.status == 200
            assert breaker_info(response) == {"key": scripted.url, "state": "half_open"}
            # its slot is free again: a second request is let through, not rejected
            second = asyncio.ensure_future(session.get(scripted.url + "/c"))
            other = await scripted.exchange()
            assert other.request_line.startswith("GET /c ")
            await other.send(head(200, 2) + b"ok")
            async with await second as answer:
                assert await answer.read() == b"ok"
            await exchange.send(b"efgh")
            assert await response.read() == b"abcdefgh"
    assert snap(registry, scripted).state is CLOSED


async def test_a_failed_trial_opens_again(flaky_server: FlakyServer) -> None:
    clock = ManualClock()
    registry = registry_for(clock=clock)
    async with session_for(registry) as session:
        async with session.get(flaky_server.url + "/status/500"):
            pass
        clock.advance(10.0)
        async with session.get(flaky_server.url + "/status/502") as response:
            assert breaker_info(response) == {"key": flaky_server.url, "state": "half_open"}
        assert snap(registry, flaky_server).state is OPEN
        with pytest.raises(CircuitOpenClientError):
            await session.get(flaky_server.url + "/")
    assert flaky_server.requests == 2


async def test_while_the_trial_slot_is_taken_requests_are_short_circuited(
    flaky_server: FlakyServer,
) -> None:
    clock = ManualClock()
    registry = registry_for(clock=clock)
    async with session_for(registry) as session:
        async with session.get(flaky_server.url + "/status/500"):
            pass
        clock.advance(10.0)
        trial = asyncio.ensure_future(session.get(flaky_server.url + "/delay/30"))
        assert await anyio.to_thread.run_sync(flaky_server.wait_for_requests, 2)
        with pytest.raises(CircuitOpenClientError) as caught:
            await session.get(flaky_server.url + "/")
        assert (caught.value.state, caught.value.retry_after) == (HALF_OPEN, None)
        trial.cancel()
        with pytest.raises(asyncio.CancelledError):
            await trial


# -- slow calls --------------------------------------------------------------------------------


async def test_time_until_the_headers_counts_toward_slow(flaky_server: FlakyServer) -> None:
    clock = ManualClock()
    registry = registry_for(SLOW1, clock=clock)

    async def slow_upstream(request: aiohttp.ClientRequest, handler: Any) -> Any:
        clock.advance(2.0)
        return await handler(request)

    async with (
        session_for(registry, inner=[slow_upstream]) as session,
        session.get(flaky_server.url + "/json") as response,
    ):
        await response.read()
    s = snap(registry, flaky_server)
    assert (s.state, s.slow_calls, s.failures) == (OPEN, 1, 0)


async def test_time_inside_a_body_read_counts_toward_slow(scripted: ScriptedServer) -> None:
    clock = ManualClock()
    registry = registry_for(SLOW1, clock=clock)
    async with session_for(registry) as session:
        request = asyncio.ensure_future(session.get(scripted.url + "/"))
        exchange = await scripted.exchange()
        await exchange.send(head(200, 8) + b"abcd")
        async with await request as response:
            reading = asyncio.ensure_future(response.content.readexactly(8))
            await asyncio.sleep(0)  # the read is waiting on the upstream
            clock.advance(2.0)
            await exchange.send(b"efgh")
            assert await reading == b"abcdefgh"
            await response.read()
    s = snap(registry, scripted)
    assert (s.state, s.slow_calls) == (OPEN, 1)


async def test_the_callers_time_between_reads_does_not_count(scripted: ScriptedServer) -> None:
    clock = ManualClock()
    registry = registry_for(SLOW1, clock=clock)
    async with session_for(registry) as session:
        request = asyncio.ensure_future(session.get(scripted.url + "/"))
        exchange = await scripted.exchange()
        await exchange.send(head(200, 8) + b"abcd")
        async with await request as response:
            assert await response.content.readexactly(4) == b"abcd"
            clock.advance(2.0)  # the caller dawdles; the upstream waits on nobody
            await exchange.send(b"efgh")
            assert await response.read() == b"efgh"
    s = snap(registry, scripted)
    assert (s.state, s.calls, s.slow_calls) == (CLOSED, 1, 0)


# -- redirects ---------------------------------------------------------------------------------


async def test_each_redirect_hop_is_a_request_of_its_own(flaky_server: FlakyServer) -> None:
    registry = registry_for(COUNT_ONLY)
    async with (
        session_for(registry) as session,
        session.get(flaky_server.url + "/redirect/2") as response,
    ):
        assert response.status == 200
        assert [hop.status for hop in response.history] == [302, 302]
        assert all(breaker_info(hop) is not None for hop in response.history)
        await response.read()
    s = snap(registry, flaky_server)
    assert (s.calls, s.failures) == (3, 0)


async def test_a_redirect_into_an_open_breaker_is_short_circuited(
    flaky_server: FlakyServer, second_flaky: FlakyServer
) -> None:
    registry = registry_for()
    registry.get(second_flaky.url).force_open()
    target = f"{second_flaky.url}/json"
    async with session_for(registry) as session:
        with pytest.raises(CircuitOpenClientError) as caught:
            await session.get(f"{flaky_server.url}/status/302?header=Location:{target}")
    assert caught.value.name == second_flaky.url
    assert snap(registry, flaky_server).calls == 1
    assert second_flaky.requests == 0


@pytest.fixture
def second_flaky() -> Any:
    with FlakyServer() as server:
        yield server
    assert server.errors == []


# -- nested breakers ---------------------------------------------------------------------------


async def test_nested_middlewares_each_watch_the_same_body(scripted: ScriptedServer) -> None:
    from circuitbreaker_http.aiohttp import CircuitBreakerMiddleware

    outer, inner = registry_for(COUNT_ONLY), registry_for(COUNT_ONLY)
    async with session_for(outer, inner=[CircuitBreakerMiddleware(registry=inner)]) as session:
        request = asyncio.ensure_future(session.get(scripted.url + "/"))
        exchange = await scripted.exchange()
        await exchange.send(head(200, 8) + b"abcd")
        async with await request as response:
            assert breaker_info(response) == {"key": scripted.url, "state": "closed"}
            assert (snap(outer, scripted).calls, snap(inner, scripted).calls) == (0, 0)
            await exchange.send(b"efgh")
            assert await response.read() == b"abcdefgh"
            assert (snap(outer, scripted).calls, snap(inner, scripted).calls) == (1, 1)
        # released unread: both settle
        request = asyncio.ensure_future(session.get(scripted.url + "/"))
        exchange = await scripted.exchange(exchange)
        await exchange.send(head(200, 8) + b"abcd")
        (await request).release()
        assert (snap(outer, scripted).calls, snap(inner, scripted).calls) == (2, 2)
        exchange.close()
