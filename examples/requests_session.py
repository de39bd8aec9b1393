"""A requests Session with per-host breakers, urllib3 retries and a fallback.

Run it as it is: ``python examples/requests_session.py``. It starts a flaky
upstream on loopback, so it needs nothing else, and ends in about two seconds.
"""

from __future__ import annotations

import time

import requests
from urllib3.util.retry import Retry

from circuitbreaker_http import (
    BreakerConfig,
    BreakerRegistry,
    CircuitOpenError,
    FallbackResponse,
    LastKnownGood,
    StateChange,
)
from circuitbreaker_http.requests import CircuitBreakerAdapter
from circuitbreaker_http.testing import FlakyServer


def show(change: StateChange) -> None:
    print(
        f"  state change: {change.name} {change.old.value} -> {change.new.value} ({change.reason})"
    )


def session_with(adapter: CircuitBreakerAdapter) -> requests.Session:
    session = requests.Session()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def main() -> None:
    config = BreakerConfig(consecutive_failures=3, open_duration=0.5, max_open_duration=2.0)
    registry = BreakerRegistry(config, on_state_change=show)
    # urllib3 retries a 502/503 twice, at once; the breaker reads Retry-After itself.
    retries = Retry(
        total=2,
        status_forcelist=[502, 503],
        respect_retry_after_header=False,
        raise_on_status=False,
    )
    raising = CircuitBreakerAdapter(registry=registry, max_retries=retries)
    # The same registry: both adapters see one breaker per host.
    degrading = CircuitBreakerAdapter(
        registry=registry,
        max_retries=retries,
        fallback=LastKnownGood(otherwise=FallbackResponse(503, json={"degraded": True})),
    )
    with (
        FlakyServer() as users,
        session_with(raising) as session,
        session_with(degrading) as cached,
    ):
        url = users.url + "/api/users"
        print("users is healthy; the fallback session remembers its last good answer:")
        print("  GET /api/users ->", cached.get(url).json())

        print("users fails; each logical request retries twice, then counts once:")
        users.set_mode("failing", status=503, retry_after=1)
        for _ in range(3):
            users.reset_counters()
            reply = session.get(url, timeout=2)
            print(f"  GET /api/users -> {reply.status_code} after {users.requests} attempts")

        users.reset_counters()
        try:
            session.get(url, timeout=2)
        except CircuitOpenError as exc:
            print(f"  short-circuited: {exc} ({users.requests} attempts reached the server)")
        reply = cached.get(url, timeout=2)
        print(
            "  with LastKnownGood:",
            reply.status_code,
            reply.json(),
            "| X-Circuit-Breaker:",
            reply.headers["X-Circuit-Breaker"],
            "| Age:",
            reply.headers["Age"],
        )
        reply = cached.get(users.url + "/api/never-seen", timeout=2)
        print("  nothing stored for that URL:", reply.status_code, reply.json())

        print("users recovers; after the open period one trial closes the breaker:")
        users.set_mode("healthy")
        time.sleep(1.1)  # the open period: Retry-After 1 s outlasts open_duration here
        reply = session.get(url, timeout=2)
        print("  GET /api/users ->", reply.status_code, reply.circuit_breaker)
        for snap in registry.snapshot():
            print(f"  {snap.name}: {snap.state.value}, {snap.calls} calls in the window")


if __name__ == "__main__":
    main()
