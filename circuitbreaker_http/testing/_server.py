"""``FlakyServer``: a real, embeddable, deliberately unreliable HTTP/1.1 server.

It exists so tests and the demo can run real clients (httpx, requests) over
real loopback sockets against an upstream that fails on demand: error
statuses, stalls, connection resets, bodies cut short, chunked streams that
break half-way. It needs nothing beyond the standard library.

Each connection is served by its own daemon thread with a small HTTP/1.1
implementation (keep-alive, ``Connection: close``, chunked and
``Content-Length`` request bodies, ``Expect: 100-continue``). One accept
thread waits on the listening socket and a wake-up socket pair, so
:meth:`FlakyServer.close` stops it at once; the server tracks its connection
threads and sockets, wakes them (every wait is on one ``threading.Event``,
every client socket is shut down) and joins them with a deadline.

Behaviour is chosen per request by path and query string, so tests sharing a
server never share state; requests under ``/api/`` instead follow a global
*mode* set with :meth:`FlakyServer.set_mode`.

Paths (``GET``, ``HEAD``, ``POST`` … all alike):

* ``/`` → 200, a short text body.
* ``/status/{code}`` → that status (200–599), a short text body (none for
  204 and 304).
* ``/delay/{seconds}`` → sleep, then 200 with JSON ``{"delay": seconds}``.
* ``/reset`` → read the request, then close the socket with a TCP RST
  (``SO_LINGER`` 0) without answering.
* ``/close`` → read the request, then close the socket cleanly (FIN) without
  answering.
* ``/short?length=N&sent=M`` → headers with ``Content-Length: N`` (default
  100), then only ``M`` bytes (default ``N // 2``), then close.
* ``/stream?chunks=N&size=B&delay=S&fail_after=K`` → chunked body of N chunks
  (default 3) of B bytes (default 16), chunk ``i`` filled with the letter
  ``"abc…z"[i % 26]``, S seconds between chunks (default 0). With
  ``fail_after=K`` (0 ≤ K ≤ N) the connection is cut after K chunks, without
  the terminating chunk. Here ``delay`` means between chunks, not before the
  headers.
* ``/stall_body?after=B&length=N&stall=S`` → headers with
  ``Content-Length: N`` (default ``B + 1024``), then B bytes (default 0) of
  ``b"x"``, then nothing for S seconds (default 60) or until ``close()``; then
  close.
* ``/echo`` → 200 with JSON describing the request: ``method``, ``path``,
  ``target``, ``http_version``, ``headers`` (lower-cased names, repeated
  values joined with ``", "``), ``header_list`` (``[name, value]`` pairs as
  sent), ``query`` (name → last value), ``query_all`` (name → every value),
  ``body`` (UTF-8, undecodable bytes replaced), ``body_length``,
  ``connection_id`` (1, 2, … per accepted connection) and
  ``request_on_connection`` (1, 2, … per request on that connection).
* ``/json`` → 200 with a small JSON object.
* ``/bytes/{n}`` → ``n`` bytes of ``application/octet-stream`` (byte ``i`` is
  ``i % 256``).
* ``/redirect/{n}`` → 302 with ``Location: /redirect/{n-1}``; ``/redirect/0``
  → 200 with JSON.
* ``/api`` and ``/api/…`` → whatever the mode says (see ``set_mode``).
* anything else → 404, or the ``?status=`` given.

Query parameters understood on every path (values are taken raw, after URL
decoding; a value containing CR, LF or NUL is refused with 400):

* ``status=CODE`` → answer with that status instead (not on ``/status/``,
  whose path wins; on ``/api/`` it wins over the mode's status).
* ``delay=S`` → sleep S seconds before doing anything else, including
  ``/reset`` and ``/close`` (``/delay/{s}`` wins; not on ``/stream``, where
  ``delay`` is the gap between chunks; on ``/api/`` it wins over the mode's
  delay).
* ``retry_after=VALUE`` → a ``Retry-After: VALUE`` header, verbatim.
* ``date=VALUE`` → the ``Date`` header is ``VALUE`` verbatim instead of now.
* ``header=Name:Value`` (repeatable) → an extra response header.
* ``cut=reset`` → on ``/short``, ``/stream?fail_after=`` and ``/stall_body``,
  end the connection with an RST instead of a FIN. With the default
  (``cut=close``) every byte the server sent reaches the client before EOF;
  an RST may make the client drop bytes already in flight.

Sleeps and stalls end early when the server closes; the connection is then
dropped without a response.
"""

