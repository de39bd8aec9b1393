"""Regression tests from a line-by-line audit of the code against API.md."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from circuitbreaker_http import (
    BreakerConfig,
    BreakerRegistry,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
)
from circuitbreaker_http.httpx import AsyncCircuitBreakerTransport, CircuitBreakerTransport
from circuitbreaker_http.testing import ManualClock

CLOSED = CircuitState.CLOSED


# -- Configuration: invalid values raise ValueError naming the field ---------------------------


@pytest.mark.parametrize("statuses", [[[500]], [{"a": 1}], [500, [503]]])
def test_unhashable_failure_statuses_raise_value_error_naming_the_field(statuses: object) -> None:
    with pytest.raises(ValueError, match="failure_statuses"):
        BreakerConfig(failure_statuses=statuses)  # type: ignore[arg-type]


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
    assert breaker.permit_state(first) is CLOSED
    try:
        second = breaker.acquire()
    except CircuitOpenError as exc:  # pragma: no cover - the bug
        pytest.fail(f"short-circuited although the breaker had closed: {exc}")
    assert breaker.permit_state(second) is CLOSED


# -- Hot path: no clock reads nobody needs ------------------------------------------------------


class _Body(httpx.SyncByteStream):
    def __init__(self, count: int) -> None:
        self.count = count

    def __iter__(self) -> Iterator[bytes]:
        for _ in range(self.count):
            yield b"x" * 16


def test_an_untimed_breaker_reads_no_clock_per_body_chunk() -> None:
    # With no slow-call rule and no classify, no duration is ever read: a
    # streamed body must not cost two clock reads per chunk.
    reads = [0]

    def clock() -> float:
        reads[0] += 1
        return 0.0

    registry = BreakerRegistry(BreakerConfig(), clock=clock)
    transport = CircuitBreakerTransport(
        httpx.MockTransport(lambda request: httpx.Response(200, stream=_Body(200))),
        registry=registry,
    )
    with httpx.Client(transport=transport) as client:
        registry.get("http://api.test")  # created up front: creation is not the hot path
        before = reads[0]
        response = client.get("http://api.test/stream")
        assert len(response.content) == 200 * 16
    assert reads[0] - before <= 2  # the outcome's own lock round trip, nothing per chunk
    assert registry.get("http://api.test").snapshot().calls == 1


class _AsyncBody(httpx.AsyncByteStream):
    def __init__(self, count: int) -> None:
        self.count = count

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(self.count):
            yield b"x" * 16


@pytest.mark.anyio
async def test_an_untimed_async_breaker_reads_no_clock_per_body_chunk() -> None:
    reads = [0]

    def clock() -> float:
        reads[0] += 1
        return 0.0

    registry = BreakerRegistry(BreakerConfig(), clock=clock)
    transport = AsyncCircuitBreakerTransport(
        httpx.MockTransport(lambda request: httpx.Response(200, stream=_AsyncBody(200))),
        registry=registry,
    )
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.get("http://api.test/stream")
        assert len(response.content) == 200 * 16
    assert reads[0] <= 2
    assert registry.get("http://api.test").snapshot().calls == 1
