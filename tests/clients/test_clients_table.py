"""The client behaviour table: each row runs against every client, over real loopback sockets.

Clients (``clients_support.CLIENTS``): ``httpx.Client``, ``httpx.AsyncClient``
on asyncio and trio, the same three for httpx2, ``requests.Session`` with
``CircuitBreakerAdapter`` and ``aiohttp.ClientSession`` with
``CircuitBreakerMiddleware``. The upstream is a :class:`FlakyServer`; every
registry runs on a :class:`ManualClock`, so open periods pass by hand and no
test sleeps to synchronise. A row that cannot apply to a client says why in
its ``skip=``; one that fails for a client because of a known bug in the
package says so in its ``xfail=`` (strict).
"""

from __future__ import annotations

import gc
import json
import logging
import math

import pytest
from clients_support import (
    ASYNC_CLIENTS,
    ClientFactory,
    Driver,
    closed_port,
    every_client,
    sync_clients_skip,
)

from circuitbreaker_http import (
    BreakerConfig,
    BreakerRegistry,
    BreakerSnapshot,
    CircuitOpenError,
    CircuitState,
    FallbackResponse,
)
from circuitbreaker_http.testing import ManualClock
from circuitbreaker_http.testing._server import FlakyServer

CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN

TIMEOUT = 0.2  # seconds: the client's read timeout in the timeout rows

# One failure opens the breaker for 10 s: a recorded failure shows in the state alone.
TRIP1 = BreakerConfig(
    consecutive_failures=1, failure_rate=None, open_duration=10.0, max_open_duration=300.0
)
# Three failures in a row trip it.
TRIP3 = TRIP1.replace(consecutive_failures=3)
# Nothing trips: the window counts are the whole story.
COUNT_ONLY = BreakerConfig(consecutive_failures=None, failure_rate=None)

NO_TASK = sync_clients_skip("a sync client has no task to cancel")


def build(
    client: ClientFactory, config: BreakerConfig = TRIP1, **kwargs: object
) -> tuple[Driver, BreakerRegistry, ManualClock]:
    clock = ManualClock()
    registry = BreakerRegistry(config, clock=clock)
    return client(registry, **kwargs), registry, clock


def snap(registry: BreakerRegistry, key: str | FlakyServer) -> BreakerSnapshot:
    return registry.get(key if isinstance(key, str) else key.url).snapshot()


def trip(driver: Driver, registry: BreakerRegistry, server: FlakyServer) -> None:
    """Open the server's breaker with one 503 (TRIP1)."""
    result = driver.get("/status/503")
    assert result.status == 503
    assert snap(registry, server).state is OPEN


def assert_one_failure(registry: BreakerRegistry, key: str, client: str, what: str) -> None:
    s = snap(registry, key)
    assert (s.calls, s.failures, s.state) == (1, 1, OPEN), f"{client}: {what}: {s}"


# -- what counts ----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 503, 429, 408])
@every_client()
def test_failure_statuses_trip_after_consecutive_failures(
    client: ClientFactory, flaky_server: FlakyServer, status: int
) -> None:
    driver, registry, _ = build(client, TRIP3)
    for n in (1, 2):
        assert driver.get(f"/status/{status}").status == status
        s = snap(registry, flaky_server)
        assert (s.state, s.failures, s.consecutive_failures) == (CLOSED, n, n)
    assert driver.get(f"/status/{status}").status == status
    assert snap(registry, flaky_server).state is OPEN
    assert isinstance(driver.get_raises("/"), CircuitOpenError)


@pytest.mark.parametrize("status", [200, 404, 501, 505])
@every_client()
def test_other_statuses_are_successes(
    client: ClientFactory, flaky_server: FlakyServer, status: int
) -> None:
    driver, registry, _ = build(client, TRIP1)
    for _ in range(3):
        assert driver.get(f"/status/{status}").status == status
    s = snap(registry, flaky_server)
    assert (s.state, s.calls, s.failures) == (CLOSED, 3, 0)


@pytest.mark.parametrize("path", ["/reset", "/close"], ids=["reset", "closed-unanswered"])
@every_client()
def test_connection_dropped_before_the_response_is_a_failure(
    client: ClientFactory, flaky_server: FlakyServer, path: str
) -> None:
    driver, registry, _ = build(client, COUNT_ONLY)
    exc = driver.get_raises(path)
    assert isinstance(exc, driver.error_type), repr(exc)
    assert not isinstance(exc, CircuitOpenError), repr(exc)
    attempts = driver.attempts_on_dropped_connection  # aiohttp retries a GET once
    assert flaky_server.requests_by_path[path] == attempts
    s = snap(registry, flaky_server)
    assert (s.calls, s.failures) == (attempts, attempts), s


