"""httpx integration: ``CircuitBreakerTransport`` and ``AsyncCircuitBreakerTransport``.

Wrap any httpx transport::

    client = httpx.Client(transport=CircuitBreakerTransport())
    client = httpx.AsyncClient(transport=AsyncCircuitBreakerTransport())

Each request goes through the breaker of its key (its origin by default) and
records exactly one outcome, where it really happens: a failure status at once;
a success status when the body ends or the response is closed, read or not
(or, for a response never closed, when it is garbage-collected), so an error
while the body is read or decoded counts as a failure. The slow-call clock
counts the upstream's time only: until the headers, plus inside each body read.
Every response that went through a breaker carries its key and the state it
was let through in, ``response.extensions["circuit_breaker"]``:
:func:`breaker_info` reads it, typed.

httpx ignores a Client's own ``verify``, ``cert``, ``proxy``, ``limits``,
``http2`` and environment proxies once ``transport=`` is given: pass them to
the transport instead (``CircuitBreakerTransport(verify=..., proxy=...)``).

The same classes for httpx2, the maintained fork, are in
:mod:`circuitbreaker_http.httpx2`. After ``httpx2.alias_httpx()`` this module
works with httpx2 as well, since ``import httpx`` then gives httpx2.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, TypeAlias

try:
    import httpx
except ImportError as exc:  # pragma: no cover - exercised by the bare-import test
    raise ImportError(
        'circuitbreaker_http.httpx needs httpx: pip install "circuitbreaker-http[httpx]"'
    ) from exc

from ._fallback import FallbackFor
from ._httpx_family import AsyncTransport, OpenTransportError, SyncTransport, build
from ._info import BreakerInfo, read_info
from ._options import EXTENSION

__all__ = [
    "AsyncCircuitBreakerTransport",
    "AsyncFallback",
    "BreakerInfo",
    "CircuitBreakerTransport",
    "CircuitOpenTransportError",
    "Fallback",
    "breaker_info",
]

Fallback: TypeAlias = FallbackFor[httpx.Request, "CircuitOpenTransportError", httpx.Response]
"""The ``fallback`` of :class:`CircuitBreakerTransport`: ``None``, a :class:`FallbackResponse`,
a :class:`LastKnownGood`, a callable ``(httpx.Request, CircuitOpenError) ->
httpx.Response``, or a mapping of rule patterns to those."""

AsyncFallback: TypeAlias = FallbackFor[
    httpx.Request,
    "CircuitOpenTransportError",
    httpx.Response | Awaitable[httpx.Response],
]
"""The ``fallback`` of :class:`AsyncCircuitBreakerTransport`: as :data:`Fallback`,
and a callable may be a coroutine function."""

if TYPE_CHECKING:

    class CircuitOpenTransportError(OpenTransportError, httpx.TransportError): ...

    class CircuitBreakerTransport(SyncTransport[Fallback], httpx.BaseTransport): ...

    class AsyncCircuitBreakerTransport(AsyncTransport[AsyncFallback], httpx.AsyncBaseTransport): ...

else:
    CircuitOpenTransportError, CircuitBreakerTransport, AsyncCircuitBreakerTransport = build(
        httpx, __name__
    )


def breaker_info(response: httpx.Response) -> BreakerInfo | None:
    """The breaker marks of a response, or ``None`` if it went through no breaker.

    The typed way to read ``response.extensions["circuit_breaker"]``.

    Args:
        response: A response returned through :class:`CircuitBreakerTransport`
            or :class:`AsyncCircuitBreakerTransport` (a redirect's hops in
            ``response.history`` each carry their own).

    Returns:
        The mapping the response carries (the same ``dict``): ``key`` (the
        breaker's key) and ``state`` (the state the request was let through
        in: ``"closed"``, ``"half_open"`` or ``"disabled"``; for a fallback's
        response, the state that refused it), plus ``"fallback": True`` on a
        fallback's response and ``"stale": True`` on a Last-Known-Good copy.
        ``None`` for a request that bypassed the breakers (a key function's
        ``None``, ``options(bypass=True)``, ``{"bypass": True}`` in the
        request's extensions) or a client without a breaker transport.

    Example::

        info = breaker_info(client.get("https://api.example.com/"))
        if info is not None and info["state"] == "half_open":
            ...  # a trial request: the upstream was failing a moment ago
    """
    return read_info(response.extensions.get(EXTENSION))
