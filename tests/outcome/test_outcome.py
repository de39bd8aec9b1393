"""The outcome engine (``_outcome.Outcome``) fed plain values, and its fixes for httpx/httpx2."""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Callable, Iterator
from types import ModuleType
from typing import Any

import pytest

from circuitbreaker_http import (
    BreakerConfig,
    BreakerRegistry,
    CallInfo,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    FallbackResponse,
    Verdict,
)
from circuitbreaker_http._outcome import ErrorKinds, Gate, Outcome, check_fallback, settle_complete
from circuitbreaker_http.testing import FlakyServer, ManualClock


class Upstream(Exception):
    """Stands for a client's transport failure."""


KINDS = ErrorKinds((Upstream,), (KeyError,))


def make(config: BreakerConfig | None = None) -> tuple[ManualClock, CircuitBreaker, Gate]:
    clock = ManualClock()
    registry = BreakerRegistry(config or BreakerConfig(), clock=clock)
    gate = Gate(registry, None, lambda: 0.0, lambda request: ("GET", str(request)))
    return clock, registry.get("http://up"), gate


def admit(gate: Gate, breaker: CircuitBreaker, request: Any = "http://up/x") -> Outcome:
    permit = breaker.acquire()
    return Outcome(gate, breaker, permit, request, breaker.clock() if breaker.timed else 0.0)


def test_a_failure_status_settles_at_the_headers() -> None:
    _, breaker, gate = make(BreakerConfig(consecutive_failures=1))
    outcome = admit(gate, breaker)
    assert outcome.headers(503, {}) is True
    assert outcome.settled
    assert breaker.state is CircuitState.OPEN


def test_a_success_status_waits_for_the_body_and_settles_once() -> None:
    _, breaker, gate = make(BreakerConfig(consecutive_failures=1))
    outcome = admit(gate, breaker)
    assert outcome.headers(200, {}) is False
    assert not outcome.settled
    assert breaker.snapshot().calls == 0
    outcome.ended()
    outcome.failed(Upstream(), True)  # too late: settled already
    outcome.closed()
    snap = breaker.snapshot()
    assert (snap.calls, snap.failures, snap.state) == (1, 0, CircuitState.CLOSED)


def test_an_error_while_the_body_is_read_is_a_failure() -> None:
    _, breaker, gate = make(BreakerConfig(consecutive_failures=1))
    outcome = admit(gate, breaker)
    outcome.headers(200, {})
    outcome.failed(Upstream(), KINDS.failure(Upstream()))
    assert breaker.state is CircuitState.OPEN


def test_an_error_that_is_not_a_failure_records_nothing() -> None:
    _, breaker, gate = make(BreakerConfig(consecutive_failures=1))
    for exc in (KeyError("excluded subtype"), ValueError("a bug")):
        outcome = admit(gate, breaker)
        outcome.failed(exc, KINDS.failure(exc))
    assert breaker.snapshot().calls == 0


def test_only_the_upstreams_time_is_counted() -> None:
    clock, breaker, gate = make(BreakerConfig(slow_call_duration=1.0, consecutive_failures=None))
    outcome = admit(gate, breaker)
    clock.advance(0.4)  # waiting for the headers
    outcome.headers(200, {})
    clock.advance(30)  # the caller's own time between reads: not counted
    outcome.read(0.5)
    outcome.ended()
    assert breaker.snapshot().slow_calls == 0
    slow = admit(gate, breaker)
    clock.advance(0.6)
    slow.headers(200, {})
    slow.read(0.5)
    slow.ended()
    assert breaker.snapshot().slow_calls == 1


def trip_to_half_open(clock: ManualClock, breaker: CircuitBreaker) -> None:
    breaker.force_open()
    breaker.reset()
    for _ in range(5):
        breaker.record(breaker.acquire(), True)
    assert breaker.state is CircuitState.OPEN
    clock.advance(breaker.config.open_duration)


