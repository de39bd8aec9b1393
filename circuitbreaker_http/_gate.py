"""What the httpx transports and the requests adapter share: one gate per integration.

A gate turns a client's request and response into the plain values the
breaker needs (a key, an outcome, a duration, a Retry-After delay). The
client-specific parts (reading URLs, headers, bodies, building responses) stay
in each integration module; the decisions live here once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ._breaker import CircuitBreaker
from ._core import CallInfo, Verdict
from ._fallback import LastKnownGood
from ._keys import HostKey
from ._policy import parse_retry_after
from ._registry import BreakerRegistry

__all__ = ["GateBase", "decide", "settle"]


def decide(
    breaker: CircuitBreaker,
    method: str,
    url: str,
    status: int | None,
    headers: Mapping[str, str] | None,
    error: BaseException | None,
    duration: float,
    default: bool | None,
) -> bool | None:
    """Return whether a call failed (``True``), succeeded (``False``) or records nothing (``None``).

    The breaker's ``classify`` is asked first, when it has one; its ``None``,
    or a ``classify`` that raised, leaves the decision to ``default`` (what
    the status or exception rules say).
    """
    if breaker.classifier is not None:
        verdict = breaker.classify(
            CallInfo(breaker.name, method, url, status, headers, error, duration)
        )
        if verdict is Verdict.IGNORE:
            return None
        if verdict is not None:
            return verdict is Verdict.FAILURE
    return default


def settle(
    breaker: CircuitBreaker,
    permit: int,
    failed: bool | None,
    duration: float,
    retry_after: float | None = None,
) -> None:
    """Record what :func:`decide` said: an outcome, or (``None``) the permit given back."""
    if failed is None:
        breaker.release(permit)
    else:
        breaker.record(permit, failed, duration, retry_after if failed else None)


class GateBase:
    """The parts of a gate that do not depend on the client library."""

    __slots__ = ("_by_host", "_from_parts", "fallback", "key", "lkg", "registry", "wall_clock")

    def __init__(
        self,
        registry: BreakerRegistry,
        fallback: Any,
        wall_clock: Callable[[], float],
    ) -> None:
        self.registry = registry
        self.fallback: Any = fallback  # each integration checks its own kinds
        self.lkg = fallback if isinstance(fallback, LastKnownGood) else None
        self.wall_clock = wall_clock
        self.key = registry.key
        # The built-in keys also take URL parts, so a request is never reparsed.
        self._from_parts = getattr(registry.key, "from_parts", None)
        self._by_host = isinstance(registry.key, HostKey)

    def retry_after(self, breaker: CircuitBreaker, headers: Mapping[str, str]) -> float | None:
        """The delay a failure response's ``Retry-After`` asks for, if the breaker reads it."""
        if not breaker.config.respect_retry_after:
            return None
        value = headers.get("retry-after")
        if value is None:
            return None
        return parse_retry_after(value, headers.get("date"), self.wall_clock)

    def describe(self, request: Any) -> tuple[str, str]:
        """The request's method and URL, for a ``classify`` hook (each client overrides)."""
        raise NotImplementedError

    def settle_status(
        self,
        breaker: CircuitBreaker,
        permit: int,
        request: Any,
        status: int,
        headers: Mapping[str, str],
        duration: float,
    ) -> bool:
        """Settle at once a response whose headers say it failed, or that ``classify`` ignores.

        Returns ``True`` when the outcome is settled; ``False`` for a success,
        which settles when its body ends.
        """
        failed: bool | None = status in breaker.config.failure_statuses
        if breaker.classifier is not None:
            method, url = self.describe(request)
            failed = decide(breaker, method, url, status, headers, None, duration, failed)
            if failed is None:
                breaker.release(permit)
                return True
        if failed:
            breaker.record(permit, True, duration, self.retry_after(breaker, headers))
            return True
        return False
