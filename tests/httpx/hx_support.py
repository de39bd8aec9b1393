"""What the httpx-family tests share: the flavour under test, a fake upstream, client builders.

Every test in this directory runs once with httpx and once with httpx2 through
the ``flavour`` fixture (``conftest.py``): a :class:`Flavour` whose ``hx`` is
the client module and ``cb`` the integration module built for it, so a test
says ``hx.Client``, ``hx.MockTransport``, ``cb.CircuitBreakerTransport`` and
never imports httpx itself. The helpers below take the flavour (or its ``hx``)
for the same reason: a response stream or a transport must be the client
module's own class, never a copy that happens to pass for both.

This module is imported by name (``from hx_support import ...``), as pytest's
default ``prepend`` import mode puts this directory on ``sys.path``. The
directory has no ``__init__.py`` on purpose: ``tests/`` is not a package, so a
regular package named ``httpx`` would sit first on ``sys.path`` and shadow the
real httpx. Its module names therefore carry an ``httpx`` prefix, to stay
unique among the rootless test modules.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any, NamedTuple

from circuitbreaker_http import BreakerConfig, BreakerRegistry, CircuitState, by_host
from circuitbreaker_http.testing import ManualClock
from circuitbreaker_http.testing._server import FlakyServer

FLAVOURS = ("httpx", "httpx2")


class Flavour(NamedTuple):
    """One client library under test; unpacks as ``hx, cb = flavour``."""

    hx: ModuleType  # httpx or httpx2
    cb: ModuleType  # circuitbreaker_http.httpx or circuitbreaker_http.httpx2

    @property
    def name(self) -> str:
        return str(self.hx.__name__)


CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN
FORCED_OPEN = CircuitState.FORCED_OPEN

BASE = "http://api.test"
KEY = "http://api.test"

# One failure opens the breaker for 10 s: every test can tell a recorded
# failure from an ignored one by the state alone.
# Backoff 2 (not the default 1) so a test can tell a re-open from a first trip.
TRIP1 = BreakerConfig(
    consecutive_failures=1,
    failure_rate=None,
    open_duration=10.0,
    max_open_duration=300.0,
    open_backoff=2.0,
)
# Nothing trips: the window counts are the whole story.
COUNT_ONLY = BreakerConfig(consecutive_failures=None, failure_rate=None)
# A slow call (> 1 s of upstream time) trips at once; failures alone never do.
SLOW1 = BreakerConfig(
    consecutive_failures=None,
    failure_rate=None,
    slow_call_duration=1.0,
    slow_call_rate=1.0,
    minimum_calls=1,
)


# -- a fake upstream -------------------------------------------------------------------------

# name -> (client module, request) -> the exception an inner transport raises
ERRORS: dict[str, Callable[[ModuleType, Any], BaseException]] = {
    # upstream failures
    "read_timeout": lambda hx, r: hx.ReadTimeout("read timed out", request=r),
    "write_timeout": lambda hx, r: hx.WriteTimeout("write timed out", request=r),
    "connect_timeout": lambda hx, r: hx.ConnectTimeout("connect timed out", request=r),
    "connect_error": lambda hx, r: hx.ConnectError("connection refused", request=r),
    "read_error": lambda hx, r: hx.ReadError("connection reset by peer", request=r),
    "write_error": lambda hx, r: hx.WriteError("broken pipe", request=r),
    "close_error": lambda hx, r: hx.CloseError("close failed", request=r),
    "remote_protocol": lambda hx, r: hx.RemoteProtocolError("server hung up", request=r),
    "proxy_error": lambda hx, r: hx.ProxyError("proxy said 502", request=r),
    # nothing about the upstream
    "pool_timeout": lambda hx, r: hx.PoolTimeout("no free connection", request=r),
    "local_protocol": lambda hx, r: hx.LocalProtocolError("illegal header", request=r),
    "unsupported_protocol": lambda hx, r: hx.UnsupportedProtocol("ftp://", request=r),
    "invalid_url": lambda hx, r: hx.InvalidURL("bad url"),
    "bug": lambda hx, r: ValueError("a bug in the inner transport"),
    "key_error": lambda hx, r: KeyError("another bug"),
}
FAILING = [
    "read_timeout",
    "write_timeout",
    "connect_timeout",
    "connect_error",
    "read_error",
    "write_error",
    "close_error",
    "remote_protocol",
    "proxy_error",
]
IGNORED = [
    "pool_timeout",
    "local_protocol",
    "unsupported_protocol",
    "invalid_url",
    "bug",
    "key_error",
]
FAILURE_STATUSES = [408, 429, 500, 502, 503, 504, 599]
SUCCESS_STATUSES = [200, 201, 204, 301, 304, 400, 401, 403, 404, 409, 422, 501, 505]


def make_error(hx: ModuleType, name: str, request: Any = None) -> BaseException:
    """``ERRORS[name]`` as the client module ``hx`` raises it."""
    return ERRORS[name](hx, request)


class ChunksBase:
    """A response body served chunk by chunk, for both clients (see :func:`chunks`).

    Each read may move a clock (upstream time spent inside the read), fail
    after some chunks, or (async) stop and wait on an event. A class, not a
    generator, so an abandoned body leaves no suspended generator behind.
    """

    hx: ModuleType  # set on each flavour's subclass

    def __init__(
        self,
        count: int = 3,
        size: int = 4,
        *,
        clock: ManualClock | None = None,
        advance: float = 0.0,
        fail_after: int | None = None,
        error: BaseException | None = None,
        block_at: int | None = None,
        end_advance: float = 0.0,
    ) -> None:
        self.chunks = [bytes([97 + i % 26]) * size for i in range(count)]
        self.clock = clock
        self.advance = advance
        self.fail_after = fail_after
        self.error = error
        self.block_at = block_at
        self.end_advance = end_advance
        self.reached: Any = None  # anyio.Event, set when the read blocks
        self.release: Any = None  # anyio.Event the blocked read waits for
        self.served = 0
        self.closed = False

    def _step(self) -> bytes | None:
        index = self.served
        if self.fail_after is not None and index >= self.fail_after:
            if self.clock is not None:
                self.clock.advance(self.advance)
            raise self.error if self.error is not None else self.hx.ReadError("cut mid-body")
        if index >= len(self.chunks):
            if self.clock is not None:
                self.clock.advance(self.end_advance)  # waiting for the end of the body
            return None
        if self.clock is not None:
            self.clock.advance(self.advance)
        self.served += 1
        return self.chunks[index]

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        chunk = self._step()
        if chunk is None:
            raise StopIteration
        return chunk

    def __aiter__(self) -> ChunksBase:
        return self

    async def __anext__(self) -> bytes:
        if self.block_at is not None and self.served == self.block_at:
            self.reached.set()
            await self.release.wait()
        chunk = self._step()
        if chunk is None:
            raise StopAsyncIteration
        return chunk

    def close(self) -> None:
        self.closed = True

    async def aclose(self) -> None:
        self.closed = True

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)


@functools.cache
def chunks_class(hx: ModuleType) -> type[ChunksBase]:
    """:class:`ChunksBase` as a sync and async byte stream of ``hx`` (httpx checks the class)."""
    bases = (ChunksBase, hx.SyncByteStream, hx.AsyncByteStream)
    return type("Chunks", bases, {"hx": hx, "__module__": __name__})


def chunks(hx: ModuleType, count: int = 3, size: int = 4, **kwargs: Any) -> ChunksBase:
    """A :class:`ChunksBase` body of ``hx``: ``count`` chunks of ``size`` bytes."""
    return chunks_class(hx)(count, size, **kwargs)


class Upstream:
    """A ``MockTransport`` handler that answers by path and counts what reached it.

    * ``/status/{code}`` answers that status (``?retry_after=``, ``?date=``,
      ``?header=Name:Value`` add headers).
    * ``/raise/{name}`` raises ``ERRORS[name]``.
    * ``/stream`` answers 200 with ``self.next_stream`` (see :func:`chunks`).
    * anything else answers 200 ``ok``.
    * ``?advance=S`` moves the clock by S seconds before the headers.
    """

    def __init__(self, hx: ModuleType, clock: ManualClock | None = None) -> None:
        self.hx = hx
        self.clock = clock
        self.calls: list[Any] = []
        self.next_stream: ChunksBase | None = None

    def __call__(self, request: Any) -> Any:
        hx = self.hx
        self.calls.append(request)
        params = request.url.params
        if "advance" in params and self.clock is not None:
            self.clock.advance(float(params["advance"]))
        headers = []
        if "retry_after" in params:
            headers.append(("Retry-After", params["retry_after"]))
        if "date" in params:
            headers.append(("Date", params["date"]))
        for value in params.get_list("header"):
            name, _, text = value.partition(":")
            headers.append((name, text))
        parts = request.url.path.strip("/").split("/")
        if parts[0] == "status":
            code = int(parts[1])
            return hx.Response(code, headers=headers, content=f"upstream {code}".encode())
        if parts[0] == "raise":
            raise make_error(hx, parts[1], request)
        if parts[0] == "stream":
            stream = self.next_stream if self.next_stream is not None else chunks(hx)
            self.next_stream = None
            return hx.Response(200, headers=headers, stream=stream)
        return hx.Response(200, headers=headers, content=b"ok")


def _registry_for(
    config: BreakerConfig, clock: ManualClock | None, kwargs: dict[str, Any]
) -> BreakerRegistry:
    """The ``registry=`` in ``kwargs`` (removed from it), or a new one on a manual clock."""
    registry: BreakerRegistry | None = kwargs.pop("registry", None)
    if registry is None:  # (an empty registry is falsy: it has a length)
        registry = BreakerRegistry(
            config, clock=clock or ManualClock(), key=kwargs.pop("key", by_host)
        )
    return registry


def make_client(
    flavour: Flavour,
    upstream: Callable[[Any], Any],
    config: BreakerConfig = TRIP1,
    clock: ManualClock | None = None,
    **kwargs: Any,
) -> tuple[Any, BreakerRegistry]:
    """An ``hx.Client`` on ``BASE``, through a breaker, around ``MockTransport(upstream)``."""
    hx, cb = flavour
    registry = _registry_for(config, clock, kwargs)
    transport = cb.CircuitBreakerTransport(hx.MockTransport(upstream), registry=registry, **kwargs)
    return hx.Client(transport=transport, base_url=BASE), registry


def make_async_client(
    flavour: Flavour,
    upstream: Callable[[Any], Any],
    config: BreakerConfig = TRIP1,
    clock: ManualClock | None = None,
    **kwargs: Any,
) -> tuple[Any, BreakerRegistry]:
    """The ``hx.AsyncClient`` twin of :func:`make_client`."""
    hx, cb = flavour
    registry = _registry_for(config, clock, kwargs)
    transport = cb.AsyncCircuitBreakerTransport(
        hx.MockTransport(upstream), registry=registry, **kwargs
    )
    return hx.AsyncClient(transport=transport, base_url=BASE), registry


def snap(registry: BreakerRegistry, key: str | FlakyServer = KEY) -> Any:
    """The snapshot of the breaker of ``key`` (a server: its origin)."""
    return registry.get(key if isinstance(key, str) else key.url).snapshot()


def open_then_half_open(client: Any, clock: ManualClock, registry: BreakerRegistry) -> None:
    """Trip the breaker of ``KEY`` with one 500 and wait out its 10 s open period."""
    assert client.get("/status/500").status_code == 500
    assert snap(registry).state is OPEN
    clock.advance(10.0)
    assert snap(registry).state is HALF_OPEN


async def async_open_then_half_open(
    client: Any, clock: ManualClock, registry: BreakerRegistry
) -> None:
    assert (await client.get("/status/500")).status_code == 500
    assert snap(registry).state is OPEN
    clock.advance(10.0)
    assert snap(registry).state is HALF_OPEN


# -- real sockets: the FlakyServer tests --------------------------------------------------------


def registry_for(config: BreakerConfig = TRIP1, clock: ManualClock | None = None, **kw: Any) -> Any:
    return BreakerRegistry(config, clock=clock or ManualClock(), **kw)


def sync_client(
    flavour: Flavour, registry: BreakerRegistry, *, timeout: Any = None, **kwargs: Any
) -> Any:
    """An ``hx.Client`` through a breaker transport around the default inner transport."""
    hx, cb = flavour
    return hx.Client(
        transport=cb.CircuitBreakerTransport(registry=registry, **kwargs),
        timeout=hx.Timeout(10.0) if timeout is None else timeout,
    )


def async_client(
    flavour: Flavour, registry: BreakerRegistry, *, timeout: Any = None, **kwargs: Any
) -> Any:
    """The ``hx.AsyncClient`` twin of :func:`sync_client`."""
    hx, cb = flavour
    return hx.AsyncClient(
        transport=cb.AsyncCircuitBreakerTransport(registry=registry, **kwargs),
        timeout=hx.Timeout(10.0) if timeout is None else timeout,
    )


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
