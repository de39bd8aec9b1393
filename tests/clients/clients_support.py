"""One synchronous driver per client, so a behaviour table is written once and run against all.

Imported by name (``from clients_support import ...``): pytest's default
``prepend`` import mode puts this folder on ``sys.path`` for the test modules
in it. The name carries a ``clients`` prefix to stay unique among the
rootless test modules.

Every driver sends ``GET`` requests to a :class:`FlakyServer` through one
:class:`BreakerRegistry` the test built (on a :class:`ManualClock`), with the
client's own integration in front:

* ``httpx`` / ``httpx2``: ``Client(transport=CircuitBreakerTransport(...))``;
* ``httpx-async-*`` / ``httpx2-async-*``: ``AsyncClient(transport=
  AsyncCircuitBreakerTransport(...))`` under asyncio or trio;
* ``requests``: a ``Session`` with ``CircuitBreakerAdapter`` mounted;
* ``aiohttp``: a ``ClientSession`` with ``CircuitBreakerMiddleware`` (asyncio).

The interface is plain sync code. An async client runs on an event loop of
its own in a helper thread (anyio's blocking portal), started per test, so a
response left open by one call is still alive, on the same loop, for the
next: each method hands one coroutine to the portal and waits for it.

Per-request options (``circuitbreaker_http.options``) are a ``contextvars``
value: a driver enters them inside the call it makes (inside the task, for
an async client), which is where a user's code enters them.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread
import pytest

import circuitbreaker_http
from circuitbreaker_http import BreakerRegistry
from circuitbreaker_http.testing._server import FlakyServer

T = TypeVar("T")

SYNC_CLIENTS = ("httpx", "httpx2", "requests")
ASYNC_CLIENTS = (
    "httpx-async-asyncio",
    "httpx-async-trio",
    "httpx2-async-asyncio",
    "httpx2-async-trio",
    "aiohttp",
)
CLIENTS = SYNC_CLIENTS + ASYNC_CLIENTS

Opts = Mapping[str, Any] | None
Headers = Mapping[str, str] | None

ClientFactory = Callable[..., "Driver"]
"""What the ``client`` fixture gives a row: ``client(registry, fallback=None) -> Driver``."""


@dataclass
class Result:
    """What a driver's ``get`` returns.

    Attributes:
        status: The response's status code.
        headers: Its headers, names in lower case.
        body: The body, or ``None`` while a streamed response is left unread.
        info: The breaker info of the response (``None`` when it went through no breaker).
        response: The client's own response object (keep it to read or close it later;
            drop every reference to it to test garbage collection).
    """

    status: int
    headers: dict[str, str]
    body: bytes | None
    info: Mapping[str, Any] | None
    response: Any = field(repr=False)


@contextlib.contextmanager
def _options(opts: Opts) -> Iterator[None]:
    if opts is None:
        yield
        return
    with circuitbreaker_http.options(**opts):
        yield


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # Every request here is plain http:// on loopback, but an httpx transport builds
    # its SSL context (certifi's bundle, ~90 ms) when it is made: share one instead.
    return ssl.create_default_context()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Driver:
    """The common interface; subclasses fill in one client each.

    Attributes:
        name: The client's id in the table (one of :data:`CLIENTS`).
        is_async: Whether the client runs on an event loop (so a task can be cancelled).
        response_type: The client's own response class.
        error_type: The client's own error class that a short circuit must also be.
        attempts_on_dropped_connection: How many times the client itself sends a ``GET``
            whose connection dropped before the response (each attempt that reaches the
            breaker is a request of its own).
        holds_unread_response: Whether the client itself keeps an unread response alive
            while its body is still arriving, so dropping it leaves nothing to collect
            until the connection is gone.
    """

    name: str
    is_async: bool = False
    attempts_on_dropped_connection: int = 1
    holds_unread_response: bool = False
    response_type: type
    error_type: type

    def __init__(self, server: FlakyServer, registry: BreakerRegistry, fallback: Any) -> None:
        self.server = server
        self.registry = registry
        self.fallback = fallback
        self._closed = False

    def url(self, path: str) -> str:
        """``path`` on the server, or ``path`` itself when it is already a URL."""
        return path if "://" in path else self.server.url + path

    # -- the table's verbs -----------------------------------------------------------------------

    def get(
        self,
        path: str,
        *,
        stream: bool = False,
        read: bool = True,
        timeout: float | None = None,
        opts: Opts = None,
        headers: Headers = None,
    ) -> Result:
        """``GET path`` (with extra request ``headers``); ``stream=True, read=False`` leaves
        the body unread and open."""
        raise NotImplementedError

    def get_raises(
        self, path: str, *, stream: bool = False, timeout: float | None = None, opts: Opts = None
    ) -> BaseException:
        """``GET path`` (body read), which must raise: the exception it raised."""
        try:
            result = self.get(path, stream=stream, read=True, timeout=timeout, opts=opts)
        except Exception as exc:
            return exc
        raise AssertionError(f"{self.name}: GET {path} did not raise: {result!r}")

    def read(self, result: Result) -> bytes:
        """Read the rest of a streamed response's body (the response ends with it)."""
        raise NotImplementedError

    def read_raises(self, result: Result) -> BaseException:
        """Read a streamed response's body, which must raise: the exception it raised."""
        try:
            body = self.read(result)
        except Exception as exc:
            return exc
        raise AssertionError(f"{self.name}: reading the body did not raise: {body!r}")

    def close_response(self, result: Result) -> None:
        """Close a response, read or not."""
        raise NotImplementedError

    def cancel_in_flight(self, path: str, opts: Opts = None) -> None:
        """Start ``GET path`` in a task and cancel it once the server has the request."""
        raise NotImplementedError(f"{self.name} has no task to cancel")

    def close(self) -> None:
        """Close the client (and stop its event loop); idempotent."""
        if not self._closed:
            self._closed = True
            self._close()

    def _close(self) -> None:
        raise NotImplementedError


