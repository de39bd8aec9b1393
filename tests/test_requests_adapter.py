"""The requests adapter, mostly through real ``requests.Session`` objects over loopback.

The upstream is a real ``FlakyServer`` (the ``flaky_server`` fixture), so
bodies are really cut short, connections really reset and urllib3 really
retries. A few tests at the top work on the adapter's pieces alone, and a
few replace ``HTTPAdapter.send`` with a stub to raise what a server cannot
make requests raise. Nothing sleeps to synchronise: threads meet on the
server's request counter or on events, and every join is bounded.
"""

from __future__ import annotations

import gc
import math
import pickle
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from email.utils import formatdate
from typing import Any

import httpx
import pytest
import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from urllib3.util.retry import Retry

from circuitbreaker_http import (
    BreakerConfig,
    BreakerRegistry,
    CallInfo,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    FallbackResponse,
    LastKnownGood,
    Verdict,
    by_route,
    options,
)
from circuitbreaker_http.httpx import CircuitBreakerTransport, CircuitOpenTransportError
from circuitbreaker_http.requests import CircuitBreakerAdapter, CircuitOpenRequestsError, _Outcome
from circuitbreaker_http.testing import FlakyServer, ManualClock

CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN
FORCED_OPEN = CircuitState.FORCED_OPEN

JOIN = 10.0  # seconds: the bound on every thread join in this module

# One failure opens the breaker for 10 s: a recorded failure shows in the state alone.
TRIP1 = BreakerConfig(
    consecutive_failures=1, failure_rate=None, open_duration=10.0, max_open_duration=3600.0
)
# Nothing trips: the window counts are the whole story.
COUNT_ONLY = BreakerConfig(consecutive_failures=None, failure_rate=None)


# -- helpers -----------------------------------------------------------------------------------


def mounted(adapter: HTTPAdapter) -> requests.Session:
    """A session sending everything through ``adapter``."""
    session = requests.Session()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def breaker_of(adapter: CircuitBreakerAdapter, server: FlakyServer) -> CircuitBreaker:
    return adapter.registry.get(server.url)


def in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """Run ``fn`` on a thread; its return value or exception lands in the list."""
    box: list[object] = []

    def run() -> None:
        try:
            box.append(fn())
        except BaseException as exc:  # handed to the test, which asserts on it
            box.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def joined(thread: threading.Thread, box: list[object]) -> object:
    thread.join(JOIN)
    assert not thread.is_alive(), "the request did not finish"
    assert len(box) == 1
    return box[0]


@pytest.fixture
def srv(flaky_server: FlakyServer) -> FlakyServer:
    return flaky_server


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on: connecting is refused at once."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    sock.close()
    return port


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


# -- bodies ------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("/short?length=100&sent=40", requests.exceptions.ChunkedEncodingError),
        ("/stream?chunks=4&fail_after=2", requests.exceptions.ChunkedEncodingError),
        ("/bytes/64?header=Content-Encoding:gzip", requests.exceptions.ContentDecodingError),
    ],
)
def test_an_error_while_the_body_is_read_is_a_failure(
    srv: FlakyServer, stream: bool, path: str, error: type[Exception]
) -> None:
    adapter = CircuitBreakerAdapter(config=COUNT_ONLY)
    with mounted(adapter) as session:
        if stream:
            with session.get(srv.url + path, stream=True) as response:
                assert response.status_code == 200
                assert breaker_of(adapter, srv).snapshot().calls == 0  # not settled yet
                with pytest.raises(error):
                    response.content  # noqa: B018
        else:
            with pytest.raises(error):
                session.get(srv.url + path)
    snap = breaker_of(adapter, srv).snapshot()
    assert (snap.calls, snap.failures) == (1, 1)


def test_a_body_error_ignores_the_retry_after_of_a_success_status(srv: FlakyServer) -> None:
    clock = ManualClock()
    registry = BreakerRegistry(TRIP1, clock=clock)
    adapter = CircuitBreakerAdapter(registry=registry)
    with mounted(adapter) as session, pytest.raises(requests.exceptions.ChunkedEncodingError):
        session.get(srv.url + "/short?retry_after=120")
    snap = registry.get(srv.url).snapshot()
    assert (snap.state, snap.retry_after) == (OPEN, 10.0)  # the open period, not 120 s


