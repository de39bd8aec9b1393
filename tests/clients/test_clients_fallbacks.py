"""Fallback rows of the client behaviour table: Last-Known-Good in service traffic,
fallbacks per key, and fallbacks of the wrong shape refused when a client is built.

Every row runs against every client (``clients_support.CLIENTS``) over real
loopback sockets to a :class:`FlakyServer`, on a :class:`ManualClock`. The
server's ``/echo`` answers with the request's own headers, so a copy served to
the wrong principal would show whose it is.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any
from urllib.parse import quote

import pytest
from clients_support import ASYNC_CLIENTS, ClientFactory, Driver, every_client

from circuitbreaker_http import (
    BreakerConfig,
    BreakerRegistry,
    CircuitOpenError,
    CircuitState,
    FallbackResponse,
    LastKnownGood,
)
from circuitbreaker_http.testing import ManualClock
from circuitbreaker_http.testing._server import FlakyServer

# One failure opens the breaker for 10 s.
TRIP1 = BreakerConfig(consecutive_failures=1, failure_rate=None, open_duration=10.0)
NOTHING = 599  # the ``otherwise`` status: nothing stored fits the request

ALICE = {"Authorization": "Bearer alice-token"}
BOB = {"Authorization": "Bearer bob-token"}

# The name each client's integration gives itself in its messages.
INTEGRATION = {
    "httpx": "CircuitBreakerTransport",
    "httpx2": "CircuitBreakerTransport",
    "requests": "CircuitBreakerAdapter",
    "aiohttp": "CircuitBreakerMiddleware",
}


def client_name(request: pytest.FixtureRequest) -> str:
    """The id of the client this row runs with (one of ``clients_support.CLIENTS``)."""
    return str(request.node.callspec.params["client"])


def integration(name: str) -> str:
    if "-async-" in name:
        return "AsyncCircuitBreakerTransport"
    return INTEGRATION[name]


def lkg_driver(
    client: ClientFactory, **lkg_options: Any
) -> tuple[Driver, BreakerRegistry, LastKnownGood]:
    clock = ManualClock()
    lkg = LastKnownGood(clock=clock, otherwise=FallbackResponse(NOTHING), **lkg_options)
    registry = BreakerRegistry(TRIP1, clock=clock)
    return client(registry, fallback=lkg), registry, lkg


def header_query(name: str, value: str) -> str:
    """``?header=Name:Value`` for FlakyServer, the value percent-encoded."""
    return "?header=" + quote(f"{name}:{value}", safe="")


def not_stored_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The DEBUG lines saying why a response was not stored, as logged (%-style)."""
    lines = []
    for record in caplog.records:
        if record.name == "circuitbreaker_http" and record.levelno == logging.DEBUG:
            assert record.args, f"not %-style: {record.msg!r}"
            lines.append(record.getMessage())
    return [line for line in lines if "did not store" in line]


# -- Last-Known-Good in service-to-service traffic ---------------------------------------------


@every_client()
def test_one_token_never_gets_another_tokens_copy(
    client: ClientFactory, flaky_server: FlakyServer
) -> None:
    driver, registry, lkg = lkg_driver(client)
    alice = driver.get("/echo", headers=ALICE)
    bob = driver.get("/echo", headers=BOB)
    assert alice.body != bob.body
    assert len(lkg) == 2  # one copy per token, under the same URL
    registry.get(flaky_server.url).force_open()
    before = flaky_server.requests

    stale_alice = driver.get("/echo", headers=ALICE)
    stale_bob = driver.get("/echo", headers=BOB)
    anonymous = driver.get("/echo")
    mallory = driver.get("/echo", headers={"Authorization": "Bearer mallory-token"})
    # The same value under another credential header is another principal.
    as_cookie = driver.get("/echo", headers={"Cookie": ALICE["Authorization"]})

    assert flaky_server.requests == before
    assert (stale_alice.status, stale_alice.body) == (200, alice.body)
    assert json.loads(stale_alice.body or b"")["headers"]["authorization"] == "Bearer alice-token"
    assert (stale_bob.status, stale_bob.body) == (200, bob.body)
    assert stale_alice.info is not None and stale_alice.info["stale"] is True
    for result in (anonymous, mallory, as_cookie):
        assert result.status == NOTHING, result
        assert result.info is not None and "stale" not in result.info


@every_client()
def test_a_copy_stored_without_credentials_is_not_served_to_a_request_with_them(
    client: ClientFactory, flaky_server: FlakyServer
) -> None:
    driver, registry, lkg = lkg_driver(client)
    anonymous = driver.get("/echo")
    assert len(lkg) == 1
    registry.get(flaky_server.url).force_open()
    assert driver.get("/echo", headers=ALICE).status == NOTHING
    stale = driver.get("/echo")
    assert (stale.status, stale.body) == (200, anonymous.body)


