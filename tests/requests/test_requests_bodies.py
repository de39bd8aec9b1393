"""The requests adapter: bodies (streamed, cut short, slow, dropped), trials and classify.

See test_requests_adapter.py for how these tests meet the server.
"""

from __future__ import annotations

import gc
import threading

import pytest
import requests
import urllib3
from requests.structures import CaseInsensitiveDict
from rq_support import (
    CLOSED,
    COUNT_ONLY,
    HALF_OPEN,
    JOIN,
    OPEN,
    TRIP1,
    breaker_of,
    mounted,
)
from urllib3.util.retry import Retry

from circuitbreaker_http import (
    BreakerConfig,
    BreakerRegistry,
    CallInfo,
    LastKnownGood,
    Verdict,
)
from circuitbreaker_http.requests import CircuitBreakerAdapter, _Outcome
from circuitbreaker_http.testing import FlakyServer, ManualClock

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
