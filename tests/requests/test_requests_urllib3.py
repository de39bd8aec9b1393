"""What the requests adapter assumes of the installed urllib3, checked against it.

The adapter watches a body by giving urllib3's response a subclass of its own
class for as long as the outcome is unsettled (``_become``, its one trick) and
reads the end of the body from urllib3's public behaviour. Each test here pins
one assumption on the real urllib3 (and the real ``http.client`` under it, over
the loopback ``FlakyServer``), so a urllib3 release that changes it fails here,
loudly and by name, before it fails somewhere subtle.
"""

from __future__ import annotations

import copy
import gc
import gzip
import io
import zlib
from collections.abc import Generator, Iterator
from typing import Any

import pytest
import requests
import urllib3
from rq_support import COUNT_ONLY
from urllib3.util.retry import Retry

from circuitbreaker_http import BreakerRegistry
from circuitbreaker_http.requests import (
    CircuitBreakerAdapter,
    _become,
    _decodes,
    _Outcome,
    _watched_class,
)
from circuitbreaker_http.testing import FlakyServer

CALLS: list[str] = []
"""What ``Recording`` saw, in order."""


class Recording(urllib3.HTTPResponse):
    """urllib3's response, recording which of the watched methods its own code calls."""

    __slots__ = ()

    def read(self, *args: Any, **kwargs: Any) -> bytes:
        CALLS.append("read")
        return super().read(*args, **kwargs)

    def read1(self, *args: Any, **kwargs: Any) -> bytes:
        CALLS.append("read1")
        return super().read1(*args, **kwargs)

    def read_chunked(self, *args: Any, **kwargs: Any) -> Generator[bytes]:
        CALLS.append("read_chunked")
        return super().read_chunked(*args, **kwargs)

    def close(self) -> None:
        CALLS.append("close")
        super().close()


@pytest.fixture
def pool() -> Iterator[urllib3.PoolManager]:
    with urllib3.PoolManager() as manager:
        yield manager


def _response(pool: urllib3.PoolManager, url: str, method: str = "GET") -> urllib3.HTTPResponse:
    response = pool.request(method, url, preload_content=False, retries=False)
    assert type(response) is urllib3.HTTPResponse
    return response


@pytest.fixture(autouse=True)
def _fresh_calls() -> Iterator[None]:
    CALLS.clear()
    yield
    CALLS.clear()


# -- the trick: an urllib3 response (and a Retry) changes class in place -------------------------


def test_a_response_takes_a_subclass_and_gives_it_back(
    flaky_server: FlakyServer, pool: urllib3.PoolManager
) -> None:
    response = _response(pool, flaky_server.url + "/bytes/10")
    before = dict(vars(response))
    _become(response, Recording)
    assert type(response) is Recording
    _become(response, urllib3.HTTPResponse)
    assert type(response) is urllib3.HTTPResponse
    assert vars(response) == before  # the very object, every attribute as it was
    assert response.read() == bytes(range(10))


def test_a_subclass_of_a_users_response_class_is_watched_and_given_back() -> None:
    class Mine(urllib3.HTTPResponse):
        def mine(self) -> str:
            return "still mine"

    watched = _watched_class(Mine)
    assert issubclass(watched, Mine) and vars(watched)["__slots__"] == ()
    registry = BreakerRegistry(COUNT_ONLY)
    adapter = CircuitBreakerAdapter(registry=registry)
    request = requests.Request("GET", "http://api.test/x").prepare()
    raw = Mine(body=io.BytesIO(b"abc"), status=200, preload_content=False)
    breaker = registry.get("http://api.test")
    outcome = _Outcome(adapter._gate, breaker, breaker.acquire(), request, 0.0)
    response = adapter._gate.watch(outcome, request, adapter.build_response(request, raw))
    assert isinstance(response.raw, Mine) and type(response.raw) is not Mine
    assert response.content == b"abc"
    assert type(response.raw) is Mine and response.raw.mine() == "still mine"
    assert breaker.snapshot().calls == 1


def test_a_retry_copy_takes_a_subclass_and_keeps_every_setting() -> None:
    class Mixed(Retry):
        pass

    mine = Retry(total=4, connect=2, status_forcelist=[503], backoff_factor=0.5)
    clone = copy.copy(mine)
    _become(clone, Mixed)
    assert type(clone) is Mixed and type(mine) is Retry
    assert vars(clone) == vars(mine)
    assert (
        type(clone.increment("GET", "/", error=urllib3.exceptions.ConnectTimeoutError())) is Mixed
    )


# -- urllib3 reads through the methods the watched class overrides -------------------------------


def test_stream_of_a_content_length_body_reads_through_read(
    flaky_server: FlakyServer, pool: urllib3.PoolManager
) -> None:
    response = _response(pool, flaky_server.url + "/bytes/40")
    _become(response, Recording)
    chunks = list(response.stream(16))
    assert b"".join(chunks) == bytes(range(40))
    assert set(CALLS) == {"read"}
    # stream() ends where the body does, with nothing left to read.
    assert response.isclosed()
    assert response.read(16) == b""


def test_stream_of_a_chunked_body_reads_through_read_chunked(
    flaky_server: FlakyServer, pool: urllib3.PoolManager
) -> None:
    response = _response(pool, flaky_server.url + "/stream?chunks=3&size=8")
    _become(response, Recording)
    assert response.chunked
    assert b"".join(response.stream(64)) == b"a" * 8 + b"b" * 8 + b"c" * 8
    assert CALLS == ["read_chunked"]
    assert response.isclosed()


