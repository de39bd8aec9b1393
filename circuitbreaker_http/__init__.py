"""Circuit breakers for the HTTP clients you already use.

The core (this module) needs nothing beyond the standard library. The httpx
transports live in ``circuitbreaker_http.httpx`` (httpx2's in
``circuitbreaker_http.httpx2``), the requests adapter in
``circuitbreaker_http.requests`` and the aiohttp middleware in
``circuitbreaker_http.aiohttp``; each needs its extra.

The client classes can also be imported from here
(``from circuitbreaker_http import CircuitBreakerTransport``): they load on
first touch, so ``import circuitbreaker_http`` imports no client library, and
a missing extra fails with a message naming it. They are left out of
``__all__`` so that ``from circuitbreaker_http import *`` needs no extra.
"""

from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from ._breaker import CircuitBreaker
from ._core import (
    DEFAULT_FAILURE_STATUSES,
    BreakerConfig,
    BreakerSnapshot,
    CallInfo,
    CallRecorded,
    CallRejected,
    CircuitState,
    StateChange,
    Verdict,
)
from ._errors import CircuitOpenError
from ._fallback import FallbackResponse, LastKnownGood
from ._keys import by_host, by_route
from ._options import RequestOptions, options
from ._registry import BreakerRegistry

__version__ = "0.1.0.dev0"

# Client names -> the module that defines them, imported on first touch.
_LAZY = {
    "AsyncCircuitBreakerTransport": "httpx",
    "CircuitBreakerAdapter": "requests",
    "CircuitBreakerMiddleware": "aiohttp",
    "CircuitBreakerTransport": "httpx",
    "CircuitOpenClientError": "aiohttp",
    "CircuitOpenRequestsError": "requests",
    "CircuitOpenTransportError": "httpx",
}

if _TYPE_CHECKING:
    from .aiohttp import CircuitBreakerMiddleware as CircuitBreakerMiddleware
    from .aiohttp import CircuitOpenClientError as CircuitOpenClientError
    from .httpx import AsyncCircuitBreakerTransport as AsyncCircuitBreakerTransport
    from .httpx import CircuitBreakerTransport as CircuitBreakerTransport
    from .httpx import CircuitOpenTransportError as CircuitOpenTransportError
    from .requests import CircuitBreakerAdapter as CircuitBreakerAdapter
    from .requests import CircuitOpenRequestsError as CircuitOpenRequestsError


def __getattr__(name: str) -> _Any:
    """Load a client class (``CircuitBreakerTransport``, ...) from its module on first touch."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "DEFAULT_FAILURE_STATUSES",
    "BreakerConfig",
    "BreakerRegistry",
    "BreakerSnapshot",
    "CallInfo",
    "CallRecorded",
    "CallRejected",
    "CircuitBreaker",
    "CircuitOpenError",
    "CircuitState",
    "FallbackResponse",
    "LastKnownGood",
    "RequestOptions",
    "StateChange",
    "Verdict",
    "__version__",
    "by_host",
    "by_route",
    "options",
]
