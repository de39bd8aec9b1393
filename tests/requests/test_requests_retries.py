"""The requests adapter and urllib3's retries; one registry for requests and httpx.

See test_requests_adapter.py for how these tests meet the server.
"""

from __future__ import annotations

import math
import pickle
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests
import urllib3
from rq_support import (
    COUNT_ONLY,
    FORCED_OPEN,
    JOIN,
    OPEN,
    TRIP1,
    breaker_of,
    in_thread,
    joined,
    mounted,
)
from urllib3.util.retry import Retry

from circuitbreaker_http import (
    BreakerRegistry,
    FallbackResponse,
)
from circuitbreaker_http.httpx import CircuitBreakerTransport, CircuitOpenTransportError
from circuitbreaker_http.requests import CircuitBreakerAdapter, CircuitOpenRequestsError
from circuitbreaker_http.testing import FlakyServer, ManualClock

# -- urllib3 retries -----------------------------------------------------------------------------


def test_retries_record_one_outcome_per_logical_request(srv: FlakyServer) -> None:
    retry = Retry(total=3, status_forcelist=[503], backoff_factor=0, raise_on_status=False)
    adapter = CircuitBreakerAdapter(config=COUNT_ONLY, max_retries=retry)
    with mounted(adapter) as session:
        assert session.get(srv.url + "/status/503").status_code == 503
        assert session.get(srv.url + "/json").status_code == 200
    assert srv.requests_by_path["/status/503"] == 4
    snap = breaker_of(adapter, srv).snapshot()
    assert (snap.calls, snap.failures) == (2, 1)


def test_exhausted_status_retries_record_the_last_retry_after(srv: FlakyServer) -> None:
    # The recommended split: urllib3 retries at once, the breaker honours Retry-After.
    retry = Retry(total=2, status_forcelist=[503], respect_retry_after_header=False)
    clock = ManualClock()
    adapter = CircuitBreakerAdapter(registry=BreakerRegistry(TRIP1, clock=clock), max_retries=retry)
    with mounted(adapter) as session, pytest.raises(requests.exceptions.RetryError):
        session.get(srv.url + "/status/503?retry_after=120")
    assert srv.requests_by_path["/status/503"] == 3
    snap = breaker_of(adapter, srv).snapshot()
    assert (snap.calls, snap.failures, snap.state, snap.retry_after) == (1, 1, OPEN, 120.0)


def test_connect_retries_record_one_failure(closed_port: int) -> None:
    adapter = CircuitBreakerAdapter(config=COUNT_ONLY, max_retries=Retry(connect=2, total=None))
    with mounted(adapter) as session, pytest.raises(requests.ConnectionError):
        session.get(f"http://127.0.0.1:{closed_port}/")
    snap = adapter.registry.get(f"http://127.0.0.1:{closed_port}").snapshot()
    assert (snap.calls, snap.failures) == (1, 1)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("fallback", [None, FallbackResponse(503, content=b"later")])
def test_a_retry_after_of_an_hour_ends_when_the_breaker_opens(
    srv: FlakyServer, fallback: FallbackResponse | None
) -> None:
    registry = BreakerRegistry(TRIP1)
    patient = CircuitBreakerAdapter(
        registry=registry,
        fallback=fallback,
        max_retries=Retry(total=3, status_forcelist=[503]),  # urllib3 honours Retry-After
    )
    with mounted(patient) as waiting, mounted(CircuitBreakerAdapter(registry=registry)) as other:
        thread, box = in_thread(lambda: waiting.get(srv.url + "/status/503?retry_after=3600"))
        assert srv.wait_for_requests(1)
        other.get(srv.url + "/status/500")  # another request trips the breaker
        result = joined(thread, box)
    assert srv.requests_by_path["/status/503"] == 1
    if fallback is None:
        assert isinstance(result, CircuitOpenRequestsError)
        assert "remaining retries" in str(result)
    else:
        assert isinstance(result, requests.Response)
        assert (result.status_code, result.content) == (503, b"later")
        assert result.circuit_breaker["fallback"] is True
    snap = registry.get(srv.url).snapshot()
    assert (snap.calls, snap.failures) == (1, 1)  # only the tripping request counted


@pytest.mark.timeout(30)
def test_a_long_backoff_after_errors_ends_when_the_breaker_opens(srv: FlakyServer) -> None:
    registry = BreakerRegistry(TRIP1)
    retry = Retry(total=5, read=5, backoff_factor=1000, backoff_max=3600)
    patient = CircuitBreakerAdapter(registry=registry, max_retries=retry)
    with mounted(patient) as waiting, mounted(CircuitBreakerAdapter(registry=registry)) as other:
        thread, box = in_thread(lambda: waiting.get(srv.url + "/reset"))
        assert srv.wait_for_requests(2)  # the second attempt is followed by a 2000 s backoff
        other.get(srv.url + "/status/500")
        result = joined(thread, box)
    assert isinstance(result, CircuitOpenRequestsError)
    assert isinstance(result.__cause__, urllib3.exceptions.ProtocolError)  # the last upstream error
    assert srv.requests_by_path["/reset"] == 2