@every_client()
def test_connection_refused_is_a_failure(client: ClientFactory) -> None:
    driver, registry, _ = build(client)
    url = f"http://127.0.0.1:{closed_port()}"
    exc = driver.get_raises(url + "/")
    assert isinstance(exc, driver.error_type), repr(exc)
    assert_one_failure(registry, url, driver.name, "connection refused")
    # Open now: the next request is short-circuited before any connect.
    assert isinstance(driver.get_raises(url + "/"), CircuitOpenError)


@pytest.mark.parametrize("how", ["client-reads", "streamed"])
@pytest.mark.parametrize(
    "path", ["/short?length=100&sent=10", "/stream?fail_after=1"], ids=["short", "chunked-cut"]
)
@every_client()
def test_body_cut_short_is_a_failure_despite_a_200(
    client: ClientFactory, flaky_server: FlakyServer, path: str, how: str
) -> None:
    driver, registry, _ = build(client)
    if how == "streamed":
        result = driver.get(path, stream=True, read=False)
        assert result.status == 200
        assert result.info is not None and result.info["state"] == "closed"
        exc = driver.read_raises(result)
    else:
        exc = driver.get_raises(path)
    assert not isinstance(exc, CircuitOpenError), repr(exc)
    assert_one_failure(registry, flaky_server.url, driver.name, f"{path} {how}")


@pytest.mark.parametrize(
    "path", ["/delay/30", "/stall_body?after=10&stall=30"], ids=["before-headers", "in-body"]
)
@every_client()
def test_read_timeout_is_a_failure(
    client: ClientFactory, flaky_server: FlakyServer, path: str
) -> None:
    driver, registry, _ = build(client)
    exc = driver.get_raises(path, timeout=TIMEOUT)
    assert not isinstance(exc, CircuitOpenError), repr(exc)
    assert_one_failure(registry, flaky_server.url, driver.name, f"read timeout on {path}")


# -- when a success settles -----------------------------------------------------------------------


@pytest.mark.parametrize("ending", ["read", "close"])
@every_client()
def test_success_settles_when_the_body_is_read_or_the_response_closed(
    client: ClientFactory, flaky_server: FlakyServer, ending: str
) -> None:
    driver, registry, _ = build(client)
    if ending == "read":
        # Two chunks 100 ms apart: the body cannot be complete when the headers arrive.
        result = driver.get("/stream?chunks=2&size=4&delay=0.1", stream=True, read=False)
    else:
        result = driver.get("/stall_body?after=0&stall=30", stream=True, read=False)
    assert result.status == 200
    s = snap(registry, flaky_server)
    assert (s.calls, s.state) == (0, CLOSED), f"settled before the body ended: {s}"
    if ending == "read":
        assert driver.read(result) == b"aaaabbbb"
    else:
        driver.close_response(result)
    s = snap(registry, flaky_server)
    assert (s.calls, s.failures, s.state) == (1, 0, CLOSED)


@every_client()
def test_dropped_response_settles_as_a_success_when_collected(
    client: ClientFactory, flaky_server: FlakyServer
) -> None:
    driver, registry, _ = build(client)
    result = driver.get("/stall_body?after=0&stall=30", stream=True, read=False)
    assert result.status == 200
    assert snap(registry, flaky_server).calls == 0
    del result
    gc.collect()
    if driver.holds_unread_response:
        # The client's own open connection still references it: it becomes garbage
        # once the connection is gone.
        driver.close()
        gc.collect()
    s = snap(registry, flaky_server)
    assert (s.calls, s.failures, s.state) == (1, 0, CLOSED), s


# -- half-open ------------------------------------------------------------------------------------


@every_client()
def test_half_open_trial_frees_its_slot_at_a_success_status(
    client: ClientFactory, flaky_server: FlakyServer
) -> None:
    driver, registry, clock = build(client, TRIP1.replace(half_open_max_calls=1))
    trip(driver, registry, flaky_server)
    clock.advance(10.0)
    first = driver.get("/stall_body?after=0&stall=30", stream=True, read=False)
    assert first.status == 200
    assert first.info is not None and first.info["state"] == "half_open"
    s = snap(registry, flaky_server)
    assert (s.state, s.trials_in_flight) == (HALF_OPEN, 0), s
    # The first trial's body is still unread: a second trial passes all the same.
    second = driver.get("/")
    assert second.status == 200
    assert second.info is not None and second.info["state"] == "half_open"
    assert snap(registry, flaky_server).state is CLOSED  # its success closed the breaker
    driver.close_response(first)
    assert snap(registry, flaky_server).state is CLOSED


# -- an open circuit ------------------------------------------------------------------------------