def test_a_read_timeout_inside_the_body_is_a_failure(srv: FlakyServer) -> None:
    adapter = CircuitBreakerAdapter(config=COUNT_ONLY)
    with mounted(adapter) as session, pytest.raises(requests.ConnectionError):
        session.get(srv.url + "/stall_body?after=10", timeout=(5, 0.2))
    snap = breaker_of(adapter, srv).snapshot()
    assert (snap.calls, snap.failures) == (1, 1)


def test_a_streamed_body_read_to_the_end_settles_there(srv: FlakyServer) -> None:
    adapter = CircuitBreakerAdapter(config=COUNT_ONLY)
    breaker = breaker_of(adapter, srv)
    with mounted(adapter) as session:
        response = session.get(srv.url + "/stream?chunks=5&size=100", stream=True)
        assert breaker.snapshot().calls == 0
        assert type(response.raw) is not urllib3.HTTPResponse  # watched while unsettled
        body = b"".join(response.iter_content(64))
        assert len(body) == 500
        assert breaker.snapshot().calls == 1  # settled at the end, before close
        assert type(response.raw) is urllib3.HTTPResponse  # and plain urllib3 again
        response.close()
        # Read with raw.read() (Content-Length body) as well.
        response = session.get(srv.url + "/bytes/3000", stream=True)
        assert len(response.raw.read()) == 3000
        assert breaker.snapshot().calls == 2
        response.close()
    assert breaker.snapshot().failures == 0


@pytest.mark.parametrize("read", [0, 1])
def test_a_streamed_body_closed_early_settles_as_a_success(srv: FlakyServer, read: int) -> None:
    adapter = CircuitBreakerAdapter(config=COUNT_ONLY)
    breaker = breaker_of(adapter, srv)
    with mounted(adapter) as session:
        with session.get(srv.url + "/stream?chunks=50&size=1000", stream=True) as response:
            chunks = response.iter_content(1000)
            for _ in range(read):
                next(chunks)
            assert breaker.snapshot().calls == 0
        snap = breaker.snapshot()
        assert (snap.calls, snap.failures) == (1, 0)
        # The pool still works after an early close.
        assert session.get(srv.url + "/json").status_code == 200


def test_a_response_dropped_unclosed_settles_when_collected(srv: FlakyServer) -> None:
    adapter = CircuitBreakerAdapter(config=COUNT_ONLY)
    breaker = breaker_of(adapter, srv)
    with mounted(adapter) as session:
        response = session.get(srv.url + "/stream?chunks=3", stream=True)
        assert breaker.snapshot().calls == 0
        del response
        gc.collect()
        snap = breaker.snapshot()
    assert (snap.calls, snap.failures) == (1, 0)


def test_an_empty_body_settles_at_the_headers(srv: FlakyServer) -> None:
    adapter = CircuitBreakerAdapter(config=COUNT_ONLY)
    with mounted(adapter) as session:
        response = session.head(srv.url + "/json", stream=True)
        assert breaker_of(adapter, srv).snapshot().calls == 1
        response.close()
        response = session.get(srv.url + "/status/204", stream=True)
        assert breaker_of(adapter, srv).snapshot().calls == 2
        response.close()