def test_a_retry_stops_at_once_when_the_breaker_opened_before_it(srv: FlakyServer) -> None:
    registry = BreakerRegistry(COUNT_ONLY)

    class OpensBeforeRetrying(Retry):
        def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
            registry.get(srv.url).force_open()  # e.g. by another thread, meanwhile
            return super().is_retry(method, status_code, has_retry_after)

    retry = OpensBeforeRetrying(total=3, status_forcelist=[503])
    adapter = CircuitBreakerAdapter(registry=registry, max_retries=retry)
    with mounted(adapter) as session:
        with pytest.raises(CircuitOpenRequestsError) as caught:
            session.get(srv.url + "/status/503")
        assert caught.value.state is FORCED_OPEN
        assert srv.requests_by_path["/status/503"] == 1
        # The 503 was drained: its connection went back to the pool.
        registry.get(srv.url).reset()
        assert session.get(srv.url + "/json").status_code == 200
    assert srv.connections == 1


def test_a_half_open_trial_makes_one_attempt(srv: FlakyServer) -> None:
    clock = ManualClock()
    registry = BreakerRegistry(TRIP1, clock=clock)
    retry = Retry(total=3, status_forcelist=[503], backoff_factor=0)
    adapter = CircuitBreakerAdapter(registry=registry, max_retries=retry)
    with mounted(adapter) as session:
        with pytest.raises(requests.exceptions.RetryError):
            session.get(srv.url + "/status/503")  # four attempts, one failure: open
        assert srv.requests == 4
        clock.advance(11)
        srv.reset_counters()
        with pytest.raises(requests.exceptions.RetryError):
            session.get(srv.url + "/status/503")  # the trial
    assert srv.requests == 1
    snap = registry.get(srv.url).snapshot()
    assert (snap.state, snap.open_count) == (OPEN, 2)


def test_a_retry_after_the_period_ended_is_admitted_as_a_new_request(srv: FlakyServer) -> None:
    entered, released = threading.Event(), threading.Event()

    class GatedSleep(Retry):
        def sleep(self, response: Any = None) -> None:
            entered.set()
            assert released.wait(JOIN)

    srv.set_mode("failing", status=503)
    registry = BreakerRegistry(COUNT_ONLY)
    retry = GatedSleep(total=2, status_forcelist=[503], raise_on_status=False)
    adapter = CircuitBreakerAdapter(registry=registry, max_retries=retry)
    with mounted(adapter) as session:
        thread, box = in_thread(lambda: session.get(srv.url + "/api/x"))
        assert entered.wait(JOIN)  # the first attempt failed; urllib3 waits to retry
        registry.get(srv.url).reset()  # a new closed period begins
        srv.set_mode("healthy")
        released.set()
        result = joined(thread, box)
    assert isinstance(result, requests.Response) and result.status_code == 200
    assert srv.requests_by_path["/api/x"] == 2
    snap = registry.get(srv.url).snapshot()
    assert (snap.calls, snap.failures) == (1, 0)  # recorded in the new period


def test_a_garbage_retry_after_does_not_fail_the_retries(srv: FlakyServer) -> None:
    clock = ManualClock()
    registry = BreakerRegistry(TRIP1, clock=clock)
    retry = Retry(total=1, status_forcelist=[503], raise_on_status=False)
    adapter = CircuitBreakerAdapter(registry=registry, max_retries=retry)
    with mounted(adapter) as session:
        response = session.get(srv.url + "/status/503?retry_after=soon")
    assert response.status_code == 503
    assert srv.requests_by_path["/status/503"] == 2
    snap = registry.get(srv.url).snapshot()
    assert (snap.calls, snap.failures, snap.retry_after) == (1, 1, 10.0)


def test_max_retries_set_later_still_asks_the_breaker(srv: FlakyServer) -> None:
    adapter = CircuitBreakerAdapter(config=COUNT_ONLY)
    adapter.max_retries = Retry(total=2, status_forcelist=[503], raise_on_status=False)
    assert type(adapter.max_retries).__name__ == "_BreakerRetry"
    with mounted(adapter) as session:
        session.get(srv.url + "/status/503")
    assert srv.requests_by_path["/status/503"] == 3
    assert breaker_of(adapter, srv).snapshot().calls == 1


# -- one registry, two clients -------------------------------------------------------------------


def test_one_registry_serves_requests_and_httpx(srv: FlakyServer) -> None:
    registry = BreakerRegistry(TRIP1)
    adapter = CircuitBreakerAdapter(registry=registry)
    transport = CircuitBreakerTransport(registry=registry)
    with mounted(adapter) as session, httpx.Client(transport=transport) as client:
        assert client.get(srv.url + "/status/500").status_code == 500  # trips through httpx
        srv.reset_counters()
        with pytest.raises(CircuitOpenRequestsError):
            session.get(srv.url + "/json")
        assert srv.requests == 0
        registry.get(srv.url).reset()
        assert session.get(srv.url + "/status/502").status_code == 502  # trips through requests
        srv.reset_counters()
        with pytest.raises(CircuitOpenTransportError):
            client.get(srv.url + "/json")
        assert srv.requests == 0
    assert len(registry) == 1


def test_the_open_error_pickles_and_reads_well() -> None:
    error = CircuitOpenRequestsError("http://api.test", OPEN, 1.5)
    assert str(error) == "circuit 'http://api.test' is open; a trial may pass in 1.500s"
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.name, copy.state, copy.retry_after) == (
        CircuitOpenRequestsError,
        "http://api.test",
        OPEN,
        1.5,
    )
    assert math.isclose(copy.retry_after or 0, 1.5)


@pytest.fixture(autouse=True)
def _no_leaked_attempt() -> Iterator[None]:
    """No test may leave a per-request retry context behind."""
    yield
    from circuitbreaker_http.requests import _ATTEMPT

    assert _ATTEMPT.get() is None