def test_data_readinto_and_iteration_read_through_read_or_stream(
    flaky_server: FlakyServer, pool: urllib3.PoolManager
) -> None:
    response = _response(pool, flaky_server.url + "/bytes/20")
    _become(response, Recording)
    assert response.data == bytes(range(20))
    assert CALLS == ["read"]
    CALLS.clear()
    response = _response(pool, flaky_server.url + "/bytes/20")
    _become(response, Recording)
    buffer = bytearray(20)
    assert response.readinto(buffer) == 20 and bytes(buffer) == bytes(range(20))
    assert CALLS == ["read"]
    CALLS.clear()
    response = _response(pool, flaky_server.url + "/bytes/20")
    _become(response, Recording)
    assert b"".join(response) == bytes(range(20))
    assert set(CALLS) == {"read"}


def test_a_bad_chunk_line_closes_the_response_from_inside_the_failing_read(
    flaky_server: FlakyServer, pool: urllib3.PoolManager
) -> None:
    # Why a close() during a watched read leaves the settling to that read: the
    # read is about to raise, and its error is the outcome.
    response = _response(pool, flaky_server.url + "/stream?chunks=4&fail_after=2")
    _become(response, Recording)
    with pytest.raises(urllib3.exceptions.ProtocolError):
        for _ in response.stream(64):
            pass
    assert "close" in CALLS


def test_requests_reads_its_body_through_raw_stream(
    flaky_server: FlakyServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # requests' content and iter_content() read through raw.stream(), whose end
    # is where the watched class sees the body end.
    original = urllib3.HTTPResponse.stream

    def stream(self: urllib3.HTTPResponse, *args: Any, **kwargs: Any) -> Generator[bytes]:
        CALLS.append("stream")
        yield from original(self, *args, **kwargs)

    monkeypatch.setattr(urllib3.HTTPResponse, "stream", stream)
    adapter = CircuitBreakerAdapter(config=COUNT_ONLY)
    with requests.Session() as session:
        session.mount("http://", adapter)
        assert session.get(flaky_server.url + "/bytes/5").content == bytes(range(5))
        with session.get(flaky_server.url + "/stream?chunks=2", stream=True) as response:
            assert b"".join(response.iter_content(4)) == b"a" * 16 + b"b" * 16
    assert CALLS == ["stream", "stream"]
    assert adapter.registry.get(flaky_server.url).snapshot().calls == 2


def test_nothing_is_left_to_read_of_a_head_or_a_204(
    flaky_server: FlakyServer, pool: urllib3.PoolManager
) -> None:
    assert _response(pool, flaky_server.url + "/json", "HEAD").length_remaining == 0
    assert _response(pool, flaky_server.url + "/status/204").length_remaining == 0
    assert _response(pool, flaky_server.url + "/bytes/0").length_remaining == 0
    assert _response(pool, flaky_server.url + "/bytes/3").length_remaining == 3


def test_stream_of_zero_bytes_reads_nothing(
    flaky_server: FlakyServer, pool: urllib3.PoolManager
) -> None:
    response = _response(pool, flaky_server.url + "/bytes/3")
    assert list(response.stream(0)) == []
    assert response.read() == bytes(range(3))


# -- the finaliser -----------------------------------------------------------------------------


def test_the_class_finaliser_runs_before_the_close_of_io(
    flaky_server: FlakyServer, pool: urllib3.PoolManager
) -> None:
    # A dropped response settles lock-free in the class's __del__; io.IOBase's
    # own finaliser then calls close(), which must find nothing left to settle.
    order: list[str] = []

    class Finalising(urllib3.HTTPResponse):
        __slots__ = ()

        def __del__(self) -> None:
            order.append("__del__")
            super().__del__()

        def close(self) -> None:
            order.append("close")
            super().close()

    response = _response(pool, flaky_server.url + "/bytes/5000")
    _become(response, Finalising)
    del response
    gc.collect()
    assert order == ["__del__", "close"]


# -- what urllib3 decodes ----------------------------------------------------------------------


_PLAIN = b"the same body, " * 20
_ENCODED = {
    "gzip": gzip.compress(_PLAIN),
    "x-gzip": gzip.compress(_PLAIN),
    "GZip": gzip.compress(_PLAIN),
    "deflate": zlib.compress(_PLAIN),
    "deflate, gzip": gzip.compress(zlib.compress(_PLAIN)),
    "identity": _PLAIN,
    "compress": _PLAIN,
    "": _PLAIN,
}


@pytest.mark.parametrize("encoding", list(_ENCODED))
def test_the_content_decoders_rule_says_what_urllib3_decodes(encoding: str) -> None:
    headers = {"Content-Encoding": encoding} if encoding else {}
    raw = urllib3.HTTPResponse(
        body=io.BytesIO(_ENCODED[encoding]),
        headers=headers,
        status=200,
        preload_content=False,
        decode_content=True,
    )
    decoded = raw.read()
    assert decoded == _PLAIN  # urllib3 decodes what it knows; the rest is plain here
    assert _decodes(raw) is (_ENCODED[encoding] != _PLAIN)