def test_slow_calls_count_upstream_time_only(srv: FlakyServer) -> None:
    clock = ManualClock()
    config = BreakerConfig(
        consecutive_failures=None,
        failure_rate=None,
        slow_call_duration=1.0,
        slow_call_rate=1.0,
        minimum_calls=1,
    )
    registry = BreakerRegistry(config, clock=clock)
    adapter = CircuitBreakerAdapter(registry=registry)
    with (
        mounted(adapter) as session,
        session.get(srv.url + "/stream?chunks=3", stream=True) as response,
    ):
        for chunk in response.iter_content(16):
            assert chunk
            clock.advance(5)  # the caller's own time between reads
    assert registry.get(srv.url).snapshot().slow_calls == 0
    # Real upstream time: a server that pauses between chunks.
    slow = BreakerConfig(
        consecutive_failures=None,
        failure_rate=None,
        slow_call_duration=0.15,
        slow_call_rate=1.0,
        minimum_calls=1,
    )
    adapter = CircuitBreakerAdapter(config=slow)
    with mounted(adapter) as session:
        session.get(srv.url + "/stream?chunks=2&delay=0.2")  # through read_chunked()
    snap = breaker_of(adapter, srv).snapshot()
    assert (snap.slow_calls, snap.state) == (1, OPEN)
    adapter = CircuitBreakerAdapter(config=slow)
    with (
        mounted(adapter) as session,
        session.get(srv.url + "/stream?chunks=2&delay=0.2", stream=True) as response,
    ):
        while response.raw.read(16):  # through read()
            pass
    snap = breaker_of(adapter, srv).snapshot()
    assert (snap.calls, snap.slow_calls, snap.state) == (1, 1, OPEN)


def test_a_stalled_content_length_body_is_slow_and_failed(srv: FlakyServer) -> None:
    # Time inside read() counts: the server sends 10 bytes, stalls, then cuts the body.
    config = BreakerConfig(
        consecutive_failures=None,
        failure_rate=None,
        slow_call_duration=0.15,
        slow_call_rate=1.0,
        minimum_calls=1,
    )
    adapter = CircuitBreakerAdapter(config=config)
    with mounted(adapter) as session, pytest.raises(requests.exceptions.ChunkedEncodingError):
        session.get(srv.url + "/stall_body?after=10&stall=0.3")
    snap = breaker_of(adapter, srv).snapshot()
    assert (snap.calls, snap.failures, snap.slow_calls) == (1, 1, 1)


def test_waiting_to_retry_is_not_upstream_time(srv: FlakyServer) -> None:
    config = BreakerConfig(
        consecutive_failures=None,
        failure_rate=None,
        slow_call_duration=0.45,
        slow_call_rate=1.0,
        minimum_calls=1,
    )
    # Two retries: urllib3 waits 0 s, then 0.6 s (backoff_factor * 2).
    retry = Retry(total=2, status_forcelist=[503], backoff_factor=0.3, raise_on_status=False)
    adapter = CircuitBreakerAdapter(config=config, max_retries=retry)
    with mounted(adapter) as session:
        assert session.get(srv.url + "/status/503").status_code == 503
    assert srv.requests_by_path["/status/503"] == 3
    snap = breaker_of(adapter, srv).snapshot()
    assert (snap.calls, snap.failures, snap.slow_calls) == (1, 1, 0)


@pytest.mark.parametrize("decoded", [True, False])
def test_last_known_good_keeps_a_gzip_body_readable(decoded: bool) -> None:
    # A unit test: the adapter's gate watches a hand-made urllib3 response for its outcome.
    import gzip
    import io

    plain = b'{"answer": 42}' * 50
    lkg = LastKnownGood()
    registry = BreakerRegistry(TRIP1)
    adapter = CircuitBreakerAdapter(registry=registry, fallback=lkg)
    request = requests.Request("GET", "http://api.test/data").prepare()
    raw = urllib3.HTTPResponse(
        body=io.BytesIO(gzip.compress(plain)),
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        status=200,
        preload_content=False,
        decode_content=False,
    )
    breaker = registry.get("http://api.test")
    outcome = _Outcome(adapter._gate, breaker, breaker.acquire(), request, 0.0)
    response = adapter._gate.watch(outcome, request, adapter.build_response(request, raw))
    if decoded:
        assert response.content == plain  # requests decodes
    else:
        assert gzip.decompress(response.raw.read()) == plain
    assert (len(lkg), breaker.snapshot().calls) == (1, 1)
    breaker.force_open()
    with mounted(adapter) as session:
        stale = session.get("http://api.test/data")
    assert stale.content == plain
    assert ("Content-Encoding" in stale.headers) is not decoded


