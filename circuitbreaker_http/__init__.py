"""Circuit breakers for the HTTP clients you already use.

The core (this module) needs nothing beyond the standard library. The httpx
transports live in ``circuitbreaker_http.httpx`` and the requests adapter in
``circuitbreaker_http.requests``; each needs its extra.
"""

from ._breaker import CircuitBreaker
from ._core import (
    BreakerConfig,
    BreakerSnapshot,
    CallInfo,
    CircuitState,
    StateChange,
    Verdict,
)
from ._errors import CircuitOpenError

__version__ = "0.1.0.dev0"

__all__ = [
    "BreakerConfig",
    "BreakerSnapshot",
    "CallInfo",
    "CircuitBreaker",
    "CircuitOpenError",
    "CircuitState",
    "StateChange",
    "Verdict",
    "__version__",
]
