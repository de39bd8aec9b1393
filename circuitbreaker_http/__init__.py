"""Circuit breakers for the HTTP clients you already use.

The core (this module) needs nothing beyond the standard library. The httpx
transports live in ``circuitbreaker_http.httpx`` and the requests adapter in
``circuitbreaker_http.requests``; each needs its extra.
"""

from ._breaker import CircuitBreaker
from ._core import (
    DEFAULT_FAILURE_STATUSES,
    BreakerConfig,
    BreakerSnapshot,
    CallInfo,
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

__all__ = [
    "DEFAULT_FAILURE_STATUSES",
    "BreakerConfig",
    "BreakerRegistry",
    "BreakerSnapshot",
    "CallInfo",
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