@every_client()
def test_private_is_stored_only_for_a_request_with_credentials(
    client: ClientFactory, flaky_server: FlakyServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="circuitbreaker_http")
    driver, registry, lkg = lkg_driver(client)
    path = "/echo" + header_query("Cache-Control", "private, max-age=60")
    mine = driver.get(path, headers=ALICE)
    driver.get(path)
    assert len(lkg) == 1
    [line] = not_stored_lines(caplog)
    assert line.startswith(f"Last-Known-Good did not store the response to {flaky_server.url}/")
    assert line.endswith(": Cache-Control: private on a request without credentials")
    registry.get(flaky_server.url).force_open()
    stale = driver.get(path, headers=ALICE)
    assert (stale.status, stale.body) == (200, mine.body)
    assert stale.headers["cache-control"] == "private, max-age=60"
    assert driver.get(path).status == NOTHING
    assert driver.get(path, headers=BOB).status == NOTHING


@every_client()
def test_set_cookie_is_stripped_from_what_is_stored_and_served(
    client: ClientFactory, flaky_server: FlakyServer
) -> None:
    # A load balancer's stickiness cookie; its Path keeps every client from
    # sending it back here, so the next request is still one without cookies.
    driver, registry, lkg = lkg_driver(client)
    path = "/json" + header_query("Set-Cookie", "lb=node-7; Path=/elsewhere")
    fresh = driver.get(path)
    assert fresh.headers["set-cookie"] == "lb=node-7; Path=/elsewhere"
    assert len(lkg) == 1
    registry.get(flaky_server.url).force_open()
    stale = driver.get(path)
    assert (stale.status, stale.body) == (200, fresh.body)
    assert "set-cookie" not in stale.headers
    assert stale.info is not None and stale.info["stale"] is True


@pytest.mark.parametrize("honor_no_store", [True, False])
@every_client()
def test_no_store_is_stored_only_when_not_honoured(
    client: ClientFactory,
    flaky_server: FlakyServer,
    caplog: pytest.LogCaptureFixture,
    honor_no_store: bool,
) -> None:
    caplog.set_level(logging.DEBUG, logger="circuitbreaker_http")
    driver, registry, lkg = lkg_driver(client, honor_no_store=honor_no_store)
    path = "/echo" + header_query("Cache-Control", "no-store")
    fresh = driver.get(path, headers=ALICE)
    registry.get(flaky_server.url).force_open()
    answer = driver.get(path, headers=ALICE)
    if honor_no_store:
        assert len(lkg) == 0
        assert answer.status == NOTHING
        [line] = not_stored_lines(caplog)
        assert line.endswith(": Cache-Control: no-store")
        assert f" {flaky_server.url}/echo?" in line
    else:
        assert len(lkg) == 1
        assert (answer.status, answer.body) == (200, fresh.body)
        assert not_stored_lines(caplog) == []


@every_client()
def test_each_reason_a_response_is_not_stored_is_logged(
    client: ClientFactory, flaky_server: FlakyServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="circuitbreaker_http")
    driver, _, lkg = lkg_driver(client, max_entry_bytes=1000)
    driver.get("/json" + header_query("Vary", "*"))
    driver.get("/status/404")
    driver.get("/bytes/1001")
    driver.close_response(driver.get("/bytes/500", stream=True, read=False))
    driver.get("/json")  # stored: nothing logged
    assert len(lkg) == 1
    lines = not_stored_lines(caplog)
    assert len(lines) == 4, lines
    vary, status, size, unread = lines
    assert unread.endswith(
        "/bytes/500: the response was closed before its body was read to the end"
    )
    prefix = f"Last-Known-Good did not store the response to {flaky_server.url}"
    assert vary.startswith(prefix + "/json?header=") and vary.endswith(": Vary: *")
    assert status == prefix + "/status/404: status 404"
    assert size.startswith(prefix + "/bytes/1001: ")
    assert "max_entry_bytes" in size


# -- fallbacks per key ---------------------------------------------------------------------------

CATALOG = "http://catalog.internal"
PAYMENTS = "http://payments.internal"


@every_client()
def test_each_key_gets_the_fallback_of_its_most_specific_pattern(
    client: ClientFactory, flaky_server: FlakyServer
) -> None:
    clock = ManualClock()
    lkg = LastKnownGood(clock=clock)
    fallback = {
        # Listed first, yet the exact host below is more specific for the catalog.
        "*.internal": FallbackResponse(503, json={"from": "*.internal"}),
        "catalog.internal": lkg,
    }
    registry = BreakerRegistry(TRIP1, clock=clock)
    driver = client(registry, fallback=fallback)
    catalog = {"key": CATALOG}  # per-request keys: three breakers on one server
    payments = {"key": PAYMENTS}
    fresh = driver.get("/echo", opts=catalog)
    driver.get("/echo", opts=payments)  # its fallback is no Last-Known-Good: nothing kept
    driver.get("/echo")  # the server's own key, which no pattern matches
    assert len(lkg) == 1
    for key in (CATALOG, PAYMENTS, flaky_server.url):
        registry.get(key).force_open()
    before = flaky_server.requests

    stale = driver.get("/echo", opts=catalog)
    synthetic = driver.get("/echo", opts=payments)
    error = driver.get_raises("/echo")

    assert flaky_server.requests == before
    assert (stale.status, stale.body) == (200, fresh.body)
    assert stale.info is not None and stale.info["key"] == CATALOG and stale.info["stale"]
    assert synthetic.status == 503
    assert json.loads(synthetic.body or b"") == {"from": "*.internal"}
    assert synthetic.info is not None and synthetic.info["key"] == PAYMENTS
    assert isinstance(error, CircuitOpenError) and isinstance(error, driver.error_type)
    assert error.name == flaky_server.url and error.state is CircuitState.FORCED_OPEN