@every_client()
def test_open_circuit_raises_without_touching_the_server(
    client: ClientFactory, flaky_server: FlakyServer
) -> None:
    driver, registry, clock = build(client)
    trip(driver, registry, flaky_server)
    clock.advance(4.0)
    before = flaky_server.requests
    exc = driver.get_raises("/must-not-be-sent")
    assert isinstance(exc, CircuitOpenError), repr(exc)
    assert isinstance(exc, driver.error_type), type(exc).__mro__
    assert exc.name == flaky_server.url
    assert exc.state is OPEN
    assert exc.retry_after == pytest.approx(6.0)
    assert flaky_server.requests == before
    assert flaky_server.requests_by_path["/must-not-be-sent"] == 0


@every_client()
def test_fallback_answers_with_the_clients_own_response(
    client: ClientFactory, flaky_server: FlakyServer
) -> None:
    fallback = FallbackResponse(503, json={"fallback": True})
    driver, registry, clock = build(client, fallback=fallback)
    upstream = driver.get("/status/503")  # the upstream's own failure comes back as it is
    assert upstream.status == 503 and "x-circuit-breaker" not in upstream.headers
    assert snap(registry, flaky_server).state is OPEN
    clock.advance(2.5)
    before = flaky_server.requests
    result = driver.get("/must-not-be-sent")
    assert flaky_server.requests == before
    assert isinstance(result.response, driver.response_type), type(result.response)
    assert result.status == 503
    assert json.loads(result.body or b"") == {"fallback": True}
    assert result.headers["x-circuit-breaker"] == "open"
    assert result.headers["retry-after"] == "8"  # 7.5 s left, in whole seconds rounded up
    assert result.info is not None
    assert result.info["key"] == flaky_server.url
    assert result.info["fallback"] is True


@every_client()
def test_retry_after_on_a_503_lengthens_the_open_period(
    client: ClientFactory, flaky_server: FlakyServer
) -> None:
    driver, registry, clock = build(client)  # open_duration 10 s
    assert driver.get("/status/503?retry_after=60").status == 503
    assert snap(registry, flaky_server).state is OPEN
    clock.advance(59.0)
    s = snap(registry, flaky_server)
    assert s.state is OPEN and s.retry_after == pytest.approx(1.0), s
    exc = driver.get_raises("/")
    assert isinstance(exc, CircuitOpenError) and exc.retry_after == pytest.approx(1.0)
    clock.advance(1.0)
    assert snap(registry, flaky_server).state is HALF_OPEN


# -- per-request options --------------------------------------------------------------------------


@every_client()
def test_options_bypass_skips_the_breaker(client: ClientFactory, flaky_server: FlakyServer) -> None:
    driver, registry, _ = build(client)
    bypass = {"bypass": True}
    failed = driver.get("/status/503", opts=bypass)
    assert failed.status == 503 and failed.info is None
    assert snap(registry, flaky_server).calls == 0
    trip(driver, registry, flaky_server)
    before = flaky_server.requests
    passed = driver.get("/", opts=bypass)  # the circuit is open, yet it reaches the server
    assert passed.status == 200 and passed.info is None
    assert flaky_server.requests == before + 1
    assert isinstance(driver.get_raises("/"), CircuitOpenError)


@every_client()
def test_options_key_chooses_the_breaker(client: ClientFactory, flaky_server: FlakyServer) -> None:
    driver, registry, _ = build(client)
    result = driver.get("/status/503", opts={"key": "k"})
    assert result.status == 503
    assert result.info is not None and result.info["key"] == "k"
    assert [b.name for b in registry] == ["k"]
    assert_one_failure(registry, "k", driver.name, "options(key='k')")
    # The origin's breaker knows nothing of it: a request without the option passes.
    assert driver.get("/").info == {"key": flaky_server.url, "state": "closed"}


# -- redirects and the info -----------------------------------------------------------------------


@every_client()
def test_each_redirect_hop_is_a_request_of_its_own(
    client: ClientFactory, flaky_server: FlakyServer
) -> None:
    driver, registry, _ = build(client, COUNT_ONLY)
    result = driver.get("/redirect/2")
    assert result.status == 200
    assert json.loads(result.body or b"")  # /redirect/0's JSON
    by_path = flaky_server.requests_by_path
    assert [by_path[f"/redirect/{n}"] for n in (2, 1, 0)] == [1, 1, 1]
    s = snap(registry, flaky_server)
    assert (s.calls, s.failures) == (3, 0), s


