"""Unit tests of the httpx transports, one layer at a time.

``httpx.MockTransport`` (and respx, which mocks the default inner transport)
stand in for the network, so every outcome is chosen by hand and every
duration comes from a ``ManualClock`` moved inside the handler or inside the
response stream. Nothing here sleeps to synchronise: threads and tasks meet on
events. The real-socket twin of this file is ``test_httpx_transport.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import gzip
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest
import respx
from httpx_retries import Retry, RetryTransport

from circuitbreaker_http import (
    BreakerConfig,
    BreakerRegistry,
    CallInfo,
    CircuitOpenError,
    CircuitState,
    FallbackResponse,
    LastKnownGood,
    Verdict,
    by_host,
    by_route,
    options,
)
from circuitbreaker_http.httpx import (
    AsyncCircuitBreakerTransport,
    CircuitBreakerTransport,
    CircuitOpenTransportError,
)
from circuitbreaker_http.testing import ManualClock

CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN
FORCED_OPEN = CircuitState.FORCED_OPEN

BASE = "http://api.test"
KEY = "http://api.test"

# One failure opens the breaker for 10 s: every test can tell a recorded
# failure from an ignored one by the state alone.
TRIP1 = BreakerConfig(
    consecutive_failures=1, failure_rate=None, open_duration=10.0, max_open_duration=300.0
)
# Nothing trips: the window counts are the whole story.
COUNT_ONLY = BreakerConfig(consecutive_failures=None, failure_rate=None)
# A slow call (> 1 s of upstream time) trips at once; failures alone never do.
SLOW1 = BreakerConfig(
    consecutive_failures=None,
    failure_rate=None,
    slow_call_duration=1.0,
    slow_call_rate=1.0,
    minimum_calls=1,
)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- a fake upstream -------------------------------------------------------------------------

ERRORS: dict[str, Callable[[httpx.Request], Exception]] = {
    # upstream failures
    "read_timeout": lambda r: httpx.ReadTimeout("read timed out", request=r),
    "write_timeout": lambda r: httpx.WriteTimeout("write timed out", request=r),
    "connect_timeout": lambda r: httpx.ConnectTimeout("connect timed out", request=r),
    "connect_error": lambda r: httpx.ConnectError("connection refused", request=r),
    "read_error": lambda r: httpx.ReadError("connection reset by peer", request=r),
    "write_error": lambda r: httpx.WriteError("broken pipe", request=r),
    "close_error": lambda r: httpx.CloseError("close failed", request=r),
    "remote_protocol": lambda r: httpx.RemoteProtocolError("server hung up", request=r),
    "proxy_error": lambda r: httpx.ProxyError("proxy said 502", request=r),
    # nothing about the upstream
    "pool_timeout": lambda r: httpx.PoolTimeout("no free connection", request=r),
    "local_protocol": lambda r: httpx.LocalProtocolError("illegal header", request=r),
    "unsupported_protocol": lambda r: httpx.UnsupportedProtocol("ftp://", request=r),
    "invalid_url": lambda r: httpx.InvalidURL("bad url"),
    "bug": lambda r: ValueError("a bug in the inner transport"),
    "key_error": lambda r: KeyError("another bug"),
}
FAILING = [
    "read_timeout",
    "write_timeout",
    "connect_timeout",
    "connect_error",
    "read_error",
    "write_error",
    "close_error",
    "remote_protocol",
    "proxy_error",
]
IGNORED = [
    "pool_timeout",
    "local_protocol",
    "unsupported_protocol",
    "invalid_url",
    "bug",
    "key_error",
]
FAILURE_STATUSES = [408, 429, 500, 502, 503, 504, 599]
SUCCESS_STATUSES = [200, 201, 204, 301, 304, 400, 401, 403, 404, 409, 422, 501, 505]


class Chunks(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body served chunk by chunk, for both clients.

    Each read may move a clock (upstream time spent inside the read), fail
    after some chunks, or (async) stop and wait on an event. A class, not a
    generator, so an abandoned body leaves no suspended generator behind.
    """

    def __init__(
        self,
        count: int = 3,
        size: int = 4,
        *,
        clock: ManualClock | None = None,
        advance: float = 0.0,
        fail_after: int | None = None,
        error: BaseException | None = None,
        block_at: int | None = None,
        end_advance: float = 0.0,
    ) -> None:
        self.chunks = [bytes([97 + i % 26]) * size for i in range(count)]
        self.clock = clock
        self.advance = advance
        self.fail_after = fail_after
        self.error = error
        self.block_at = block_at
        self.end_advance = end_advance
        self.reached: Any = None  # anyio.Event, set when the read blocks
        self.release: Any = None  # anyio.Event the blocked read waits for
        self.served = 0
        self.closed = False

    def _step(self) -> bytes | None:
        index = self.served
        if self.fail_after is not None and index >= self.fail_after:
            if self.clock is not None:
                self.clock.advance(self.advance)
            raise self.error if self.error is not None else httpx.ReadError("cut mid-body")
        if index >= len(self.chunks):
            if self.clock is not None:
                self.clock.advance(self.end_advance)  # waiting for the end of the body
            return None
        if self.clock is not None:
            self.clock.advance(self.advance)
        self.served += 1
        return self.chunks[index]

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        chunk = self._step()
        if chunk is None:
            raise StopIteration
        return chunk

    def __aiter__(self) -> Chunks:
        return self

    async def __anext__(self) -> bytes:
        if self.block_at is not None and self.served == self.block_at:
            self.reached.set()
            await self.release.wait()
        chunk = self._step()
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    def close(self) -> None:
        self.closed = True

    async def aclose(self) -> None:
        self.closed = True

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)


class Upstream:
    """A ``MockTransport`` handler that answers by path and counts what reached it.

    * ``/status/{code}`` answers that status (``?retry_after=``, ``?date=``,
      ``?header=Name:Value`` add headers).
    * ``/raise/{name}`` raises ``ERRORS[name]``.
    * ``/stream`` answers 200 with ``self.next_stream`` (a :class:`Chunks`).
    * anything else answers 200 ``ok``.
    * ``?advance=S`` moves the clock by S seconds before the headers.
    """

    def __init__(self, clock: ManualClock | None = None) -> None:
        self.clock = clock
        self.calls: list[httpx.Request] = []
        self.next_stream: Chunks | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request)
        params = request.url.params
        if "advance" in params and self.clock is not None:
            self.clock.advance(float(params["advance"]))
        headers = []
        if "retry_after" in params:
            headers.append(("Retry-After", params["retry_after"]))
        if "date" in params:
            headers.append(("Date", params["date"]))
        for value in params.get_list("header"):
            name, _, text = value.partition(":")
            headers.append((name, text))
        parts = request.url.path.strip("/").split("/")
        if parts[0] == "status":
            code = int(parts[1])
            return httpx.Response(code, headers=headers, content=f"upstream {code}".encode())
        if parts[0] == "raise":
            raise ERRORS[parts[1]](request)
        if parts[0] == "stream":
            stream = self.next_stream if self.next_stream is not None else Chunks()
            self.next_stream = None
            return httpx.Response(200, headers=headers, stream=stream)
        return httpx.Response(200, headers=headers, content=b"ok")


def _registry_for(
    config: BreakerConfig, clock: ManualClock | None, kwargs: dict[str, Any]
) -> BreakerRegistry:
    """The ``registry=`` in ``kwargs`` (removed from it), or a new one on a manual clock."""
    registry: BreakerRegistry | None = kwargs.pop("registry", None)
    if registry is None:  # (an empty registry is falsy: it has a length)
        registry = BreakerRegistry(
            config, clock=clock or ManualClock(), key=kwargs.pop("key", by_host)
        )
    return registry


def make_client(
    upstream: Callable[[httpx.Request], Any],
    config: BreakerConfig = TRIP1,
    clock: ManualClock | None = None,
    **kwargs: Any,
) -> tuple[httpx.Client, BreakerRegistry]:
    registry = _registry_for(config, clock, kwargs)
    transport = CircuitBreakerTransport(httpx.MockTransport(upstream), registry=registry, **kwargs)
    return httpx.Client(transport=transport, base_url=BASE), registry


def make_async_client(
    upstream: Callable[[httpx.Request], Any],
    config: BreakerConfig = TRIP1,
    clock: ManualClock | None = None,
    **kwargs: Any,
) -> tuple[httpx.AsyncClient, BreakerRegistry]:
    registry = _registry_for(config, clock, kwargs)
    transport = AsyncCircuitBreakerTransport(
        httpx.MockTransport(upstream), registry=registry, **kwargs
    )
    return httpx.AsyncClient(transport=transport, base_url=BASE), registry


def snap(registry: BreakerRegistry, key: str = KEY) -> Any:
    return registry.get(key).snapshot()


def open_then_half_open(
    client: httpx.Client, clock: ManualClock, registry: BreakerRegistry
) -> None:
    """Trip the breaker of ``KEY`` with one 500 and wait out its 10 s open period."""
    assert client.get("/status/500").status_code == 500
    assert snap(registry).state is OPEN
    clock.advance(10.0)
    assert snap(registry).state is HALF_OPEN


async def async_open_then_half_open(
    client: httpx.AsyncClient, clock: ManualClock, registry: BreakerRegistry
) -> None:
    assert (await client.get("/status/500")).status_code == 500
    assert snap(registry).state is OPEN
    clock.advance(10.0)
    assert snap(registry).state is HALF_OPEN


# -- what counts -----------------------------------------------------------------------------


@pytest.mark.parametrize("status", FAILURE_STATUSES)
def test_failure_status_trips_and_is_returned(status: int) -> None:
    upstream = Upstream()
    client, registry = make_client(upstream)
    with client:
        response = client.get(f"/status/{status}")
        assert response.status_code == status
        assert response.text == f"upstream {status}"
        s = snap(registry)
        assert (s.state, s.calls, s.failures) == (OPEN, 1, 1)
        with pytest.raises(CircuitOpenError):
            client.get(f"/status/{status}")
    assert len(upstream.calls) == 1


@pytest.mark.parametrize("status", SUCCESS_STATUSES)
def test_success_status_does_not_trip(status: int) -> None:
    upstream = Upstream()
    client, registry = make_client(upstream)
    with client:
        for _ in range(3):
            assert client.get(f"/status/{status}").status_code == status
    s = snap(registry)
    assert (s.state, s.calls, s.failures) == (CLOSED, 3, 0)


