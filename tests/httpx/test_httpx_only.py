"""The tests that run with httpx only: composition with httpx-retries, mocking with respx.

Both libraries are built on httpx itself, so they cannot take part in an httpx2
client: httpx-retries' ``RetryTransport`` is an ``httpx.BaseTransport`` that checks
``isinstance(response, httpx.Response)`` and retries httpx's exception classes, and
respx mocks by patching httpx's (and httpcore's) own transports. Each test carries
``@pytest.mark.httpx_only(reason)`` and imports httpx itself instead of taking the
``flavour`` fixture. What they check that is not about those libraries runs with both
flavours elsewhere: retry predicates in ``test_httpx_plumbing.py`` and
``test_httpx_sockets_routing.py``, the default inner transport over real sockets in
``test_httpx_sockets*.py``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import httpx
import pytest
import respx
from httpx_retries import Retry, RetryTransport
from hx_support import (
    BASE,
    COUNT_ONLY,
    KEY,
    OPEN,
    TRIP1,
    Upstream,
    registry_for,
    snap,
)

from circuitbreaker_http import BreakerRegistry, CircuitOpenError, FallbackResponse
from circuitbreaker_http.httpx import AsyncCircuitBreakerTransport, CircuitBreakerTransport
from circuitbreaker_http.testing import ManualClock
from circuitbreaker_http.testing._server import FlakyServer

RETRIES = pytest.mark.httpx_only("httpx-retries wraps httpx transports and responses only")
RESPX = pytest.mark.httpx_only("respx mocks httpx's own transports only")

# -- composition with httpx-retries ------------------------------------------------------------


class RecordingRetry(Retry):
    """An httpx-retries ``Retry`` that records its waits instead of sleeping."""

    waits: ClassVar[list[float]] = []  # shared by the copies increment() makes

    def sleep(self, response: httpx.Response | Exception) -> None:
        headers = response.headers if isinstance(response, httpx.Response) else {}
        self.waits.append(self._calculate_sleep(headers))

    async def asleep(self, response: httpx.Response | Exception) -> None:
        self.sleep(response)


def recording_retry(**kwargs: Any) -> RecordingRetry:
    waits: list[float] = []
    RecordingRetry.waits = waits
    return RecordingRetry(**kwargs)


@RETRIES
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


@RETRIES
def test_a_fallbacks_retry_after_never_reaches_an_inner_retry_layer() -> None:
    upstream = Upstream(httpx)
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


@RETRIES
def test_httpx_retries_retries_into_an_open_circuit_unless_told_not_to() -> None:
    # Split from test_retry_predicates_should_exclude_circuit_open_errors, whose
    # hand-written retry loop runs with both flavours in test_httpx_plumbing.py.
    upstream = Upstream(httpx)
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
    assert upstream.calls == []


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


@RETRIES
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


# -- over real sockets ----------------------------------------------------------------------


@RETRIES
def test_breaker_outermost_around_httpx_retries(flaky_server: FlakyServer) -> None:
    registry = registry_for()
    inner = RetryTransport(transport=httpx.HTTPTransport(), retry=recording_retry(total=2))
    fallback = FallbackResponse(503, headers={"Retry-After": "30"})
    transport = CircuitBreakerTransport(inner, registry=registry, fallback=fallback)
    with httpx.Client(transport=transport, timeout=httpx.Timeout(10.0)) as client:
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


@RETRIES
@pytest.mark.anyio
async def test_async_breaker_outermost_around_httpx_retries(flaky_server: FlakyServer) -> None:
    registry = registry_for(COUNT_ONLY)
    inner = RetryTransport(transport=httpx.AsyncHTTPTransport(), retry=recording_retry(total=3))
    transport = AsyncCircuitBreakerTransport(inner, registry=registry)
    async with httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(10.0)) as client:
        with pytest.raises(httpx.TransportError):
            await client.get(f"{flaky_server.url}/reset")
    assert flaky_server.requests == 4
    s = snap(registry, flaky_server)
    assert (s.calls, s.failures) == (1, 1)


# -- respx: the default inner transport, mocked ------------------------------------------------


@RESPX
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


@RESPX
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