# -- sync clients ---------------------------------------------------------------------------------


class HttpxDriver(Driver):
    """``httpx.Client`` or ``httpx2.Client`` over ``CircuitBreakerTransport``."""

    def __init__(
        self,
        hx: ModuleType,
        cb: ModuleType,
        server: FlakyServer,
        registry: BreakerRegistry,
        fallback: Any,
    ) -> None:
        super().__init__(server, registry, fallback)
        self.name = hx.__name__
        self.hx = hx
        self.response_type = hx.Response
        self.error_type = hx.TransportError
        transport = cb.CircuitBreakerTransport(
            registry=registry, fallback=fallback, verify=_ssl_context()
        )
        self.client = hx.Client(transport=transport, follow_redirects=True)

    def _request(self, path: str, timeout: float | None, headers: Headers = None) -> Any:
        if timeout is None:
            return self.client.build_request("GET", self.url(path), headers=headers)
        return self.client.build_request("GET", self.url(path), timeout=timeout, headers=headers)

    def get(
        self,
        path: str,
        *,
        stream: bool = False,
        read: bool = True,
        timeout: float | None = None,
        opts: Opts = None,
        headers: Headers = None,
    ) -> Result:
        with _options(opts):
            response = self.client.send(self._request(path, timeout, headers), stream=stream)
            body: bytes | None = None
            if not stream:
                body = response.content
            elif read:
                body = response.read()
        return _httpx_result(response, body)

    def read(self, result: Result) -> bytes:
        body: bytes = result.response.read()
        result.body = body
        return body

    def close_response(self, result: Result) -> None:
        result.response.close()

    def _close(self) -> None:
        self.client.close()


def _httpx_result(response: Any, body: bytes | None) -> Result:
    return Result(
        status=response.status_code,
        headers={k.lower(): v for k, v in response.headers.items()},
        body=body,
        info=response.extensions.get("circuit_breaker"),
        response=response,
    )


class RequestsDriver(Driver):
    """``requests.Session`` with ``CircuitBreakerAdapter`` mounted for both schemes."""

    name = "requests"

    def __init__(self, server: FlakyServer, registry: BreakerRegistry, fallback: Any) -> None:
        super().__init__(server, registry, fallback)
        import requests

        from circuitbreaker_http.requests import CircuitBreakerAdapter

        self.response_type = requests.Response
        self.error_type = requests.exceptions.ConnectionError
        self.session = requests.Session()
        adapter = CircuitBreakerAdapter(registry=registry, fallback=fallback)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def get(
        self,
        path: str,
        *,
        stream: bool = False,
        read: bool = True,
        timeout: float | None = None,
        opts: Opts = None,
        headers: Headers = None,
    ) -> Result:
        with _options(opts):
            response = self.session.get(
                self.url(path), stream=stream, timeout=timeout, headers=headers
            )
            body: bytes | None = response.content if (not stream or read) else None
        return Result(
            status=response.status_code,
            headers={k.lower(): v for k, v in response.headers.items()},
            body=body,
            info=getattr(response, "circuit_breaker", None),
            response=response,
        )

    def read(self, result: Result) -> bytes:
        body: bytes = result.response.content
        result.body = body
        return body

    def close_response(self, result: Result) -> None:
        result.response.close()

    def _close(self) -> None:
        self.session.close()