def test_custom_failure_statuses_are_honoured() -> None:
    config = BreakerConfig(
        consecutive_failures=1, failure_rate=None, failure_statuses={404}, open_duration=10.0
    )
    client, registry = make_client(Upstream(), config)
    with client:
        assert client.get("/status/503").status_code == 503
        assert snap(registry).state is CLOSED
        assert client.get("/status/404").status_code == 404
        assert snap(registry).state is OPEN


@pytest.mark.parametrize("name", FAILING)
def test_transport_failures_trip(name: str) -> None:
    upstream = Upstream()
    client, registry = make_client(upstream)
    expected = type(ERRORS[name](httpx.Request("GET", BASE)))
    with client:
        with pytest.raises(expected) as caught:
            client.get(f"/raise/{name}")
        assert not isinstance(caught.value, CircuitOpenError)
        s = snap(registry)
        assert (s.state, s.calls, s.failures) == (OPEN, 1, 1)
        with pytest.raises(CircuitOpenError):
            client.get("/")
    assert len(upstream.calls) == 1


@pytest.mark.parametrize("name", IGNORED)
def test_errors_that_say_nothing_about_the_upstream_are_not_recorded(name: str) -> None:
    upstream = Upstream()
    client, registry = make_client(upstream)
    expected = type(ERRORS[name](httpx.Request("GET", BASE)))
    with client:
        for _ in range(3):
            with pytest.raises(expected):
                client.get(f"/raise/{name}")
        s = snap(registry)
        assert (s.state, s.calls, s.failures) == (CLOSED, 0, 0)
        assert client.get("/").status_code == 200
    assert len(upstream.calls) == 4


@pytest.mark.parametrize("name", IGNORED)
def test_ignored_error_gives_a_half_open_trial_slot_back(name: str) -> None:
    clock = ManualClock()
    upstream = Upstream()
    client, registry = make_client(upstream, clock=clock)
    with client:
        open_then_half_open(client, clock, registry)
        with pytest.raises(Exception) as caught:
            client.get(f"/raise/{name}")
        assert not isinstance(caught.value, CircuitOpenError)
        s = snap(registry)
        assert (s.state, s.trials_in_flight) == (HALF_OPEN, 0)
        # The slot is free: the next request is a trial, and it closes the breaker.
        response = client.get("/")
        assert response.extensions["circuit_breaker"]["state"] == "half_open"
        assert snap(registry).state is CLOSED


def test_nested_breaker_short_circuit_is_not_recorded_by_the_outer_one() -> None:
    upstream = Upstream()
    inner_registry = BreakerRegistry(TRIP1, clock=ManualClock())
    outer_registry = BreakerRegistry(TRIP1, clock=ManualClock())
    inner = CircuitBreakerTransport(httpx.MockTransport(upstream), registry=inner_registry)
    outer = CircuitBreakerTransport(inner, registry=outer_registry)
    inner_registry.get(KEY).force_open()
    with httpx.Client(transport=outer, base_url=BASE) as client:
        for _ in range(3):
            with pytest.raises(CircuitOpenError) as caught:
                client.get("/")
            assert caught.value.state is FORCED_OPEN
    s = snap(outer_registry)
    assert (s.state, s.calls) == (CLOSED, 0)
    assert upstream.calls == []


def test_nested_breaker_short_circuit_is_not_recorded_even_when_classify_says_failure() -> None:
    def classify(call: CallInfo) -> Verdict | None:
        return Verdict.FAILURE if call.error is not None else None

    config = BreakerConfig(consecutive_failures=1, failure_rate=None, classify=classify)
    inner = CircuitBreakerTransport(httpx.MockTransport(Upstream()), config=TRIP1)
    inner.registry.get(KEY).force_open()
    outer = CircuitBreakerTransport(inner, config=config)
    with httpx.Client(transport=outer, base_url=BASE) as client, pytest.raises(CircuitOpenError):
        client.get("/")
    s = outer.registry.get(KEY).snapshot()
    assert (s.state, s.calls) == (CLOSED, 0)


def test_short_circuit_error_carries_the_request_from_the_transport_itself() -> None:
    transport = CircuitBreakerTransport(httpx.MockTransport(Upstream()))
    transport.registry.get(KEY).force_open()
    request = httpx.Request("GET", f"{BASE}/x")
    with pytest.raises(CircuitOpenError) as caught:
        transport.handle_request(request)
    assert isinstance(caught.value, httpx.TransportError)
    assert caught.value.request is request
    transport.close()


@pytest.mark.anyio
async def test_async_short_circuit_error_carries_the_request() -> None:
    transport = AsyncCircuitBreakerTransport(httpx.MockTransport(Upstream()))
    transport.registry.get(KEY).force_open()
    request = httpx.Request("GET", f"{BASE}/x")
    with pytest.raises(CircuitOpenError) as caught:
        await transport.handle_async_request(request)
    assert isinstance(caught.value, httpx.TransportError)
    assert caught.value.request is request
    await transport.aclose()


@pytest.mark.anyio
async def test_async_statuses_and_errors_are_classified() -> None:
    upstream = Upstream()
    client, registry = make_async_client(upstream, COUNT_ONLY)
    async with client:
        for status in [*FAILURE_STATUSES, *SUCCESS_STATUSES]:
            assert (await client.get(f"/status/{status}")).status_code == status
        s = snap(registry)
        assert (s.calls, s.failures) == (
            len(FAILURE_STATUSES) + len(SUCCESS_STATUSES),
            len(FAILURE_STATUSES),
        )
        for name in FAILING:
            with pytest.raises(httpx.TransportError):
                await client.get(f"/raise/{name}")
        s = snap(registry)
        assert s.failures == len(FAILURE_STATUSES) + len(FAILING)
        for name in IGNORED:
            with pytest.raises(Exception) as caught:
                await client.get(f"/raise/{name}")
            assert not isinstance(caught.value, CircuitOpenError)
        after = snap(registry)
        assert (after.calls, after.failures) == (s.calls, s.failures)


@pytest.mark.anyio
async def test_async_failure_trips_and_short_circuits() -> None:
    upstream = Upstream()
    client, _registry = make_async_client(upstream)
    async with client:
        with pytest.raises(httpx.ReadTimeout):
            await client.get("/raise/read_timeout")
        with pytest.raises(CircuitOpenError) as caught:
            await client.get("/status/200")
    assert isinstance(caught.value, httpx.TransportError)
    assert caught.value.request.url == f"{BASE}/status/200"
    assert len(upstream.calls) == 1


def test_redirect_hops_are_requests_of_their_own() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        hops = int(request.url.path.rsplit("/", 1)[1])
        if hops:
            return httpx.Response(302, headers={"Location": f"/redirect/{hops - 1}"})
        return httpx.Response(200, content=b"done")

    client, registry = make_client(handler, COUNT_ONLY)
    with client:
        response = client.get("/redirect/3", follow_redirects=True)
    assert response.status_code == 200
    assert len(response.history) == 3
    assert snap(registry).calls == 4


def test_classify_decides_first_and_is_asked_again_for_a_body_error() -> None:
    seen: list[tuple[int | None, str | None]] = []

    def classify(call: CallInfo) -> Verdict | None:
        seen.append((call.status, type(call.error).__name__ if call.error else None))
        if call.url.endswith("/ignore"):
            return Verdict.IGNORE
        if call.status == 503:
            return Verdict.SUCCESS
        if call.status == 299:
            return Verdict.FAILURE
        return None

    config = BreakerConfig(consecutive_failures=None, failure_rate=None, classify=classify)
    upstream = Upstream()
    client, registry = make_client(upstream, config)
    with client:
        client.get("/status/503")
        client.get("/status/299")
        client.get("/status/500/ignore")
        upstream.next_stream = Chunks(fail_after=1)
        with pytest.raises(httpx.ReadError):
            client.get("/stream")
    s = snap(registry)
    assert (s.calls, s.failures) == (3, 2)  # 503 success, 299 failure, body error failure
    assert seen[-2:] == [(200, None), (200, "ReadError")]


# -- short circuits --------------------------------------------------------------------------


def test_short_circuit_never_reaches_the_inner_transport() -> None:
    clock = ManualClock()
    upstream = Upstream()
    client, _registry = make_client(upstream, clock=clock)
    with client:
        client.get("/status/503")
        clock.advance(2.5)
        for _ in range(5):
            with pytest.raises(CircuitOpenError) as caught:
                client.post("/anything", content=b"x")
    error = caught.value
    assert isinstance(error, httpx.TransportError)
    assert isinstance(error, CircuitOpenTransportError)
    assert error.request.method == "POST"
    assert error.request.url == f"{BASE}/anything"
    assert error.name == KEY
    assert error.state is OPEN
    assert error.retry_after == pytest.approx(7.5)
    assert "is open" in str(error)
    assert len(upstream.calls) == 1


def test_forced_open_short_circuits_until_reset() -> None:
    upstream = Upstream()
    client, registry = make_client(upstream)
    with client:
        registry.get(KEY).force_open()
        for _ in range(3):
            with pytest.raises(CircuitOpenError) as caught:
                client.get("/")
            assert (caught.value.state, caught.value.retry_after) == (FORCED_OPEN, None)
            assert "forced open" in str(caught.value)
        assert upstream.calls == []
        registry.get(KEY).reset()
        assert client.get("/").status_code == 200
    assert len(upstream.calls) == 1


@pytest.mark.anyio
async def test_half_open_full_short_circuit_has_no_retry_after() -> None:
    clock = ManualClock()
    entered = anyio.Event()
    release = anyio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/status/500":
            return httpx.Response(500)
        entered.set()
        await release.wait()
        return httpx.Response(200)

    client, registry = make_async_client(handler, clock=clock)
    async with client:
        await async_open_then_half_open(client, clock, registry)
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.get, "/slow")
            await entered.wait()
            with pytest.raises(CircuitOpenError) as caught:
                await client.get("/other")
            release.set()
    assert caught.value.state is HALF_OPEN
    assert caught.value.retry_after is None
    assert "half-open" in str(caught.value)
    assert snap(registry).state is CLOSED


# -- streamed bodies: one outcome, where it happens -------------------------------------------


def test_streamed_body_settles_when_it_ends() -> None:
    upstream = Upstream()
    client, registry = make_client(upstream, COUNT_ONLY)
    stream = upstream.next_stream = Chunks(count=3)
    with client, client.stream("GET", "/stream") as response:
        assert response.status_code == 200
        assert snap(registry).calls == 0
        assert response.read() == stream.body
        assert snap(registry).calls == 1
    s = snap(registry)
    assert (s.calls, s.failures) == (1, 0)
    assert stream.closed