@every_client()
def test_info_reports_the_key_and_the_state_let_through_in(
    client: ClientFactory, flaky_server: FlakyServer
) -> None:
    driver, registry, clock = build(client)
    closed = driver.get("/")
    assert closed.info is not None
    assert (closed.info["key"], closed.info["state"]) == (flaky_server.url, "closed")
    streamed = driver.get("/stream", stream=True, read=False)  # known before the body is read
    assert streamed.info is not None and streamed.info["state"] == "closed"
    driver.close_response(streamed)
    trip(driver, registry, flaky_server)
    clock.advance(10.0)
    trial = driver.get("/")
    assert trial.info is not None
    assert (trial.info["key"], trial.info["state"]) == (flaky_server.url, "half_open")
    assert snap(registry, flaky_server).state is CLOSED


# -- cancellation ---------------------------------------------------------------------------------


@every_client(skip=NO_TASK)
def test_cancelled_request_records_nothing(
    client: ClientFactory, flaky_server: FlakyServer
) -> None:
    driver, registry, clock = build(client)
    assert driver.name in ASYNC_CLIENTS
    driver.cancel_in_flight("/delay/30")
    s = snap(registry, flaky_server)
    assert (s.state, s.calls, s.failures) == (CLOSED, 0, 0), s
    # A cancelled half-open trial records nothing either, and gives its slot back.
    trip(driver, registry, flaky_server)
    clock.advance(10.0)
    driver.cancel_in_flight("/delay/30")
    s = snap(registry, flaky_server)
    assert (s.state, s.trials_in_flight) == (HALF_OPEN, 0), s
    trial = driver.get("/")
    assert trial.info is not None and trial.info["state"] == "half_open"
    assert snap(registry, flaky_server).state is CLOSED


# -- a key function that fails -------------------------------------------------------------------


def _raising_key(method: str, url: str) -> str | None:
    raise RuntimeError("key bug")


def _int_key(method: str, url: str) -> str | None:
    return 42  # type: ignore[return-value]


@pytest.mark.parametrize("key", [_raising_key, _int_key], ids=["raises", "not-a-str"])
@every_client()
def test_a_failing_key_function_bypasses_the_breakers(
    client: ClientFactory, flaky_server: FlakyServer, key: object, caplog: pytest.LogCaptureFixture
) -> None:
    registry = BreakerRegistry(TRIP1, key=key, clock=ManualClock())  # type: ignore[arg-type]
    driver = client(registry)
    with caplog.at_level(logging.ERROR, logger="circuitbreaker_http"):
        for _ in range(12):
            result = driver.get("/status/503")
            assert (result.status, result.info) == (503, None)  # through no breaker
    assert len(registry) == 0
    errors = [r for r in caplog.records if "the key function" in r.getMessage()]
    assert [r.levelno for r in errors] == [logging.ERROR] * 2  # the 1st and the 10th
    assert "failure 10;" in errors[1].getMessage()
    assert bool(errors[0].exc_info) == (key is _raising_key)  # the traceback of a raise


# -- a clock that fails ---------------------------------------------------------------------------


class FailingClock(ManualClock):
    """A manual clock whose readings can be made to raise or to be any value."""

    def __init__(self) -> None:
        super().__init__()
        self.bad: object = None

    def __call__(self) -> float:
        bad = self.bad
        if isinstance(bad, Exception):
            raise bad
        return super().__call__() if bad is None else bad  # type: ignore[return-value]


@pytest.mark.parametrize("bad", [RuntimeError("clock broke"), math.nan, math.inf, "noon"], ids=repr)
@pytest.mark.parametrize("read", [True, False], ids=["read", "streamed"])
@every_client()
def test_a_failing_clock_never_fails_a_request(
    client: ClientFactory,
    flaky_server: FlakyServer,
    bad: object,
    read: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A slow-call rule makes every request read the clock twice or more.
    clock = FailingClock()
    registry = BreakerRegistry(TRIP1.replace(slow_call_duration=5.0), clock=clock)
    driver = client(registry)
    paths = {"/stream?chunks=2&size=4": 200, "/status/503": 503}
    # Good readings first: the fast paths are set up, and the bodies known.
    bodies = {path: driver.get(path.replace("503", "200")).body for path in paths}
    assert snap(registry, flaky_server).calls == 2
    clock.bad = bad
    with caplog.at_level(logging.WARNING, logger="circuitbreaker_http"):
        for path, status in [*paths.items(), *paths.items()]:
            result = driver.get(path, stream=not read, read=read)
            assert result.status == status
            body = result.body if read else driver.read(result)
            if status == 200:
                assert body == bodies[path]
    clock.bad = None
    # What the clock could not file is not recorded (the 503s would have tripped).
    s = snap(registry, flaky_server)
    assert (s.state, s.failures) == (CLOSED, 0), s
    assert driver.get("/").status == 200
    assert snap(registry, flaky_server).calls == s.calls + 1
    warnings = [r for r in caplog.records if "clock" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