def test_a_trial_gives_its_slot_back_when_a_success_status_arrives(srv: FlakyServer) -> None:
    clock = ManualClock()
    config = BreakerConfig(
        consecutive_failures=1,
        failure_rate=None,
        open_duration=1.0,
        half_open_max_calls=1,
        success_threshold=2,
    )
    registry = BreakerRegistry(config, clock=clock)
    adapter = CircuitBreakerAdapter(registry=registry)
    breaker = registry.get(srv.url)
    breaker.record(breaker.acquire(), True)
    clock.advance(2)
    with mounted(adapter) as session:
        first = session.get(srv.url + "/stream?chunks=3", stream=True)
        assert first.circuit_breaker["state"] == "half_open"
        # The first trial's body is still unread, yet a second trial may pass.
        second = session.get(srv.url + "/json")
        assert second.circuit_breaker["state"] == "half_open"
        assert breaker.state is HALF_OPEN
        first.content  # noqa: B018
        first.close()
    assert breaker.state is CLOSED


def test_classify_sees_requests_headers_and_errors(srv: FlakyServer) -> None:
    seen: list[CallInfo] = []

    def classify(call: CallInfo) -> Verdict | None:
        seen.append(call)
        if call.status == 503:
            return Verdict.SUCCESS
        if call.status == 404:
            return Verdict.IGNORE
        return None

    config = BreakerConfig(consecutive_failures=None, failure_rate=None, classify=classify)
    adapter = CircuitBreakerAdapter(config=config)
    with mounted(adapter) as session:
        session.get(srv.url + "/status/503?header=X-Why:overloaded")
        session.get(srv.url + "/status/404")
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            session.get(srv.url + "/short")
    first = seen[0]
    assert (first.key, first.method, first.url) == (
        srv.url,
        "GET",
        srv.url + "/status/503?header=X-Why:overloaded",
    )
    assert isinstance(first.headers, CaseInsensitiveDict)
    assert first.headers["x-why"] == "overloaded"
    assert first.error is None
    body_error = seen[-1]
    assert body_error.status == 200
    assert isinstance(body_error.error, requests.exceptions.ChunkedEncodingError)
    snap = breaker_of(adapter, srv).snapshot()
    # 503 -> success, 404 ignored, the short body is a failure.
    assert (snap.calls, snap.failures) == (2, 1)


def test_each_redirect_hop_is_a_request(srv: FlakyServer) -> None:
    adapter = CircuitBreakerAdapter(config=COUNT_ONLY)
    with mounted(adapter) as session:
        response = session.get(srv.url + "/redirect/2")
    assert response.status_code == 200
    assert [r.status_code for r in response.history] == [302, 302]
    assert all(r.circuit_breaker["key"] == srv.url for r in [*response.history, response])
    assert breaker_of(adapter, srv).snapshot().calls == 3