def test_streamed_body_partly_read_then_closed_is_a_success() -> None:
    upstream = Upstream()
    client, registry = make_client(upstream, COUNT_ONLY)
    stream = upstream.next_stream = Chunks(count=5)
    with client:
        with client.stream("GET", "/stream") as response:
            for chunk in response.iter_raw():
                assert chunk == b"aaaa"
                break
            assert snap(registry).calls == 0
        s = snap(registry)
        assert (s.calls, s.failures) == (1, 0)
    assert stream.closed and stream.served == 1


def test_streamed_body_never_read_but_closed_is_a_success() -> None:
    upstream = Upstream()
    client, registry = make_client(upstream, COUNT_ONLY)
    stream = upstream.next_stream = Chunks()
    with client:
        response = client.send(client.build_request("GET", "/stream"), stream=True)
        assert snap(registry).calls == 0
        response.close()
        s = snap(registry)
        assert (s.calls, s.failures) == (1, 0)
        response.close()  # closing twice settles once
        assert snap(registry).calls == 1
    assert stream.closed and stream.served == 0


def test_streamed_body_garbage_collected_unclosed_is_a_success() -> None:
    upstream = Upstream()
    client, registry = make_client(upstream, COUNT_ONLY)
    upstream.next_stream = Chunks()
    with client:
        response = client.send(client.build_request("GET", "/stream"), stream=True)
        assert snap(registry).calls == 0
        del response
        gc.collect()
        s = snap(registry)
        assert (s.calls, s.failures) == (1, 0)


def test_garbage_collected_half_open_trial_closes_the_breaker_at_the_next_look() -> None:
    clock = ManualClock()
    upstream = Upstream()
    client, registry = make_client(upstream, clock=clock)
    with client:
        open_then_half_open(client, clock, registry)
        upstream.next_stream = Chunks()
        response = client.send(client.build_request("GET", "/stream"), stream=True)
        assert response.extensions["circuit_breaker"]["state"] == "half_open"
        del response
        gc.collect()
        assert registry.get(KEY).state is CLOSED


@pytest.mark.parametrize(
    "error",
    [httpx.ReadError("reset"), httpx.RemoteProtocolError("short body"), httpx.ReadTimeout("t")],
)
def test_error_mid_body_is_a_failure_despite_the_200(error: Exception) -> None:
    upstream = Upstream()
    client, registry = make_client(upstream)
    upstream.next_stream = Chunks(count=4, fail_after=2, error=error)
    with client:
        with pytest.raises(type(error)), client.stream("GET", "/stream") as response:
            assert response.status_code == 200
            assert snap(registry).calls == 0
            response.read()
        s = snap(registry)
        assert (s.state, s.calls, s.failures) == (OPEN, 1, 1)
        with pytest.raises(CircuitOpenError):
            client.get("/")


def test_non_transport_error_mid_body_records_nothing() -> None:
    upstream = Upstream()
    client, registry = make_client(upstream)
    upstream.next_stream = Chunks(count=4, fail_after=1, error=ValueError("decoder bug"))
    with client:
        with pytest.raises(ValueError):
            client.get("/stream")
        s = snap(registry)
        assert (s.state, s.calls) == (CLOSED, 0)


def test_slow_clock_counts_time_to_headers() -> None:
    clock = ManualClock()
    client, registry = make_client(Upstream(clock), SLOW1, clock)
    with client:
        client.get("/?advance=0.9")
        assert snap(registry).slow_calls == 0
        client.get("/?advance=1.5")
    s = snap(registry)
    assert (s.calls, s.slow_calls) == (2, 1)


def test_slow_clock_ignores_the_callers_time_between_reads() -> None:
    clock = ManualClock()
    upstream = Upstream(clock)
    client, registry = make_client(upstream, SLOW1, clock)
    upstream.next_stream = Chunks(count=3, clock=clock, advance=0.1)
    with client, client.stream("GET", "/stream?advance=0.2") as response:
        for _ in response.iter_raw():
            clock.advance(5.0)  # the caller dawdles; the upstream is not slow
    s = snap(registry)
    assert (s.calls, s.slow_calls, s.state) == (1, 0, CLOSED)


def test_slow_clock_counts_time_inside_each_read() -> None:
    clock = ManualClock()
    upstream = Upstream(clock)
    client, registry = make_client(upstream, SLOW1, clock)
    # 0.2 s to the headers + 3 reads of 0.3 s = 1.1 s of upstream time.
    upstream.next_stream = Chunks(count=3, clock=clock, advance=0.3)
    with client, client.stream("GET", "/stream?advance=0.2") as response:
        response.read()
    s = snap(registry)
    assert (s.calls, s.slow_calls, s.state) == (1, 1, OPEN)


def test_slow_clock_counts_the_wait_for_the_end_of_the_body() -> None:
    clock = ManualClock()
    upstream = Upstream(clock)
    client, registry = make_client(upstream, SLOW1, clock)
    upstream.next_stream = Chunks(count=2, clock=clock, advance=0.1, end_advance=1.0)
    with client, client.stream("GET", "/stream") as response:
        response.read()
    assert snap(registry).slow_calls == 1


@pytest.mark.anyio
async def test_async_streamed_body_outcomes() -> None:
    upstream = Upstream()
    client, registry = make_async_client(upstream, COUNT_ONLY)
    async with client:
        # read fully: settles at the end
        stream = upstream.next_stream = Chunks(count=3)
        async with client.stream("GET", "/stream") as response:
            assert snap(registry).calls == 0
            assert await response.aread() == stream.body
            assert snap(registry).calls == 1
        # never read, closed
        upstream.next_stream = Chunks()
        async with client.stream("GET", "/stream"):
            assert snap(registry).calls == 1
        assert snap(registry).calls == 2
        # never closed, collected
        upstream.next_stream = Chunks()
        response = await client.send(client.build_request("GET", "/stream"), stream=True)
        del response
        gc.collect()
        assert snap(registry).calls == 3
        # error mid-body
        upstream.next_stream = Chunks(count=3, fail_after=1)
        with pytest.raises(httpx.ReadError):
            await client.get("/stream")
    s = snap(registry)
    assert (s.calls, s.failures) == (4, 1)


@pytest.mark.anyio
@pytest.mark.filterwarnings("ignore:Async generator:ResourceWarning")
async def test_async_streamed_body_partly_read_then_closed_is_a_success() -> None:
    # trio warns about httpx's own generators abandoned mid-body, with or without breakers.
    upstream = Upstream()
    client, registry = make_async_client(upstream, COUNT_ONLY)
    stream = upstream.next_stream = Chunks(count=5)
    async with client:
        async with client.stream("GET", "/stream") as response:
            async with contextlib.aclosing(response.aiter_raw()) as chunks:
                async for _ in chunks:
                    break
            assert snap(registry).calls == 0
        s = snap(registry)
        assert (s.calls, s.failures) == (1, 0)
    assert stream.closed and stream.served == 1
    gc.collect()


@pytest.mark.anyio
async def test_async_slow_clock_counts_upstream_time_only() -> None:
    clock = ManualClock()
    upstream = Upstream(clock)
    client, registry = make_async_client(upstream, SLOW1, clock)
    async with client:
        upstream.next_stream = Chunks(count=3, clock=clock, advance=0.1)
        async with client.stream("GET", "/stream?advance=0.2") as response:
            async for _ in response.aiter_raw():
                clock.advance(5.0)
        assert snap(registry).slow_calls == 0
        upstream.next_stream = Chunks(count=3, clock=clock, advance=0.3)
        async with client.stream("GET", "/stream?advance=0.2") as response:
            await response.aread()
    s = snap(registry)
    assert (s.calls, s.slow_calls) == (2, 1)


# -- half-open -------------------------------------------------------------------------------


def test_success_status_frees_the_trial_slot_and_the_body_end_closes() -> None:
    clock = ManualClock()
    upstream = Upstream()
    config = BreakerConfig(
        consecutive_failures=1, failure_rate=None, open_duration=10.0, success_threshold=2
    )
    client, registry = make_client(upstream, config, clock)
    with client:
        open_then_half_open(client, clock, registry)
        first_body = upstream.next_stream = Chunks()
        with client.stream("GET", "/stream") as first:
            assert first.extensions["circuit_breaker"] == {"key": KEY, "state": "half_open"}
            assert snap(registry).trials_in_flight == 0
            # The only slot is free again: a second trial passes while the first body is open.
            upstream.next_stream = Chunks()
            with client.stream("GET", "/stream") as second:
                assert second.extensions["circuit_breaker"]["state"] == "half_open"
                second.read()
            s = snap(registry)
            assert s.state is HALF_OPEN  # one successful trial of two
            first.read()
            assert snap(registry).state is CLOSED
    assert first_body.closed


def test_half_open_trial_closes_only_when_its_body_ends() -> None:
    clock = ManualClock()
    upstream = Upstream()
    client, registry = make_client(upstream, clock=clock)
    with client:
        open_then_half_open(client, clock, registry)
        upstream.next_stream = Chunks(count=3)
        with client.stream("GET", "/stream") as response:
            assert snap(registry).state is HALF_OPEN
            for _ in response.iter_raw():
                assert snap(registry).state is HALF_OPEN
            # StopIteration has been seen: the outcome settled.
            assert snap(registry).state is CLOSED


class Interrupted(BaseException):
    """Stands in for KeyboardInterrupt: a BaseException that is not an Exception."""


def test_sync_interrupt_while_awaiting_headers_records_nothing_and_frees_the_slot() -> None:
    clock = ManualClock()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/interrupt":
            raise Interrupted
        return httpx.Response(500 if request.url.path == "/status/500" else 200)

    client, registry = make_client(handler, clock=clock)
    with client:
        open_then_half_open(client, clock, registry)
        with pytest.raises(Interrupted):
            client.get("/interrupt")
        s = snap(registry)
        assert (s.state, s.trials_in_flight, s.open_count) == (HALF_OPEN, 0, 1)
        assert client.get("/").extensions["circuit_breaker"]["state"] == "half_open"
    assert snap(registry).state is CLOSED


def test_sync_interrupt_while_reading_the_body_records_nothing() -> None:
    clock = ManualClock()
    upstream = Upstream()
    client, registry = make_client(upstream, clock=clock)
    with client:
        open_then_half_open(client, clock, registry)
        upstream.next_stream = Chunks(count=3, fail_after=1, error=Interrupted())
        with pytest.raises(Interrupted):
            client.get("/stream")
        s = snap(registry)
        # neither a failed trial (open again) nor a successful one (closed)
        assert (s.state, s.trials_in_flight, s.open_count) == (HALF_OPEN, 0, 1)
    client, registry = make_client(upstream, COUNT_ONLY)
    with client:
        upstream.next_stream = Chunks(count=3, fail_after=1, error=Interrupted())
        with pytest.raises(Interrupted):
            client.get("/stream")
        assert snap(registry).calls == 0


