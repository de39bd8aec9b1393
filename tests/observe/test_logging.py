"""What an operator reads in the log when a breaker trips under real requests (httpx, requests)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

import httpx
import pytest
import requests

from circuitbreaker_http import BreakerConfig, BreakerRegistry, CircuitOpenError
from circuitbreaker_http.httpx import CircuitBreakerTransport
from circuitbreaker_http.requests import CircuitBreakerAdapter
from circuitbreaker_http.testing import FlakyServer, ManualClock

CONFIG = BreakerConfig(consecutive_failures=None, failure_rate=0.5, minimum_calls=4)


Client = Callable[[BreakerRegistry, contextlib.ExitStack], Callable[[str], int]]


def via_httpx(registry: BreakerRegistry, stack: contextlib.ExitStack) -> Callable[[str], int]:
    client = stack.enter_context(httpx.Client(transport=CircuitBreakerTransport(registry=registry)))
    return lambda url: client.get(url).status_code


def via_requests(registry: BreakerRegistry, stack: contextlib.ExitStack) -> Callable[[str], int]:
    session = stack.enter_context(requests.Session())
    session.mount("http://", CircuitBreakerAdapter(registry=registry))
    return lambda url: session.get(url).status_code


@pytest.mark.parametrize("client", [via_httpx, via_requests], ids=["httpx", "requests"])
def test_a_trip_is_one_warning_that_says_why_and_rejections_do_not_flood(
    client: Client, flaky_server: FlakyServer, caplog: pytest.LogCaptureFixture
) -> None:
    with contextlib.ExitStack() as stack:
        check(client, flaky_server, caplog, stack)


def check(
    client: Client,
    flaky_server: FlakyServer,
    caplog: pytest.LogCaptureFixture,
    stack: contextlib.ExitStack,
) -> None:
    clock = ManualClock()
    get = client(BreakerRegistry(CONFIG, clock=clock), stack)
    url = flaky_server.url
    caplog.set_level(logging.DEBUG, logger="circuitbreaker_http")
    assert get(f"{url}/status/200") == 200
    assert get(f"{url}/status/200") == 200
    assert get(f"{url}/status/502") == 502  # nothing logged per call, failed or not
    assert [r for r in caplog.records if r.levelno >= logging.DEBUG] == []
    assert get(f"{url}/status/503") == 503  # 2 of 4 failed: trips
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].name == "circuitbreaker_http"
    assert warnings[0].getMessage() == (
        f"circuit breaker '{url}' opened: closed -> open (failure_rate); window: 4 calls, "
        "50% failed, 0% slow; last failure: 503; open for 30s"
    )
    caplog.clear()
    for _ in range(50):  # a burst of rejections within one second
        with pytest.raises(CircuitOpenError):
            get(f"{url}/status/200")
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(debug) == 1
    assert f"'{url}'" in debug[0].getMessage() and "short-circuited" in debug[0].getMessage()
    assert [r for r in caplog.records if r.levelno > logging.DEBUG] == []
    clock.advance(1.0)
    with pytest.raises(CircuitOpenError):
        get(f"{url}/status/200")
    assert len([r for r in caplog.records if r.levelno == logging.DEBUG]) == 2
