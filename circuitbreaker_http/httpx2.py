"""httpx2 integration: the transports of :mod:`circuitbreaker_http.httpx`, for httpx2.

httpx2 is the maintained fork of httpx, imported as ``httpx2``::

    import httpx2
    from circuitbreaker_http.httpx2 import CircuitBreakerTransport

    client = httpx2.Client(transport=CircuitBreakerTransport())

Same arguments, same behaviour; a short circuit raises
``CircuitOpenTransportError``, both a ``CircuitOpenError`` and an
``httpx2.TransportError``. One registry may serve httpx, httpx2, requests and
aiohttp clients at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

try:
    import httpx2
except ImportError as exc:  # pragma: no cover - exercised by the bare-import test
    raise ImportError(
        'circuitbreaker_http.httpx2 needs httpx2: pip install "circuitbreaker-http[httpx2]"'
    ) from exc

from ._httpx_family import AsyncTransport, OpenTransportError, SyncTransport, build

__all__ = ["AsyncCircuitBreakerTransport", "CircuitBreakerTransport", "CircuitOpenTransportError"]

if TYPE_CHECKING:

    class CircuitOpenTransportError(OpenTransportError, httpx2.TransportError): ...

    class CircuitBreakerTransport(SyncTransport, httpx2.BaseTransport): ...

    class AsyncCircuitBreakerTransport(AsyncTransport, httpx2.AsyncBaseTransport): ...

else:
    CircuitOpenTransportError, CircuitBreakerTransport, AsyncCircuitBreakerTransport = build(
        httpx2, __name__
    )
