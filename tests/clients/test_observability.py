"""Counters, events and shadow mode through every client, over real loopback sockets."""

from __future__ import annotations

import pytest
from clients_support import ClientFactory, every_client

from circuitbreaker_http import (
    BreakerConfig,
    BreakerRegistry,
    CallRecorded,
    CallRejected,
    CircuitOpenError,
    CircuitState,
    StateChange,
    Verdict,
)
from circuitbreaker_http.testing import ManualClock
from circuitbreaker_http.testing._server import FlakyServer

OPEN = CircuitState.OPEN
TRIP2 = BreakerConfig(consecutive_failures=2, failure_rate=None, open_duration=10.0)


@every_client()
def test_counters_and_events_of_a_trip(client: ClientFactory, flaky_server: FlakyServer) -> None:
    clock = ManualClock()
    registry = BreakerRegistry(TRIP2, clock=clock)
    events: list[object] = []
    registry.subscribe(events.append)
    driver = client(registry)
    assert driver.get("/status/200").status == 200
    assert driver.get("/status/503").status == 503
    assert driver.get("/status/500").status == 500  # trips
    served = flaky_server.requests
    error = driver.get_raises("/status/200")
    assert isinstance(error, CircuitOpenError)
    assert error.last_failure == "500"
    assert flaky_server.requests == served  # the rejection reached nobody

    snap = registry.get(flaky_server.url).snapshot()
    assert (snap.total_calls, snap.total_failures, snap.total_rejected) == (3, 2, 1)
    assert (snap.total_transitions, snap.last_failure) == (1, "500")

    recorded = [e for e in events if isinstance(e, CallRecorded)]
    assert [(e.outcome, e.status) for e in recorded] == [
        (Verdict.SUCCESS, 200),
        (Verdict.FAILURE, 503),
        (Verdict.FAILURE, 500),
    ]
    assert all(e.name == flaky_server.url and e.duration is not None for e in recorded)
    kinds = [type(e) for e in events]
    assert kinds == [CallRecorded, CallRecorded, CallRecorded, StateChange, CallRejected]
    rejected = events[-1]
    assert isinstance(rejected, CallRejected)
    assert (rejected.state, rejected.enforced, rejected.retry_after) == (OPEN, True, 10.0)


@every_client()
def test_a_dropped_connection_is_the_last_failure_by_its_error(
    client: ClientFactory, flaky_server: FlakyServer
) -> None:
    registry = BreakerRegistry(TRIP2, clock=ManualClock())
    recorded: list[CallRecorded] = []
    registry.subscribe(recorded.append, CallRecorded)
    driver = client(registry)
    exc = driver.get_raises("/reset")
    snap = registry.get(flaky_server.url).snapshot()
    assert snap.last_failure is not None and not snap.last_failure.isdigit()
    assert recorded[-1].outcome is Verdict.FAILURE
    assert recorded[-1].status is None
    assert recorded[-1].error == snap.last_failure, exc


@every_client()
def test_shadow_mode_lets_every_request_reach_the_upstream(
    client: ClientFactory, flaky_server: FlakyServer
) -> None:
    clock = ManualClock()
    registry = BreakerRegistry(TRIP2.replace(enforce=False), clock=clock)
    rejected: list[CallRejected] = []
    registry.subscribe(rejected.append, CallRejected)
    driver = client(registry)
    for _ in range(2):
        assert driver.get("/status/503").status == 503
    breaker = registry.get(flaky_server.url)
    assert breaker.state is OPEN  # what an enforcing breaker would have done
    before = flaky_server.requests
    for _ in range(3):
        result = driver.get("/status/200")
        assert result.status == 200
        # The state that would have refused it, though the upstream answered.
        assert result.info is not None and result.info["state"] == "open"
    assert flaky_server.requests == before + 3
    snap = breaker.snapshot()
    assert (snap.total_rejected, snap.total_shadow_rejected) == (0, 3)
    assert snap.total_calls == 2  # the shadow-passed requests record nothing
    assert [e.enforced for e in rejected] == [False] * 3


@pytest.mark.parametrize("status", [200, 503])
@every_client()
def test_no_subscriber_means_no_event_is_built(
    client: ClientFactory, flaky_server: FlakyServer, status: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[object] = []
    import circuitbreaker_http._breaker as shell

    class Spy(CallRecorded):
        def __init__(self, *args: object) -> None:
            built.append(args)
            super().__init__(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(shell, "CallRecorded", Spy)
    registry = BreakerRegistry(TRIP2, clock=ManualClock())
    registry.subscribe(lambda event: None, StateChange)
    driver = client(registry)
    driver.get(f"/status/{status}")
    assert registry.get(flaky_server.url).snapshot().total_calls == 1
    assert built == []
