"""The httpx transports end to end: real httpx clients over real loopback sockets.

The upstream is a ``FlakyServer`` (the ``flaky_server`` fixture): its request
counters prove what reached the network, its paths fail on demand. Breaker
time comes from a ``ManualClock`` moved by the test, so open periods and slow
calls never wait on the wall clock; the only real waits are the few
timeouts under test (a read timeout, a pool timeout, ``anyio.fail_after``), each a
small fraction of a second. Threads and tasks meet on the server's request
counter, never on sleeps. ``test_httpx_unit.py`` covers the same ground one
layer at a time.
"""

from __future__ import annotations

import contextlib
import gc
import socket
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import anyio
import httpx
import pytest
from httpx_retries import Retry, RetryTransport

from circuitbreaker_http import (
    BreakerConfig,
    BreakerRegistry,
    CircuitOpenError,
    CircuitState,
    FallbackResponse,
    LastKnownGood,
    by_route,
    options,
)
from circuitbreaker_http.httpx import AsyncCircuitBreakerTransport, CircuitBreakerTransport
from circuitbreaker_http.testing import ManualClock
from circuitbreaker_http.testing._server import FlakyServer

CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN

TRIP1 = BreakerConfig(
    consecutive_failures=1, failure_rate=None, open_duration=10.0, max_open_duration=300.0
)
COUNT_ONLY = BreakerConfig(consecutive_failures=None, failure_rate=None)
SLOW1 = BreakerConfig(
    consecutive_failures=None,
    failure_rate=None,
    slow_call_duration=1.0,
    slow_call_rate=1.0,
    minimum_calls=1,
)
TIMEOUT = httpx.Timeout(10.0)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def second_server() -> Iterator[FlakyServer]:
    with FlakyServer() as server:
        yield server
    assert server.errors == []


def registry_for(config: BreakerConfig = TRIP1, clock: ManualClock | None = None, **kw: Any) -> Any:
    return BreakerRegistry(config, clock=clock or ManualClock(), **kw)


def sync_client(
    registry: BreakerRegistry, *, timeout: httpx.Timeout = TIMEOUT, **kwargs: Any
) -> httpx.Client:
    return httpx.Client(
        transport=CircuitBreakerTransport(registry=registry, **kwargs), timeout=timeout
    )


def async_client(
    registry: BreakerRegistry, *, timeout: httpx.Timeout = TIMEOUT, **kwargs: Any
) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=AsyncCircuitBreakerTransport(registry=registry, **kwargs), timeout=timeout
    )


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def snap(registry: BreakerRegistry, server: FlakyServer) -> Any:
    return registry.get(server.url).snapshot()


# -- what counts -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 429])
def test_failure_status_trips_and_later_requests_never_reach_the_server(
    flaky_server: FlakyServer, status: int
) -> None:
    registry = registry_for()
    url = f"{flaky_server.url}/status/{status}"
    with sync_client(registry) as client:
        response = client.get(url)
        assert response.status_code == status
        assert snap(registry, flaky_server).state is OPEN
        for _ in range(3):
            with pytest.raises(CircuitOpenError) as caught:
                client.get(url)
    assert flaky_server.requests == 1
    error = caught.value
    assert isinstance(error, httpx.TransportError)
    assert error.request.url == url
    assert (error.name, error.state, error.retry_after) == (flaky_server.url, OPEN, 10.0)


@pytest.mark.parametrize("status", [200, 201, 204, 302, 400, 404, 501, 505])
def test_success_status_does_not_trip(flaky_server: FlakyServer, status: int) -> None:
    registry = registry_for()
    with sync_client(registry) as client:
        for _ in range(3):
            assert client.get(f"{flaky_server.url}/status/{status}").status_code == status
    s = snap(registry, flaky_server)
    assert (s.state, s.calls, s.failures) == (CLOSED, 3, 0)
    assert flaky_server.requests == 3


