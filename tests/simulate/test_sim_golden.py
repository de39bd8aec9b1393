"""Golden: the simulator's transitions are those of live breakers on the same traffic.

The live side is a real httpx client through ``CircuitBreakerTransport``
against ``FlakyServer`` on loopback, with a ``ManualClock``: each row sets the
clock to its time, and an inner transport advances it by the row's duration
while the request is on the wire, so the breaker measures that duration, as
the simulator records it. The upstream answers the row's status through
``/status/<code>`` (``/reset`` for a connection error).
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from circuitbreaker_http import BreakerConfig, BreakerRegistry, CircuitOpenError, StateChange
from circuitbreaker_http.simulate import Request, simulate
from circuitbreaker_http.testing import FlakyServer, ManualClock

httpx = pytest.importorskip("httpx")
from circuitbreaker_http.httpx import CircuitBreakerTransport  # noqa: E402

CONFIG = BreakerConfig(
    consecutive_failures=6,
    failure_rate=0.5,
    minimum_calls=6,
    window=20.0,
    slow_call_duration=0.5,
    slow_call_rate=0.6,
    open_duration=3.0,
    open_backoff=2.0,
    max_open_duration=10.0,
    success_threshold=2,
)


def traffic(base: str) -> list[Request]:
    """Sequential rows (each ends before the next starts): slow, down, flaky phases."""
    rng = random.Random(12)
    rows: list[Request] = []
    t = 1000.0
    for i in range(280):
        phase = i // 40  # healthy, slow, healthy, down, healthy, resets, 429s
        duration = round(rng.uniform(0.01, 0.1), 3)
        if phase == 1:
            status, error = 200, None
            duration = 1.0 if rng.random() < 0.8 else duration
        elif phase == 3:
            status, error = (503, None) if rng.random() < 0.9 else (200, None)
        elif phase == 5:
            status, error = (None, "reset") if rng.random() < 0.4 else (200, None)
        elif phase == 6:
            status, error = (429, None) if rng.random() < 0.6 else (201, None)
        else:
            status, error = (200, None) if rng.random() < 0.97 else (500, None)
        path = "/reset" if error else f"/status/{status}"
        rows.append(Request(t, base + path, None, "GET", status, error, duration))
        t = round(t + duration + rng.choice((0.05, 0.2, 0.7, 1.5)), 3)
    return rows


class Advancing(httpx.BaseTransport):  # type: ignore[misc]
    """An inner transport during which the manual clock moves by the row's duration."""

    def __init__(self, clock: ManualClock) -> None:
        self.inner = httpx.HTTPTransport()
        self.clock = clock
        self.duration = 0.0

    def handle_request(self, request: Any) -> Any:
        try:
            return self.inner.handle_request(request)
        finally:
            self.clock.advance(self.duration)

    def close(self) -> None:
        self.inner.close()


def live(rows: list[Request]) -> tuple[list[StateChange], int]:
    clock = ManualClock(rows[0].time)
    registry = BreakerRegistry(CONFIG, clock=clock)
    seen: list[StateChange] = []
    registry.subscribe(seen.append, StateChange)
    inner = Advancing(clock)
    refused = 0
    with httpx.Client(transport=CircuitBreakerTransport(inner, registry=registry)) as client:
        for row in rows:
            clock.set(row.time)
            inner.duration = row.duration
            try:
                response = client.get(row.url)
            except CircuitOpenError:
                refused += 1
                continue
            except httpx.TransportError:
                assert row.error == "reset"
                continue
            assert response.status_code == row.status
    return seen, refused


def test_simulated_transitions_equal_live_ones(flaky_server: FlakyServer) -> None:
    rows = traffic(flaky_server.url)
    seen, refused = live(rows)
    report = simulate(rows, configs=CONFIG)
    (key,) = report.keys()
    result = report.result(key)

    def plain(changes: Any) -> list[tuple[str, str, str, str, float]]:
        return [(c.name, c.old.value, c.new.value, c.reason, c.at) for c in changes]

    assert len(seen) >= 8, "the traffic should move the breaker a good deal"
    assert {c.new.value for c in seen} >= {"open", "half_open", "closed"}
    assert {c.reason for c in seen} >= {"slow_call_rate", "failure_rate", "trial_failed"}
    assert plain(result.transitions) == plain(seen)
    assert result.short_circuited == refused
    assert result.requests == len(rows)
