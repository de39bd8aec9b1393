"""The requests adapter: what a request reports and records is decided when it is let through.

Real ``requests.Session`` objects against the ``flaky_server`` fixture; time
moves on a ``ManualClock``. Where a test must move the breaker while a request
is in flight, it does so from inside ``HTTPAdapter.send`` through the public
``add_headers`` hook (called after admission, before anything is sent) or from
a ``Retry`` subclass, so nothing sleeps to synchronise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from rq_support import TRIP1, extension, mounted
from urllib3.util.retry import Retry

from circuitbreaker_http import BreakerConfig, BreakerRegistry, CircuitBreaker, CircuitState
from circuitbreaker_http.requests import CircuitBreakerAdapter
from circuitbreaker_http.testing import FlakyServer, ManualClock

CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN


class MidRequest(CircuitBreakerAdapter):
    """An adapter that runs ``during()`` once, after admission and before the request is sent."""

    def __init__(self, during: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.during: Callable[[], None] | None = during

    def add_headers(self, request: requests.PreparedRequest, **kwargs: Any) -> None:
        during, self.during = self.during, None
        if during is not None:
            during()
        super().add_headers(request, **kwargs)


def half_open(breaker: CircuitBreaker, clock: ManualClock) -> None:
    """Trip ``breaker`` with one failure and let its open period run out."""
    breaker.record(breaker.acquire(), True)
    clock.advance(breaker.config.open_duration + 1)
    assert breaker.state is HALF_OPEN


def test_the_state_reported_is_the_one_the_request_was_let_through_in(
    flaky_server: FlakyServer,
) -> None:
    # A trial is let through half-open; before its headers arrive another
    # trial succeeds and closes the breaker. The response still says it was
    # a half-open trial (it was), not "closed" (the state when it answered).
    clock = ManualClock()
    config = BreakerConfig(
        consecutive_failures=1, failure_rate=None, open_duration=1.0, half_open_max_calls=2
    )
    registry = BreakerRegistry(config, clock=clock)
    breaker = registry.get(flaky_server.url)
    half_open(breaker, clock)

    def another_trial_succeeds() -> None:
        breaker.record(breaker.acquire(), False)
        assert breaker.state is CLOSED

    adapter = MidRequest(another_trial_succeeds, registry=registry)
    with mounted(adapter) as session:
        response = session.get(flaky_server.url + "/json")
    assert response.status_code == 200
    assert extension(response) == {"key": flaky_server.url, "state": "half_open"}
    assert breaker.state is CLOSED


def test_a_closed_state_request_reports_closed_even_if_the_breaker_opened_meanwhile(
    flaky_server: FlakyServer,
) -> None:
    clock = ManualClock()
    registry = BreakerRegistry(TRIP1, clock=clock)
    breaker = registry.get(flaky_server.url)

    def another_request_trips_it() -> None:
        breaker.record(breaker.acquire(), True)

    adapter = MidRequest(another_request_trips_it, registry=registry)
    with mounted(adapter) as session:
        response = session.get(flaky_server.url + "/json")
    assert extension(response) == {"key": flaky_server.url, "state": "closed"}
    snap = breaker.snapshot()
    # Its success belongs to the closed period that ended: it moves nothing.
    assert (snap.state, snap.calls, snap.failures) == (OPEN, 1, 1)


class TripsThenHeals(Retry):
    """Before the first retry: another request trips the breaker, its open period
    runs out, and the upstream heals (so the retry is admitted as a trial)."""

    hook: Callable[[], None] | None = None

    def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
        hook, TripsThenHeals.hook = TripsThenHeals.hook, None
        if hook is not None:
            hook()
        return super().is_retry(method, status_code, has_retry_after)


@pytest.fixture
def trips_then_heals(
    flaky_server: FlakyServer,
) -> Iterator[tuple[BreakerRegistry, ManualClock]]:
    clock = ManualClock()
    registry = BreakerRegistry(TRIP1, clock=clock)
    breaker = registry.get(flaky_server.url)

    def hook() -> None:
        breaker.record(breaker.acquire(), True)
        clock.advance(11)

    TripsThenHeals.hook = hook
    flaky_server.set_mode("failing", status=503)
    yield registry, clock
    TripsThenHeals.hook = None


def test_a_retry_admitted_as_a_trial_is_sent(
    flaky_server: FlakyServer, trips_then_heals: tuple[BreakerRegistry, ManualClock]
) -> None:
    # The first attempt fails in the closed state; by the time urllib3 retries,
    # the breaker has opened and its open period is over. The retry is admitted
    # as the half-open trial, and it must reach the upstream: it used to take the
    # trial slot and then find the slot taken by itself (a short circuit).
    registry, _ = trips_then_heals
    heal = TripsThenHeals.hook

    def heal_too() -> None:
        assert heal is not None
        heal()
        flaky_server.set_mode("healthy")

    TripsThenHeals.hook = heal_too
    retry = TripsThenHeals(total=3, status_forcelist=[503], backoff_factor=0)
    adapter = CircuitBreakerAdapter(registry=registry, max_retries=retry)
    with mounted(adapter) as session:
        response = session.get(flaky_server.url + "/api/x")
    assert response.status_code == 200
    assert flaky_server.requests_by_path["/api/x"] == 2
    # Reported in the state its (second) admission let it through in.
    assert extension(response) == {"key": flaky_server.url, "state": "half_open"}
    breaker = registry.get(flaky_server.url)
    assert breaker.state is CLOSED  # the trial's success closed it


def test_a_retry_admitted_as_a_trial_is_the_only_probe(
    flaky_server: FlakyServer, trips_then_heals: tuple[BreakerRegistry, ManualClock]
) -> None:
    # The same, but the upstream is still down: the trial is sent, fails, and is
    # the request's outcome; no further retry follows it.
    registry, _ = trips_then_heals
    retry = TripsThenHeals(total=3, status_forcelist=[503], backoff_factor=0)
    adapter = CircuitBreakerAdapter(registry=registry, max_retries=retry)
    with mounted(adapter) as session, pytest.raises(requests.exceptions.RetryError):
        session.get(flaky_server.url + "/api/x")
    assert flaky_server.requests_by_path["/api/x"] == 2
    snap = registry.get(flaky_server.url).snapshot()
    assert (snap.state, snap.open_count, snap.trials_in_flight) == (OPEN, 2, 0)
