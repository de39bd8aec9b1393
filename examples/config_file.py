"""Breakers configured from a TOML file: inheritance, route keys, one registry.

Run it as it is: ``python examples/config_file.py``. It reads
``examples/breakers.toml``, starts a flaky upstream on loopback, and ends in
well under a second.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from circuitbreaker_http import BreakerRegistry, CircuitOpenError
from circuitbreaker_http.httpx import CircuitBreakerTransport
from circuitbreaker_http.testing import FlakyServer

CONFIG = Path(__file__).with_name("breakers.toml")


def main() -> None:
    registry = BreakerRegistry.from_file(CONFIG, max_breakers=1000)
    with (
        FlakyServer() as upstream,
        httpx.Client(transport=CircuitBreakerTransport(registry=registry), timeout=2.0) as client,
    ):
        users = upstream.url + "/api/users/42"
        reports = upstream.url + "/api/reports/q3"

        print(f"loaded {CONFIG.name}: {len(registry.rules)} rules")
        for url in (users, reports):
            key = registry.key("GET", url) or ""
            config = registry.config_for(key)
            print(
                f"  {key}: consecutive_failures={config.consecutive_failures},"
                f" open_duration={config.open_duration} (from [default])"
            )

        print("the upstream fails with 503:")
        upstream.set_mode("failing", status=503)
        for url in (users, reports):
            for _ in range(3):
                client.get(url)
        for url in (users, reports):
            try:
                reply = client.get(url)
                print(f"  GET {url} -> {reply.status_code} (its rule allows more failures)")
            except CircuitOpenError as exc:
                print(f"  GET {url} -> short-circuited ({exc.state.value})")

        for snap in registry.snapshot():
            print(f"  {snap.name}: {snap.state.value}, {snap.failures} failures in the window")


if __name__ == "__main__":
    main()
