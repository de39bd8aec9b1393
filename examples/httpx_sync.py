"""A sync httpx client with per-host breakers, a fallback and a recovery.

Run it as it is: ``python examples/httpx_sync.py``. It starts a flaky
upstream on loopback, so it needs nothing else, and ends in about 2 seconds.
"""

from __future__ import annotations

import time

import httpx

from circuitbreaker_http import (
    BreakerConfig,
    BreakerRegistry,
    CircuitOpenError,
    FallbackResponse,
    StateChange,
)
from circuitbreaker_http.httpx import CircuitBreakerTransport
from circuitbreaker_http.testing import FlakyServer


def show(change: StateChange) -> None:
    print(
        f"  state change: {change.name} {change.old.value} -> {change.new.value} ({change.reason})"
    )


def main() -> None:
    config = BreakerConfig(consecutive_failures=3, open_duration=0.5, max_open_duration=2.0)
    with FlakyServer() as users, FlakyServer() as search:
        registry = BreakerRegistry(
            config,
            # search gets a more patient breaker than the default
            rules={f"127.0.0.1:{search.port}": BreakerConfig(consecutive_failures=10)},
            on_state_change=show,
        )
        raising = CircuitBreakerTransport(registry=registry)
        degrading = CircuitBreakerTransport(
            registry=registry,
            fallback=FallbackResponse(200, json={"results": [], "degraded": True}),
        )
        with (
            httpx.Client(transport=raising, timeout=2.0) as client,
            httpx.Client(transport=degrading, timeout=2.0) as fallback_client,
        ):
            print("users is down:")
            users.set_mode("failing", status=503)
            for _ in range(3):
                print("  GET /api/users ->", client.get(users.url + "/api/users").status_code)
            try:
                client.get(users.url + "/api/users")
            except CircuitOpenError as exc:
                print(f"  short-circuited: {exc} (state={exc.state.value})")
            reply = fallback_client.get(users.url + "/api/users")
            print(
                "  with a fallback:",
                reply.status_code,
                reply.json(),
                reply.headers["x-circuit-breaker"],
            )

            print("search is another host, with its own breaker:")
            print("  GET /api/search ->", client.get(search.url + "/api/search").status_code)

            print("users recovers; after the open period one trial closes the breaker:")
            users.set_mode("healthy")
            time.sleep(0.6)  # the open period of this example's config
            reply = client.get(users.url + "/api/users")
            print("  GET /api/users ->", reply.status_code, reply.extensions["circuit_breaker"])
            for snap in registry.snapshot():
                print(f"  {snap.name}: {snap.state.value}, {snap.calls} calls in the window")


if __name__ == "__main__":
    main()