@pytest.mark.anyio
async def test_async_statuses(flaky_server: FlakyServer) -> None:
    registry = registry_for(COUNT_ONLY)
    failing, passing = [500, 503, 408, 429, 599], [200, 204, 404, 501, 505]
    async with async_client(registry) as client:
        for status in failing + passing:
            response = await client.get(f"{flaky_server.url}/status/{status}")
            assert response.status_code == status
            assert response.extensions["circuit_breaker"]["key"] == flaky_server.url
    s = snap(registry, flaky_server)
    assert (s.calls, s.failures) == (10, 5)


UPSTREAM_FAILURES = [
    ("/reset", httpx.TransportError),  # RST before any answer: ReadError
    ("/close", httpx.RemoteProtocolError),  # FIN before any answer
    ("/short?length=100&sent=10", httpx.RemoteProtocolError),  # body cut short after a 200
    ("/stream?chunks=4&fail_after=2", httpx.RemoteProtocolError),  # chunked body cut
    ("/delay/5", httpx.ReadTimeout),
]


@pytest.mark.parametrize(("path", "error"), UPSTREAM_FAILURES)
def test_upstream_failures_trip(
    flaky_server: FlakyServer, path: str, error: type[Exception]
) -> None:
    registry = registry_for()
    timeout = httpx.Timeout(10.0, read=0.2)
    with sync_client(registry, timeout=timeout) as client:
        with pytest.raises(error) as caught:
            client.get(f"{flaky_server.url}{path}")
        assert not isinstance(caught.value, CircuitOpenError)
        s = snap(registry, flaky_server)
        assert (s.state, s.calls, s.failures) == (OPEN, 1, 1)
        with pytest.raises(CircuitOpenError):
            client.get(f"{flaky_server.url}/json")
    assert flaky_server.requests == 1


def test_connect_error_to_a_closed_port_trips() -> None:
    registry = registry_for()
    url = f"http://127.0.0.1:{closed_port()}"
    with sync_client(registry) as client:
        with pytest.raises(httpx.ConnectError):
            client.get(f"{url}/")
        with pytest.raises(CircuitOpenError):
            client.get(f"{url}/")
    assert registry.get(url).snapshot().failures == 1


@pytest.mark.anyio
@pytest.mark.parametrize(("path", "error"), UPSTREAM_FAILURES)
async def test_async_upstream_failures_trip(
    flaky_server: FlakyServer, path: str, error: type[Exception]
) -> None:
    registry = registry_for()
    timeout = httpx.Timeout(10.0, read=0.2)
    async with async_client(registry, timeout=timeout) as client:
        with pytest.raises(error):
            await client.get(f"{flaky_server.url}{path}")
        s = snap(registry, flaky_server)
        assert (s.state, s.calls, s.failures) == (OPEN, 1, 1)
        with pytest.raises(CircuitOpenError):
            await client.get(f"{flaky_server.url}/json")
    assert flaky_server.requests == 1


@pytest.mark.anyio
async def test_async_connect_error_to_a_closed_port_trips() -> None:
    registry = registry_for()
    url = f"http://127.0.0.1:{closed_port()}"
    async with async_client(registry) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"{url}/")
        with pytest.raises(CircuitOpenError):
            await client.get(f"{url}/")