@every_client()
def test_a_pattern_mapped_to_none_raises(client: ClientFactory, flaky_server: FlakyServer) -> None:
    registry = BreakerRegistry(TRIP1, clock=ManualClock())
    driver = client(registry, fallback={"*": FallbackResponse(503), "127.0.0.1": None})
    registry.get(flaky_server.url).force_open()
    registry.get(CATALOG).force_open()
    assert isinstance(driver.get_raises("/"), CircuitOpenError)
    assert driver.get("/", opts={"key": CATALOG}).status == 503


# -- the shape of a fallback, checked when the client is built -----------------------------------


def _one_argument(request: object) -> None: ...


def _three_arguments(request: object, error: object, extra: object) -> None: ...


@pytest.mark.parametrize(
    ("fallback", "where", "says"),
    [
        (_one_argument, "fallback", "(request, error)"),
        (42, "fallback", "a mapping of rule patterns"),
        ({"*": _three_arguments}, "fallback['*']", "(request, error)"),
        ({"api.test": "503"}, "fallback['api.test']", "a callable (request, error)"),
        ({"api.test": {"*": None}}, "fallback['api.test']", "not a mapping"),
        (LastKnownGood(otherwise=_one_argument), "fallback.otherwise", "(request, error)"),
        (
            {"*": FallbackResponse(), "api.test": LastKnownGood(otherwise=_three_arguments)},
            "fallback['api.test'].otherwise",
            "(request, error)",
        ),
    ],
    ids=[
        "one-argument",
        "not-a-fallback",
        "in-a-mapping",
        "str-in-a-mapping",
        "nested-mapping",
        "lkg-otherwise",
        "lkg-otherwise-in-a-mapping",
    ],
)
@every_client()
def test_a_fallback_of_the_wrong_shape_fails_when_the_client_is_built(
    client: ClientFactory,
    request: pytest.FixtureRequest,
    fallback: object,
    where: str,
    says: str,
) -> None:
    registry = BreakerRegistry(TRIP1, clock=ManualClock())
    with pytest.raises(TypeError) as caught:
        client(registry, fallback=fallback)
    message = str(caught.value)
    assert where in message and says in message, message
    assert message.startswith(integration(client_name(request)) + ": "), message


async def _async_fallback(request: object, error: object) -> Any: ...


@pytest.mark.parametrize(
    "fallback",
    [_async_fallback, {"*": _async_fallback}, LastKnownGood(otherwise=_async_fallback)],
    ids=["alone", "in-a-mapping", "lkg-otherwise"],
)
@every_client()
def test_a_coroutine_function_fallback_is_refused_only_by_sync_clients(
    client: ClientFactory, request: pytest.FixtureRequest, fallback: object
) -> None:
    registry = BreakerRegistry(TRIP1, clock=ManualClock())
    if client_name(request) in ASYNC_CLIENTS:
        client(registry, fallback=fallback)  # built: it can await it
        return
    with pytest.raises(TypeError, match="cannot await a coroutine-function fallback"):
        client(registry, fallback=fallback)


@pytest.mark.parametrize("bad", [RuntimeError("clock broke"), math.nan, "noon"], ids=repr)
@every_client()
def test_a_failing_last_known_good_clock_never_fails_a_request(
    client: ClientFactory, flaky_server: FlakyServer, bad: object, caplog: pytest.LogCaptureFixture
) -> None:
    readings: list[object] = []

    def clock() -> float:
        if readings:
            if isinstance(readings[0], Exception):
                raise readings[0]
            return readings[0]  # type: ignore[return-value]
        return 0.0

    lkg = LastKnownGood(clock=clock, otherwise=FallbackResponse(NOTHING))
    registry = BreakerRegistry(TRIP1, clock=ManualClock())
    driver = client(registry, fallback=lkg)
    stored = driver.get("/echo")  # stored while the clock works
    assert len(lkg) == 1
    readings.append(bad)
    with caplog.at_level(logging.WARNING, logger="circuitbreaker_http"):
        fresh = driver.get("/echo?again")  # its copy cannot be stored: no time to it
        assert (fresh.status, len(lkg)) == (200, 1)
        registry.get(flaky_server.url).force_open()
        # How old the stored copy is cannot be told: nothing is served.
        assert driver.get("/echo").status == NOTHING
    warnings = [r for r in caplog.records if "while its clock fails" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING  # once
    readings.clear()
    stale = driver.get("/echo")
    assert (stale.status, stale.body) == (200, stored.body)
