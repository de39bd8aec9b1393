"""What the aiohttp tests share: breaker settings, session builders and a scripted upstream.

Imported by name (``from aio_support import ...``): pytest's default
``prepend`` import mode puts this directory on ``sys.path``. The name carries
an ``aio`` prefix to stay unique among the rootless test modules.

Two upstreams serve the tests. :class:`~circuitbreaker_http.testing.FlakyServer`
(the ``flaky_server`` fixture) fails on demand by path. :class:`ScriptedServer`
hands each accepted request to the test, which writes the response itself, a
byte at a time if it likes: the only way to hold a body half-sent while the
test looks at the breaker, with nothing left to timing.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import aiohttp

from circuitbreaker_http import BreakerConfig, BreakerRegistry, CircuitState
from circuitbreaker_http.aiohttp import CircuitBreakerMiddleware
from circuitbreaker_http.testing import ManualClock
from circuitbreaker_http.testing._server import FlakyServer

CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN
FORCED_OPEN = CircuitState.FORCED_OPEN

# One failure opens the breaker for 10 s: a recorded failure shows in the state alone.
TRIP1 = BreakerConfig(
    consecutive_failures=1, failure_rate=None, open_duration=10.0, max_open_duration=300.0
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


def registry_for(
    config: BreakerConfig = TRIP1, clock: ManualClock | None = None, **kwargs: Any
) -> BreakerRegistry:
    """A registry on a :class:`ManualClock` (a new one unless given)."""
    return BreakerRegistry(config, clock=clock or ManualClock(), **kwargs)


def snap(registry: BreakerRegistry, key: str | FlakyServer | ScriptedServer) -> Any:
    """The snapshot of the breaker of ``key`` (a server: its origin)."""
    return registry.get(key if isinstance(key, str) else key.url).snapshot()


def session_for(
    registry: BreakerRegistry | None = None,
    *,
    inner: Sequence[Any] = (),
    timeout: aiohttp.ClientTimeout | None = None,
    **kwargs: Any,
) -> aiohttp.ClientSession:
    """A session whose first middleware is a ``CircuitBreakerMiddleware`` (``inner`` after it)."""
    if registry is not None:
        kwargs["registry"] = registry
    middleware = CircuitBreakerMiddleware(**kwargs)
    return aiohttp.ClientSession(
        middlewares=[middleware, *inner],
        timeout=timeout or aiohttp.ClientTimeout(total=10.0),
    )


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def head(status: int = 200, length: int | None = None, *extra: str) -> bytes:
    """A response's status line and headers (``Content-Length`` when given)."""
    lines = [f"HTTP/1.1 {status} X"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines.extend(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class Exchange:
    """One request the :class:`ScriptedServer` accepted: the test writes its answer."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.request = request

    @property
    def request_line(self) -> str:
        return self.request.split(b"\r\n", 1)[0].decode("latin-1")

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def close(self) -> None:
        """Close the connection (FIN), whatever was sent."""
        self.writer.close()

    def reset(self) -> None:
        """Abort the connection (RST)."""
        transport = self.writer.transport
        assert isinstance(transport, asyncio.Transport)
        transport.abort()


class ScriptedServer:
    """An asyncio HTTP/1.1 server on loopback whose test writes every response.

    ``await server.exchange()`` waits for the next request (its head read) and
    returns an :class:`Exchange`; nothing is answered until the test sends.
    """

    def __init__(self) -> None:
        self._accepted: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.Queue()
        )
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> ScriptedServer:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for writer in self._writers:
            writer.close()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        await self._accepted.put((reader, writer))

    async def exchange(self, connection: Exchange | None = None) -> Exchange:
        """The next request: on a new connection, or the next one on ``connection``."""
        if connection is None:
            reader, writer = await self._accepted.get()
        else:
            reader, writer = connection.reader, connection.writer
        request = await reader.readuntil(b"\r\n\r\n")
        return Exchange(reader, writer, request)