class BuggyTransport(httpx.HTTPTransport):
    """A real transport with a bug on one path."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/bug":
            raise ValueError("a bug in the inner transport")
        return super().handle_request(request)


def test_errors_that_say_nothing_about_the_upstream_are_not_recorded(
    flaky_server: FlakyServer,
) -> None:
    registry = registry_for()
    limits = httpx.Limits(max_connections=1)
    timeout = httpx.Timeout(10.0, pool=0.05)
    url = flaky_server.url
    with sync_client(registry, limits=limits, timeout=timeout) as client:
        with pytest.raises(httpx.LocalProtocolError):
            client.get(f"{url}/json", headers={"Bad Name": "x"})
        with pytest.raises(httpx.UnsupportedProtocol):
            client.get(f"ftp://127.0.0.1:{flaky_server.port}/")
        with client.stream("GET", f"{url}/stream?chunks=2") as held:
            # the only connection is busy: waiting for another one times out
            with pytest.raises(httpx.PoolTimeout):
                client.get(f"{url}/json")
            assert snap(registry, flaky_server).calls == 0
            held.read()
        s = snap(registry, flaky_server)
        assert (s.state, s.calls, s.failures) == (CLOSED, 1, 0)
    buggy = CircuitBreakerTransport(BuggyTransport(), registry=registry)
    with httpx.Client(transport=buggy) as client:
        with pytest.raises(ValueError):
            client.get(f"{url}/bug")
        assert client.get(f"{url}/json").status_code == 200
    s = snap(registry, flaky_server)
    assert (s.state, s.calls, s.failures) == (CLOSED, 2, 0)
    assert registry.get(f"ftp://127.0.0.1:{flaky_server.port}").snapshot().calls == 0


@pytest.mark.anyio
async def test_async_errors_that_say_nothing_about_the_upstream_are_not_recorded(
    flaky_server: FlakyServer,
) -> None:
    registry = registry_for()
    url = flaky_server.url
    limits = httpx.Limits(max_connections=1)
    timeout = httpx.Timeout(10.0, pool=0.05)
    async with async_client(registry, limits=limits, timeout=timeout) as client:
        with pytest.raises(httpx.LocalProtocolError):
            await client.get(f"{url}/json", headers={"Bad Name": "x"})
        with pytest.raises(httpx.UnsupportedProtocol):
            await client.get(f"ftp://127.0.0.1:{flaky_server.port}/")
        async with client.stream("GET", f"{url}/stream?chunks=2") as held:
            with pytest.raises(httpx.PoolTimeout):
                await client.get(f"{url}/json")
            assert snap(registry, flaky_server).calls == 0
            await held.aread()
    s = snap(registry, flaky_server)
    assert (s.state, s.calls, s.failures) == (CLOSED, 1, 0)


def test_redirect_hops_each_record_an_outcome(flaky_server: FlakyServer) -> None:
    registry = registry_for(COUNT_ONLY)
    with sync_client(registry) as client:
        response = client.get(f"{flaky_server.url}/redirect/2", follow_redirects=True)
    assert response.status_code == 200
    assert snap(registry, flaky_server).calls == 3
    assert flaky_server.requests == 3


# -- streamed bodies -------------------------------------------------------------------------


def test_streamed_body_outcomes(flaky_server: FlakyServer) -> None:
    registry = registry_for(COUNT_ONLY)
    url = f"{flaky_server.url}/stream?chunks=4&size=8"
    with sync_client(registry) as client:
        # read to the end: settles at the end
        with client.stream("GET", url) as response:
            assert response.status_code == 200
            assert snap(registry, flaky_server).calls == 0
            assert len(response.read()) == 32
            assert snap(registry, flaky_server).calls == 1
        # partly read, then closed
        with client.stream("GET", url) as response:
            for _ in response.iter_raw():
                break
            assert snap(registry, flaky_server).calls == 1
        assert snap(registry, flaky_server).calls == 2
        # never read, closed
        with client.stream("GET", url):
            pass
        assert snap(registry, flaky_server).calls == 3
        # never closed: settles when collected
        response = client.send(client.build_request("GET", url), stream=True)
        assert snap(registry, flaky_server).calls == 3
        del response
        gc.collect()
        s = snap(registry, flaky_server)
        assert (s.calls, s.failures) == (4, 0)
        # an error mid-body is a failure, though the status was 200
        with client.stream("GET", f"{flaky_server.url}/stream?chunks=4&fail_after=1") as response:
            assert response.status_code == 200
            with pytest.raises(httpx.RemoteProtocolError):
                response.read()
    s = snap(registry, flaky_server)
    assert (s.calls, s.failures) == (5, 1)


@pytest.mark.anyio
async def test_async_streamed_body_outcomes(flaky_server: FlakyServer) -> None:
    registry = registry_for(COUNT_ONLY)
    url = f"{flaky_server.url}/stream?chunks=4&size=8"
    async with async_client(registry) as client:
        async with client.stream("GET", url) as response:
            assert snap(registry, flaky_server).calls == 0
            assert len(await response.aread()) == 32
            assert snap(registry, flaky_server).calls == 1
        async with client.stream("GET", url):
            pass
        assert snap(registry, flaky_server).calls == 2
        response = await client.send(client.build_request("GET", url), stream=True)
        del response
        gc.collect()
        assert snap(registry, flaky_server).calls == 3
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(f"{flaky_server.url}/short")
    s = snap(registry, flaky_server)
    assert (s.calls, s.failures) == (4, 1)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_async_partly_read_then_closed_is_a_success(flaky_server: FlakyServer) -> None:
    # asyncio only: under trio, httpx's own body generators abandoned half-way
    # raise a ResourceWarning, with or without a breaker (the unit test covers trio).
    registry = registry_for(COUNT_ONLY)
    async with async_client(registry) as client:
        url = f"{flaky_server.url}/stream?chunks=4&size=8"
        async with client.stream("GET", url) as response:
            async with contextlib.aclosing(response.aiter_raw()) as chunks:
                async for _ in chunks:
                    break
            assert snap(registry, flaky_server).calls == 0
    s = snap(registry, flaky_server)
    assert (s.calls, s.failures) == (1, 0)


class ClockedStream(httpx.SyncByteStream):
    """Moves the breaker's clock inside each read of the real body: upstream time."""

    def __init__(self, inner: httpx.SyncByteStream, clock: ManualClock, step: float) -> None:
        self.inner, self.clock, self.step = inner, clock, step

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.inner:
            self.clock.advance(self.step)
            yield chunk

    def close(self) -> None:
        self.inner.close()


