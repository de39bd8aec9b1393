"""FlakyServer: every behaviour, proven with real httpx and requests clients over loopback."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
import requests

from circuitbreaker_http.testing._server import MODES, FlakyServer

JOIN = 5.0  # seconds: the bound on every thread join in this module


def _raw(server: FlakyServer, data: bytes) -> socket.socket:
    sock = socket.create_connection((server.host, server.port), timeout=5)
    sock.sendall(data)
    return sock


def _url(client: httpx.Client, path: str) -> str:
    """An absolute URL on the client's server, for the requests side of a test."""
    return str(client.base_url.join(path))


def _read_all(sock: socket.socket) -> bytes:
    chunks: list[bytes] = []
    while True:
        data = sock.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def _in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """Run ``fn`` on a thread; its result or exception lands in the returned list."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(fn())
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


@pytest.fixture
def client(flaky_server: FlakyServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=flaky_server.url, timeout=5) as c:
        yield c


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


# -- lifecycle and addresses ---------------------------------------------------


def test_url_host_port(flaky_server: FlakyServer) -> None:
    assert flaky_server.host == "127.0.0.1"
    assert flaky_server.url == f"http://127.0.0.1:{flaky_server.port}"
    assert 0 < flaky_server.port < 65536
    assert repr(flaky_server).startswith(f"<FlakyServer {flaky_server.url}")


def test_lifecycle_errors() -> None:
    server = FlakyServer()
    with pytest.raises(RuntimeError, match="not started"):
        server.url  # noqa: B018
    assert server.start() is server
    assert server.start() is server  # idempotent while open
    server.close()
    server.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        server.start()
    assert server.threads() == []


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1", "example.com", "::"])
def test_binds_only_loopback(host: str) -> None:
    with pytest.raises(ValueError, match="loopback"):
        FlakyServer(host=host)


def test_localhost_means_ipv4_loopback() -> None:
    with FlakyServer(host="localhost") as server, httpx.Client() as c:
        assert server.host == "127.0.0.1"
        assert c.get(f"{server.url}/json").status_code == 200


def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 support in this Python")
    server = FlakyServer(host="::1")
    try:
        server.start()
    except OSError as exc:
        pytest.skip(f"cannot bind ::1: {exc}")
    with server, httpx.Client() as c, requests.Session() as s:
        assert server.url == f"http://[::1]:{server.port}"
        assert c.get(f"{server.url}/status/503").status_code == 503
        assert s.get(f"{server.url}/echo").json()["path"] == "/echo"
        with pytest.raises(httpx.TransportError):
            c.get(f"{server.url}/reset")
    assert server.threads() == []


# -- statuses and headers ------------------------------------------------------


@pytest.mark.parametrize("code", [200, 201, 204, 304, 404, 418, 429, 500, 503, 599])
def test_status(
    flaky_server: FlakyServer, client: httpx.Client, session: requests.Session, code: int
) -> None:
    r = client.get(f"/status/{code}")
    assert r.status_code == code
    s = session.get(f"{flaky_server.url}/status/{code}")
    assert s.status_code == code
    if code in (204, 304):
        assert r.content == b"" and s.content == b""
        assert "content-length" not in r.headers
    else:
        assert r.text.startswith(f"{code} ")
        assert s.text == r.text


@pytest.mark.parametrize("bad", ["abc", "99", "600", "1e3", "-1"])
def test_status_out_of_range_is_400(client: httpx.Client, bad: str) -> None:
    assert client.get(f"/status/{bad}").status_code == 400


@pytest.mark.parametrize(
    "value",
    ["120", "0", "-5", "1.5", "soon", "", "Wed, 21 Oct 2015 07:28:00 GMT", "Fri, 99 Foo 2015 x"],
)
def test_retry_after_is_raw(
    flaky_server: FlakyServer, client: httpx.Client, session: requests.Session, value: str
) -> None:
    r = client.get("/status/503", params={"retry_after": value})
    assert r.status_code == 503
    assert r.headers["retry-after"] == value
    s = session.get(f"{flaky_server.url}/status/429", params={"retry_after": value})
    assert s.status_code == 429
    assert s.headers["Retry-After"] == value


def test_date_override_is_raw(client: httpx.Client) -> None:
    assert client.get("/json", params={"date": "not a date"}).headers["date"] == "not a date"
    assert client.get("/json").headers["date"].endswith(" GMT")


def test_extra_headers_repeatable(client: httpx.Client, session: requests.Session) -> None:
    params = (
        ("header", "Cache-Control: max-age=60"),
        ("header", "Set-Cookie:a=1; Path=/"),
        ("header", "Set-Cookie:b=2"),
        ("header", "Vary:Accept-Encoding"),
    )
    r = client.get("/json", params=params)
    assert r.headers["cache-control"] == "max-age=60"
    assert r.headers.get_list("set-cookie") == ["a=1; Path=/", "b=2"]
    assert r.headers["vary"] == "Accept-Encoding"
    assert dict(r.cookies) == {"a": "1", "b": "2"}
    s = session.get(_url(client, "/json"), params=params)
    assert s.cookies.get_dict() == {"a": "1", "b": "2"}


@pytest.mark.parametrize(
    "params",
    [
        {"header": "X-Evil:a\r\nInjected: 1"},
        {"retry_after": "1\r\nX: y"},
        {"date": "x\ny"},
        {"header": "NoColon"},
        {"header": "Bad Name:v"},
        {"status": "abc"},
        {"delay": "-1"},
        {"delay": "nan"},
        {"cut": "maybe"},
    ],
)
def test_bad_query_is_400(client: httpx.Client, params: dict[str, str]) -> None:
    r = client.get("/json", params=params)
    assert r.status_code == 400
    assert "injected" not in r.headers


def test_status_query_on_any_path(client: httpx.Client, session: requests.Session) -> None:
    assert client.get("/json", params={"status": 502}).status_code == 502
    assert client.get("/json", params={"status": 502}).json()["ok"] is True
    assert client.get("/echo?status=201").status_code == 201
    assert client.get("/bytes/3?status=206").content == b"\x00\x01\x02"
    assert client.get("/no/such/path").status_code == 404
    assert client.get("/no/such/path?status=503").status_code == 503
    assert client.get("/status/404?status=200").status_code == 404  # the path wins
    assert session.get(_url(client, "/anything?status=500")).status_code == 500


def test_head_has_no_body(client: httpx.Client) -> None:
    r = client.head("/bytes/100")
    assert r.status_code == 200
    assert r.headers["content-length"] == "100"
    assert r.content == b""
    assert client.get("/json").status_code == 200  # the connection is still in sync


# -- bodies --------------------------------------------------------------------


def test_json(client: httpx.Client, session: requests.Session) -> None:
    assert client.get("/json").json()["ok"] is True
    assert session.get(_url(client, "/json")).headers["Content-Type"] == "application/json"


@pytest.mark.parametrize("n", [0, 1, 255, 256, 200_000])
def test_bytes(client: httpx.Client, session: requests.Session, n: int) -> None:
    expected = bytes(i % 256 for i in range(n))
    assert client.get(f"/bytes/{n}").content == expected
    assert session.get(_url(client, f"/bytes/{n}")).content == expected


def test_echo(client: httpx.Client, session: requests.Session) -> None:
    r = client.post(
        "/echo/ignored?x=1",
        params={"a": ["1", "2"], "b": "é"},
        headers={"X-Test": "yes"},
        content=b"hello",
    )
    assert r.status_code == 404  # only /echo echoes
    data = client.post(
        "/echo", params={"a": ["1", "2"], "b": "é"}, headers={"X-Test": "yes"}, content=b"hello"
    ).json()
    assert data["method"] == "POST"
    assert data["path"] == "/echo"
    assert data["http_version"] == "HTTP/1.1"
    assert data["headers"]["x-test"] == "yes"
    assert ["X-Test", "yes"] in data["header_list"]
    assert data["query"] == {"a": "2", "b": "é"}
    assert data["query_all"] == {"a": ["1", "2"], "b": ["é"]}
    assert data["body"] == "hello"
    assert data["body_length"] == 5
    via_requests = session.put(_url(client, "/echo"), json={"k": [1, 2]}).json()
    assert via_requests["method"] == "PUT"
    assert json.loads(via_requests["body"]) == {"k": [1, 2]}


def test_echo_chunked_request_body(client: httpx.Client) -> None:
    def parts() -> Iterator[bytes]:
        yield b"one,"
        yield b"two"

    data = client.post("/echo", content=parts()).json()
    assert data["headers"]["transfer-encoding"] == "chunked"
    assert data["body"] == "one,two"


def test_redirect_chain(client: httpx.Client, session: requests.Session) -> None:
    r = client.get("/redirect/3", follow_redirects=True)
    assert r.status_code == 200
    assert [h.status_code for h in r.history] == [302, 302, 302]
    assert r.url.path == "/redirect/0"
    first = client.get("/redirect/2")
    assert first.status_code == 302
    assert first.headers["location"] == "/redirect/1"
    s = session.get(_url(client, "/redirect/3"))
    assert s.status_code == 200
    assert len(s.history) == 3
    assert client.get("/redirect/2?status=307").status_code == 307


# -- delays --------------------------------------------------------------------


def test_delay_path_times_out(flaky_server: FlakyServer, client: httpx.Client) -> None:
    with pytest.raises(httpx.ReadTimeout):
        client.get("/delay/30", timeout=httpx.Timeout(5, read=0.2))
    with requests.Session() as s, pytest.raises(requests.exceptions.ReadTimeout):
        s.get(f"{flaky_server.url}/delay/30", timeout=(5, 0.2))


def test_delay_query_times_out_on_any_path(client: httpx.Client) -> None:
    with pytest.raises(httpx.ReadTimeout):
        client.get("/status/200?delay=30", timeout=httpx.Timeout(5, read=0.2))


def test_short_delay_completes(client: httpx.Client) -> None:
    start = time.monotonic()
    r = client.get("/delay/0.1")
    assert r.json() == {"delay": 0.1}
    assert time.monotonic() - start >= 0.1
    assert client.get("/json?delay=0.05").status_code == 200


# -- broken connections --------------------------------------------------------


def test_reset(flaky_server: FlakyServer, client: httpx.Client, session: requests.Session) -> None:
    with pytest.raises(httpx.TransportError):
        client.get("/reset")
    with pytest.raises(requests.ConnectionError):
        session.get(f"{flaky_server.url}/reset")
    assert client.get("/json").status_code == 200  # the client recovers on a new connection
    assert flaky_server.requests_by_path["/reset"] == 2


def test_reset_is_an_rst(flaky_server: FlakyServer) -> None:
    with (
        _raw(flaky_server, b"GET /reset HTTP/1.1\r\nHost: x\r\n\r\n") as sock,
        pytest.raises(ConnectionResetError),
    ):
        sock.recv(1024)


def test_close_without_response(
    flaky_server: FlakyServer, client: httpx.Client, session: requests.Session
) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        client.get("/close")
    with pytest.raises(requests.ConnectionError):
        session.get(f"{flaky_server.url}/close")
    with _raw(flaky_server, b"GET /close HTTP/1.1\r\nHost: x\r\n\r\n") as sock:
        assert _read_all(sock) == b""  # a clean FIN, not an RST


def test_short_body(flaky_server: FlakyServer, client: httpx.Client) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        client.get("/short")
    received = bytearray()
    with client.stream("GET", "/short?length=1000&sent=300") as r:
        assert r.headers["content-length"] == "1000"
        with pytest.raises(httpx.RemoteProtocolError):
            for chunk in r.iter_bytes():
                received += chunk
    assert bytes(received) == b"s" * 300
    with (
        requests.Session() as s,
        pytest.raises((requests.exceptions.ChunkedEncodingError, requests.ConnectionError)),
    ):
        s.get(f"{flaky_server.url}/short?length=10&sent=0")


def test_short_body_with_rst(client: httpx.Client) -> None:
    with pytest.raises(httpx.TransportError):
        client.get("/short?cut=reset")


@pytest.mark.parametrize("params", ["length=0", "length=5&sent=5", "sent=-1"])
def test_short_bad_params(client: httpx.Client, params: str) -> None:
    assert client.get(f"/short?{params}").status_code == 400


# -- streams -------------------------------------------------------------------


def test_stream(client: httpx.Client, session: requests.Session) -> None:
    r = client.get("/stream?chunks=4&size=8")
    assert r.headers["transfer-encoding"] == "chunked"
    assert r.content == b"a" * 8 + b"b" * 8 + b"c" * 8 + b"d" * 8
    assert client.get("/stream").content == b"a" * 16 + b"b" * 16 + b"c" * 16
    assert session.get(_url(client, "/stream?chunks=27&size=1")).content == (
        b"abcdefghijklmnopqrstuvwxyza"
    )
    assert client.get("/stream?chunks=0").content == b""


def test_stream_delay_between_chunks(client: httpx.Client) -> None:
    start = time.monotonic()
    with client.stream("GET", "/stream?chunks=3&size=4&delay=0.1") as r:
        pieces = r.iter_raw()
        first = next(pieces)
        assert first.startswith(b"a")
        rest = b"".join(pieces)
    assert first + rest == b"aaaabbbbcccc"
    assert time.monotonic() - start >= 0.2
    with pytest.raises(httpx.ReadTimeout):
        client.get("/stream?chunks=2&delay=30", timeout=httpx.Timeout(5, read=0.2))


@pytest.mark.parametrize("fail_after", [0, 2, 4])
def test_stream_fail_after(
    flaky_server: FlakyServer, client: httpx.Client, fail_after: int
) -> None:
    received = bytearray()
    with client.stream("GET", f"/stream?chunks=4&size=8&fail_after={fail_after}") as r:
        assert r.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            for chunk in r.iter_bytes():
                received += chunk
    assert bytes(received) == b"".join(bytes([ord("a") + i]) * 8 for i in range(fail_after))
    with (
        requests.Session() as s,
        s.get(
            f"{flaky_server.url}/stream?chunks=4&size=8&fail_after={fail_after}", stream=True
        ) as rr,
        pytest.raises(requests.exceptions.ChunkedEncodingError),
    ):
        for _ in rr.iter_content(8):
            pass


def test_stream_fail_after_with_rst(client: httpx.Client) -> None:
    with pytest.raises(httpx.TransportError):
        client.get("/stream?chunks=2&fail_after=1&cut=reset")


def test_stream_fail_after_out_of_range(client: httpx.Client) -> None:
    assert client.get("/stream?chunks=2&fail_after=3").status_code == 400
    assert client.get("/stream?size=0").status_code == 400


# -- stalled bodies ------------------------------------------------------------


def test_stall_body(flaky_server: FlakyServer, client: httpx.Client) -> None:
    received = bytearray()
    timeout = httpx.Timeout(5, read=0.3)
    with client.stream("GET", "/stall_body?after=10", timeout=timeout) as r:
        assert r.status_code == 200
        assert r.headers["content-length"] == "1034"
        with pytest.raises(httpx.ReadTimeout):
            for chunk in r.iter_bytes():
                received += chunk
    assert bytes(received) == b"x" * 10
    with (
        requests.Session() as s,
        s.get(
            f"{flaky_server.url}/stall_body?after=3&length=5", stream=True, timeout=(5, 0.3)
        ) as rr,
        pytest.raises(requests.ConnectionError),
    ):
        rr.content  # noqa: B018


def test_stall_body_ends_after_stall(client: httpx.Client) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        client.get("/stall_body?after=2&stall=0.05")


# -- keep-alive ----------------------------------------------------------------


def test_keep_alive_reuse_httpx(flaky_server: FlakyServer, client: httpx.Client) -> None:
    seen = [client.get("/echo").json() for _ in range(5)]
    assert {d["connection_id"] for d in seen} == {1}
    assert [d["request_on_connection"] for d in seen] == [1, 2, 3, 4, 5]
    assert flaky_server.connections == 1
    r = client.get("/echo", headers={"Connection": "close"})
    assert r.headers["connection"] == "close"
    assert r.json()["connection_id"] == 1
    assert client.get("/echo").json()["connection_id"] == 2
    assert flaky_server.connections == 2


def test_keep_alive_reuse_requests(flaky_server: FlakyServer, session: requests.Session) -> None:
    ids = [session.get(f"{flaky_server.url}/echo").json()["connection_id"] for _ in range(4)]
    assert ids == [1, 1, 1, 1]
    session.get(f"{flaky_server.url}/echo", headers={"Connection": "close"})
    assert session.get(f"{flaky_server.url}/echo").json()["connection_id"] == 2


def test_keep_alive_survives_error_statuses(
    flaky_server: FlakyServer, client: httpx.Client
) -> None:
    for code in (500, 503, 429, 204, 404):
        client.get(f"/status/{code}")
    client.get("/stream?chunks=2")
    assert flaky_server.connections == 1


def test_http_1_0(flaky_server: FlakyServer) -> None:
    with _raw(flaky_server, b"GET /json HTTP/1.0\r\n\r\n") as sock:
        reply = _read_all(sock)  # the server closes: HTTP/1.0 without keep-alive
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nConnection: close\r\n" in reply
    request = b"GET /json HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    with _raw(flaky_server, request * 2 + b"GET /json HTTP/1.0\r\n\r\n") as sock:
        reply = _read_all(sock)
    assert reply.count(b"HTTP/1.1 200 OK") == 3
    assert flaky_server.connections == 2


def test_pipelined_requests(flaky_server: FlakyServer) -> None:
    request = b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n"
    with _raw(flaky_server, request * 3 + b"GET /json HTTP/1.1\r\nConnection: close\r\n\r\n") as s:
        reply = _read_all(s)
    assert reply.count(b"HTTP/1.1 200 OK") == 4
    assert flaky_server.requests == 4


def test_expect_100_continue(flaky_server: FlakyServer) -> None:
    head = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
    with _raw(flaky_server, head) as sock:
        assert sock.recv(1024) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"hi")
        sock.shutdown(socket.SHUT_WR)
        reply = _read_all(sock)
    assert reply.startswith(b"HTTP/1.1 200 OK")
    assert b'"body": "hi"' in reply


@pytest.mark.parametrize(
    "request_bytes, status",
    [
        (b"NONSENSE\r\n\r\n", b"400"),
        (b"GET / HTTP/2.0\r\n\r\n", b"505"),
        (b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\n folded\r\n\r\n", b"400"),
        (b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n", b"400"),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", b"501"),
    ],
)
def test_malformed_requests(flaky_server: FlakyServer, request_bytes: bytes, status: bytes) -> None:
    with _raw(flaky_server, request_bytes) as sock:
        reply = _read_all(sock)
    assert reply.startswith(b"HTTP/1.1 " + status)
    assert b"\r\nConnection: close\r\n" in reply


# -- modes ---------------------------------------------------------------------


def test_default_mode_is_healthy(flaky_server: FlakyServer, client: httpx.Client) -> None:
    assert flaky_server.mode == "healthy"
    assert client.get("/api/items").json() == {"ok": True, "path": "/api/items", "mode": "healthy"}
    assert client.get("/api").status_code == 200
    assert client.get("/apix").status_code == 404  # not under /api/


def test_mode_failing(flaky_server: FlakyServer, client: httpx.Client) -> None:
    flaky_server.set_mode("failing")
    r = client.get("/api/items")
    assert r.status_code == 503
    assert "retry-after" not in r.headers
    flaky_server.set_mode("failing", status=500, retry_after=7)
    assert flaky_server.mode_params == {"status": 500, "retry_after": 7}
    r = client.get("/api/items")
    assert (r.status_code, r.headers["retry-after"]) == (500, "7")
    assert r.json() == {"error": "Internal Server Error", "status": 500}
    flaky_server.set_mode("failing", retry_after="garbage")
    assert client.get("/api/x").headers["retry-after"] == "garbage"
    # Per-request paths and explicit query parameters ignore / override the mode.
    assert client.get("/json").status_code == 200
    assert client.get("/status/201").status_code == 201
    assert client.get("/api/items?status=200").status_code == 200
    flaky_server.set_mode("healthy")
    assert client.get("/api/items").status_code == 200


def test_mode_slow(flaky_server: FlakyServer, client: httpx.Client) -> None:
    flaky_server.set_mode("slow", delay=30)
    with pytest.raises(httpx.ReadTimeout):
        client.get("/api/items", timeout=httpx.Timeout(5, read=0.2))
    assert client.get("/json").status_code == 200
    assert client.get("/api/items?delay=0").status_code == 200  # the query wins
    flaky_server.set_mode("slow", delay=0.05)
    start = time.monotonic()
    assert client.get("/api/items").json()["mode"] == "slow"
    assert time.monotonic() - start >= 0.05


def test_mode_reset(flaky_server: FlakyServer, client: httpx.Client) -> None:
    flaky_server.set_mode("reset")
    with pytest.raises(httpx.TransportError):
        client.get("/api/items")
    with requests.Session() as s, pytest.raises(requests.ConnectionError):
        s.get(f"{flaky_server.url}/api/items")
    assert client.get("/json").status_code == 200
    assert flaky_server.requests_by_path["/api/items"] == 2


def _statuses(client: httpx.Client, n: int) -> list[int]:
    return [client.get("/api/items").status_code for _ in range(n)]


def test_mode_flaky(flaky_server: FlakyServer, client: httpx.Client) -> None:
    flaky_server.set_mode("flaky", rate=0.5, seed=42)
    first = _statuses(client, 40)
    assert set(first) == {200, 503}
    assert 8 <= first.count(503) <= 32
    flaky_server.set_mode("flaky", rate=0.5, seed=42)
    assert _statuses(client, 40) == first  # seeded: reproducible
    flaky_server.set_mode("flaky", rate=0.0)
    assert set(_statuses(client, 10)) == {200}
    flaky_server.set_mode("flaky", rate=1, status=429, retry_after="1")
    r = client.get("/api/items")
    assert (r.status_code, r.headers["retry-after"]) == (429, "1")


@pytest.mark.parametrize(
    "mode, params, error",
    [
        ("down", {}, ValueError),
        ("healthy", {"status": 500}, TypeError),
        ("slow", {"rate": 0.5}, TypeError),
        ("failing", {"status": 99}, ValueError),
        ("failing", {"status": "500"}, ValueError),
        ("failing", {"retry_after": "1\r\nX: y"}, ValueError),
        ("slow", {"delay": -1}, ValueError),
        ("slow", {"delay": float("inf")}, ValueError),
        ("flaky", {"rate": 1.5}, ValueError),
        ("flaky", {"rate": True}, ValueError),
        ("flaky", {"seed": object()}, ValueError),
    ],
)
def test_set_mode_validation(
    flaky_server: FlakyServer, mode: str, params: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        flaky_server.set_mode(mode, **params)
    assert flaky_server.mode == "healthy"


def test_modes_listed() -> None:
    assert MODES == ("healthy", "failing", "slow", "reset", "flaky")


# -- counters ------------------------------------------------------------------


def test_counters(flaky_server: FlakyServer, client: httpx.Client) -> None:
    assert flaky_server.requests == 0
    assert flaky_server.requests_by_path == {}
    client.get("/json")
    client.get("/json?x=1")
    client.get("/status/500")
    with pytest.raises(httpx.TransportError):
        client.get("/reset")  # received, never answered: still counted
    assert flaky_server.requests == 4
    assert flaky_server.requests_by_path == {"/json": 2, "/status/500": 1, "/reset": 1}
    assert flaky_server.connections == 1  # all four came over one kept-alive connection
    client.get("/json")
    assert flaky_server.connections == 2  # the reset connection is gone
    flaky_server.reset_counters()
    assert (flaky_server.requests, flaky_server.connections) == (0, 0)
    assert flaky_server.requests_by_path == {}
    counter = flaky_server.requests_by_path
    counter["/json"] += 100  # a copy: the server's count is untouched
    assert flaky_server.requests_by_path == {}


def test_wait_for_requests(flaky_server: FlakyServer) -> None:
    assert flaky_server.wait_for_requests(0, timeout=0)
    assert not flaky_server.wait_for_requests(1, timeout=0.01)
    with httpx.Client() as c:
        c.get(f"{flaky_server.url}/json")
    assert flaky_server.wait_for_requests(1, timeout=0)


def test_parallel_clients(flaky_server: FlakyServer) -> None:
    paths = ["/json", "/status/503", "/stream?chunks=5&size=100", "/bytes/5000", "/echo"]

    def worker() -> int:
        with httpx.Client(base_url=flaky_server.url, timeout=5) as c:
            return sum(c.get(p).status_code for p in paths * 4)

    runs = [_in_thread(worker) for _ in range(8)]
    for thread, _ in runs:
        thread.join(JOIN)
        assert not thread.is_alive()
    assert [outcome for _, outcome in runs] == [[(200 * 4 + 503) * 4]] * 8
    assert flaky_server.requests == 8 * 20
    assert flaky_server.requests_by_path["/status/503"] == 32
    assert flaky_server.connections == 8


# -- async clients -------------------------------------------------------------


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.anyio
async def test_async_client(flaky_server: FlakyServer) -> None:
    async with httpx.AsyncClient(base_url=flaky_server.url, timeout=5) as c:
        assert (await c.get("/status/503")).status_code == 503
        with pytest.raises(httpx.TransportError):
            await c.get("/reset")
        with pytest.raises(httpx.ReadTimeout):
            await c.get("/delay/30", timeout=httpx.Timeout(5, read=0.2))
        with pytest.raises(httpx.RemoteProtocolError):
            await c.get("/short")
        ids = {(await c.get("/echo")).json()["connection_id"] for _ in range(3)}
        assert len(ids) == 1


# -- close() -------------------------------------------------------------------


def test_close_is_prompt_with_stalled_requests() -> None:
    server = FlakyServer().start()
    server.set_mode("slow", delay=60)

    def call(path: str) -> Callable[[], object]:
        def run() -> object:
            with httpx.Client(timeout=60) as c:
                return c.get(f"{server.url}{path}")

        return run

    paths = ["/delay/60", "/json?delay=60", "/stall_body?after=5", "/api/items", "/stream?delay=60"]
    runs = [_in_thread(call(p)) for p in paths]
    try:
        assert server.wait_for_requests(len(paths), timeout=JOIN)
    finally:
        start = time.monotonic()
        server.close()
        elapsed = time.monotonic() - start
    for thread, _ in runs:
        thread.join(JOIN)
        assert not thread.is_alive()
    assert elapsed < 1.0
    for _, outcome in runs:
        assert len(outcome) == 1
        assert isinstance(outcome[0], httpx.TransportError), outcome
    assert server.threads() == []
    assert server.errors == []


def test_close_with_idle_keep_alive_connections() -> None:
    with httpx.Client(timeout=5) as c, requests.Session() as s:
        server = FlakyServer().start()
        assert c.get(f"{server.url}/json").status_code == 200
        assert s.get(f"{server.url}/json").status_code == 200
        assert server.connections == 2
        start = time.monotonic()
        server.close()
        assert time.monotonic() - start < 1.0
        assert server.threads() == []
        with pytest.raises(httpx.TransportError):
            c.get(f"{server.url}/json")


def test_close_with_a_client_not_reading() -> None:
    server = FlakyServer().start()
    sock = _raw(server, b"GET /bytes/50000000 HTTP/1.1\r\nHost: x\r\n\r\n")
    with sock:
        assert server.wait_for_requests(1, timeout=JOIN)
        sock.recv(1)  # the server is sending; its buffers fill, then it blocks
        start = time.monotonic()
        server.close()
        assert time.monotonic() - start < 1.0
    assert server.threads() == []


def test_close_before_start() -> None:
    server = FlakyServer()
    server.close()
    assert server.threads() == []
