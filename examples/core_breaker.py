"""The breaker on its own, around a simulated flaky function, on a manual clock.

Run it as it is: ``python examples/core_breaker.py``. It needs no extra and
ends at once: time is moved by hand.
"""

from __future__ import annotations

import random

from circuitbreaker_http import BreakerConfig, CircuitBreaker, CircuitOpenError, StateChange
from circuitbreaker_http.testing import ManualClock

clock = ManualClock()
rng = random.Random(7)
healthy = True


def fetch_price(sku: str) -> float:
    """Stands in for a call to a remote service."""
    clock.advance(0.05)  # each call takes 50 ms of (manual) time
    if not healthy and rng.random() < 0.9:
        raise ConnectionError("upstream unavailable")
    return 9.99


def show(change: StateChange) -> None:
    print(f"t={change.at:6.2f}s  {change.old.value} -> {change.new.value} ({change.reason})")


breaker = CircuitBreaker(
    "prices",
    BreakerConfig(
        consecutive_failures=None,
        failure_rate=0.5,
        minimum_calls=10,
        window=10.0,
        open_duration=5.0,
    ),
    clock=clock,
    on_state_change=show,
)

outcomes = {"ok": 0, "failed": 0, "rejected": 0}
for step in range(600):
    healthy = not 100 <= step < 300
    try:
        breaker.call(fetch_price, "sku-1")
        outcomes["ok"] += 1
    except CircuitOpenError:
        outcomes["rejected"] += 1
        clock.advance(0.05)
    except ConnectionError:
        outcomes["failed"] += 1
print(outcomes, breaker.snapshot().state.value)