def test_half_open_trial_failing_mid_body_reopens_with_backoff() -> None:
    clock = ManualClock()
    upstream = Upstream()
    client, registry = make_client(upstream, clock=clock)
    with client:
        open_then_half_open(client, clock, registry)
        upstream.next_stream = Chunks(count=3, fail_after=1)
        with pytest.raises(httpx.ReadError):
            client.get("/stream")
    s = snap(registry)
    assert s.state is OPEN
    assert s.retry_after == pytest.approx(20.0)
    assert s.open_count == 2


@pytest.mark.anyio
async def test_cancelled_while_awaiting_headers_records_nothing_and_frees_the_slot() -> None:
    clock = ManualClock()
    entered = anyio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/status/500":
            return httpx.Response(500)
        if request.url.path == "/hang":
            entered.set()
            await anyio.sleep_forever()
        return httpx.Response(200)

    client, registry = make_async_client(handler, clock=clock)
    async with client:
        await async_open_then_half_open(client, clock, registry)
        async with anyio.create_task_group() as tg:
            tg.start_soon(client.get, "/hang")
            await entered.wait()
            assert snap(registry).trials_in_flight == 1
            tg.cancel_scope.cancel()
        s = snap(registry)
        # neither a failed trial (open again) nor a successful one (closed)
        assert (s.state, s.trials_in_flight, s.open_count) == (HALF_OPEN, 0, 1)
        response = await client.get("/ok")
        assert response.extensions["circuit_breaker"]["state"] == "half_open"
    assert snap(registry).state is CLOSED


@pytest.mark.anyio
async def test_cancelled_while_reading_the_body_records_nothing_and_frees_the_slot() -> None:
    clock = ManualClock()
    upstream = Upstream()
    client, registry = make_async_client(upstream, clock=clock)
    async with client:
        await async_open_then_half_open(client, clock, registry)
        stream = upstream.next_stream = Chunks(count=3, block_at=1)
        stream.reached, stream.release = anyio.Event(), anyio.Event()

        async def read() -> None:
            async with client.stream("GET", "/stream") as response:
                await response.aread()

        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            await stream.reached.wait()
            tg.cancel_scope.cancel()
        s = snap(registry)
        # neither a failed trial (open again) nor a successful one (closed)
        assert (s.state, s.trials_in_flight, s.open_count) == (HALF_OPEN, 0, 1)
        assert stream.closed
        assert (await client.get("/")).status_code == 200
    assert snap(registry).state is CLOSED


@pytest.mark.anyio
async def test_closed_state_cancellation_records_nothing() -> None:
    upstream = Upstream()
    client, registry = make_async_client(upstream, COUNT_ONLY)
    async with client:
        stream = upstream.next_stream = Chunks(count=3, block_at=1)
        stream.reached, stream.release = anyio.Event(), anyio.Event()
        with anyio.CancelScope() as scope:
            async with client.stream("GET", "/stream") as response:
                async for _ in response.aiter_raw():
                    scope.cancel()
        assert scope.cancelled_caught
        assert snap(registry).calls == 0


@pytest.mark.anyio
@pytest.mark.parametrize("where", ["headers", "body"])
async def test_anyio_fail_after_records_nothing(where: str) -> None:
    clock = ManualClock()
    upstream = Upstream()

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/hang":
            await anyio.sleep_forever()
        return upstream(request)

    client, registry = make_async_client(handler, clock=clock)
    async with client:
        await async_open_then_half_open(client, clock, registry)
        stream = upstream.next_stream = Chunks(count=3, block_at=0)
        stream.reached, stream.release = anyio.Event(), anyio.Event()
        path = "/hang" if where == "headers" else "/stream"
        with pytest.raises(TimeoutError):
            with anyio.fail_after(0.05):
                await client.get(path)
        s = snap(registry)
        # neither a failed trial (open again) nor a successful one (closed)
        assert (s.state, s.trials_in_flight, s.open_count) == (HALF_OPEN, 0, 1)
        assert (await client.get("/")).extensions["circuit_breaker"]["state"] == "half_open"
    assert snap(registry).state is CLOSED


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_asyncio_task_cancel_and_wait_for_record_nothing() -> None:
    clock = ManualClock()
    entered = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/status/500":
            return httpx.Response(500)
        if request.url.path == "/hang":
            entered.set()
            await asyncio.Event().wait()
        return httpx.Response(200)

    client, registry = make_async_client(handler, clock=clock)
    async with client:
        await async_open_then_half_open(client, clock, registry)
        task = asyncio.ensure_future(client.get("/hang"))
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        s = snap(registry)
        # neither a failed trial (open again) nor a successful one (closed)
        assert (s.state, s.trials_in_flight, s.open_count) == (HALF_OPEN, 0, 1)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.get("/hang"), 0.05)
        assert snap(registry).trials_in_flight == 0
        assert (await client.get("/")).status_code == 200
    assert snap(registry).state is CLOSED


@pytest.mark.parametrize("anyio_backend", ["trio"])
@pytest.mark.anyio
async def test_trio_cancel_scope_records_nothing() -> None:
    import trio

    clock = ManualClock()
    upstream = Upstream()
    client, registry = make_async_client(upstream, clock=clock)
    async with client:
        await async_open_then_half_open(client, clock, registry)
        stream = upstream.next_stream = Chunks(count=3, block_at=1)
        stream.reached, stream.release = anyio.Event(), anyio.Event()
        with trio.CancelScope() as scope:
            async with client.stream("GET", "/stream") as response:
                async for _ in response.aiter_raw():
                    scope.cancel()
        assert scope.cancelled_caught
        s = snap(registry)
        # neither a failed trial (open again) nor a successful one (closed)
        assert (s.state, s.trials_in_flight, s.open_count) == (HALF_OPEN, 0, 1)
        assert (await client.get("/")).status_code == 200
    assert snap(registry).state is CLOSED


def test_concurrent_trials_from_threads_never_exceed_half_open_max_calls() -> None:
    clock = ManualClock()
    cond = threading.Condition()
    release = threading.Event()
    inside = max_inside = rejected = 0
    config = BreakerConfig(
        consecutive_failures=1,
        failure_rate=None,
        open_duration=10.0,
        half_open_max_calls=3,
        success_threshold=3,
    )

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal inside, max_inside
        if request.url.path == "/status/500":
            return httpx.Response(500)
        with cond:
            inside += 1
            max_inside = max(max_inside, inside)
            cond.notify_all()
        release.wait(10)
        with cond:
            inside -= 1
        return httpx.Response(200)

    client, registry = make_client(handler, config, clock)
    threads_n = 24
    barrier = threading.Barrier(threads_n)

    def worker() -> None:
        nonlocal rejected
        barrier.wait()
        try:
            client.get("/trial")
        except CircuitOpenError as exc:
            assert exc.state is HALF_OPEN and exc.retry_after is None
            with cond:
                rejected += 1
                cond.notify_all()

    with client:
        open_then_half_open(client, clock, registry)
        threads = [threading.Thread(target=worker) for _ in range(threads_n)]
        for thread in threads:
            thread.start()
        try:
            with cond:
                met = cond.wait_for(lambda: inside + rejected == threads_n, timeout=10)
                assert met, (inside, rejected)
                assert (inside, rejected) == (3, threads_n - 3)
        finally:
            release.set()
            for thread in threads:
                thread.join(10)
    assert max_inside == 3
    assert snap(registry).state is CLOSED


@pytest.mark.anyio
async def test_concurrent_trials_from_tasks_never_exceed_half_open_max_calls() -> None:
    clock = ManualClock()
    inside = max_inside = arrived = rejected = 0
    tasks_n = 30
    everyone = anyio.Event()
    release = anyio.Event()
    config = BreakerConfig(
        consecutive_failures=1,
        failure_rate=None,
        open_duration=10.0,
        half_open_max_calls=4,
        success_threshold=10,
    )

    def arrive() -> None:
        nonlocal arrived
        arrived += 1
        if arrived == tasks_n:
            everyone.set()

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal inside, max_inside
        if request.url.path == "/status/500":
            return httpx.Response(500)
        inside += 1
        max_inside = max(max_inside, inside)
        arrive()
        await release.wait()
        inside -= 1
        return httpx.Response(200)

    async def worker() -> None:
        nonlocal rejected
        try:
            await client.get("/trial")
        except CircuitOpenError as exc:
            assert exc.state is HALF_OPEN
            rejected += 1
            arrive()

    client, registry = make_async_client(handler, config, clock)
    async with client:
        await async_open_then_half_open(client, clock, registry)
        async with anyio.create_task_group() as tg:
            for _ in range(tasks_n):
                tg.start_soon(worker)
            await everyone.wait()
            assert (inside, rejected) == (4, tasks_n - 4)
            release.set()
    assert max_inside == 4
    s = snap(registry)
    assert (s.state, s.trials_in_flight) == (HALF_OPEN, 0)  # 4 successes of the 10 needed


# -- keys, rules, registry ---------------------------------------------------------------------


def test_hosts_are_isolated() -> None:
    upstream = Upstream()
    client, registry = make_client(upstream)
    with client:
        client.get("http://a.test/status/503")
        with pytest.raises(CircuitOpenError) as caught:
            client.get("http://a.test/")
        assert caught.value.name == "http://a.test"
        assert client.get("http://b.test/").status_code == 200
        assert client.get("http://a.test:8080/").status_code == 200
        assert client.get("https://a.test/").status_code == 200
    assert registry.get("http://a.test").state is OPEN
    assert registry.get("http://b.test").state is CLOSED
    assert {b.name for b in registry} >= {"http://a.test", "http://a.test:8080", "https://a.test"}


def cfg(n: int) -> BreakerConfig:
    return BreakerConfig(open_duration=float(n), max_open_duration=1000.0)