class ClockedTransport(httpx.HTTPTransport):
    def __init__(self, clock: ManualClock, step: float) -> None:
        super().__init__()
        self.clock, self.step = clock, step

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        assert isinstance(response.stream, httpx.SyncByteStream)
        response.stream = ClockedStream(response.stream, self.clock, self.step)
        return response


def test_slow_clock_counts_upstream_time_only(flaky_server: FlakyServer) -> None:
    clock = ManualClock()
    registry = registry_for(SLOW1, clock)
    url = f"{flaky_server.url}/stream?chunks=5&size=4"
    with sync_client(registry) as client, client.stream("GET", url) as response:
        for _ in response.iter_raw():
            clock.advance(10.0)  # the caller's own time between reads
    s = snap(registry, flaky_server)
    assert (s.calls, s.slow_calls, s.state) == (1, 0, CLOSED)
    transport = CircuitBreakerTransport(ClockedTransport(clock, 0.3), registry=registry)
    with httpx.Client(transport=transport) as client, client.stream("GET", url) as response:
        response.read()  # 5 reads x 0.3 s inside the upstream
    s = snap(registry, flaky_server)
    assert (s.calls, s.slow_calls, s.state) == (2, 1, CLOSED)
    assert s.slow_call_rate == 0.5


# -- half-open ---------------------------------------------------------------------------------


def test_half_open_success_status_frees_the_slot_and_the_body_end_closes(
    flaky_server: FlakyServer,
) -> None:
    clock = ManualClock()
    registry = registry_for(TRIP1, clock)
    url = flaky_server.url
    with sync_client(registry) as client:
        client.get(f"{url}/status/500")
        clock.advance(10.0)
        with client.stream("GET", f"{url}/stream?chunks=3") as first:
            assert first.extensions["circuit_breaker"]["state"] == "half_open"
            assert snap(registry, flaky_server).trials_in_flight == 0
            # a second trial passes while the first body is still open
            with client.stream("GET", f"{url}/stream?chunks=3") as second:
                assert second.extensions["circuit_breaker"]["state"] == "half_open"
                assert snap(registry, flaky_server).state is HALF_OPEN
            # the second closed unread: a successful trial, and one is enough
            assert snap(registry, flaky_server).state is CLOSED
            first.read()
    assert flaky_server.requests == 3