def test_a_trial_frees_its_slot_at_a_success_status() -> None:
    clock, breaker, gate = make()
    trip_to_half_open(clock, breaker)
    trial = admit(gate, breaker)
    assert trial.state is CircuitState.HALF_OPEN
    trial.headers(200, {})
    second = admit(gate, breaker)  # the slot is free while the first body is read
    assert second.state is CircuitState.HALF_OPEN


def test_a_trial_reports_the_state_it_was_let_through_in() -> None:
    clock, breaker, gate = make(BreakerConfig(half_open_max_calls=2))
    trip_to_half_open(clock, breaker)
    first, second = admit(gate, breaker), admit(gate, breaker)
    first.headers(503, {})
    assert breaker.state is CircuitState.OPEN
    assert second.extension() == {"key": "http://up", "state": "half_open"}
    second.headers(200, {})
    second.ended()
    assert breaker.state is CircuitState.OPEN  # a stale trial changes nothing


def test_a_cancelled_trial_gives_its_slot_back() -> None:
    clock, breaker, gate = make()
    trip_to_half_open(clock, breaker)
    admit(gate, breaker).cancelled()
    assert admit(gate, breaker).state is CircuitState.HALF_OPEN


def test_classify_is_asked_at_the_headers_and_again_for_a_body_error() -> None:
    seen: list[CallInfo] = []

    def classify(call: CallInfo) -> Verdict | None:
        seen.append(call)
        return None

    _, breaker, gate = make(BreakerConfig(classify=classify))
    outcome = admit(gate, breaker, "http://up/a")
    outcome.headers(200, {"x": "1"})
    error = Upstream()
    outcome.failed(error, True)
    assert [(c.status, c.error, c.url) for c in seen] == [
        (200, None, "http://up/a"),
        (200, error, "http://up/a"),
    ]
    assert breaker.snapshot().failures == 1


def test_a_dropped_response_settles_as_a_success_without_the_lock() -> None:
    _, breaker, gate = make()
    outcome = admit(gate, breaker)
    outcome.headers(200, {})
    outcome.dropped()
    outcome.ended()
    assert breaker.snapshot().calls == 1


def test_a_failure_takes_its_retry_after() -> None:
    _, breaker, gate = make(BreakerConfig(consecutive_failures=1, open_duration=5))
    admit(gate, breaker).headers(503, {"retry-after": "60"})
    snap = breaker.snapshot()
    assert snap.retry_after == pytest.approx(60)


def test_settle_complete_decides_like_the_outcome() -> None:
    _, breaker, gate = make(BreakerConfig(consecutive_failures=2))
    assert settle_complete(gate, breaker, breaker.acquire(), "r", 0.0, 200, {}) == "closed"
    assert settle_complete(gate, breaker, breaker.acquire(), "r", 0.0, 500, {}) == "closed"
    assert settle_complete(gate, breaker, breaker.acquire(), "r", 0.0, 500, {}) == "closed"
    assert breaker.state is CircuitState.OPEN
    breaker.disable()
    assert settle_complete(gate, breaker, breaker.acquire(), "r", 0.0, 500, {}) == "disabled"


@pytest.mark.parametrize(
    "fallback",
    [
        42,
        "text",
        lambda: None,
        lambda request: None,
        lambda request, error, extra: None,
    ],
)
def test_a_fallback_of_the_wrong_shape_is_refused_when_built(fallback: object) -> None:
    with pytest.raises(TypeError, match="fallback"):
        check_fallback(fallback, True, "the client")


def test_fallbacks_of_the_right_shape_pass() -> None:
    async def coroutine(request: object, error: object) -> None: ...

    for fallback in (
        None,
        FallbackResponse(503),
        lambda request, error: None,
        lambda *args: None,
        lambda request, error=None, *, extra=1: None,
    ):
        assert check_fallback(fallback, False, "x") is fallback
    assert check_fallback(coroutine, True, "x") is coroutine
    with pytest.raises(TypeError, match="coroutine"):
        check_fallback(coroutine, False, "a sync client")