RULES = {
    "*.example.com": cfg(1),
    "api.example.com": cfg(2),
    "*.api.example.com": cfg(3),
    "api.example.com/v1/payments/*": cfg(4),
    "127.0.0.1": cfg(5),
    "127.0.0.1:8080": cfg(6),
    "127.0.0.*:9*": cfg(7),
    "[::1]:8443": cfg(8),
    "payments": cfg(9),
    "a*.test": cfg(10),
    "*b.test": cfg(11),
    "example.org:443": cfg(12),
}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://api.example.com/x", 2),  # an exact host beats a glob
        ("https://www.example.com/", 1),
        ("https://a.b.example.com/", 1),  # '*' crosses dots
        ("https://example.com/", None),  # '*.example.com' needs a label before the dot
        ("https://x.api.example.com/", 3),  # the longer glob
        ("https://api.example.com/v1/payments/42", 4),  # a path beats none
        ("https://api.example.com/v1/refunds/42", 2),  # no template matched: origin key
        ("http://127.0.0.1:8080/", 6),  # host and port beat host alone
        ("http://127.0.0.1:9000/", 5),  # exact host beats the longer glob
        ("http://127.0.0.2:9000/", 7),
        ("http://127.0.0.2:8000/", None),
        ("http://[::1]:8443/", 8),
        ("http://[::1]:8444/", None),
        ("http://ab.test/", 10),  # a tie: the one listed first
        ("http://xb.test/", 11),
        ("https://example.org/", 12),  # the default port is the effective port
        ("http://example.org/", None),
        ("http://payments/", 9),  # a host pattern matches the URL key's host
    ],
)
def test_rules_apply_by_specificity(url: str, expected: int | None) -> None:
    upstream = Upstream()
    registry = BreakerRegistry(
        cfg(99), rules=RULES, key=by_route("/v1/payments/{id}"), clock=ManualClock()
    )
    client, _ = make_client(upstream, registry=registry)
    with client:
        response = client.get(url)
    key = response.extensions["circuit_breaker"]["key"]
    assert registry.get(key).config.open_duration == (99 if expected is None else expected)
    assert registry.config_for(key) is registry.get(key).config


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("payments", 9),  # a non-URL key matches an equal pattern
        ("payments-eu", None),
        ("api.example.com", 2),
        ("www.example.com", None),  # a non-URL key never matches a glob
    ],
)
def test_non_url_key_matches_only_an_equal_pattern(key: str, expected: int | None) -> None:
    registry = BreakerRegistry(cfg(99), rules=RULES, clock=ManualClock())
    client, _ = make_client(Upstream(), registry=registry)
    with client, options(key=key):
        response = client.get("https://api.example.com/")
    assert response.extensions["circuit_breaker"]["key"] == key
    assert registry.get(key).config.open_duration == (99 if expected is None else expected)


@pytest.mark.parametrize(
    ("path", "suffix"),
    [
        ("/users/42", "/users/{id}"),
        ("/users/42/", "/users/{id}"),  # a trailing slash is ignored
        ("/users/me", "/users/me"),  # most literal wins, though listed later
        ("/orders/7/items", "/orders/{id}/items"),
        ("/orders/7", ""),  # no template: the origin key
        ("/users", ""),
        ("/users/42/avatar", ""),
        ("/a/b", "/a/{x}"),  # equally literal: the first listed
        ("/", ""),
    ],
)
def test_route_keys(path: str, suffix: str) -> None:
    key = by_route("/users/{id}", "/users/me", "/orders/{id}/items", "/a/{x}", "/{y}/b")
    registry = BreakerRegistry(TRIP1, key=key, clock=ManualClock())
    client, _ = make_client(Upstream(), registry=registry)
    with client:
        response = client.get(f"http://127.0.0.1:8080{path}?q=1")
    assert response.extensions["circuit_breaker"]["key"] == "http://127.0.0.1:8080" + suffix


def test_route_keys_isolate_routes_of_one_host() -> None:
    upstream = Upstream()
    registry = BreakerRegistry(TRIP1, key=by_route("/status/{code}"), clock=ManualClock())
    client, _ = make_client(upstream, registry=registry)
    with client:
        client.get("/status/503")
        with pytest.raises(CircuitOpenError) as caught:
            client.get("/status/200")
        assert caught.value.name == f"{KEY}/status/{{code}}"
        assert client.get("/other").status_code == 200


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("HTTP://API.Example.COM/x", "http://api.example.com"),
        ("http://api.example.com:80/x", "http://api.example.com"),
        ("https://api.example.com:443/x", "https://api.example.com"),
        ("https://api.example.com:8443/x", "https://api.example.com:8443"),
        ("http://api.example.com:443/x", "http://api.example.com:443"),
        ("https://bücher.example/", "https://xn--bcher-kva.example"),
        ("https://BÜCHER.example/", "https://xn--bcher-kva.example"),
        ("http://[::1]:8080/", "http://[::1]:8080"),
        ("https://[::1]/", "https://[::1]"),
        ("http://[2001:DB8::1]:80/", "http://[2001:db8::1]"),
        ("http://127.0.0.1:8080/a/b?c=d", "http://127.0.0.1:8080"),
    ],
)
def test_key_normalisation(url: str, key: str) -> None:
    upstream = Upstream()
    client, registry = make_client(upstream)
    with client:
        response = client.get(url)
    assert response.extensions["circuit_breaker"]["key"] == key
    # the key is the host as httpx sent it
    sent = upstream.calls[0].url
    assert sent.raw_host.decode("ascii").lower() in key
    assert [b.name for b in registry] == [key]


def test_custom_key_callable() -> None:
    seen: list[tuple[str, str]] = []

    def key(method: str, url: str) -> str | None:
        seen.append((method, url))
        if "/health" in url:
            return None
        return "tenant-" + httpx.URL(url).params.get("tenant", "none")

    upstream = Upstream()
    client, registry = make_client(upstream, key=key)
    with client:
        client.get("http://a.test/status/503?tenant=t1")
        with pytest.raises(CircuitOpenError):
            client.get("http://b.test/?tenant=t1")  # same key, other host
        assert client.get("http://a.test/?tenant=t2").status_code == 200
        for _ in range(3):
            response = client.get("http://a.test/health/status/503")
            assert "circuit_breaker" not in response.extensions
    assert seen[0] == ("GET", "http://a.test/status/503?tenant=t1")
    assert sorted(b.name for b in registry) == ["tenant-t1", "tenant-t2"]
    assert len(upstream.calls) == 5


def test_key_callable_returning_none_bypasses_everything() -> None:
    upstream = Upstream()
    client, registry = make_client(upstream, key=lambda method, url: None)
    with client:
        for _ in range(5):
            response = client.get("/status/503")
            assert response.status_code == 503
            assert "circuit_breaker" not in response.extensions
    assert len(registry) == 0
    assert len(upstream.calls) == 5


def test_registry_stays_bounded_under_100_000_keys() -> None:
    clock = ManualClock()
    registry = BreakerRegistry(TRIP1, max_breakers=1000, clock=clock)
    forced = [registry.get(f"forced-{i}") for i in range(20)]
    disabled = [registry.get(f"disabled-{i}") for i in range(20)]
    tripped = [registry.get(f"tripped-{i}") for i in range(20)]
    for breaker in forced:
        breaker.force_open()
    for breaker in disabled:
        breaker.disable()
    for breaker in tripped:
        breaker.record(breaker.acquire(), True)
        assert breaker.state is OPEN
    protected = {b.name for b in forced + disabled + tripped}
    started = time.perf_counter()
    high = 0
    for i in range(100_000):
        key = f"https://host-{i}.example"
        breaker = registry.get(key)
        assert key in registry  # the breaker just created is never the one dropped
        if i % 997 == 0:
            assert registry.get(key) is breaker
            high = max(high, len(registry))
    elapsed = time.perf_counter() - started
    assert high <= 1100
    assert len(registry) <= 1100
    held = {b.name for b in registry}
    assert protected <= held
    assert all(registry.get(b.name) is b for b in forced + disabled + tripped)
    assert elapsed < 10.0
    # Once the open periods end, the tripped breakers are ordinary again.
    clock.advance(11.0)
    for i in range(3000):
        registry.get(f"later-{i}")
    held = {b.name for b in registry}
    assert not any(name.startswith("tripped-") for name in held)
    assert {b.name for b in forced + disabled} <= held


def test_registry_may_exceed_its_bound_while_everything_else_is_protected() -> None:
    registry = BreakerRegistry(TRIP1, max_breakers=5, clock=ManualClock())
    for i in range(5):
        registry.get(f"forced-{i}").force_open()
    registry.get("new-1")
    assert len(registry) == 6 and "new-1" in registry
    registry.get("new-2")
    assert "new-2" in registry and "new-1" not in registry
    assert all(f"forced-{i}" in registry for i in range(5))


def test_rotating_hosts_through_the_transport_stay_bounded() -> None:
    upstream = Upstream()
    registry = BreakerRegistry(TRIP1, max_breakers=100, clock=ManualClock())
    client, _ = make_client(upstream, registry=registry)
    with client:
        client.get("http://tripped.test/status/503")
        for i in range(3000):
            client.get(f"http://h{i}.test/")
            assert len(registry) <= 110
        with pytest.raises(CircuitOpenError):
            client.get("http://tripped.test/")
    assert "http://tripped.test" in registry


# -- Retry-After -------------------------------------------------------------------------------

DATE = "Sun, 06 Nov 1994 08:49:37 GMT"
DATE_PLUS_120 = "Sun, 06 Nov 1994 08:51:37 GMT"


@pytest.mark.parametrize(
    ("query", "retry_after"),
    [
        ("retry_after=120", 120.0),
        ("retry_after=%20120%20", 120.0),
        ("retry_after=5", 10.0),  # shorter than the open period: no effect
        (f"retry_after={DATE_PLUS_120}&date={DATE}", 120.0),
        (f"retry_after={DATE}&date={DATE_PLUS_120}", 10.0),  # a date in the past
        ("retry_after=100000", 300.0),  # capped at max_open_duration
        ("retry_after=" + "9" * 60, 300.0),  # huge digits, still capped
        ("retry_after=soon", 10.0),
        ("retry_after=-5", 10.0),
        ("retry_after=1e3", 10.0),
        ("retry_after=12.5", 10.0),
        ("retry_after=0x20", 10.0),
        ("retry_after=", 10.0),
        ("retry_after=Mon, 99 Foo 2024 99:99:99 GMT", 10.0),
        ("retry_after=Sun, 06 Nov 99999 08:49:37 GMT", 10.0),
        (f"retry_after={DATE_PLUS_120}&date=yesterday", 10.0),  # no usable Date: wall clock
    ],
)
def test_retry_after_on_a_failure_lengthens_the_open_period(query: str, retry_after: float) -> None:
    # The wall clock is far past 1994, so a date read against it lies in the past.
    client, registry = make_client(Upstream(), wall_clock=lambda: 1.7e9)
    with client:
        assert client.get(f"/status/503?{query}").status_code == 503
    s = snap(registry)
    assert s.state is OPEN
    assert s.retry_after == pytest.approx(retry_after)