# -- async clients --------------------------------------------------------------------------------


class AsyncDriver(Driver):
    """An async client on its own event loop, in a helper thread (anyio's blocking portal)."""

    is_async = True

    def __init__(
        self, backend: str, server: FlakyServer, registry: BreakerRegistry, fallback: Any
    ) -> None:
        super().__init__(server, registry, fallback)
        self.backend = backend
        self._stack = contextlib.ExitStack()
        self.portal = self._stack.enter_context(anyio.from_thread.start_blocking_portal(backend))
        try:
            self.portal.call(self._open)
        except BaseException:
            self._stack.close()
            raise

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``fn(*args)`` on the driver's loop and wait for it."""
        return self.portal.call(fn, *args)

    async def _open(self) -> None:
        raise NotImplementedError

    async def _aclose(self) -> None:
        raise NotImplementedError

    async def _get(
        self,
        path: str,
        stream: bool,
        read: bool,
        timeout: float | None,
        opts: Opts,
        headers: Headers = None,
    ) -> Result:
        raise NotImplementedError

    async def _read(self, result: Result) -> bytes:
        raise NotImplementedError

    async def _close_response(self, result: Result) -> None:
        raise NotImplementedError

    def get(
        self,
        path: str,
        *,
        stream: bool = False,
        read: bool = True,
        timeout: float | None = None,
        opts: Opts = None,
        headers: Headers = None,
    ) -> Result:
        return self.run(self._get, path, stream, read, timeout, opts, headers)

    def read(self, result: Result) -> bytes:
        body = self.run(self._read, result)
        result.body = body
        return body

    def close_response(self, result: Result) -> None:
        self.run(self._close_response, result)

    def cancel_in_flight(self, path: str, opts: Opts = None) -> None:
        self.run(self._cancel_in_flight, path, opts)

    async def _cancel_in_flight(self, path: str, opts: Opts) -> None:
        before = self.server.requests
        finished: list[Result] = []

        async def request() -> None:
            finished.append(await self._get(path, False, True, None, opts))

        async with anyio.create_task_group() as tg:
            tg.start_soon(request)
            # Wait, off the loop, until the request is on the server: it is then in flight.
            reached = await anyio.to_thread.run_sync(self.server.wait_for_requests, before + 1)
            tg.cancel_scope.cancel()
        assert reached, f"{self.name}: GET {path} never reached the server"
        assert not finished, f"{self.name}: GET {path} finished before it was cancelled"

    def _close(self) -> None:
        try:
            self.portal.call(self._aclose)
        finally:
            self._stack.close()


class AsyncHttpxDriver(AsyncDriver):
    """``httpx.AsyncClient`` or ``httpx2.AsyncClient`` over ``AsyncCircuitBreakerTransport``."""

    def __init__(
        self,
        hx: ModuleType,
        cb: ModuleType,
        backend: str,
        server: FlakyServer,
        registry: BreakerRegistry,
        fallback: Any,
    ) -> None:
        self.name = f"{hx.__name__}-async-{backend}"
        self.hx = hx
        self.cb = cb
        self.response_type = hx.Response
        self.error_type = hx.TransportError
        super().__init__(backend, server, registry, fallback)

    async def _open(self) -> None:
        transport = self.cb.AsyncCircuitBreakerTransport(
            registry=self.registry, fallback=self.fallback, verify=_ssl_context()
        )
        self.client = self.hx.AsyncClient(transport=transport, follow_redirects=True)

    async def _aclose(self) -> None:
        await self.client.aclose()

    async def _get(
        self,
        path: str,
        stream: bool,
        read: bool,
        timeout: float | None,
        opts: Opts,
        headers: Headers = None,
    ) -> Result:
        client = self.client
        with _options(opts):
            if timeout is None:
                request = client.build_request("GET", self.url(path), headers=headers)
            else:
                request = client.build_request(
                    "GET", self.url(path), timeout=timeout, headers=headers
                )
            response = await client.send(request, stream=stream)
            body: bytes | None = None
            if not stream:
                body = response.content
            elif read:
                body = await response.aread()
        return _httpx_result(response, body)

    async def _read(self, result: Result) -> bytes:
        body: bytes = await result.response.aread()
        return body

    async def _close_response(self, result: Result) -> None:
        await result.response.aclose()


