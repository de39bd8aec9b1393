"""The exception raised when a circuit is open."""

from __future__ import annotations

from typing import Any

from ._core import CircuitState

__all__ = ["CircuitOpenError", "open_message"]


def open_message(name: str, state: CircuitState, retry_after: float | None) -> str:
    """Return the human-readable message of a short-circuited call."""
    if state is CircuitState.HALF_OPEN:
        return f"circuit {name!r} is half-open and all its trial slots are taken"
    if state is CircuitState.FORCED_OPEN:
        return f"circuit {name!r} is forced open"
    if retry_after is None:
        return f"circuit {name!r} is open"
    return f"circuit {name!r} is open; a trial may pass in {retry_after:.3f}s"


class CircuitOpenError(Exception):
    """A call was short-circuited because its breaker does not let it through.

    Through the httpx transports the exception raised is also an
    ``httpx.TransportError``; through the requests adapter it is also a
    ``requests.exceptions.ConnectionError``. Retry helpers that retry on those
    will retry into an open circuit unless told to skip this class.

    Attributes:
        name: The breaker's name (its key in a registry).
        state: The state that refused the call (``OPEN``, ``HALF_OPEN`` when all
            trial slots are taken, or ``FORCED_OPEN``).
        retry_after: Seconds until a trial may pass, or ``None`` when unknown.
    """

    name: str
    state: CircuitState
    retry_after: float | None

    def __init__(
        self,
        name: str,
        state: CircuitState,
        retry_after: float | None = None,
        message: str | None = None,
        **kwargs: Any,
    ) -> None:
        if message is None:
            message = open_message(name, state, retry_after)
        # kwargs reach a client exception mixed in after this class (``request=``).
        super().__init__(message, **kwargs)
        self.name = name
        self.state = state
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.name, self.state, self.retry_after, str(self.args[0])))


def _rebuild(
    cls: type[CircuitOpenError],
    name: str,
    state: CircuitState,
    retry_after: float | None,
    message: str,
) -> CircuitOpenError:
    return cls(name, state, retry_after, message)