def test_retry_after_http_date_without_date_header_uses_the_wall_clock() -> None:
    wall = 784111777.0  # DATE as seconds since the epoch
    client, registry = make_client(Upstream(), wall_clock=lambda: wall)
    with client:
        client.get(f"/status/429?retry_after={DATE_PLUS_120}")
    assert snap(registry).retry_after == pytest.approx(120.0)


def test_retry_after_before_the_trip_is_remembered_until_it_passes() -> None:
    clock = ManualClock()
    config = BreakerConfig(consecutive_failures=2, failure_rate=None, open_duration=10.0)
    client, registry = make_client(Upstream(), config, clock)
    with client:
        client.get("/status/503?retry_after=60")
        clock.advance(20.0)
        client.get("/status/503")  # trips: the not-before time lies 40 s ahead
    assert snap(registry).retry_after == pytest.approx(40.0)


def test_retry_after_is_ignored_when_not_respected_or_not_a_failure() -> None:
    config = BreakerConfig(
        consecutive_failures=1, failure_rate=None, open_duration=10.0, respect_retry_after=False
    )
    client, registry = make_client(Upstream(), config)
    with client:
        client.get("/status/503?retry_after=120")
    assert snap(registry).retry_after == pytest.approx(10.0)
    client, registry = make_client(Upstream())
    with client:
        client.get("/status/200?retry_after=120")
        client.get("/status/503")
    assert snap(registry).retry_after == pytest.approx(10.0)


def test_retry_after_on_a_failed_trial_sets_the_next_open_period() -> None:
    clock = ManualClock()
    client, registry = make_client(Upstream(), clock=clock)
    with client:
        open_then_half_open(client, clock, registry)
        client.get("/status/503?retry_after=200")
    s = snap(registry)
    assert (s.state, s.open_count) == (OPEN, 2)
    assert s.retry_after == pytest.approx(200.0)


# -- per-request control -----------------------------------------------------------------------


def test_options_bypass_skips_the_breakers() -> None:
    upstream = Upstream()
    client, registry = make_client(upstream)
    with client:
        registry.get(KEY).force_open()
        with options(bypass=True):
            for _ in range(3):
                response = client.get("/status/503")
                assert response.status_code == 503
                assert "circuit_breaker" not in response.extensions
        with pytest.raises(CircuitOpenError):
            client.get("/")
    assert len(upstream.calls) == 3
    assert snap(registry).state is FORCED_OPEN


def test_options_key_chooses_the_breaker() -> None:
    upstream = Upstream()
    client, registry = make_client(upstream)
    with client:
        with options(key="shared"):
            response = client.get("http://a.test/status/503")
            assert response.extensions["circuit_breaker"]["key"] == "shared"
            with pytest.raises(CircuitOpenError) as caught:
                client.get("http://b.test/")
            assert caught.value.name == "shared"
        assert client.get("http://a.test/").status_code == 200
    assert registry.get("shared").state is OPEN
    assert "http://a.test" in registry


def test_options_nest_field_by_field() -> None:
    upstream = Upstream()
    client, registry = make_client(upstream)
    with client:
        registry.get("outer").force_open()
        with options(key="outer"):
            with pytest.raises(CircuitOpenError):
                client.get("/")
            with options(bypass=True):  # keeps key="outer", sets bypass
                assert client.get("/").status_code == 200
                with options(key="inner"):  # keeps bypass=True
                    response = client.get("/")
                    assert "circuit_breaker" not in response.extensions
                with options(bypass=False):
                    with pytest.raises(CircuitOpenError) as caught:
                        client.get("/")
                    assert caught.value.name == "outer"
            with options(key="inner"):
                assert client.get("/").extensions["circuit_breaker"]["key"] == "inner"
            with pytest.raises(CircuitOpenError):
                client.get("/")
        assert client.get("/").extensions["circuit_breaker"]["key"] == KEY


def test_request_extension_wins_over_options() -> None:
    upstream = Upstream()
    client, registry = make_client(upstream)
    with client:
        registry.get(KEY).force_open()
        registry.get("other").force_open()
        response = client.get("/", extensions={"circuit_breaker": {"bypass": True}})
        assert response.status_code == 200
        with options(bypass=True), pytest.raises(CircuitOpenError):
            client.get("/", extensions={"circuit_breaker": {"bypass": False}})
        with options(key="other"):
            response = client.get("/", extensions={"circuit_breaker": {"key": "third"}})
            assert response.extensions["circuit_breaker"]["key"] == "third"
            with pytest.raises(CircuitOpenError) as caught:
                client.get("/")
            assert caught.value.name == "other"
        response = client.get("/", extensions={"circuit_breaker": {"key": "fourth"}})
        assert response.extensions["circuit_breaker"]["key"] == "fourth"
        # malformed values are ignored, not fatal
        with pytest.raises(CircuitOpenError):
            client.get("/", extensions={"circuit_breaker": {"bypass": "yes", "key": 42}})
        with pytest.raises(CircuitOpenError):
            client.get("/", extensions={"circuit_breaker": "bypass"})


def test_options_follow_each_thread_and_task_context() -> None:
    upstream = Upstream()
    client, registry = make_client(upstream)
    registry.get(KEY).force_open()
    results: list[str] = []

    def other_thread() -> None:
        try:
            client.get("/")
            results.append("passed")
        except CircuitOpenError:
            results.append("refused")

    with client, options(bypass=True):
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
        assert client.get("/").status_code == 200
    assert results == ["refused"]


def test_response_extension_reports_key_and_state() -> None:
    clock = ManualClock()
    client, registry = make_client(Upstream(), clock=clock)
    with client:
        ok = client.get("/")
        assert ok.extensions["circuit_breaker"] == {"key": KEY, "state": "closed"}
        failed = client.get("/status/503")
        assert failed.extensions["circuit_breaker"] == {"key": KEY, "state": "closed"}
        clock.advance(10.0)
        trial = client.get("/")
        assert trial.extensions["circuit_breaker"] == {"key": KEY, "state": "half_open"}
        registry.get(KEY).disable()
        disabled = client.get("/status/503")
        assert disabled.extensions["circuit_breaker"]["state"] == "disabled"
        assert snap(registry).calls == 0


@pytest.mark.anyio
async def test_async_per_request_control() -> None:
    upstream = Upstream()
    client, registry = make_async_client(upstream)
    async with client:
        registry.get(KEY).force_open()
        with options(bypass=True):
            assert (await client.get("/")).status_code == 200
        response = await client.get("/", extensions={"circuit_breaker": {"key": "k"}})
        assert response.extensions["circuit_breaker"] == {"key": "k", "state": "closed"}
        with options(key="k"):
            assert (await client.get("/")).extensions["circuit_breaker"]["key"] == "k"
        with pytest.raises(CircuitOpenError):
            await client.get("/")
    assert len(upstream.calls) == 3


# -- fallbacks ---------------------------------------------------------------------------------


def test_fallback_response() -> None:
    clock = ManualClock()
    upstream = Upstream()
    fallback = FallbackResponse(503, json={"error": "upstream down"}, headers={"X-Why": "open"})
    client, registry = make_client(upstream, clock=clock, fallback=fallback)
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


def test_fallback_response_keeps_its_own_retry_after_and_forced_open_has_none() -> None:
    client, registry = make_client(
        Upstream(), fallback=FallbackResponse(200, content=b"cached", headers={"Retry-After": "1"})
    )
    with client:
        client.get("/status/500")
        response = client.get("/")
        assert response.headers.get_list("retry-after") == ["1"]
        assert response.content == b"cached"
        registry.get(KEY).force_open()
        forced = client.get("/")
        assert forced.headers.get_list("retry-after") == ["1"]
    client, registry = make_client(Upstream(), fallback=FallbackResponse())
    with client:
        registry.get(KEY).force_open()
        forced = client.get("/")
    assert forced.status_code == 503
    assert "retry-after" not in forced.headers
    assert forced.headers["x-circuit-breaker"] == "open"
    assert forced.extensions["circuit_breaker"]["state"] == "forced_open"


def test_sync_callable_fallback() -> None:
    calls: list[tuple[httpx.Request, CircuitOpenError]] = []

    def fallback(request: httpx.Request, error: CircuitOpenError) -> httpx.Response:
        calls.append((request, error))
        return httpx.Response(299, json={"from": "fallback", "path": request.url.path})

    upstream = Upstream()
    client, _registry = make_client(upstream, fallback=fallback)
    with client:
        client.get("/status/500")
        response = client.get("/x")
    assert response.status_code == 299
    assert response.json() == {"from": "fallback", "path": "/x"}
    assert response.headers["x-circuit-breaker"] == "open"
    assert response.headers["retry-after"] == "10"
    request, error = calls[0]
    assert request.url == f"{BASE}/x"
    assert isinstance(error, CircuitOpenError) and isinstance(error, httpx.TransportError)
    assert (error.name, error.state, error.retry_after) == (KEY, OPEN, 10.0)
    assert len(upstream.calls) == 1


@pytest.mark.anyio
async def test_async_callable_fallback() -> None:
    async def fallback(request: httpx.Request, error: CircuitOpenError) -> httpx.Response:
        await anyio.sleep(0)
        return httpx.Response(200, text=f"fallback for {error.name}")

    def sync_fallback(request: httpx.Request, error: CircuitOpenError) -> httpx.Response:
        return httpx.Response(200, text="sync")

    upstream = Upstream()
    client, registry = make_async_client(upstream, fallback=fallback)
    async with client:
        await client.get("/status/500")
        response = await client.get("/")
    assert response.text == f"fallback for {KEY}"
    assert response.headers["x-circuit-breaker"] == "open"
    client, registry = make_async_client(upstream, fallback=sync_fallback)
    async with client:
        registry.get(KEY).force_open()
        assert (await client.get("/")).text == "sync"
        # FallbackResponse works on the async transport too
    client, registry = make_async_client(upstream, fallback=FallbackResponse(json=[1]))
    async with client:
        registry.get(KEY).force_open()
        assert (await client.get("/")).json() == [1]
    assert len(upstream.calls) == 1


def test_async_fallback_on_the_sync_transport_is_a_type_error() -> None:
    async def fallback(request: httpx.Request, error: CircuitOpenError) -> httpx.Response:
        raise AssertionError

    with pytest.raises(TypeError):
        CircuitBreakerTransport(httpx.MockTransport(Upstream()), fallback=fallback)
    with pytest.raises(TypeError):
        CircuitBreakerTransport(httpx.MockTransport(Upstream()), fallback="503")
    # the same for the ``otherwise`` of a LastKnownGood, which is called the same way
    with pytest.raises(TypeError):
        CircuitBreakerTransport(
            httpx.MockTransport(Upstream()), fallback=LastKnownGood(otherwise=fallback)
        )


