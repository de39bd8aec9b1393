"""``window_calls`` through a real client: a slow upstream after a busy healthy past trips."""

from __future__ import annotations

from typing import Any

import pytest
from hx_support import Flavour

from circuitbreaker_http import BreakerConfig, BreakerRegistry, CircuitOpenError, CircuitState
from circuitbreaker_http.testing import ManualClock
from circuitbreaker_http.testing._server import FlakyServer


def latency_transport(hx: Any, clock: ManualClock) -> Any:
    """The default transport, with the upstream's time moved on the manual clock."""

    class Latency(hx.HTTPTransport):  # type: ignore[misc, name-defined]
        latency = 0.01

        def handle_request(self, request: Any) -> Any:
            response = super().handle_request(request)
            clock.advance(self.latency)
            return response

    return Latency()


@pytest.mark.parametrize("window_calls", [20, None])
def test_slow_upstream_after_a_busy_healthy_past(
    flavour: Flavour, flaky_server: FlakyServer, window_calls: int | None
) -> None:
    # The adopter's case: a 30 s window holding ~280 fast calls, then the
    # upstream turns 0.8 s slow. Without a count window 20 slow calls are
    # diluted below any rate; with window_calls=20 the 16th trips (16/20 = 0.8).
    hx, cb = flavour
    clock = ManualClock()
    config = BreakerConfig(
        slow_call_duration=0.5,
        slow_call_rate=0.8,
        failure_rate=None,
        consecutive_failures=None,
        window=30.0,
        window_calls=window_calls,
    )
    registry = BreakerRegistry(config, clock=clock)
    inner = latency_transport(hx, clock)
    url = f"{flaky_server.url}/status/200"
    with hx.Client(transport=cb.CircuitBreakerTransport(inner, registry=registry)) as client:
        for _ in range(280):
            assert client.get(url).status_code == 200
            clock.advance(0.09)
        inner.latency = 0.8
        reached = 0
        for _ in range(20):
            try:
                client.get(url)
            except CircuitOpenError:
                break
            reached += 1
    breaker = registry.get(flaky_server.url)
    if window_calls is None:
        assert reached == 20
        assert breaker.state is CircuitState.CLOSED
    else:
        assert reached == 16
        assert breaker.state is CircuitState.OPEN
        snap = breaker.snapshot()
        assert (snap.calls, snap.slow_calls) == (20, 16)