def test_eight_threads_share_one_session(srv: FlakyServer) -> None:
    adapter = CircuitBreakerAdapter(config=COUNT_ONLY, pool_maxsize=8)
    per_thread = 25
    errors: list[BaseException] = []
    with mounted(adapter) as session:

        def work(n: int) -> None:
            try:
                for i in range(per_thread):
                    path = "/status/503" if (n + i) % 5 == 0 else "/json"
                    session.get(srv.url + path, timeout=10)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(JOIN)
        assert not any(t.is_alive() for t in threads)
    assert errors == []
    snap = breaker_of(adapter, srv).snapshot()
    assert (snap.calls, snap.failures) == (8 * per_thread, 8 * per_thread // 5)


# -- short circuits and fallbacks ----------------------------------------------------------------


def _tripped(srv: FlakyServer, **kwargs: Any) -> tuple[CircuitBreakerAdapter, ManualClock]:
    clock = ManualClock()
    registry = BreakerRegistry(TRIP1, clock=clock)
    adapter = CircuitBreakerAdapter(registry=registry, **kwargs)
    registry.get(srv.url).force_open()
    registry.get(srv.url).reset()
    breaker = registry.get(srv.url)
    breaker.record(breaker.acquire(), True)
    assert breaker.state is OPEN
    srv.reset_counters()
    return adapter, clock


def test_a_short_circuit_never_reaches_the_server_or_the_pool(srv: FlakyServer) -> None:
    adapter, _ = _tripped(srv)
    with mounted(adapter) as session, pytest.raises(CircuitOpenRequestsError) as caught:
        session.get(srv.url + "/json")
    error = caught.value
    assert isinstance(error, CircuitOpenError)
    assert isinstance(error, requests.exceptions.ConnectionError)
    assert isinstance(error.request, requests.PreparedRequest)
    assert error.request.url == srv.url + "/json"
    assert error.response is None
    assert (error.name, error.state, error.retry_after) == (srv.url, OPEN, 10.0)
    assert str(error) == f"circuit {srv.url!r} is open; a trial may pass in 10.000s"
    assert srv.requests == 0
    assert len(adapter.poolmanager.pools) == 0


def test_a_fallback_response_is_a_complete_response(srv: FlakyServer) -> None:
    fallback = FallbackResponse(200, json={"degraded": True}, headers={"X-From": "cache"})
    adapter, _ = _tripped(srv, fallback=fallback)
    with mounted(adapter) as session:
        response = session.get(srv.url + "/json?a=1")
        streamed = session.get(srv.url + "/json", stream=True)
    assert srv.requests == 0
    assert (response.status_code, response.reason, response.ok) == (200, "OK", True)
    assert response.json() == {"degraded": True}
    assert response.content == b'{"degraded":true}'
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["x-from"] == "cache"
    assert response.headers["X-Circuit-Breaker"] == "open"
    assert response.headers["Retry-After"] == "10"
    assert response.headers["Content-Length"] == str(len(response.content))
    assert response.url == srv.url + "/json?a=1"
    assert isinstance(response.request, requests.PreparedRequest)
    assert isinstance(response.elapsed, timedelta)
    assert response.encoding == "utf-8"
    assert response.circuit_breaker == {"key": srv.url, "state": "open", "fallback": True}
    # raw is a readable stream of the same bytes.
    assert streamed.raw.read() == b'{"degraded":true}'
    assert streamed.raw.headers["X-Circuit-Breaker"] == "open"


def test_retry_after_is_rounded_up_and_a_fallbacks_own_is_kept(srv: FlakyServer) -> None:
    # A fallback's own Retry-After is kept; X-Circuit-Breaker always says "open".
    adapter, clock = _tripped(srv, fallback=FallbackResponse(503))
    clock.advance(0.5)
    with mounted(adapter) as session:
        assert session.get(srv.url).headers["Retry-After"] == "10"  # 9.5 s, rounded up
    own = FallbackResponse(503, headers={"Retry-After": "1", "X-Circuit-Breaker": "mine"})
    adapter, _ = _tripped(srv, fallback=own)
    with mounted(adapter) as session:
        response = session.get(srv.url)
    assert (response.headers["Retry-After"], response.headers["X-Circuit-Breaker"]) == (
        "1",
        "open",
    )


def test_a_callable_fallback_gets_the_request_and_the_error(srv: FlakyServer) -> None:
    seen: list[tuple[requests.PreparedRequest, CircuitOpenError]] = []

    def fallback(request: requests.PreparedRequest, error: CircuitOpenError) -> requests.Response:
        seen.append((request, error))
        response = requests.Response()
        response.status_code = 299
        response._content = b"from the fallback"
        response.circuit_breaker = {"source": "callable"}  # type: ignore[attr-defined]
        return response

    adapter, _ = _tripped(srv, fallback=fallback)
    with mounted(adapter) as session:
        response = session.post(srv.url + "/echo", data=b"x")
    assert (response.status_code, response.text) == (299, "from the fallback")
    assert response.headers["X-Circuit-Breaker"] == "open"
    assert response.circuit_breaker == {
        "key": srv.url,
        "state": "open",
        "fallback": True,
        "source": "callable",
    }
    request, error = seen[0]
    assert request.method == "POST" and isinstance(error, CircuitOpenRequestsError)
    assert error.request is request
    assert srv.requests == 0


def test_a_fallback_that_raises_propagates_and_records_nothing(srv: FlakyServer) -> None:
    def fallback(request: Any, error: Any) -> requests.Response:
        raise LookupError("no cached answer")

    adapter, _ = _tripped(srv, fallback=fallback)
    before = breaker_of(adapter, srv).snapshot()
    with mounted(adapter) as session, pytest.raises(LookupError, match="no cached"):
        session.get(srv.url)
    after = breaker_of(adapter, srv).snapshot()
    assert (after.calls, after.failures, after.state) == (before.calls, before.failures, OPEN)

    def wrong(request: Any, error: Any) -> object:
        return "not a response"

    adapter, _ = _tripped(srv, fallback=wrong)
    with mounted(adapter) as session, pytest.raises(TypeError, match=r"requests\.Response"):
        session.get(srv.url)


def test_last_known_good_is_fed_by_complete_gets_and_served_when_open(srv: FlakyServer) -> None:
    clock = ManualClock()
    lkg = LastKnownGood(clock=clock, otherwise=FallbackResponse(503, content=b"nothing stored"))
    registry = BreakerRegistry(TRIP1, clock=clock)
    adapter = CircuitBreakerAdapter(registry=registry, fallback=lkg)
    with mounted(adapter) as session:
        fresh = session.get(srv.url + "/json?header=X-Kept:yes")
        assert len(lkg) == 1
        # Not stored: a partial read, credentials, no-store, a POST, a failure.
        with session.get(srv.url + "/bytes/5000", stream=True) as partial:
            next(partial.iter_content(10))
        session.get(srv.url + "/bytes/10", headers={"Authorization": "Bearer x"})
        session.get(srv.url + "/bytes/11?header=Cache-Control:no-store")
        session.post(srv.url + "/json")
        assert len(lkg) == 1
        # Streamed and read to the end: stored.
        with session.get(srv.url + "/stream?chunks=2", stream=True) as streamed:
            assert len(streamed.content) == 32
        assert len(lkg) == 2
        session.get(srv.url + "/status/503")  # trips the breaker
        srv.reset_counters()
        clock.advance(3)
        stale = session.get(srv.url + "/json?header=X-Kept:yes")
        head = session.head(srv.url + "/json?header=X-Kept:yes")
        other = session.get(srv.url + "/bytes/5000")
    assert srv.requests == 0
    assert (stale.status_code, stale.content) == (200, fresh.content)
    assert stale.json() == fresh.json()
    assert stale.headers["X-Kept"] == "yes"
    assert stale.headers["Age"] == "3"
    assert stale.headers["Warning"] == '110 - "Response is Stale"'
    assert stale.headers["X-Circuit-Breaker"] == "open"
    assert stale.circuit_breaker == {
        "key": srv.url,
        "state": "open",
        "fallback": True,
        "stale": True,
    }
    assert (head.status_code, head.content) == (200, b"")
    assert (other.status_code, other.content) == (503, b"nothing stored")


# -- options() ---------------------------------------------------------------------------------


def test_options_bypass_and_key(srv: FlakyServer) -> None:
    adapter = CircuitBreakerAdapter(config=TRIP1)
    with mounted(adapter) as session:
        with options(bypass=True):
            response = session.get(srv.url + "/status/503")
        assert not hasattr(response, "circuit_breaker")
        assert len(adapter.registry) == 0
        with options(key="payments"):
            response = session.get(srv.url + "/status/503")
        assert response.circuit_breaker == {"key": "payments", "state": "closed"}
        assert adapter.registry.get("payments").state is OPEN
        # The origin's own breaker was never used, and bypass gets past an open one.
        with options(key="payments"), options(bypass=True):
            assert session.get(srv.url + "/json").status_code == 200


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