def test_half_open_trial_closes_when_its_body_ends(flaky_server: FlakyServer) -> None:
    clock = ManualClock()
    registry = registry_for(TRIP1, clock)
    url = flaky_server.url
    with sync_client(registry) as client:
        client.get(f"{url}/status/503")
        clock.advance(10.0)
        with client.stream("GET", f"{url}/stream?chunks=3") as response:
            assert snap(registry, flaky_server).state is HALF_OPEN
            response.read()
            assert snap(registry, flaky_server).state is CLOSED
        # and a trial whose body breaks opens it again, for twice as long
        client.get(f"{url}/status/503")
        clock.advance(10.0)
        with pytest.raises(httpx.RemoteProtocolError):
            client.get(f"{url}/short")
    s = snap(registry, flaky_server)
    # closing reset the backoff: a trip (n=1, 10 s), then a failed trial (n=2, 20 s)
    assert (s.state, s.open_count, s.retry_after) == (OPEN, 2, 20.0)


@pytest.mark.anyio
@pytest.mark.parametrize("where", ["headers", "body"])
async def test_async_cancelled_trial_records_nothing_and_frees_the_slot(
    flaky_server: FlakyServer, where: str
) -> None:
    clock = ManualClock()
    registry = registry_for(TRIP1, clock)
    url = flaky_server.url
    path = "/delay/30" if where == "headers" else "/stall_body?after=16&length=1000"
    async with async_client(registry) as client:
        await client.get(f"{url}/status/500")
        clock.advance(10.0)

        headers_in = anyio.Event()

        async def trial() -> None:
            async with client.stream("GET", f"{url}{path}") as response:
                headers_in.set()
                await response.aread()

        async with anyio.create_task_group() as tg:
            tg.start_soon(trial)
            if where == "headers":
                # the request is at the server, which holds its answer for 30 s
                assert await anyio.to_thread.run_sync(flaky_server.wait_for_requests, 2)
                assert snap(registry, flaky_server).trials_in_flight == 1
            else:
                # the headers are in; the body stalls after 16 bytes
                await headers_in.wait()
                assert snap(registry, flaky_server).trials_in_flight == 0
            assert snap(registry, flaky_server).state is HALF_OPEN
            tg.cancel_scope.cancel()
        assert headers_in.is_set() is (where == "body")
        s = snap(registry, flaky_server)
        assert (s.state, s.trials_in_flight, s.open_count) == (HALF_OPEN, 0, 1)
        response = await client.get(f"{url}/json")
        assert response.extensions["circuit_breaker"]["state"] == "half_open"
    assert snap(registry, flaky_server).state is CLOSED


@pytest.mark.anyio
async def test_async_fail_after_records_nothing(flaky_server: FlakyServer) -> None:
    clock = ManualClock()
    registry = registry_for(TRIP1, clock)
    url = flaky_server.url
    async with async_client(registry) as client:
        await client.get(f"{url}/status/500")
        clock.advance(10.0)
        with pytest.raises(TimeoutError), anyio.fail_after(0.1):
            await client.get(f"{url}/delay/30")
        with pytest.raises(TimeoutError), anyio.fail_after(0.1):
            await client.get(f"{url}/stall_body?after=8")
        s = snap(registry, flaky_server)
        assert (s.state, s.trials_in_flight, s.open_count) == (HALF_OPEN, 0, 1)
        assert (await client.get(f"{url}/json")).status_code == 200
    assert snap(registry, flaky_server).state is CLOSED