def test_fallback_that_raises_propagates_and_records_nothing() -> None:
    class Boom(Exception):
        pass

    def fallback(request: httpx.Request, error: CircuitOpenError) -> httpx.Response:
        raise Boom

    clock = ManualClock()
    upstream = Upstream()
    client, registry = make_client(upstream, clock=clock, fallback=fallback)
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


def test_fallback_returning_something_else_is_a_type_error() -> None:
    client, registry = make_client(Upstream(), fallback=lambda request, error: "not a response")
    with client:
        registry.get(KEY).force_open()
        with pytest.raises(TypeError):
            client.get("/")


# -- last known good ---------------------------------------------------------------------------


def lkg_client(
    upstream: Upstream, lkg: LastKnownGood
) -> tuple[httpx.Client, BreakerRegistry, ManualClock]:
    clock = ManualClock()
    client, registry = make_client(upstream, clock=clock, fallback=lkg)
    return client, registry, clock


def test_last_known_good_serves_the_last_good_get_while_open() -> None:
    lkg_clock = ManualClock()
    lkg = LastKnownGood(clock=lkg_clock)
    upstream = Upstream()
    client, _registry, clock = lkg_client(upstream, lkg)
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
        ({"Authorization": "Bearer a"}, "", {}),  # not stored
        ({}, "", {"Authorization": "Bearer a"}),  # not answered
        ({"Cookie": "s=1"}, "", {}),
        ({}, "", {"Cookie": "s=1"}),
        ({}, "header=Cache-Control:no-store", {}),
        ({}, "header=Cache-Control:private, max-age=60", {}),
        ({}, "header=Set-Cookie:s=1", {}),
        ({}, "header=Vary:*", {}),
        ({"Accept": "a/a"}, "header=Vary:Accept", {"Accept": "b/b"}),
        ({}, "header=Vary:Accept-Language", {"Accept-Language": "fr"}),
    ],
)
def test_last_known_good_never_mixes_users_or_variants(
    store_headers: dict[str, str], query: str, ask_headers: dict[str, str]
) -> None:
    lkg = LastKnownGood(otherwise=FallbackResponse(599))
    client, registry, _clock = lkg_client(Upstream(), lkg)
    with client:
        client.get(f"/doc?{query}", headers=store_headers)
        registry.get(KEY).force_open()
        response = client.get(f"/doc?{query}", headers=ask_headers)
    assert response.status_code == 599
    assert "stale" not in response.extensions["circuit_breaker"]


def test_last_known_good_honours_vary() -> None:
    lkg = LastKnownGood()
    upstream = Upstream()

    def handler(request: httpx.Request) -> httpx.Response:
        upstream.calls.append(request)
        lang = request.headers.get("accept-language", "")
        return httpx.Response(200, headers={"Vary": "Accept-Language"}, text=f"in {lang}")

    client, registry = make_client(handler, fallback=lkg)
    with client:
        client.get("/", headers={"Accept-Language": "fr"})
        client.get("/", headers={"Accept-Language": "de"})
        registry.get(KEY).force_open()
        assert client.get("/", headers={"Accept-Language": "fr"}).text == "in fr"
        assert client.get("/", headers={"Accept-Language": "de"}).text == "in de"
        with pytest.raises(CircuitOpenError):
            client.get("/", headers={"Accept-Language": "it"})
    assert len(lkg) == 2


def sized(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, content=b"x" * int(request.url.params["n"]))


def served_urls(
    lkg: LastKnownGood, store: list[str], ask: list[str], age: float = 0.0
) -> list[str]:
    """Store ``store`` through a closed breaker, force it open, wait ``age``: what is served?"""
    client, registry = make_client(sized, fallback=lkg)
    served = []
    with client:
        for url in store:
            client.get(url)
        registry.get(KEY).force_open()
        lkg._clock.advance(age)  # type: ignore[attr-defined]
        for url in ask:
            try:
                client.get(url)
            except CircuitOpenError:
                continue
            served.append(url)
    return served


def test_last_known_good_is_bounded_in_entries() -> None:
    lkg = LastKnownGood(max_entries=2, clock=ManualClock())
    urls = ["/1?n=1", "/2?n=1", "/3?n=1"]
    assert served_urls(lkg, urls, urls) == ["/2?n=1", "/3?n=1"]
    assert len(lkg) == 2


def test_last_known_good_is_bounded_in_bytes() -> None:
    lkg = LastKnownGood(max_bytes=10, max_entry_bytes=8, clock=ManualClock())
    urls = ["/a?n=4", "/b?n=4", "/c?n=4", "/d?n=9"]
    # /d is larger than max_entry_bytes; /c pushes the total past max_bytes and /a goes
    assert served_urls(lkg, urls, urls) == ["/b?n=4", "/c?n=4"]
    assert lkg.bytes_stored == 8


def test_last_known_good_is_bounded_in_age() -> None:
    urls = ["/a?n=1"]
    assert served_urls(LastKnownGood(max_age=60, clock=ManualClock()), urls, urls, 60.0) == urls
    assert served_urls(LastKnownGood(max_age=60, clock=ManualClock()), urls, urls, 60.5) == []


def test_last_known_good_stores_a_streamed_get_only_when_read_to_the_end() -> None:
    lkg = LastKnownGood()
    upstream = Upstream()
    client, registry, _clock = lkg_client(upstream, lkg)
    with client:
        upstream.next_stream = Chunks(count=3)
        with client.stream("GET", "/stream?part=1") as response:
            for _ in response.iter_raw():
                break
        upstream.next_stream = Chunks(count=3)
        with client.stream("GET", "/stream?part=0"):
            pass
        upstream.next_stream = Chunks(count=3, fail_after=2)
        with pytest.raises(httpx.ReadError):
            client.get("/stream?broken=1")
        registry.get(KEY).reset()
        full = upstream.next_stream = Chunks(count=3)
        with client.stream("GET", "/stream?full=1") as response:
            response.read()
        registry.get(KEY).force_open()
        for url in ("/stream?part=1", "/stream?part=0", "/stream?broken=1"):
            with pytest.raises(CircuitOpenError):
                client.get(url)
        assert client.get("/stream?full=1").content == full.body
    assert len(lkg) == 1


def test_last_known_good_without_a_stored_response_uses_otherwise() -> None:
    for otherwise, expected in [
        (None, CircuitOpenError),
        (FallbackResponse(503, content=b"down"), b"down"),
        (lambda request, error: httpx.Response(200, content=b"called"), b"called"),
    ]:
        client, registry = make_client(Upstream(), fallback=LastKnownGood(otherwise=otherwise))
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


def test_last_known_good_stores_get_only() -> None:
    lkg = LastKnownGood()
    client, registry = make_client(Upstream(), fallback=lkg)
    with client:
        assert client.head("/doc").status_code == 200
        client.post("/doc")
        registry.get(KEY).force_open()
        with pytest.raises(CircuitOpenError):
            client.get("/doc")
        with pytest.raises(CircuitOpenError):
            client.head("/doc")
    assert len(lkg) == 0


def test_last_known_good_skips_non_2xx_and_partial_content() -> None:
    lkg = LastKnownGood()
    client, _registry = make_client(Upstream(), COUNT_ONLY, fallback=lkg)
    with client:
        client.get("/status/206")
        client.get("/status/404")
        client.get("/status/503")
        client.get("/status/204")
    assert len(lkg) == 1


def test_last_known_good_serves_an_encoded_body_that_still_decodes() -> None:
    lkg = LastKnownGood()
    body = b"hello " * 50

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"Content-Encoding": "gzip"}, content=gzip.compress(body)
        )

    client, registry = make_client(handler, fallback=lkg)
    with client:
        assert client.get("/").content == body
        registry.get(KEY).force_open()
        stale = client.get("/")
    assert stale.content == body
    assert stale.extensions["circuit_breaker"]["stale"] is True


@pytest.mark.anyio
async def test_async_last_known_good() -> None:
    lkg = LastKnownGood()
    upstream = Upstream()
    client, registry = make_async_client(upstream, fallback=lkg)
    async with client:
        upstream.next_stream = Chunks(count=2)
        async with client.stream("GET", "/stream") as response:
            await response.aread()
        await client.get("/plain")
        registry.get(KEY).force_open()
        assert (await client.get("/stream")).content == b"aaaabbbb"
        plain = await client.get("/plain")
        assert plain.content == b"ok" and plain.headers["x-circuit-breaker"] == "open"
        with pytest.raises(CircuitOpenError):
            await client.get("/nothing")

    async def otherwise(request: httpx.Request, error: CircuitOpenError) -> httpx.Response:
        await anyio.sleep(0)
        return httpx.Response(200, text="otherwise")

    client, registry = make_async_client(upstream, fallback=LastKnownGood(otherwise=otherwise))
    async with client:
        registry.get(KEY).force_open()
        response = await client.get("/nothing")
    assert response.text == "otherwise"
    assert response.headers["x-circuit-breaker"] == "open"


# -- composition with retries ------------------------------------------------------------------


class RecordingRetry(Retry):
    """An httpx-retries ``Retry`` that records its waits instead of sleeping."""

    waits: list[float]

    def sleep(self, response: httpx.Response | Exception) -> None:
        headers = response.headers if isinstance(response, httpx.Response) else {}
        self.waits.append(self._calculate_sleep(headers))

    async def asleep(self, response: httpx.Response | Exception) -> None:
        self.sleep(response)


def recording_retry(**kwargs: Any) -> RecordingRetry:
    waits: list[float] = []
    RecordingRetry.waits = waits  # copies made by increment() share the list
    return RecordingRetry(**kwargs)


def test_breaker_outside_retries_sees_one_outcome_per_logical_request() -> None:
    statuses = iter([503, 503, 200, 503, 503, 503, 503])
    upstream_calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal upstream_calls
        upstream_calls += 1
        return httpx.Response(next(statuses))

    retry = recording_retry(total=3)
    registry = BreakerRegistry(COUNT_ONLY, clock=ManualClock())
    transport = CircuitBreakerTransport(
        transport=RetryTransport(transport=httpx.MockTransport(handler), retry=retry),
        registry=registry,
    )
    with httpx.Client(transport=transport, base_url=BASE) as client:
        assert client.get("/").status_code == 200  # 503, 503, 200
        assert (snap(registry).calls, snap(registry).failures) == (1, 0)
        assert client.get("/").status_code == 503  # 503 x 4: retries exhausted
    s = snap(registry)
    assert (s.calls, s.failures) == (2, 1)
    assert upstream_calls == 7


