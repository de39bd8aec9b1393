"""httpx2 integration: the transports of :mod:`circuitbreaker_http.httpx`, for httpx2.

httpx2 is the maintained fork of httpx, imported as ``httpx2``::

    import httpx2
    from circuitbreaker_http.httpx2 import CircuitBreakerTransport

    client = httpx2.Client(transport=CircuitBreakerTransport())

Same arguments, same behaviour; a short circuit raises
``CircuitOpenTransportError``, both a ``CircuitOpenError`` and an
``httpx2.TransportError``; :func:`breaker_info` reads a response's
``extensions["circuit_breaker"]``, typed. One registry may serve httpx, httpx2,
requests and aiohttp clients at once.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, TypeAlias

try:
    import httpx2
except ImportError as exc:  # pragma: no cover - exercised by the bare-import test
    raise ImportError(
        'circuitbreaker_http.httpx2 needs httpx2: pip install "circuitbreaker-http[httpx2]"'
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

Fallback: TypeAlias = FallbackFor[httpx2.Request, "CircuitOpenTransportError", httpx2.Response]
"""The ``fallback`` of :class:`CircuitBreakerTransport`, as in :mod:`circuitbreaker_http.httpx`
with httpx2's types."""

AsyncFallback: TypeAlias = FallbackFor[
    httpx2.Request,
    "CircuitOpenTransportError",
    httpx2.Response | Awaitable[httpx2.Response],
]
"""The ``fallback`` of :class:`AsyncCircuitBreakerTransport`: a callable may be a coroutine
function."""

if TYPE_CHECKING:

    class CircuitOpenTransportError(OpenTransportError, httpx2.TransportError): ...

    class CircuitBreakerTransport(SyncTransport[Fallback], httpx2.BaseTransport): ...

    class AsyncCircuitBreakerTransport(
        AsyncTransport[AsyncFallback], httpx2.AsyncBaseTransport
    ): ...

else:
    CircuitOpenTransportError, CircuitBreakerTransport, AsyncCircuitBreakerTransport = build(
        httpx2, __name__
    )


def breaker_info(response: httpx2.Response) -> BreakerInfo | None:
    """The breaker marks of a response, or ``None`` if it went through no breaker.

    The typed way to read ``response.extensions["circuit_breaker"]``, as
    :func:`circuitbreaker_http.httpx.breaker_info` does for httpx.

    Args:
        response: A response returned through :class:`CircuitBreakerTransport`
            or :class:`AsyncCircuitBreakerTransport` (a redirect's hops in
            ``response.history`` each carry their own).

    Returns:
        The mapping the response carries (the same ``dict``): ``key`` and
        ``state`` (the state the request was let through in; for a fallback's
        response, the state that refused it), plus ``"fallback": True`` on a
        fallback's response and ``"stale": True`` on a Last-Known-Good copy.
        ``None`` for a request that bypassed the breakers or a client without
        a breaker transport.
    """
    return read_info(response.extensions.get(EXTENSION))