# -- through the httpx family, for httpx and httpx2 -------------------------------


@pytest.fixture(params=["httpx", "httpx2"])
def flavour(request: pytest.FixtureRequest) -> tuple[ModuleType, ModuleType]:
    client = pytest.importorskip(request.param)
    return client, importlib.import_module(f"circuitbreaker_http.{request.param}")


def test_a_body_that_fails_to_decode_is_a_failure(
    flaky_server: FlakyServer, flavour: tuple[ModuleType, ModuleType]
) -> None:
    hx, cb = flavour
    seen: list[CallInfo] = []

    def classify(call: CallInfo) -> Verdict | None:
        seen.append(call)
        return None

    registry = BreakerRegistry(
        BreakerConfig(consecutive_failures=2, classify=classify), clock=ManualClock()
    )
    url = flaky_server.url + "/bytes/64?header=Content-Encoding:gzip"
    with hx.Client(transport=cb.CircuitBreakerTransport(registry=registry)) as client:
        for _ in range(2):
            with pytest.raises(hx.DecodingError):
                client.get(url)
        with pytest.raises(cb.CircuitOpenTransportError):
            client.get(url)
    assert isinstance(seen[-1].error, hx.DecodingError)
    assert seen[-1].status == 200


def test_a_fallback_response_has_an_elapsed(flavour: tuple[ModuleType, ModuleType]) -> None:
    hx, cb = flavour
    transport = cb.CircuitBreakerTransport(
        hx.MockTransport(lambda request: hx.Response(200)), fallback=FallbackResponse(503)
    )
    transport.registry.get("http://up").force_open()
    with hx.Client(transport=transport) as client:
        response = client.get("http://up/")
    assert response.status_code == 503
    assert response.elapsed.total_seconds() >= 0
    assert response.headers["x-circuit-breaker"] == "open"


def test_a_fallback_of_the_wrong_shape_fails_when_the_transport_is_built(
    flavour: tuple[ModuleType, ModuleType],
) -> None:
    _, cb = flavour
    with pytest.raises(TypeError, match=r"\(request, error\)"):
        cb.CircuitBreakerTransport(fallback=lambda request: None)
    with pytest.raises(TypeError, match="coroutine"):

        async def coroutine(request: object, error: object) -> None: ...

        cb.CircuitBreakerTransport(fallback=coroutine)


def test_the_decoding_watch_still_fits_this_httpx(flavour: tuple[ModuleType, ModuleType]) -> None:
    # The one trick of the httpx family: if httpx renames _get_content_decoder
    # or stops caching it in _decoder, this fails before users lose failures.
    from circuitbreaker_http._httpx_family import Flavour, _DecoderWatch, watch_decoding

    hx, _ = flavour
    _, breaker, gate = make(BreakerConfig(consecutive_failures=1))
    outcome = admit(gate, breaker)
    outcome.headers(200, {})
    response = hx.Response(200, headers={"Content-Encoding": "gzip"}, stream=hx.ByteStream(b"xx"))
    assert watch_decoding(response, outcome, Flavour(hx)) is True
    assert isinstance(response._get_content_decoder(), _DecoderWatch)
    with pytest.raises(hx.DecodingError):
        response.read()
    assert breaker.state is CircuitState.OPEN


@pytest.mark.anyio
# httpx's and httpcore's own async generators are left suspended by a decoding
# error (a bare AsyncClient does the same); trio reports them when collected.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_an_async_body_that_fails_to_decode_is_a_failure(
    flaky_server: FlakyServer, flavour: tuple[ModuleType, ModuleType]
) -> None:
    hx, cb = flavour
    registry = BreakerRegistry(BreakerConfig(consecutive_failures=1), clock=ManualClock())
    url = flaky_server.url + "/bytes/64?header=Content-Encoding:gzip"
    async with hx.AsyncClient(transport=cb.AsyncCircuitBreakerTransport(registry=registry)) as c:
        with pytest.raises(hx.DecodingError):
            await c.get(url)
        with pytest.raises(cb.CircuitOpenTransportError):
            await c.get(url)


