"""The requests adapter: construction, keys and what counts, through real sessions over loopback.

The upstream is a real ``FlakyServer`` (the ``flaky_server`` fixture, ``srv``
here), so bodies are really cut short, connections really reset and urllib3
really retries. Nothing sleeps to synchronise: threads meet on the server's
request counter or on events, and every join is bounded.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from email.utils import formatdate
from typing import Any

import pytest
import requests
import urllib3
from requests.adapters import HTTPAdapter
from rq_support import (
    COUNT_ONLY,
    HALF_OPEN,
    OPEN,
    TRIP1,
    breaker_of,
    mounted,
)
from urllib3.util.retry import Retry

from circuitbreaker_http import (
    BreakerConfig,
    BreakerRegistry,
    CircuitOpenError,
    LastKnownGood,
    by_route,
)
from circuitbreaker_http.requests import CircuitBreakerAdapter
from circuitbreaker_http.testing import FlakyServer, ManualClock

# -- construction ------------------------------------------------------------------------------


def test_is_an_http_adapter_and_passes_its_arguments_through() -> None:
    adapter = CircuitBreakerAdapter(pool_connections=3, pool_maxsize=7, pool_block=True)
    try:
        assert isinstance(adapter, HTTPAdapter)
        assert adapter._pool_connections == 3
        assert adapter.poolmanager.connection_pool_kw["maxsize"] == 7
        assert adapter.poolmanager.connection_pool_kw["block"] is True
        assert adapter.poolmanager.pools._maxsize == 3
    finally:
        adapter.close()
    with pytest.raises(TypeError):
        CircuitBreakerAdapter(pool_size=3)  # not an HTTPAdapter argument


def test_max_retries_is_a_copy_that_keeps_every_setting() -> None:
    mine = Retry(total=4, connect=2, status_forcelist=[503], backoff_factor=0.5)
    adapter = CircuitBreakerAdapter(max_retries=mine)
    retries = adapter.max_retries
    assert isinstance(retries, Retry) and retries is not mine
    assert type(mine) is Retry  # the caller's object is left alone
    assert (retries.total, retries.connect, retries.backoff_factor) == (4, 2, 0.5)
    assert retries.status_forcelist == [503]
    assert CircuitBreakerAdapter(max_retries=3).max_retries.total == 3
    # requests' default: no retries at all.
    default = CircuitBreakerAdapter().max_retries
    assert (default.total, default.read) == (0, False)


def test_a_retry_subclass_keeps_its_behaviour() -> None:
    class Mine(Retry):
        DEFAULT_ALLOWED_METHODS = frozenset({"GET", "POST"})

    adapter = CircuitBreakerAdapter(max_retries=Mine(total=2))
    assert isinstance(adapter.max_retries, Mine)
    nxt = adapter.max_retries.increment("POST", "/", error=urllib3.exceptions.ConnectTimeoutError())
    assert isinstance(nxt, Mine) and type(nxt) is type(adapter.max_retries)
    assert nxt.total == 1


def test_registry_or_config_not_both() -> None:
    registry = BreakerRegistry()
    with pytest.raises(TypeError, match="registry"):
        CircuitBreakerAdapter(registry=registry, config=BreakerConfig())
    with pytest.raises(TypeError, match="registry"):
        CircuitBreakerAdapter(registry=registry, key=by_route("/a/{id}"))
    with pytest.raises(TypeError, match="BreakerRegistry"):
        CircuitBreakerAdapter(registry={})  # type: ignore[arg-type]
    assert CircuitBreakerAdapter(registry=registry).registry is registry
    built = CircuitBreakerAdapter(config=TRIP1, rules={"api.test": COUNT_ONLY})
    assert built.registry.config_for("http://other.test") is TRIP1
    assert built.registry.config_for("http://api.test") is COUNT_ONLY


def test_bad_fallbacks_are_refused() -> None:
    async def coroutine(request: Any, error: Any) -> None:
        return None

    with pytest.raises(TypeError, match="fallback"):
        CircuitBreakerAdapter(fallback=42)
    with pytest.raises(TypeError, match="coroutine"):
        CircuitBreakerAdapter(fallback=coroutine)
    with pytest.raises(TypeError, match="coroutine"):
        CircuitBreakerAdapter(fallback=LastKnownGood(otherwise=coroutine))


def test_close_reaches_http_adapter_close(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[HTTPAdapter] = []
    real_close = HTTPAdapter.close

    def spy(self: HTTPAdapter) -> None:
        calls.append(self)
        real_close(self)

    monkeypatch.setattr(HTTPAdapter, "close", spy)
    adapter = CircuitBreakerAdapter()
    with mounted(adapter):
        pass  # Session.close() closes every mounted adapter
    assert calls and all(a is adapter for a in calls)


def test_pickling_is_refused_with_a_reason() -> None:
    with pytest.raises(TypeError, match="pickled"):
        pickle.dumps(CircuitBreakerAdapter())


def test_import_without_requests_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['requests'] = None\n"
        "try:\n    import circuitbreaker_http.requests\n"
        "except ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert 'pip install "circuitbreaker-http[requests]"' in out.stdout


# -- keys --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("http://Example.COM/path", "http://example.com"),
        ("https://user:pw@api.example.com:443/x?y=1", "https://api.example.com"),
        ("http://api.example.com:8080", "http://api.example.com:8080"),
        ("http://[::1]:8080/x", "http://[::1]:8080"),
        ("http://h.test?next=/elsewhere", "http://h.test"),
        ("http://h.test#frag/x", "http://h.test"),
        ("HTTP://h.test:80/", "http://h.test"),
        ("http://bücher.example/", "http://xn--bcher-kva.example"),
        ("http:///nohost", None),
        ("not a url", None),
    ],
)
def test_by_host_keys_from_the_url_string(url: str, key: str | None) -> None:
    assert CircuitBreakerAdapter()._gate.key_of_url("GET", url) == key


def test_by_route_gets_the_path_and_custom_keys_get_method_and_url() -> None:
    gate = CircuitBreakerAdapter(key=by_route("/users/{id}", "/users/me"))._gate
    assert (
        gate.key_of_url("GET", "http://h.test:8080/users/42?q=/a/b")
        == "http://h.test:8080/users/{id}"
    )
    assert gate.key_of_url("GET", "http://h.test/users/me#x") == "http://h.test/users/me"
    assert gate.key_of_url("GET", "http://h.test/orders/1") == "http://h.test"
    seen: list[tuple[str, str]] = []

    def custom(method: str, url: str) -> str:
        seen.append((method, url))
        return "everything"

    gate = CircuitBreakerAdapter(key=custom)._gate
    assert gate.key_of_url("POST", "http://h.test/a?b=c") == "everything"
    assert seen == [("POST", "http://h.test/a?b=c")]


def test_the_origin_cache_is_bounded() -> None:
    gate = CircuitBreakerAdapter()._gate
    for i in range(5000):
        assert gate.key_of_url("GET", f"http://h{i}.test/x") == f"http://h{i}.test"
    assert 0 < len(gate._host_keys) <= 4096


def test_route_and_custom_keys_through_a_session(srv: FlakyServer) -> None:
    adapter = CircuitBreakerAdapter(config=COUNT_ONLY, key=by_route("/status/{code}"))
    with mounted(adapter) as session:
        response = session.get(srv.url + "/status/404")
    assert response.circuit_breaker == {"key": srv.url + "/status/{code}", "state": "closed"}
    assert adapter.registry.get(srv.url + "/status/{code}").snapshot().calls == 1


# -- outcomes ----------------------------------------------------------------------------------


def test_a_success_records_one_outcome_and_marks_the_response(srv: FlakyServer) -> None:
    adapter = CircuitBreakerAdapter(config=COUNT_ONLY)
    with mounted(adapter) as session:
        response = session.get(srv.url + "/json")
    assert response.json()["ok"] is True
    assert response.circuit_breaker == {"key": srv.url, "state": "closed"}
    snap = breaker_of(adapter, srv).snapshot()
    assert (snap.calls, snap.failures) == (1, 0)


@pytest.mark.parametrize(("status", "failed"), [(503, 1), (500, 1), (429, 1), (404, 0), (501, 0)])
def test_failure_statuses(srv: FlakyServer, status: int, failed: int) -> None:
    adapter = CircuitBreakerAdapter(config=COUNT_ONLY)
    with mounted(adapter) as session:
        assert session.get(f"{srv.url}/status/{status}").status_code == status
    snap = breaker_of(adapter, srv).snapshot()
    assert (snap.calls, snap.failures) == (1, failed)


def _retry_after_of(srv: FlakyServer, query: str) -> float:
    clock = ManualClock(1000.0)
    registry = BreakerRegistry(TRIP1, clock=clock)
    adapter = CircuitBreakerAdapter(registry=registry, wall_clock=lambda: 1_000_000_000.0)
    with mounted(adapter) as session:
        session.get(f"{srv.url}/status/503?{query}")
    snap = registry.get(srv.url).snapshot()
    assert snap.state is OPEN
    assert snap.retry_after is not None
    return snap.retry_after


def test_retry_after_from_a_failure_response(srv: FlakyServer) -> None:
    assert _retry_after_of(srv, "retry_after=120") == 120.0
    date = formatdate(1_000_000_000.0, usegmt=True)
    later = formatdate(1_000_000_000.0 + 60, usegmt=True)
    assert _retry_after_of(srv, f"retry_after={later}&date={date}") == 60.0
    # Without a Date header the wall clock is the base.
    assert _retry_after_of(srv, f"retry_after={later}&date=garbage") == 60.0
    # Garbage is ignored: the plain open period applies.
    assert _retry_after_of(srv, "retry_after=soon") == 10.0


@pytest.mark.parametrize("path", ["/reset", "/close"])
def test_a_dropped_connection_is_a_failure(srv: FlakyServer, path: str) -> None:
    adapter = CircuitBreakerAdapter(config=TRIP1)
    with mounted(adapter) as session, pytest.raises(requests.ConnectionError):
        session.get(srv.url + path)
    assert breaker_of(adapter, srv).state is OPEN


def test_a_refused_connection_is_a_failure(closed_port: int) -> None:
    adapter = CircuitBreakerAdapter(config=TRIP1)
    with mounted(adapter) as session, pytest.raises(requests.ConnectionError):
        session.get(f"http://127.0.0.1:{closed_port}/")
    assert adapter.registry.get(f"http://127.0.0.1:{closed_port}").state is OPEN


def test_a_read_timeout_before_the_headers_is_a_failure(srv: FlakyServer) -> None:
    adapter = CircuitBreakerAdapter(config=TRIP1)
    with mounted(adapter) as session, pytest.raises(requests.exceptions.ReadTimeout):
        session.get(srv.url + "/delay/30", timeout=(5, 0.2))
    assert breaker_of(adapter, srv).state is OPEN


def _stub_send(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    def send(self: HTTPAdapter, request: requests.PreparedRequest, *args: Any, **kw: Any) -> Any:
        raise exc

    monkeypatch.setattr(HTTPAdapter, "send", send)


@pytest.mark.parametrize(
    "exc",
    [
        requests.exceptions.InvalidURL("bad"),
        requests.exceptions.InvalidSchema("bad"),
        requests.exceptions.MissingSchema("bad"),
        requests.exceptions.InvalidHeader("bad"),
        requests.exceptions.ConnectionError(urllib3.exceptions.ClosedPoolError(None, "closed")),
        urllib3.exceptions.EmptyPoolError(None, "full"),
        ValueError("a bug in an inner layer"),
        CircuitOpenError("inner", OPEN, 1.0),
        KeyboardInterrupt(),
    ],
    ids=lambda e: type(e).__name__,
)
def test_what_says_nothing_about_the_upstream_records_nothing(
    monkeypatch: pytest.MonkeyPatch, exc: BaseException
) -> None:
    clock = ManualClock()
    config = BreakerConfig(consecutive_failures=1, failure_rate=None, open_duration=1.0)
    registry = BreakerRegistry(config, clock=clock)
    adapter = CircuitBreakerAdapter(registry=registry)
    breaker = registry.get("http://api.test")
    breaker.force_open()
    breaker.reset()
    _stub_send(monkeypatch, exc)
    with mounted(adapter) as session, pytest.raises(type(exc)):
        session.get("http://api.test/")
    assert breaker.snapshot().calls == 0
    # A half-open trial gives its slot back too.
    breaker.record(breaker.acquire(), True)
    clock.advance(2)
    with mounted(adapter) as session, pytest.raises(type(exc)):
        session.get("http://api.test/")
    snap = breaker.snapshot()
    assert (snap.state, snap.trials_in_flight) == (HALF_OPEN, 0)


@pytest.mark.parametrize(
    "exc",
    [
        requests.exceptions.ConnectTimeout("slow connect"),
        requests.exceptions.SSLError("bad certificate"),
        requests.exceptions.ProxyError("proxy down"),
        requests.exceptions.RetryError("too many 503"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_tls_proxy_and_connect_errors_are_failures(
    monkeypatch: pytest.MonkeyPatch, exc: Exception
) -> None:
    adapter = CircuitBreakerAdapter(config=TRIP1)
    _stub_send(monkeypatch, exc)
    with mounted(adapter) as session, pytest.raises(type(exc)):
        session.get("http://api.test/")
    assert adapter.registry.get("http://api.test").state is OPEN