def test_concurrent_trials_from_threads(second_server: FlakyServer) -> None:
    clock = ManualClock()
    config = BreakerConfig(
        consecutive_failures=1, failure_rate=None, open_duration=10.0, half_open_max_calls=2
    )
    registry = registry_for(config, clock)
    url = second_server.url
    threads_n = 12
    cond = threading.Condition()
    rejected = 0
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads_n)

    def worker() -> None:
        nonlocal rejected
        barrier.wait()
        try:
            client.get(f"{url}/delay/30")
        except CircuitOpenError as exc:
            assert exc.state is HALF_OPEN
            with cond:
                rejected += 1
                cond.notify_all()
        except httpx.TransportError as exc:  # the server closing under the trials
            errors.append(exc)

    with sync_client(registry) as client:
        client.get(f"{url}/status/500")
        clock.advance(10.0)
        threads = [threading.Thread(target=worker) for _ in range(threads_n)]
        for thread in threads:
            thread.start()
        try:
            assert second_server.wait_for_requests(3, timeout=10)
            with cond:
                assert cond.wait_for(lambda: rejected == threads_n - 2, timeout=10)
            assert second_server.requests == 3  # exactly two trials reached the server
            assert snap(registry, second_server).trials_in_flight == 2
        finally:
            second_server.close()  # the stalled trials fail: the breaker opens again
            for thread in threads:
                thread.join(10)
    assert len(errors) == 2
    assert snap(registry, second_server).state is OPEN


@pytest.mark.anyio
async def test_concurrent_trials_from_tasks(second_server: FlakyServer) -> None:
    clock = ManualClock()
    config = BreakerConfig(
        consecutive_failures=1, failure_rate=None, open_duration=10.0, half_open_max_calls=3
    )
    registry = registry_for(config, clock)
    url = second_server.url
    tasks_n = 20
    rejected = failed = 0
    all_refused = anyio.Event()

    async def worker() -> None:
        nonlocal rejected, failed
        try:
            await client.get(f"{url}/delay/30")
        except CircuitOpenError as exc:
            assert exc.state is HALF_OPEN
            rejected += 1
            if rejected == tasks_n - 3:
                all_refused.set()
        except httpx.TransportError:  # the server closing under the trials
            failed += 1

    async with async_client(registry) as client:
        await client.get(f"{url}/status/500")
        clock.advance(10.0)
        async with anyio.create_task_group() as tg:
            for _ in range(tasks_n):
                tg.start_soon(worker)
            with anyio.fail_after(10):
                await all_refused.wait()
            assert await anyio.to_thread.run_sync(second_server.wait_for_requests, 4)
            assert second_server.requests == 4  # exactly three trials reached the server
            assert snap(registry, second_server).trials_in_flight == 3
            await anyio.to_thread.run_sync(second_server.close)
    assert (rejected, failed) == (tasks_n - 3, 3)
    assert second_server.requests == 4
    assert snap(registry, second_server).state is OPEN


# -- keys and rules ----------------------------------------------------------------------------


def test_hosts_are_isolated(flaky_server: FlakyServer, second_server: FlakyServer) -> None:
    registry = registry_for()
    with sync_client(registry) as client:
        client.get(f"{flaky_server.url}/status/503")
        with pytest.raises(CircuitOpenError):
            client.get(f"{flaky_server.url}/json")
        assert client.get(f"{second_server.url}/json").status_code == 200
        # the same server by another name is another origin, with its own breaker
        localhost = f"http://localhost:{flaky_server.port}"
        assert client.get(f"{localhost}/json").status_code == 200
    assert registry.get(localhost).state is CLOSED
    assert (flaky_server.requests, second_server.requests) == (2, 1)


def test_rules_configure_each_host(flaky_server: FlakyServer, second_server: FlakyServer) -> None:
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
    with sync_client(registry) as client:
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
def test_route_keys(flaky_server: FlakyServer, path: str, suffix: str) -> None:
    registry = registry_for(key=by_route("/api/users/{id}", "/api/users/me"))
    with sync_client(registry) as client:
        response = client.get(f"{flaky_server.url}{path}?x=1")
    assert response.extensions["circuit_breaker"]["key"] == flaky_server.url + suffix


def test_route_keys_isolate_routes_of_one_server(flaky_server: FlakyServer) -> None:
    registry = registry_for(key=by_route("/status/{code}", "/api/{name}"))
    flaky_server.set_mode("failing")
    with sync_client(registry) as client:
        assert client.get(f"{flaky_server.url}/api/a").status_code == 503
        with pytest.raises(CircuitOpenError):
            client.get(f"{flaky_server.url}/api/b")
        assert client.get(f"{flaky_server.url}/status/200").status_code == 200
        assert client.get(f"{flaky_server.url}/json").status_code == 200
    assert flaky_server.requests == 3