class AiohttpDriver(AsyncDriver):
    """``aiohttp.ClientSession(middlewares=[CircuitBreakerMiddleware(...)])``, on asyncio."""

    name = "aiohttp"
    # aiohttp retries an idempotent request once when its connection drops
    # (ClientOSError, ServerDisconnectedError), on a fresh connection as well, and
    # runs the middlewares again for the retry: circuitbreaker_http/aiohttp.py
    # counts each attempt as a request of its own.
    attempts_on_dropped_connection = 2
    # aiohttp's connection references an unread response until its body has
    # arrived or the connection is gone (circuitbreaker_http/aiohttp.py says so).
    holds_unread_response = True

    def __init__(self, server: FlakyServer, registry: BreakerRegistry, fallback: Any) -> None:
        import aiohttp

        self.aiohttp = aiohttp
        self.response_type = aiohttp.ClientResponse
        self.error_type = aiohttp.ClientConnectionError
        super().__init__("asyncio", server, registry, fallback)

    async def _open(self) -> None:
        from circuitbreaker_http.aiohttp import CircuitBreakerMiddleware

        middleware = CircuitBreakerMiddleware(registry=self.registry, fallback=self.fallback)
        self.session = self.aiohttp.ClientSession(
            middlewares=[middleware], timeout=self.aiohttp.ClientTimeout(total=30.0)
        )

    async def _aclose(self) -> None:
        await self.session.close()

    async def _get(
        self,
        path: str,
        stream: bool,
        read: bool,
        timeout: float | None,
        opts: Opts,
        headers: Headers = None,
    ) -> Result:
        from circuitbreaker_http.aiohttp import breaker_info

        kwargs: dict[str, Any] = {"headers": headers}
        if timeout is not None:
            # The socket read timeout: aiohttp's ServerTimeoutError, on the headers or the body.
            kwargs["timeout"] = self.aiohttp.ClientTimeout(total=30.0, sock_read=timeout)
        with _options(opts):
            response = await self.session.get(self.url(path), **kwargs)
            body: bytes | None = None
            if not stream or read:
                try:
                    body = await response.read()
                finally:
                    if not stream:
                        response.release()
        return Result(
            status=response.status,
            headers={k.lower(): v for k, v in response.headers.items()},
            body=body,
            info=breaker_info(response),
            response=response,
        )

    async def _read(self, result: Result) -> bytes:
        body: bytes = await result.response.read()
        return body

    async def _close_response(self, result: Result) -> None:
        result.response.close()


def make_driver(
    client: str, server: FlakyServer, registry: BreakerRegistry, fallback: Any = None
) -> Driver:
    """The driver of ``client`` (one of :data:`CLIENTS`)."""
    import importlib

    if client in ("httpx", "httpx2"):
        hx = importlib.import_module(client)
        cb = importlib.import_module(f"circuitbreaker_http.{client}")
        return HttpxDriver(hx, cb, server, registry, fallback)
    if client == "requests":
        return RequestsDriver(server, registry, fallback)
    if client == "aiohttp":
        return AiohttpDriver(server, registry, fallback)
    family, _, backend = client.partition("-async-")
    if family in ("httpx", "httpx2") and backend in ("asyncio", "trio"):
        hx = importlib.import_module(family)
        cb = importlib.import_module(f"circuitbreaker_http.{family}")
        return AsyncHttpxDriver(hx, cb, backend, server, registry, fallback)
    raise ValueError(f"unknown client {client!r}")


def every_client(
    *, skip: Mapping[str, str] | None = None, xfail: Mapping[str, str] | None = None
) -> pytest.MarkDecorator:
    """Parametrise a row over :data:`CLIENTS` (the ``client`` fixture, indirectly).

    Args:
        skip: client -> why the row cannot apply to it (shown as a skip with that reason).
        xfail: client -> the package bug that makes the row fail for it (a strict xfail).
    """
    skip = dict(skip or {})
    xfail = dict(xfail or {})
    unknown = (set(skip) | set(xfail)) - set(CLIENTS)
    if unknown:
        raise ValueError(f"every_client: unknown clients {sorted(unknown)}")
    params = []
    for client in CLIENTS:
        marks: list[Any] = []
        if client in skip:
            marks.append(pytest.mark.skip(reason=f"{client}: {skip[client]}"))
        if client in xfail:
            marks.append(pytest.mark.xfail(strict=True, reason=f"{client}: {xfail[client]}"))
        params.append(pytest.param(client, marks=marks, id=client))
    return pytest.mark.parametrize("client", params, indirect=True)


def sync_clients_skip(reason: str) -> dict[str, str]:
    """``skip=`` for every sync client, with one reason."""
    return dict.fromkeys(SYNC_CLIENTS, reason)
