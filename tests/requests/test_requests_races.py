"""The requests adapter under races and garbage from the network (each test failed before its fix).

Real ``requests.Session`` objects against the ``flaky_server`` fixture.
"""

from __future__ import annotations

import threading
from urllib.parse import quote

import pytest
import requests
import urllib3
from urllib3.util.retry import Retry

from circuitbreaker_http import BreakerConfig, CircuitState
from circuitbreaker_http.requests import CircuitBreakerAdapter
from circuitbreaker_http.testing import FlakyServer

COUNT_ONLY = BreakerConfig(consecutive_failures=None, failure_rate=None)


def _session(adapter: CircuitBreakerAdapter) -> requests.Session:
    session = requests.Session()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "retry_after",
    [
        "9" * 5000,  # urllib3's int() refuses more than 4300 digits: ValueError
        "Fri, 31 Dec 99999 23:59:59 GMT",  # year out of range: ValueError
        "Fri, 31 Dec 9999999999999999999999 23:59:59 GMT",  # OverflowError
    ],
)
def test_a_retry_after_urllib3_chokes_on_does_not_fail_the_retries(
    flaky_server: FlakyServer, retry_after: str
) -> None:
    # Garbage from the upstream: urllib3's parser raises ValueError/OverflowError
    # (not InvalidHeader). The backoff applies instead, the retries run out as
    # usual, and the logical request records its one failure.
    retry = Retry(total=2, status_forcelist=[503], backoff_factor=0)
    adapter = CircuitBreakerAdapter(config=COUNT_ONLY, max_retries=retry)
    url = flaky_server.url + "/status/503?retry_after=" + quote(retry_after)
    with _session(adapter) as session, pytest.raises(requests.exceptions.RetryError):
        session.get(url, timeout=10)
    assert flaky_server.requests_by_path["/status/503"] == 3
    snap = adapter.registry.get(flaky_server.url).snapshot()
    assert (snap.state, snap.calls, snap.failures) == (CircuitState.CLOSED, 1, 1)


# -- a response closed on one thread while another reads it ---------------------------------------


def _close_on_a_thread(response: requests.Response) -> list[BaseException]:
    """Close ``response`` on another thread, wait for it, return what it raised."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            response.close()
        except BaseException as exc:  # handed to the test
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    return raised


def test_close_racing_a_read_that_ends_the_body_does_not_raise(
    flaky_server: FlakyServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A watchdog thread closes a streamed response just as the reading thread
    # reaches the end of the body. Whichever settles first, close() must not
    # fail: the outcome settles once, as a success.
    adapter = CircuitBreakerAdapter(config=COUNT_ONLY)
    original_close = urllib3.HTTPResponse.close

    def close_while_another_thread_reads(self: urllib3.HTTPResponse) -> None:
        reader = threading.Thread(target=self.read, daemon=True)  # reads to the end, settles
        reader.start()
        reader.join(10)
        original_close(self)

    with _session(adapter) as session:
        response = session.get(flaky_server.url + "/bytes/100", stream=True)
        monkeypatch.setattr(urllib3.HTTPResponse, "close", close_while_another_thread_reads)
        response.close()  # AttributeError: 'HTTPResponse' object has no attribute '_cb_settled'
        monkeypatch.undo()
    snap = adapter.registry.get(flaky_server.url).snapshot()
    assert (snap.calls, snap.failures) == (1, 0)


def test_a_read_ending_the_body_while_another_thread_closes_does_not_raise(
    flaky_server: FlakyServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The other order: another thread closes the response after urllib3's read
    # has taken the last bytes, before the reader has settled. The read must
    # still return its bytes, and the outcome settles once, as a success.
    adapter = CircuitBreakerAdapter(config=COUNT_ONLY)
    original_read = urllib3.HTTPResponse.read
    raised: list[BaseException] = []

    with _session(adapter) as session:
        response = session.get(flaky_server.url + "/bytes/100", stream=True)

        def read_then_close_elsewhere(
            self: urllib3.HTTPResponse, *args: object, **kwargs: object
        ) -> bytes:
            data = original_read(self, *args, **kwargs)  # type: ignore[arg-type]
            raised.extend(_close_on_a_thread(response))
            return data

        monkeypatch.setattr(urllib3.HTTPResponse, "read", read_then_close_elsewhere)
        data = response.raw.read()  # AttributeError before the fix
        monkeypatch.undo()
    assert data == bytes(range(100))
    assert raised == []
    assert type(response.raw) is urllib3.HTTPResponse
    snap = adapter.registry.get(flaky_server.url).snapshot()
    assert (snap.calls, snap.failures) == (1, 0)