def test_key_normalisation_on_the_wire(flaky_server: FlakyServer) -> None:
    registry = registry_for()
    with sync_client(registry) as client:
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


def test_custom_key_returning_none_bypasses(flaky_server: FlakyServer) -> None:
    def key(method: str, url: str) -> str | None:
        return None if "/status/" in url else "everything"

    registry = registry_for(key=key)
    with sync_client(registry) as client:
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
    flaky_server: FlakyServer, params: dict[str, str], expected: float
) -> None:
    registry = registry_for()
    with sync_client(registry) as client:
        response = client.get(f"{flaky_server.url}/status/503", params=params)
        assert response.headers["retry-after"] == params["retry_after"]
    assert snap(registry, flaky_server).retry_after == pytest.approx(expected)


@pytest.mark.anyio
async def test_async_retry_after_from_the_server(flaky_server: FlakyServer) -> None:
    registry = registry_for()
    flaky_server.set_mode("failing", status=429, retry_after=60)
    async with async_client(registry) as client:
        await client.get(f"{flaky_server.url}/api/x")
        with pytest.raises(CircuitOpenError) as caught:
            await client.get(f"{flaky_server.url}/api/x")
    assert caught.value.retry_after == pytest.approx(60.0)


# -- per-request control -----------------------------------------------------------------------


def test_per_request_control(flaky_server: FlakyServer) -> None:
    registry = registry_for()
    url = flaky_server.url
    with sync_client(registry) as client:
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
async def test_async_per_request_control(flaky_server: FlakyServer) -> None:
    clock = ManualClock()
    registry = registry_for(TRIP1, clock)
    url = flaky_server.url
    async with async_client(registry) as client:
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


def test_fallback_response_answers_only_short_circuits(flaky_server: FlakyServer) -> None:
    clock = ManualClock()
    registry = registry_for(TRIP1, clock)
    fallback = FallbackResponse(200, json={"degraded": True})
    with sync_client(registry, fallback=fallback) as client:
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
async def test_async_callable_fallback(flaky_server: FlakyServer) -> None:
    seen: list[CircuitOpenError] = []

    async def fallback(request: httpx.Request, error: CircuitOpenError) -> httpx.Response:
        seen.append(error)
        await anyio.sleep(0)
        return httpx.Response(203, text="from the fallback")

    registry = registry_for()
    async with async_client(registry, fallback=fallback) as client:
        await client.get(f"{flaky_server.url}/status/502")
        response = await client.get(f"{flaky_server.url}/json")
    assert (response.status_code, response.text) == (203, "from the fallback")
    assert response.headers["x-circuit-breaker"] == "open"
    assert isinstance(seen[0], httpx.TransportError)
    assert flaky_server.requests == 1


def test_last_known_good(flaky_server: FlakyServer) -> None:
    lkg = LastKnownGood(clock=ManualClock())
    registry = registry_for()
    url = flaky_server.url
    with sync_client(registry, fallback=lkg) as client:
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


# -- composition with retries ------------------------------------------------------------------


class RecordingRetry(Retry):
    """httpx-retries, recording each wait instead of sleeping it."""

    waits: ClassVar[list[float]] = []  # shared by the copies increment() makes

    def sleep(self, response: httpx.Response | Exception) -> None:
        headers = response.headers if isinstance(response, httpx.Response) else {}
        self.waits.append(self._calculate_sleep(headers))

    async def asleep(self, response: httpx.Response | Exception) -> None:
        self.sleep(response)


