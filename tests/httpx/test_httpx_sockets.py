"""The httpx transports end to end: real clients over real loopback sockets.

Every test runs with httpx and with httpx2 (the ``flavour`` fixture of ``conftest.py``).
The upstream is a ``FlakyServer`` (the ``flaky_server`` fixture): its request counters
prove what reached the network, its paths fail on demand. Breaker time comes from a
``ManualClock`` moved by the test, so open periods and slow calls never wait on the
wall clock; the only real waits are the few timeouts under test (a read timeout, a pool
timeout, ``anyio.fail_after``), each a small fraction of a second. Threads and tasks meet
on the server's request counter, never on sleeps. The other ``test_httpx_*.py`` files
cover the same ground one layer at a time, over ``MockTransport``.

This file: what counts, streamed bodies, half-open trials. ``test_httpx_sockets_routing.py``:
keys, rules, Retry-After, per-request control, fallbacks, retries, plumbing.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import anyio
import pytest
from hx_support import (
    CLOSED,
    COUNT_ONLY,
    HALF_OPEN,
    OPEN,
    SLOW1,
    TRIP1,
    Flavour,
    async_client,
    closed_port,
    registry_for,
    snap,
    sync_client,
)

from circuitbreaker_http import (
    BreakerConfig,
    CircuitOpenError,
)
from circuitbreaker_http.testing import ManualClock
from circuitbreaker_http.testing._server import FlakyServer

# -- what counts -------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 429])
def test_failure_status_trips_and_later_requests_never_reach_the_server(
    flavour: Flavour, flaky_server: FlakyServer, status: int
) -> None:
    hx = flavour.hx
    registry = registry_for()
    url = f"{flaky_server.url}/status/{status}"
    with sync_client(flavour, registry) as client:
        response = client.get(url)
        assert response.status_code == status
        assert snap(registry, flaky_server).state is OPEN
        for _ in range(3):
            with pytest.raises(CircuitOpenError) as caught:
                client.get(url)
    assert flaky_server.requests == 1
    error = caught.value
    assert isinstance(error, hx.TransportError)
    assert error.request.url == url
    assert (error.name, error.state, error.retry_after) == (flaky_server.url, OPEN, 10.0)


@pytest.mark.parametrize("status", [200, 201, 204, 302, 400, 404, 501, 505])
def test_success_status_does_not_trip(
    flavour: Flavour, flaky_server: FlakyServer, status: int
) -> None:
    registry = registry_for()
    with sync_client(flavour, registry) as client:
        for _ in range(3):
            assert client.get(f"{flaky_server.url}/status/{status}").status_code == status
    s = snap(registry, flaky_server)
    assert (s.state, s.calls, s.failures) == (CLOSED, 3, 0)
    assert flaky_server.requests == 3


@pytest.mark.anyio
async def test_async_statuses(flavour: Flavour, flaky_server: FlakyServer) -> None:
    registry = registry_for(COUNT_ONLY)
    failing, passing = [500, 503, 408, 429, 599], [200, 204, 404, 501, 505]
    async with async_client(flavour, registry) as client:
        for status in failing + passing:
            response = await client.get(f"{flaky_server.url}/status/{status}")
            assert response.status_code == status
            assert response.extensions["circuit_breaker"]["key"] == flaky_server.url
    s = snap(registry, flaky_server)
    assert (s.calls, s.failures) == (10, 5)


# (path, the name of the client module's error class)
UPSTREAM_FAILURES = [
    ("/reset", "TransportError"),  # RST before any answer: ReadError
    ("/close", "RemoteProtocolError"),  # FIN before any answer
    ("/short?length=100&sent=10", "RemoteProtocolError"),  # body cut short after a 200
    ("/stream?chunks=4&fail_after=2", "RemoteProtocolError"),  # chunked body cut
    ("/delay/5", "ReadTimeout"),
]


@pytest.mark.parametrize(("path", "error"), UPSTREAM_FAILURES)
def test_upstream_failures_trip(
    flavour: Flavour, flaky_server: FlakyServer, path: str, error: str
) -> None:
    hx = flavour.hx
    registry = registry_for()
    timeout = hx.Timeout(10.0, read=0.2)
    with sync_client(flavour, registry, timeout=timeout) as client:
        with pytest.raises(getattr(hx, error)) as caught:
            client.get(f"{flaky_server.url}{path}")
        assert not isinstance(caught.value, CircuitOpenError)
        s = snap(registry, flaky_server)
        assert (s.state, s.calls, s.failures) == (OPEN, 1, 1)
        with pytest.raises(CircuitOpenError):
            client.get(f"{flaky_server.url}/json")
    assert flaky_server.requests == 1


def test_connect_error_to_a_closed_port_trips(flavour: Flavour) -> None:
    hx = flavour.hx
    registry = registry_for()
    url = f"http://127.0.0.1:{closed_port()}"
    with sync_client(flavour, registry) as client:
        with pytest.raises(hx.ConnectError):
            client.get(f"{url}/")
        with pytest.raises(CircuitOpenError):
            client.get(f"{url}/")
    assert registry.get(url).snapshot().failures == 1


@pytest.mark.anyio
@pytest.mark.parametrize(("path", "error"), UPSTREAM_FAILURES)
async def test_async_upstream_failures_trip(
    flavour: Flavour, flaky_server: FlakyServer, path: str, error: str
) -> None:
    hx = flavour.hx
    registry = registry_for()
    timeout = hx.Timeout(10.0, read=0.2)
    async with async_client(flavour, registry, timeout=timeout) as client:
        with pytest.raises(getattr(hx, error)):
            await client.get(f"{flaky_server.url}{path}")
        s = snap(registry, flaky_server)
        assert (s.state, s.calls, s.failures) == (OPEN, 1, 1)
        with pytest.raises(CircuitOpenError):
            await client.get(f"{flaky_server.url}/json")
    assert flaky_server.requests == 1


@pytest.mark.anyio
async def test_async_connect_error_to_a_closed_port_trips(flavour: Flavour) -> None:
    hx = flavour.hx
    registry = registry_for()
    url = f"http://127.0.0.1:{closed_port()}"
    async with async_client(flavour, registry) as client:
        with pytest.raises(hx.ConnectError):
            await client.get(f"{url}/")
        with pytest.raises(CircuitOpenError):
            await client.get(f"{url}/")


def test_errors_that_say_nothing_about_the_upstream_are_not_recorded(
    flavour: Flavour,
    flaky_server: FlakyServer,
) -> None:
    hx, cb = flavour

    class BuggyTransport(hx.HTTPTransport):
        """A real transport with a bug on one path."""

        def handle_request(self, request: hx.Request) -> hx.Response:
            if request.url.path == "/bug":
                raise ValueError("a bug in the inner transport")
            return super().handle_request(request)

    registry = registry_for()
    limits = hx.Limits(max_connections=1)
    timeout = hx.Timeout(10.0, pool=0.05)
    url = flaky_server.url
    with sync_client(flavour, registry, limits=limits, timeout=timeout) as client:
        with pytest.raises(hx.LocalProtocolError):
            client.get(f"{url}/json", headers={"Bad Name": "x"})
        with pytest.raises(hx.UnsupportedProtocol):
            client.get(f"ftp://127.0.0.1:{flaky_server.port}/")
        with client.stream("GET", f"{url}/stream?chunks=2") as held:
            # the only connection is busy: waiting for another one times out
            with pytest.raises(hx.PoolTimeout):
                client.get(f"{url}/json")
            assert snap(registry, flaky_server).calls == 0
            held.read()
        s = snap(registry, flaky_server)
        assert (s.state, s.calls, s.failures) == (CLOSED, 1, 0)
    buggy = cb.CircuitBreakerTransport(BuggyTransport(), registry=registry)
    with hx.Client(transport=buggy) as client:
        with pytest.raises(ValueError):
            client.get(f"{url}/bug")
        assert client.get(f"{url}/json").status_code == 200
    s = snap(registry, flaky_server)
    assert (s.state, s.calls, s.failures) == (CLOSED, 2, 0)
    assert registry.get(f"ftp://127.0.0.1:{flaky_server.port}").snapshot().calls == 0


@pytest.mark.anyio
async def test_async_errors_that_say_nothing_about_the_upstream_are_not_recorded(
    flavour: Flavour,
    flaky_server: FlakyServer,
) -> None:
    hx = flavour.hx
    registry = registry_for()
    url = flaky_server.url
    limits = hx.Limits(max_connections=1)
    timeout = hx.Timeout(10.0, pool=0.05)
    async with async_client(flavour, registry, limits=limits, timeout=timeout) as client:
        with pytest.raises(hx.LocalProtocolError):
            await client.get(f"{url}/json", headers={"Bad Name": "x"})
        with pytest.raises(hx.UnsupportedProtocol):
            await client.get(f"ftp://127.0.0.1:{flaky_server.port}/")
        async with client.stream("GET", f"{url}/stream?chunks=2") as held:
            with pytest.raises(hx.PoolTimeout):
                await client.get(f"{url}/json")
            assert snap(registry, flaky_server).calls == 0
            await held.aread()
    s = snap(registry, flaky_server)
    assert (s.state, s.calls, s.failures) == (CLOSED, 1, 0)


def test_redirect_hops_each_record_an_outcome(flavour: Flavour, flaky_server: FlakyServer) -> None:
    registry = registry_for(COUNT_ONLY)
    with sync_client(flavour, registry) as client:
        response = client.get(f"{flaky_server.url}/redirect/2", follow_redirects=True)
    assert response.status_code == 200
    assert snap(registry, flaky_server).calls == 3
    assert flaky_server.requests == 3


# -- streamed bodies -------------------------------------------------------------------------


def test_streamed_body_outcomes(flavour: Flavour, flaky_server: FlakyServer) -> None:
    hx = flavour.hx
    registry = registry_for(COUNT_ONLY)
    url = f"{flaky_server.url}/stream?chunks=4&size=8"
    with sync_client(flavour, registry) as client:
        # read to the end: settles at the end
        with client.stream("GET", url) as response:
            assert response.status_code == 200
            assert snap(registry, flaky_server).calls == 0
            assert len(response.read()) == 32
            assert snap(registry, flaky_server).calls == 1
        # partly read, then closed
        with client.stream("GET", url) as response:
            raw = response.iter_raw()
            next(raw)
            assert snap(registry, flaky_server).calls == 1
            del raw  # abandoned: httpx2 closes the response now, httpx at the block's end
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
            with pytest.raises(hx.RemoteProtocolError):
                response.read()
    s = snap(registry, flaky_server)
    assert (s.calls, s.failures) == (5, 1)


@pytest.mark.anyio
async def test_async_streamed_body_outcomes(flavour: Flavour, flaky_server: FlakyServer) -> None:
    hx = flavour.hx
    registry = registry_for(COUNT_ONLY)
    url = f"{flaky_server.url}/stream?chunks=4&size=8"
    async with async_client(flavour, registry) as client:
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
        with pytest.raises(hx.RemoteProtocolError):
            await client.get(f"{flaky_server.url}/short")
    s = snap(registry, flaky_server)
    assert (s.calls, s.failures) == (4, 1)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_async_partly_read_then_closed_is_a_success(
    flavour: Flavour, flaky_server: FlakyServer
) -> None:
    # asyncio only: under trio, httpx's own body generators abandoned half-way
    # raise a ResourceWarning, with or without a breaker (the unit test covers trio).
    registry = registry_for(COUNT_ONLY)
    async with async_client(flavour, registry) as client:
        url = f"{flaky_server.url}/stream?chunks=4&size=8"
        async with (
            client.stream("GET", url) as response,
            contextlib.aclosing(response.aiter_raw()) as raw,
        ):
            async for _ in raw:
                break
            assert snap(registry, flaky_server).calls == 0  # read in part, still open
        # httpx2 closes the response with its iterator, httpx with the stream block
    s = snap(registry, flaky_server)
    assert (s.calls, s.failures) == (1, 0)


def clocked_transport(hx: ModuleType, clock: ManualClock, step: float) -> Any:
    """A real ``hx`` transport whose body reads each move ``clock`` by ``step``: upstream time."""

    class ClockedStream(hx.SyncByteStream):
        def __init__(self, inner: hx.SyncByteStream) -> None:
            self.inner = inner

        def __iter__(self) -> Iterator[bytes]:
            for chunk in self.inner:
                clock.advance(step)
                yield chunk

        def close(self) -> None:
            self.inner.close()

    class ClockedTransport(hx.HTTPTransport):
        def handle_request(self, request: hx.Request) -> hx.Response:
            response = super().handle_request(request)
            assert isinstance(response.stream, hx.SyncByteStream)
            response.stream = ClockedStream(response.stream)
            return response

    return ClockedTransport()


def test_slow_clock_counts_upstream_time_only(flavour: Flavour, flaky_server: FlakyServer) -> None:
    hx, cb = flavour
    clock = ManualClock()
    registry = registry_for(SLOW1, clock)
    url = f"{flaky_server.url}/stream?chunks=5&size=4"
    with sync_client(flavour, registry) as client, client.stream("GET", url) as response:
        for _ in response.iter_raw():
            clock.advance(10.0)  # the caller's own time between reads
    s = snap(registry, flaky_server)
    assert (s.calls, s.slow_calls, s.state) == (1, 0, CLOSED)
    transport = cb.CircuitBreakerTransport(clocked_transport(hx, clock, 0.3), registry=registry)
    with hx.Client(transport=transport) as client, client.stream("GET", url) as response:
        response.read()  # 5 reads x 0.3 s inside the upstream
    s = snap(registry, flaky_server)
    assert (s.calls, s.slow_calls, s.state) == (2, 1, CLOSED)
    assert s.slow_call_rate == 0.5


# -- half-open ---------------------------------------------------------------------------------


def test_half_open_success_status_frees_the_slot_and_the_body_end_closes(
    flavour: Flavour,
    flaky_server: FlakyServer,
) -> None:
    clock = ManualClock()
    registry = registry_for(TRIP1, clock)
    url = flaky_server.url
    with sync_client(flavour, registry) as client:
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


def test_half_open_trial_closes_when_its_body_ends(
    flavour: Flavour, flaky_server: FlakyServer
) -> None:
    hx = flavour.hx
    clock = ManualClock()
    registry = registry_for(TRIP1, clock)
    url = flaky_server.url
    with sync_client(flavour, registry) as client:
        client.get(f"{url}/status/503")
        clock.advance(10.0)
        with client.stream("GET", f"{url}/stream?chunks=3") as response:
            assert snap(registry, flaky_server).state is HALF_OPEN
            response.read()
            assert snap(registry, flaky_server).state is CLOSED
        # and a trial whose body breaks opens it again, for twice as long
        client.get(f"{url}/status/503")
        clock.advance(10.0)
        with pytest.raises(hx.RemoteProtocolError):
            client.get(f"{url}/short")
    s = snap(registry, flaky_server)
    # closing reset the backoff: a trip (n=1, 10 s), then a failed trial (n=2, 20 s)
    assert (s.state, s.open_count, s.retry_after) == (OPEN, 2, 20.0)


@pytest.mark.anyio
@pytest.mark.parametrize("where", ["headers", "body"])
async def test_async_cancelled_trial_records_nothing_and_frees_the_slot(
    flavour: Flavour, flaky_server: FlakyServer, where: str
) -> None:
    clock = ManualClock()
    registry = registry_for(TRIP1, clock)
    url = flaky_server.url
    path = "/delay/30" if where == "headers" else "/stall_body?after=16&length=1000"
    async with async_client(flavour, registry) as client:
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
async def test_async_fail_after_records_nothing(
    flavour: Flavour, flaky_server: FlakyServer
) -> None:
    clock = ManualClock()
    registry = registry_for(TRIP1, clock)
    url = flaky_server.url
    async with async_client(flavour, registry) as client:
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


def test_concurrent_trials_from_threads(flavour: Flavour, second_server: FlakyServer) -> None:
    hx = flavour.hx
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
        except hx.TransportError as exc:  # the server closing under the trials
            errors.append(exc)

    with sync_client(flavour, registry) as client:
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
async def test_concurrent_trials_from_tasks(flavour: Flavour, second_server: FlakyServer) -> None:
    hx = flavour.hx
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
        except hx.TransportError:  # the server closing under the trials
            failed += 1

    async with async_client(flavour, registry) as client:
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
