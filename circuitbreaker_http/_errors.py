"""The exception raised when a circuit is open."""

from __future__ import annotations

from typing import Any

from ._core import CircuitState

__all__ = ["CircuitOpenError", "open_message"]


_HALF_OPEN = CircuitState.HALF_OPEN
_FORCED_OPEN = CircuitState.FORCED_OPEN


def open_message(name: str, state: CircuitState, retry_after: float | None) -> str:
    """Return the human-readable message of a short-circuited call."""
    if state is _HALF_OPEN:
        return f"circuit {name!r} is half-open and all its trial slots are taken"
    if state is _FORCED_OPEN:
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
        last_failure: The breaker's latest recorded failure as a short string
            (``"503"``, ``"ReadTimeout"``), or ``None``.
        args: A single message string, as for any exception.
    """

    name: str
    state: CircuitState
    retry_after: float | None
    last_failure: str | None = None
    _message: str | None = None

    def __init__(
        self,
        name: str,
        state: CircuitState,
        retry_after: float | None = None,
        message: str | None = None,
        last_failure: str | None = None,
    ) -> None:
        # Rejections are a hot path: the message is formatted only when read,
        # and no base __init__ runs (``args`` is a property). Subclasses that
        # mix in a client's exception set its attributes themselves. The
        # breaker passes every argument by position: a keyword through a
        # class call costs a third of building the exception.
        self.name = name
        self.state = state
        self.retry_after = retry_after
        if last_failure is not None:
            self.last_failure = last_failure
        if message is not None:
            self._message = message

    @property
    def message(self) -> str:
        """The human-readable message."""
        message = self._message
        if message is None:
            message = self._message = open_message(self.name, self.state, self.retry_after)
        return message

    @property
    def args(self) -> tuple[str]:
        """``(message,)``."""
        return (self.message,)

    @args.setter
    def args(self, value: tuple[Any, ...]) -> None:
        self._message = str(value[0]) if value else ""

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild,
            (type(self), self.name, self.state, self.retry_after, self.message, self.last_failure),
        )


def _rebuild(
    cls: type[CircuitOpenError],
    name: str,
    state: CircuitState,
    retry_after: float | None,
    message: str,
    last_failure: str | None = None,
) -> CircuitOpenError:
    return cls(name, state, retry_after, message, last_failure)