def test_breaker_outermost_around_httpx_retries(flaky_server: FlakyServer) -> None:
    RecordingRetry.waits = []
    registry = registry_for()
    inner = RetryTransport(transport=httpx.HTTPTransport(), retry=RecordingRetry(total=2))
    fallback = FallbackResponse(503, headers={"Retry-After": "30"})
    transport = CircuitBreakerTransport(inner, registry=registry, fallback=fallback)
    with httpx.Client(transport=transport, timeout=TIMEOUT) as client:
        response = client.get(f"{flaky_server.url}/status/503?retry_after=1")
        assert response.status_code == 503
        assert flaky_server.requests == 3  # the first try and two retries
        s = snap(registry, flaky_server)
        assert (s.calls, s.failures, s.state) == (1, 1, OPEN)  # one logical request
        assert RecordingRetry.waits == [1.0, 1.0]
        fallback_response = client.get(f"{flaky_server.url}/status/503")
        assert fallback_response.headers["x-circuit-breaker"] == "open"
    # the fallback's Retry-After never reached the retry layer inside
    assert RecordingRetry.waits == [1.0, 1.0]
    assert flaky_server.requests == 3


@pytest.mark.anyio
async def test_async_breaker_outermost_around_httpx_retries(flaky_server: FlakyServer) -> None:
    RecordingRetry.waits = []
    registry = registry_for(COUNT_ONLY)
    inner = RetryTransport(transport=httpx.AsyncHTTPTransport(), retry=RecordingRetry(total=3))
    transport = AsyncCircuitBreakerTransport(inner, registry=registry)
    async with httpx.AsyncClient(transport=transport, timeout=TIMEOUT) as client:
        with pytest.raises(httpx.TransportError):
            await client.get(f"{flaky_server.url}/reset")
    assert flaky_server.requests == 4
    s = snap(registry, flaky_server)
    assert (s.calls, s.failures) == (1, 1)


def test_a_retry_loop_that_skips_open_circuits(flaky_server: FlakyServer) -> None:
    """What tenacity's ``retry_if_exception`` or stamina's ``on=`` should say."""
    registry = registry_for(BreakerConfig(consecutive_failures=2, failure_rate=None))

    def should_retry(exc: BaseException) -> bool:
        return isinstance(exc, httpx.TransportError) and not isinstance(exc, CircuitOpenError)

    attempts = 0
    with sync_client(registry) as client:
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


def test_keyword_arguments_reach_the_default_transport(flaky_server: FlakyServer) -> None:
    transport = CircuitBreakerTransport(
        config=COUNT_ONLY, limits=httpx.Limits(max_connections=1), verify=False, http2=False
    )
    with httpx.Client(transport=transport, timeout=httpx.Timeout(10.0, pool=0.05)) as client:
        assert client.get(f"{flaky_server.url}/json").status_code == 200
        with client.stream("GET", f"{flaky_server.url}/stream") as held:
            with pytest.raises(httpx.PoolTimeout):
                client.get(f"{flaky_server.url}/json")
            held.read()  # read to the end, the connection goes back to the pool
        assert client.get(f"{flaky_server.url}/json").status_code == 200
    assert flaky_server.connections == 1  # keep-alive through the one connection
    assert transport.transport._pool.connections == []  # closed with the client


@pytest.mark.anyio
async def test_aclose_closes_the_inner_transport(flaky_server: FlakyServer) -> None:
    transport = AsyncCircuitBreakerTransport()
    async with httpx.AsyncClient(transport=transport) as client:
        assert (await client.get(f"{flaky_server.url}/json")).status_code == 200
        assert len(transport.transport._pool.connections) == 1
    assert transport.transport._pool.connections == []


def test_mounts_and_a_shared_registry(
    flaky_server: FlakyServer, second_server: FlakyServer
) -> None:
    registry = registry_for()
    mounted = httpx.Client(mounts={"http://": CircuitBreakerTransport(registry=registry)})
    plain = sync_client(registry)
    with mounted, plain:
        assert mounted.get(f"{flaky_server.url}/status/500").status_code == 500
        with pytest.raises(CircuitOpenError):
            plain.get(f"{flaky_server.url}/json")
        with pytest.raises(CircuitOpenError):
            mounted.get(f"{flaky_server.url}/json")
        assert plain.get(f"{second_server.url}/json").status_code == 200
    assert flaky_server.requests == 1