from __future__ import annotations

import collections
import contextlib
import email.utils
import http
import ipaddress
import json
import logging
import math
import random
import selectors
import socket
import struct
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import TracebackType
from typing import Final, TypeVar
from urllib.parse import parse_qsl, urlsplit

__all__ = ["MODES", "FlakyServer"]

logger = logging.getLogger("circuitbreaker_http.flaky")

MODES: Final = ("healthy", "failing", "slow", "reset", "flaky")
"""The names :meth:`FlakyServer.set_mode` accepts."""

_S = TypeVar("_S", bound="FlakyServer")

_MAX_LINE: Final = 65536
_MAX_HEADERS: Final = 200
_MAX_BODY: Final = 64 * 1024 * 1024
_MAX_BYTES: Final = 256 * 1024 * 1024
_MAX_CHUNKS: Final = 100_000
_SEND_BLOCK: Final = 64 * 1024
_BYTE_PATTERN: Final = bytes(range(256)) * (_SEND_BLOCK // 256)
_TOKEN_CHARS: Final = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
_MODE_PARAMS: Final[Mapping[str, frozenset[str]]] = {
    "healthy": frozenset(),
    "failing": frozenset({"status", "retry_after"}),
    "slow": frozenset({"delay"}),
    "reset": frozenset(),
    "flaky": frozenset({"rate", "seed", "status", "retry_after"}),
}


class _End(Enum):
    """How a connection continues after one request."""

    KEEP = "keep"
    CLOSE = "close"
    RESET = "reset"


class _BadRequest(Exception):
    """The request cannot be served; answer ``status`` and close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _ClientGone(Exception):
    """The client closed the connection in the middle of a request."""


@dataclass
class _Request:
    method: str
    target: str
    path: str
    query: list[tuple[str, str]]
    version: str
    headers: list[tuple[str, str]]
    connection_id: int
    index: int
    body: bytes = b""
    keep_alive: bool = True

    def header(self, name: str) -> str | None:
        """All values of header ``name`` joined with ``", "``, or None."""
        lname = name.lower()
        values = [v for n, v in self.headers if n.lower() == lname]
        return ", ".join(values) if values else None

    def param(self, name: str) -> str | None:
        """The last value of query parameter ``name``, or None."""
        found: str | None = None
        for key, value in self.query:
            if key == name:
                found = value
        return found


@dataclass
class _Options:
    """Query parameters that apply to every path."""

    status: int | None = None
    delay: float | None = None
    retry_after: str | None = None
    date: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    cut: _End = _End.CLOSE


class _Reader:
    """A minimal buffered reader over a socket (no ``makefile`` reference games)."""

    __slots__ = ("_buf", "_sock")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray()

    def _fill(self) -> bool:
        data = self._sock.recv(_SEND_BLOCK)
        if not data:
            return False
        self._buf += data
        return True

    def readline(self) -> bytes:
        """One line including its ``\\n``; ``b""`` on EOF before any byte."""
        start = 0
        while True:
            i = self._buf.find(b"\n", start)
            if i >= 0:
                line = bytes(self._buf[: i + 1])
                del self._buf[: i + 1]
                return line
            if len(self._buf) > _MAX_LINE:
                raise _BadRequest(431, "line too long")
            start = len(self._buf)
            if not self._fill():
                if self._buf:
                    raise _ClientGone
                return b""

    def read_exact(self, n: int) -> bytes:
        """Exactly ``n`` bytes, or ``_ClientGone``."""
        while len(self._buf) < n:
            if not self._fill():
                raise _ClientGone
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data


def _loopback_host(host: str) -> tuple[str, socket.AddressFamily]:
    if host == "localhost":
        host = "127.0.0.1"
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"FlakyServer: host must be a loopback IP address, got {host!r}") from None
    if not addr.is_loopback:
        raise ValueError(f"FlakyServer: binds only loopback addresses, got {host!r}")
    family = socket.AF_INET6 if addr.version == 6 else socket.AF_INET
    return str(addr), family


def _check_raw(name: str, value: str) -> str:
    if any(c in value for c in "\r\n\0"):
        raise _BadRequest(400, f"{name}: CR, LF and NUL are not allowed")
    return value


def _parse_float(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise _BadRequest(400, f"{name}: not a number: {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise _BadRequest(400, f"{name}: must be finite and >= 0, got {value!r}")
    return number


def _parse_int(name: str, value: str, *, low: int = 0, high: int = _MAX_BYTES) -> int:
    try:
        number = int(value, 10)
    except ValueError:
        raise _BadRequest(400, f"{name}: not an integer: {value!r}") from None
    if not low <= number <= high:
        raise _BadRequest(400, f"{name}: must be in [{low}, {high}], got {number}")
    return number


def _parse_status(name: str, value: str) -> int:
    return _parse_int(name, value, low=200, high=599)


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _json_body(obj: object) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def _bodyless(status: int) -> bool:
    return status in (204, 304)


@dataclass(frozen=True)
class _ModeConfig:
    """The global mode, as set by ``set_mode``."""

    name: str = "healthy"
    status: int = 503
    retry_after: str | None = None
    delay: float = 1.0
    rate: float = 0.5
    given: Mapping[str, object] = field(default_factory=dict)


def _mode_number(name: str, value: object, *, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"FlakyServer.set_mode: {name} must be a number, got {value!r}")
    number = float(value)
    if math.isnan(number) or not 0 <= number <= high or number == math.inf:
        raise ValueError(f"FlakyServer.set_mode: {name} must be in [0, {high}], got {value!r}")
    return number


@dataclass(frozen=True)
class _ModeDecision:
    """What the global mode makes one ``/api/`` request do."""

    mode: str
    reset: bool = False
    status: int = 200
    delay: float = 0.0
    retry_after: str | None = None


class FlakyServer:
    """A threaded HTTP/1.1 server on loopback that fails on demand.

    Args:
        host: A loopback address to bind: ``"127.0.0.1"`` (default), any
            ``127.x.y.z``, ``"::1"`` or ``"localhost"`` (means ``127.0.0.1``).
            Anything else raises ``ValueError``.
        port: The port; 0 (default) picks a free one.

    Use it as a context manager, or call :meth:`start` and :meth:`close`.
    The module docstring lists every path and query parameter.

    Example:
        >>> import httpx
        >>> with FlakyServer() as srv:
        ...     httpx.get(f"{srv.url}/status/503").status_code
        503
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._host, self._family = _loopback_host(host)
        if not 0 <= port <= 65535:
            raise ValueError(f"FlakyServer: port must be in [0, 65535], got {port!r}")
        self._requested_port = port
        self._port: int | None = None
        self._lock = threading.Lock()
        self._counted = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._accept_thread: threading.Thread | None = None
        self._closed = False
        self._sockets: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._connections = 0
        self._requests = 0
        self._by_path: collections.Counter[str] = collections.Counter()
        self._errors: list[BaseException] = []
        self._mode = _ModeConfig()
        self._rng = random.Random(0)

    # -- lifecycle -----------------------------------------------------------

    def start(self: _S) -> _S:
        """Bind, listen and start accepting; returns ``self``. Idempotent while open.

        Raises:
            RuntimeError: The server was closed; make a new one instead.
            OSError: The address cannot be bound (e.g. no IPv6 on this host).
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("FlakyServer: closed; create a new server")
            if self._listener is not None:
                return self
            listener = socket.socket(self._family, socket.SOCK_STREAM)
            try:
                listener.bind((self._host, self._requested_port))
                listener.listen(128)
                listener.setblocking(False)
                wake = socket.socketpair()
            except BaseException:
                listener.close()
                raise
            self._listener = listener
            self._wake = wake
            self._port = int(listener.getsockname()[1])
            self._accept_thread = threading.Thread(
                target=self._accept_loop,
                args=(listener, wake[0]),
                name=f"{self._thread_prefix}accept",
                daemon=True,
            )
            self._accept_thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Stop the server, wake every stalled handler and join the threads.

        Sleeps and stalls in progress end at once, client sockets are shut
        down, and the threads are joined for at most ``timeout`` seconds in
        all. Idempotent.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            listener = self._listener
            wake = self._wake
            accept_thread = self._accept_thread
        self._stop.set()
        if listener is None or wake is None or accept_thread is None:
            return
        deadline = time.monotonic() + timeout
        with contextlib.suppress(OSError):
            wake[1].send(b"\0")
        accept_thread.join(max(0.0, deadline - time.monotonic()))
        listener.close()
        wake[0].close()
        wake[1].close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in threads if t.is_alive()]
        if alive:
            logger.warning("FlakyServer: threads still running after close(): %s", alive)

    def __enter__(self: _S) -> _S:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        where = self.url if self._port is not None else f"{self._host} (not started)"
        return f"<FlakyServer {where} mode={self._mode.name!r}{' closed' if self._closed else ''}>"

    # -- addresses -----------------------------------------------------------

    @property
    def host(self) -> str:
        """The bound address, e.g. ``"127.0.0.1"`` or ``"::1"`` (no brackets)."""
        return self._host

    @property
    def port(self) -> int:
        """The bound port. Raises ``RuntimeError`` before :meth:`start`."""
        if self._port is None:
            raise RuntimeError("FlakyServer: not started")
        return self._port

    @property
    def url(self) -> str:
        """``"http://127.0.0.1:PORT"`` or ``"http://[::1]:PORT"``, no trailing slash."""
        host = f"[{self._host}]" if self._family == socket.AF_INET6 else self._host
        return f"http://{host}:{self.port}"

    @property
    def _thread_prefix(self) -> str:
        return f"FlakyServer-{id(self):x}-"

    def threads(self) -> list[threading.Thread]:
        """This server's threads that are still alive (accept loop and connections)."""
        prefix = self._thread_prefix
        return [t for t in threading.enumerate() if t.name.startswith(prefix)]

    # -- mode ----------------------------------------------------------------

    def set_mode(self, mode: str, **params: object) -> None:
        """Choose how requests under ``/api/`` behave, from now on.

        Modes and their parameters:

        * ``"healthy"``: 200 with JSON ``{"ok": true, "path": …, "mode": …}``.
        * ``"failing"``: answer ``status`` (default 503) with JSON
          ``{"error": …, "status": …}``, plus ``Retry-After: retry_after``
          when given (any value, sent as ``str(value)``).
        * ``"slow"``: sleep ``delay`` seconds (default 1.0), then as healthy.
        * ``"reset"``: close the connection with an RST, no response.
        * ``"flaky"``: each request fails with probability ``rate`` (default
          0.5), drawn from ``random.Random(seed)`` (default seed 0; every
          ``set_mode`` call re-seeds, so a sequential run is reproducible); a
          failure answers like ``"failing"`` with ``status`` and
          ``retry_after``, a success like ``"healthy"``.

        Raises:
            ValueError: Unknown mode or a bad parameter value.
            TypeError: A parameter the mode does not take.
        """
        if mode not in _MODE_PARAMS:
            raise ValueError(
                f"FlakyServer.set_mode: unknown mode {mode!r}; expected one of {MODES}"
            )
        unknown = set(params) - _MODE_PARAMS[mode]
        if unknown:
            raise TypeError(
                f"FlakyServer.set_mode: mode {mode!r} takes no parameter(s) {sorted(unknown)}"
            )
        status = params.get("status", 503)
        if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
            raise ValueError(
                f"FlakyServer.set_mode: status must be an int in [200, 599], got {status!r}"
            )
        retry_after_value = params.get("retry_after")
        retry_after = None if retry_after_value is None else str(retry_after_value)
        if retry_after is not None and any(c in retry_after for c in "\r\n\0"):
            raise ValueError("FlakyServer.set_mode: retry_after may not contain CR, LF or NUL")
        delay = _mode_number("delay", params.get("delay", 1.0), high=math.inf)
        rate = _mode_number("rate", params.get("rate", 0.5), high=1.0)
        seed = params.get("seed", 0)
        if seed is not None and not isinstance(seed, (int, float, str, bytes, bytearray)):
            raise ValueError(
                f"FlakyServer.set_mode: seed must be an int, str or None, got {seed!r}"
            )
        config = _ModeConfig(mode, status, retry_after, delay, rate, dict(params))
        with self._lock:
            self._mode = config
            self._rng = random.Random(seed)

    @property
    def mode(self) -> str:
        """The current mode's name (``"healthy"`` after start)."""
        with self._lock:
            return self._mode.name

    @property
    def mode_params(self) -> dict[str, object]:
        """The parameters the current mode was set with, as given (a copy)."""
        with self._lock:
            return dict(self._mode.given)

    def _decide(self) -> _ModeDecision:
        with self._lock:
            config = self._mode
            failed = config.name == "failing"
            if config.name == "flaky":
                failed = self._rng.random() < config.rate
        if config.name == "reset":
            return _ModeDecision(config.name, reset=True)
        if config.name == "slow":
            return _ModeDecision(config.name, delay=config.delay)
        if failed:
            return _ModeDecision(config.name, status=config.status, retry_after=config.retry_after)
        return _ModeDecision(config.name)

    # -- counters ------------------------------------------------------------

    @property
    def requests(self) -> int:
        """Requests received (request line and headers read) since start or reset."""
        with self._lock:
            return self._requests

    @property
    def requests_by_path(self) -> collections.Counter[str]:
        """Requests received per path (no query string); a copy."""
        with self._lock:
            return collections.Counter(self._by_path)

    @property
    def connections(self) -> int:
        """Connections accepted since start or reset; proves keep-alive reuse."""
        with self._lock:
            return self._connections

    @property
    def errors(self) -> list[BaseException]:
        """Unexpected exceptions raised while serving (bugs, not client errors); a copy."""
        with self._lock:
            return list(self._errors)

    def reset_counters(self) -> None:
        """Zero ``requests``, ``requests_by_path`` and ``connections``."""
        with self._lock:
            self._requests = 0
            self._connections = 0
            self._by_path.clear()

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> bool:
        """Block until ``requests >= count``; False if ``timeout`` passed first.

        Use it to know a request has reached the server (e.g. is now stalled)
        without sleeping.
        """
        with self._counted:
            return self._counted.wait_for(lambda: self._requests >= count, timeout)

    # -- connections ---------------------------------------------------------

    def _accept_loop(self, listener: socket.socket, wake: socket.socket) -> None:
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(listener, selectors.EVENT_READ)
                selector.register(wake, selectors.EVENT_READ)
                while not self._stop.is_set():
                    for key, _ in selector.select():
                        if key.fileobj is wake:
                            return
                        try:
                            sock, _ = listener.accept()
                        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                            continue
                        except OSError:  # e.g. out of file descriptors: back off, retry
                            logger.exception("FlakyServer: accept() failed")
                            self._stop.wait(0.05)
                            continue
                        sock.setblocking(True)
                        self._spawn(sock)
        except Exception as exc:
            logger.exception("FlakyServer: the accept loop failed")
            with self._lock:
                self._errors.append(exc)

    def _spawn(self, sock: socket.socket) -> None:
        with self._lock:
            if self._closed:
                sock.close()
                return
            self._connections += 1
            connection_id = self._connections
            self._sockets.add(sock)
            thread = threading.Thread(
                target=self._serve_connection,
                args=(sock, connection_id),
                name=f"{self._thread_prefix}conn-{connection_id}",
                daemon=True,
            )
            self._threads.add(thread)
            thread.start()

    def _serve_connection(self, sock: socket.socket, connection_id: int) -> None:
        end = _End.CLOSE
        try:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            reader = _Reader(sock)
            index = 0
            while not self._stop.is_set():
                index += 1
                try:
                    request = self._read_request(sock, reader, connection_id, index)
                except _BadRequest as bad:
                    body = f"{bad.status} {_reason(bad.status)}: {bad.message}\n".encode()
                    head = (
                        f"HTTP/1.1 {bad.status} {_reason(bad.status)}\r\n"
                        f"Date: {email.utils.formatdate(usegmt=True)}\r\n"
                        "Content-Type: text/plain; charset=utf-8\r\n"
                        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                    )
                    sock.sendall(head.encode("latin-1") + body)
                    break
                if request is None:
                    break
                try:
                    end = self._respond(sock, request)
                except _BadRequest as bad:
                    self._send(
                        sock,
                        request,
                        _Options(),
                        bad.status,
                        [],
                        f"{bad.message}\n".encode(),
                        keep=False,
                    )
                    end = _End.CLOSE
                if end is not _End.KEEP:
                    break
        except (OSError, _ClientGone):
            end = _End.CLOSE
        except Exception as exc:
            logger.exception("FlakyServer: unexpected error serving connection %d", connection_id)
            with self._lock:
                self._errors.append(exc)
            end = _End.CLOSE
        finally:
            self._drop(sock, end)
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _drop(self, sock: socket.socket, end: _End) -> None:
        with self._lock:
            self._sockets.discard(sock)
        if end is _End.RESET:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
            # Unread bytes in the receive buffer would turn close() into an RST
            # that can destroy the response still in flight; drain what is there.
            with contextlib.suppress(OSError):
                sock.setblocking(False)
                while sock.recv(_SEND_BLOCK):
                    pass
        sock.close()

    def _read_request(
        self, sock: socket.socket, reader: _Reader, connection_id: int, index: int
    ) -> _Request | None:
        line = reader.readline()
        for _ in range(8):  # RFC 9112 §2.2: ignore a few empty lines before a request
            if line not in (b"\r\n", b"\n"):
                break
            line = reader.readline()
        if not line:
            return None
        parts = line.decode("latin-1").rstrip("\r\n").split(" ")
        if len(parts) != 3 or not parts[0] or not parts[1]:
            raise _BadRequest(400, "malformed request line")
        method, target, version = parts
        if not set(method) <= _TOKEN_CHARS:
            raise _BadRequest(400, "malformed method")
        if version not in ("HTTP/1.0", "HTTP/1.1"):
            raise _BadRequest(505, f"unsupported version {version!r}")
        headers: list[tuple[str, str]] = []
        while True:
            raw = reader.readline()
            if not raw:
                raise _ClientGone
            if raw in (b"\r\n", b"\n"):
                break
            if raw[:1] in (b" ", b"\t"):
                raise _BadRequest(400, "obsolete header folding")
            name, sep, value = raw.decode("latin-1").rstrip("\r\n").partition(":")
            if not sep or not name or not set(name) <= _TOKEN_CHARS:
                raise _BadRequest(400, f"malformed header line {raw[:80]!r}")
            headers.append((name, value.strip(" \t")))
            if len(headers) > _MAX_HEADERS:
                raise _BadRequest(431, "too many headers")
        split = urlsplit(target)
        path = split.path or "/"
        request = _Request(
            method=method,
            target=target,
            path=path,
            query=parse_qsl(split.query, keep_blank_values=True),
            version=version,
            headers=headers,
            connection_id=connection_id,
            index=index,
        )
        tokens = {
            t.strip().lower() for t in (request.header("connection") or "").split(",") if t.strip()
        }
        if version == "HTTP/1.1":
            request.keep_alive = "close" not in tokens
        else:
            request.keep_alive = "keep-alive" in tokens
        with self._counted:
            self._requests += 1
            self._by_path[path] += 1
            self._counted.notify_all()
        request.body = self._read_body(sock, reader, request)
        return request

    def _read_body(self, sock: socket.socket, reader: _Reader, request: _Request) -> bytes:
        transfer_encoding = request.header("transfer-encoding")
        content_length = request.header("content-length")
        if transfer_encoding is None and content_length is None:
            return b""
        expect = request.header("expect")
        if (
            expect is not None
            and expect.lower() == "100-continue"
            and request.version == "HTTP/1.1"
        ):
            sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        if transfer_encoding is not None:
            if transfer_encoding.strip().lower() != "chunked":
                raise _BadRequest(501, f"unsupported transfer-encoding {transfer_encoding!r}")
            chunks: list[bytes] = []
            total = 0
            while True:
                size_line = reader.readline()
                if not size_line:
                    raise _ClientGone
                size_text = size_line.split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise _BadRequest(400, "malformed chunk size") from None
                if size < 0:
                    raise _BadRequest(400, "malformed chunk size")
                total += size
                if total > _MAX_BODY:
                    raise _BadRequest(413, "request body too large")
                if size == 0:
                    while reader.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(reader.read_exact(size))
                reader.read_exact(2)
        assert content_length is not None
        try:
            length = int(content_length, 10)
        except ValueError:
            raise _BadRequest(400, f"bad content-length {content_length!r}") from None
        if length < 0:
            raise _BadRequest(400, f"bad content-length {content_length!r}")
        if length > _MAX_BODY:
            raise _BadRequest(413, "request body too large")
        return reader.read_exact(length)

    # -- responses -----------------------------------------------------------

    def _options(self, request: _Request) -> _Options:
        options = _Options()
        for name, value in request.query:
            if name == "status":
                options.status = _parse_status(name, value)
            elif name == "delay":
                options.delay = _parse_float(name, value)
            elif name == "retry_after":
                options.retry_after = _check_raw(name, value)
            elif name == "date":
                options.date = _check_raw(name, value)
            elif name == "header":
                header_name, sep, header_value = _check_raw(name, value).partition(":")
                header_name = header_name.strip()
                if not sep or not header_name or not set(header_name) <= _TOKEN_CHARS:
                    raise _BadRequest(400, f"header: expected Name:Value, got {value!r}")
                options.headers.append((header_name, header_value.strip(" \t")))
            elif name == "cut":
                if value not in ("close", "reset"):
                    raise _BadRequest(400, f"cut: expected close or reset, got {value!r}")
                options.cut = _End.RESET if value == "reset" else _End.CLOSE
        return options

    def _head(
        self,
        request: _Request,
        options: _Options,
        status: int,
        headers: list[tuple[str, str]],
        *,
        length: int | None,
        chunked: bool = False,
        keep: bool,
    ) -> bytes:
        date = options.date if options.date is not None else email.utils.formatdate(usegmt=True)
        lines = [f"HTTP/1.1 {status} {_reason(status)}", f"Date: {date}", "Server: FlakyServer"]
        lines.extend(f"{n}: {v}" for n, v in headers)
        if options.retry_after is not None:
            lines.append(f"Retry-After: {options.retry_after}")
        lines.extend(f"{n}: {v}" for n, v in options.headers)
        if chunked:
            lines.append("Transfer-Encoding: chunked")
        elif length is not None:
            lines.append(f"Content-Length: {length}")
        if not keep:
            lines.append("Connection: close")
        elif request.version == "HTTP/1.0":
            lines.append("Connection: keep-alive")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", errors="replace")

    def _send(
        self,
        sock: socket.socket,
        request: _Request,
        options: _Options,
        status: int,
        headers: list[tuple[str, str]],
        body: bytes,
        *,
        keep: bool | None = None,
    ) -> _End:
        keep = request.keep_alive if keep is None else keep
        if _bodyless(status):
            head = self._head(request, options, status, headers, length=None, keep=keep)
            body = b""
        else:
            head = self._head(request, options, status, headers, length=len(body), keep=keep)
        if request.method == "HEAD":
            body = b""
        sock.sendall(head + body)
        return _End.KEEP if keep else _End.CLOSE

    def _respond(self, sock: socket.socket, request: _Request) -> _End:
        options = self._options(request)
        path = request.path
        parts = path.strip("/").split("/")
        text = [("Content-Type", "text/plain; charset=utf-8")]
        as_json = [("Content-Type", "application/json")]

        # Whole-request delay first: /delay/{s} wins, then ?delay= (not /stream).
        delay = options.delay if path != "/stream" else None
        if parts[0] == "delay" and len(parts) == 2:
            delay = _parse_float("delay", parts[1])

        decision: _ModeDecision | None = None
        if path == "/api" or path.startswith("/api/"):
            decision = self._decide()
            if delay is None and decision.delay:
                delay = decision.delay
        if delay and self._stop.wait(delay):
            return _End.CLOSE

        if decision is not None:
            if decision.reset:
                return _End.RESET
            if options.retry_after is None:
                options.retry_after = decision.retry_after
            status = options.status or decision.status
            if status >= 400:
                obj: dict[str, object] = {"error": _reason(status), "status": status}
            else:
                obj = {"ok": True, "path": path, "mode": decision.mode}
            return self._send(sock, request, options, status, as_json, _json_body(obj))

        if path == "/reset":
            return _End.RESET
        if path == "/close":
            return _End.CLOSE
        if parts[0] == "status" and len(parts) == 2:
            status = _parse_status("status", parts[1])
            body = f"{status} {_reason(status)}\n".encode()
            return self._send(sock, request, options, status, text, body)
        if parts[0] == "delay" and len(parts) == 2:
            body = _json_body({"delay": delay})
            return self._send(sock, request, options, options.status or 200, as_json, body)
        if path == "/short":
            return self._short(sock, request, options)
        if path == "/stream":
            return self._stream(sock, request, options)
        if path == "/stall_body":
            return self._stall_body(sock, request, options)
        if path == "/echo":
            return self._send(
                sock, request, options, options.status or 200, as_json, self._echo(request)
            )
        if path == "/json":
            body = _json_body({"ok": True, "server": "FlakyServer", "items": [1, 2, 3]})
            return self._send(sock, request, options, options.status or 200, as_json, body)
        if parts[0] == "bytes" and len(parts) == 2:
            return self._bytes(sock, request, options, _parse_int("n", parts[1]))
        if parts[0] == "redirect" and len(parts) == 2:
            n = _parse_int("n", parts[1], high=1000)
            if n == 0:
                body = _json_body({"redirects": "done"})
                return self._send(sock, request, options, options.status or 200, as_json, body)
            headers = [("Location", f"/redirect/{n - 1}"), *text]
            return self._send(sock, request, options, options.status or 302, headers, b"")
        if path == "/":
            return self._send(sock, request, options, options.status or 200, text, b"FlakyServer\n")
        status = options.status or 404
        return self._send(
            sock, request, options, status, text, f"{status} {_reason(status)}\n".encode()
        )

    def _echo(self, request: _Request) -> bytes:
        headers: dict[str, str] = {}
        for name, value in request.headers:
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        query_all: dict[str, list[str]] = {}
        for name, value in request.query:
            query_all.setdefault(name, []).append(value)
        return _json_body(
            {
                "method": request.method,
                "path": request.path,
                "target": request.target,
                "http_version": request.version,
                "headers": headers,
                "header_list": [list(pair) for pair in request.headers],
                "query": {name: values[-1] for name, values in query_all.items()},
                "query_all": query_all,
                "body": request.body.decode("utf-8", errors="replace"),
                "body_length": len(request.body),
                "connection_id": request.connection_id,
                "request_on_connection": request.index,
            }
        )

    def _bytes(self, sock: socket.socket, request: _Request, options: _Options, n: int) -> _End:
        status = options.status or 200
        keep = request.keep_alive
        headers = [("Content-Type", "application/octet-stream")]
        if _bodyless(status):
            return self._send(sock, request, options, status, headers, b"")
        sock.sendall(self._head(request, options, status, headers, length=n, keep=keep))
        remaining = 0 if request.method == "HEAD" else n
        while remaining > 0:
            block = _BYTE_PATTERN[: min(remaining, _SEND_BLOCK)]
            sock.sendall(block)
            remaining -= len(block)
        return _End.KEEP if keep else _End.CLOSE

    def _short(self, sock: socket.socket, request: _Request, options: _Options) -> _End:
        length_text = request.param("length")
        length = 100 if length_text is None else _parse_int("length", length_text, low=1)
        sent_text = request.param("sent")
        sent = length // 2 if sent_text is None else _parse_int("sent", sent_text)
        if sent >= length:
            raise _BadRequest(400, f"sent ({sent}) must be less than length ({length})")
        status = options.status or 200
        headers = [("Content-Type", "application/octet-stream")]
        head = self._head(request, options, status, headers, length=length, keep=False)
        if request.method == "HEAD":
            sock.sendall(head)
            return _End.CLOSE
        sock.sendall(head + b"s" * sent)
        return options.cut

    def _stream(self, sock: socket.socket, request: _Request, options: _Options) -> _End:
        chunks_text = request.param("chunks")
        chunks = 3 if chunks_text is None else _parse_int("chunks", chunks_text, high=_MAX_CHUNKS)
        size_text = request.param("size")
        size = 16 if size_text is None else _parse_int("size", size_text, low=1, high=_MAX_BODY)
        delay_text = request.param("delay")
        delay = 0.0 if delay_text is None else _parse_float("delay", delay_text)
        fail_text = request.param("fail_after")
        fail_after = None if fail_text is None else _parse_int("fail_after", fail_text, high=chunks)
        status = options.status or 200
        keep = request.keep_alive and fail_after is None
        headers = [("Content-Type", "application/octet-stream")]
        if _bodyless(status):
            return self._send(sock, request, options, status, headers, b"", keep=keep)
        sock.sendall(
            self._head(request, options, status, headers, length=None, chunked=True, keep=keep)
        )
        if request.method == "HEAD":
            return _End.KEEP if keep else _End.CLOSE
        for i in range(chunks):
            if fail_after is not None and i == fail_after:
                return options.cut
            if i > 0 and delay and self._stop.wait(delay):
                return _End.CLOSE
            letter = b"abcdefghijklmnopqrstuvwxyz"[i % 26 : i % 26 + 1]
            sock.sendall(b"%x\r\n" % size + letter * size + b"\r\n")
        if fail_after is not None:
            return options.cut
        sock.sendall(b"0\r\n\r\n")
        return _End.KEEP if keep else _End.CLOSE

    def _stall_body(self, sock: socket.socket, request: _Request, options: _Options) -> _End:
        after_text = request.param("after")
        after = 0 if after_text is None else _parse_int("after", after_text, high=_MAX_BODY)
        length_text = request.param("length")
        length = after + 1024 if length_text is None else _parse_int("length", length_text)
        if length <= after:
            raise _BadRequest(400, f"length ({length}) must be greater than after ({after})")
        stall_text = request.param("stall")
        stall = 60.0 if stall_text is None else _parse_float("stall", stall_text)
        status = options.status or 200
        headers = [("Content-Type", "application/octet-stream")]
        head = self._head(request, options, status, headers, length=length, keep=False)
        if request.method == "HEAD":
            sock.sendall(head)
            return _End.CLOSE
        sock.sendall(head + b"x" * after)
        if self._stop.wait(stall):
            return _End.CLOSE
        return options.cut