# -- Outcomes settled by the garbage collector --------------------------------------------------


def test_a_garbage_collected_trial_success_is_applied_before_the_next_admission() -> None:
    # A success status settles, for a response never closed, when it is
    # garbage-collected: once the last successful trial is settled the breaker
    # is closed, so the next calls must pass as closed-state calls, not as new
    # trials that fill the half-open slots and short-circuit the others.
    clock = ManualClock()
    config = BreakerConfig(consecutive_failures=1, failure_rate=None, open_duration=10.0)
    breaker = CircuitBreaker("k", config, clock=clock)
    breaker.record(breaker.acquire(), True)
    clock.advance(10.0)
    trial = breaker.acquire()
    assert breaker.permit_state(trial) is CircuitState.HALF_OPEN
    breaker.trial_slot_free(trial)  # its success status arrived
    breaker.record_later(trial)  # then its response was dropped unclosed
    first = breaker.acquire()
    assert breaker.permit_state(first) is CircuitState.CLOSED
    try:
        second = breaker.acquire()
    except CircuitOpenError as exc:  # pragma: no cover - the bug
        pytest.fail(f"short-circuited although the breaker had closed: {exc}")
    assert breaker.permit_state(second) is CircuitState.CLOSED


# -- Hot path: no clock reads nobody needs ------------------------------------------------------


def chunk_streams(hx: ModuleType, count: int) -> tuple[Any, Any]:
    """A sync and an async stream of ``count`` 16-byte chunks, of ``hx``'s own classes."""

    class Body(hx.SyncByteStream):  # type: ignore[name-defined, misc]
        def __iter__(self) -> Iterator[bytes]:
            for _ in range(count):
                yield b"x" * 16

    class AsyncBody(hx.AsyncByteStream):  # type: ignore[name-defined, misc]
        async def __aiter__(self) -> AsyncIterator[bytes]:
            for _ in range(count):
                yield b"x" * 16

    return Body(), AsyncBody()


def counting_clock() -> tuple[list[int], Callable[[], float]]:
    reads = [0]

    def clock() -> float:
        reads[0] += 1
        return 0.0

    return reads, clock


def test_an_untimed_breaker_reads_no_clock_per_body_chunk(
    flavour: tuple[ModuleType, ModuleType],
) -> None:
    # With no slow-call rule and no classify, no duration is ever read: a
    # streamed body must not cost two clock reads per chunk.
    hx, cb = flavour
    reads, clock = counting_clock()
    registry = BreakerRegistry(BreakerConfig(), clock=clock)
    transport = cb.CircuitBreakerTransport(
        hx.MockTransport(lambda request: hx.Response(200, stream=chunk_streams(hx, 200)[0])),
        registry=registry,
    )
    with hx.Client(transport=transport) as client:
        registry.get("http://api.test")  # created up front: creation is not the hot path
        before = reads[0]
        response = client.get("http://api.test/stream")
        assert len(response.content) == 200 * 16
    assert reads[0] - before <= 2  # the outcome's own lock round trip, nothing per chunk
    assert registry.get("http://api.test").snapshot().calls == 1


@pytest.mark.anyio
async def test_an_untimed_async_breaker_reads_no_clock_per_body_chunk(
    flavour: tuple[ModuleType, ModuleType],
) -> None:
    hx, cb = flavour
    reads, clock = counting_clock()
    registry = BreakerRegistry(BreakerConfig(), clock=clock)
    transport = cb.AsyncCircuitBreakerTransport(
        hx.MockTransport(lambda request: hx.Response(200, stream=chunk_streams(hx, 200)[1])),
        registry=registry,
    )
    async with hx.AsyncClient(transport=transport) as client:
        response = await client.get("http://api.test/stream")
        assert len(response.content) == 200 * 16
    assert reads[0] <= 2
    assert registry.get("http://api.test").snapshot().calls == 1