def test_a_fallbacks_retry_after_never_reaches_an_inner_retry_layer() -> None:
    upstream = Upstream()
    retry = recording_retry(total=3)
    fallback = FallbackResponse(503, headers={"Retry-After": "30"})
    inner = RetryTransport(transport=httpx.MockTransport(upstream), retry=retry)
    transport = CircuitBreakerTransport(inner, fallback=fallback, config=TRIP1)
    with httpx.Client(transport=transport, base_url=BASE) as client:
        transport.registry.get(KEY).force_open()
        response = client.get("/")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "30"
    assert RecordingRetry.waits == []
    assert upstream.calls == []
    # The other way round the retry layer sees the fallback and waits on it,
    # which is why the breaker goes outermost.
    retry = recording_retry(total=2)
    breaker = CircuitBreakerTransport(httpx.MockTransport(upstream), fallback=fallback)
    outer = RetryTransport(transport=breaker, retry=retry)
    with httpx.Client(transport=outer, base_url=BASE) as client:
        breaker.registry.get(KEY).force_open()
        client.get("/")
    assert RecordingRetry.waits == [30.0, 30.0]
    assert upstream.calls == []


def test_retry_predicates_should_exclude_circuit_open_errors() -> None:
    upstream = Upstream()
    config = BreakerConfig(consecutive_failures=2, failure_rate=None, open_duration=10.0)
    client, _registry = make_client(upstream, config)

    def with_retries(send: Callable[[], httpx.Response], retry_if: Any) -> tuple[int, Any]:
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
        return isinstance(exc, httpx.TransportError)

    def careful(exc: Exception) -> bool:
        return isinstance(exc, httpx.TransportError) and not isinstance(exc, CircuitOpenError)

    with client:
        attempts, outcome = with_retries(lambda: client.get("/raise/connect_error"), careful)
        # two real failures open the circuit; the third attempt is refused and not retried
        assert attempts == 3 and isinstance(outcome, CircuitOpenError)
        assert len(upstream.calls) == 2
        attempts, outcome = with_retries(lambda: client.get("/"), naive)
        # a naive predicate retries into the open circuit until it gives up
        assert attempts == 10 and isinstance(outcome, CircuitOpenError)
    assert len(upstream.calls) == 2

    # httpx-retries retries only timeouts and network errors by default, so it
    # does not retry a CircuitOpenError even when it wraps the breaker; one told to
    # retry every TransportError retries into the open circuit unless told to skip it.
    for retry, attempts_expected in [
        (Retry(total=3), 1),
        (Retry(total=3, retry_on_exceptions=[httpx.TransportError]), 4),
        (CarefulRetry(total=3, retry_on_exceptions=[httpx.TransportError]), 1),
    ]:
        breaker = CircuitBreakerTransport(httpx.MockTransport(upstream))
        breaker.registry.get(KEY).force_open()
        counting = Counting(breaker)
        outer = RetryTransport(transport=counting, retry=retry)
        with (
            httpx.Client(transport=outer, base_url=BASE) as client,
            pytest.raises(CircuitOpenError),
        ):
            client.get("/")
        assert counting.tries == attempts_expected
    assert len(upstream.calls) == 2


class CarefulRetry(Retry):
    """httpx-retries told never to retry into an open circuit."""

    def is_retryable_exception(self, exception: Exception) -> bool:
        return super().is_retryable_exception(exception) and not isinstance(
            exception, CircuitOpenError
        )


class Counting(httpx.BaseTransport):
    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.tries = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.tries += 1
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


@pytest.mark.anyio
async def test_async_breaker_outside_retries() -> None:
    statuses = iter([503, 502, 200])

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(next(statuses))

    retry = recording_retry(total=3)
    registry = BreakerRegistry(COUNT_ONLY, clock=ManualClock())
    transport = AsyncCircuitBreakerTransport(
        transport=RetryTransport(transport=httpx.MockTransport(handler), retry=retry),
        registry=registry,
    )
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        assert (await client.get("/")).status_code == 200
        s = snap(registry)
        assert (s.calls, s.failures) == (1, 0)
        registry.get(KEY).force_open()
        with pytest.raises(CircuitOpenError):
            await client.get("/")
    assert len(RecordingRetry.waits) == 2


# -- transport plumbing ------------------------------------------------------------------------


def test_default_inner_transport_gets_the_keyword_arguments() -> None:
    limits = httpx.Limits(max_connections=7, max_keepalive_connections=3)
    transport = CircuitBreakerTransport(verify=False, http2=False, limits=limits, retries=2)
    try:
        inner = transport.transport
        assert type(inner) is httpx.HTTPTransport
        pool = inner._pool
        assert pool._max_connections == 7
        assert pool._max_keepalive_connections == 3
        assert pool._retries == 2
        assert pool._http2 is False
        assert pool._ssl_context.verify_mode == ssl.CERT_NONE
    finally:
        transport.close()


@pytest.mark.anyio
async def test_default_async_inner_transport_gets_the_keyword_arguments() -> None:
    transport = AsyncCircuitBreakerTransport(
        limits=httpx.Limits(max_connections=5), retries=1, verify=False
    )
    try:
        inner = transport.transport
        assert type(inner) is httpx.AsyncHTTPTransport
        assert inner._pool._max_connections == 5
        assert inner._pool._retries == 1
        assert inner._pool._ssl_context.verify_mode == ssl.CERT_NONE
    finally:
        await transport.aclose()


def test_constructor_errors() -> None:
    mock = httpx.MockTransport(Upstream())
    with pytest.raises(TypeError):
        CircuitBreakerTransport(mock, verify=False)
    with pytest.raises(TypeError):
        AsyncCircuitBreakerTransport(mock, retries=1)
    registry = BreakerRegistry()
    for extra in ({"config": TRIP1}, {"rules": {}}, {"key": lambda m, u: "k"}):
        with pytest.raises(TypeError):
            CircuitBreakerTransport(mock, registry=registry, **extra)
        with pytest.raises(TypeError):
            AsyncCircuitBreakerTransport(mock, registry=registry, **extra)
    transport = CircuitBreakerTransport(mock, registry=registry)
    assert transport.registry is registry
    built = CircuitBreakerTransport(mock, config=TRIP1, rules={"a.test": COUNT_ONLY})
    assert built.registry.default is TRIP1
    assert built.registry.config_for("http://a.test") is COUNT_ONLY


class SpyTransport(httpx.BaseTransport, httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self.closed = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200)

    def close(self) -> None:
        self.closed += 1

    async def aclose(self) -> None:
        self.closed += 1


def test_close_closes_the_inner_transport() -> None:
    spy = SpyTransport()
    with httpx.Client(transport=CircuitBreakerTransport(spy)) as client:
        client.get("http://a.test/")
    assert spy.closed == 1
    spy = SpyTransport()
    CircuitBreakerTransport(spy).close()
    assert spy.closed == 1


@pytest.mark.anyio
async def test_aclose_closes_the_inner_transport() -> None:
    spy = SpyTransport()
    async with httpx.AsyncClient(transport=AsyncCircuitBreakerTransport(spy)) as client:
        await client.get("http://a.test/")
    assert spy.closed == 1


def test_mounts_and_a_registry_shared_by_two_clients() -> None:
    upstream = Upstream()
    registry = BreakerRegistry(TRIP1, clock=ManualClock())
    one = httpx.Client(
        mounts={
            "http://": CircuitBreakerTransport(httpx.MockTransport(upstream), registry=registry)
        }
    )
    two = httpx.Client(
        transport=CircuitBreakerTransport(httpx.MockTransport(upstream), registry=registry)
    )
    with one, two:
        assert one.get("http://a.test/status/503").status_code == 503
        with pytest.raises(CircuitOpenError):
            two.get("http://a.test/")
        assert two.get("http://b.test/").status_code == 200
    assert len(upstream.calls) == 2
    assert sorted(b.name for b in registry) == ["http://a.test", "http://b.test"]


@pytest.mark.anyio
async def test_a_registry_shared_by_sync_and_async_transports() -> None:
    upstream = Upstream()
    registry = BreakerRegistry(TRIP1, clock=ManualClock())
    sync_client = httpx.Client(
        transport=CircuitBreakerTransport(httpx.MockTransport(upstream), registry=registry)
    )
    async_client = httpx.AsyncClient(
        transport=AsyncCircuitBreakerTransport(httpx.MockTransport(upstream), registry=registry)
    )
    with sync_client:
        sync_client.get(f"{BASE}/status/500")
    async with async_client:
        with pytest.raises(CircuitOpenError):
            await async_client.get(f"{BASE}/")
    assert len(upstream.calls) == 1


# -- respx: the default inner transport, mocked ------------------------------------------------


def test_respx_default_inner_transport() -> None:
    registry = BreakerRegistry(TRIP1, clock=ManualClock())
    with respx.mock(assert_all_called=False) as router:
        bad = router.get("http://api.test/bad").mock(return_value=httpx.Response(502))
        ok = router.get("http://other.test/ok").mock(return_value=httpx.Response(200, text="ok"))
        down = router.get("http://down.test/").mock(side_effect=httpx.ConnectTimeout)
        with httpx.Client(transport=CircuitBreakerTransport(registry=registry)) as client:
            assert client.get("http://api.test/bad").status_code == 502
            with pytest.raises(CircuitOpenError):
                client.get("http://api.test/bad")
            assert client.get("http://other.test/ok").text == "ok"
            with pytest.raises(httpx.ConnectTimeout):
                client.get("http://down.test/")
            with pytest.raises(CircuitOpenError):
                client.get("http://down.test/")
    assert (bad.call_count, ok.call_count, down.call_count) == (1, 1, 1)
    assert registry.get("http://other.test").snapshot().calls == 1
    assert registry.get("http://down.test").state is OPEN


@pytest.mark.anyio
async def test_respx_async_default_inner_transport() -> None:
    registry = BreakerRegistry(TRIP1, clock=ManualClock())
    with respx.mock(assert_all_called=False) as router:
        route = router.get("http://api.test/").mock(
            side_effect=[httpx.Response(200), httpx.Response(429, headers={"Retry-After": "60"})]
        )
        transport = AsyncCircuitBreakerTransport(registry=registry)
        async with httpx.AsyncClient(transport=transport) as client:
            assert (await client.get("http://api.test/")).status_code == 200
            assert (await client.get("http://api.test/")).status_code == 429
            with pytest.raises(CircuitOpenError) as caught:
                await client.get("http://api.test/")
    assert route.call_count == 2
    assert caught.value.retry_after == pytest.approx(60.0)
