"""The exception raised when a circuit is open."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ._core import CircuitState

__all__ = ["CircuitOpenError", "new_open_error", "open_message"]


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


# BaseException's own ``args`` slot, which CircuitOpenError's ``args``
# property hides from users: it holds the five values the error was built
# with, (name, state, retry_after, message, last_failure). Keeping them there
# instead of in attributes is what lets a rejection build its error without a
# Python ``__init__`` (see new_open_error).
_SLOT: Any = vars(BaseException)["args"]
_values: Callable[[BaseException], tuple[Any, ...]] = _SLOT.__get__
_store: Callable[[BaseException, tuple[Any, ...]], None] = _SLOT.__set__


class _Field:
    """One of the values a :class:`CircuitOpenError` was built with, by position."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __get__(self, error: BaseException | None, owner: type | None = None) -> Any:
        if error is None:
            return self
        return _values(error)[self.index]

    def __set__(self, error: BaseException, value: object) -> None:
        values = list(_values(error))
        values[self.index] = value
        _store(error, tuple(values))


class CircuitOpenError(Exception):
    """A call was short-circuited because its breaker does not let it through.

    Through the httpx transports the exception raised is also an
    ``httpx.TransportError``; through the requests adapter it is also a
    ``requests.exceptions.ConnectionError``. Retry helpers that retry on those
    will retry into an open circuit unless told to skip this class.

    Args:
        name: The breaker's name.
        state: The state that refused the call.
        retry_after: Seconds until a trial may pass, or ``None``.
        message: The message (default: built from the above when first read).
        last_failure: The breaker's latest recorded failure, or ``None``.

    Attributes:
        name: The breaker's name (its key in a registry).
        state: The state that refused the call (``OPEN``, ``HALF_OPEN`` when all
            trial slots are taken, or ``FORCED_OPEN``).
        retry_after: Seconds until a trial may pass, or ``None`` when unknown.
        last_failure: The breaker's latest recorded failure as a short string
            (``"503"``, ``"ReadTimeout"``), or ``None``.
        args: A single message string, as for any exception.
    """

    if TYPE_CHECKING:
        name: str
        state: CircuitState
        retry_after: float | None
        last_failure: str | None
    else:
        name = _Field(0)
        state = _Field(1)
        retry_after = _Field(2)
        last_failure = _Field(4)
    _message: str | None = None

    def __init__(
        self,
        name: str,
        state: CircuitState,
        retry_after: float | None = None,
        message: str | None = None,
        last_failure: str | None = None,
    ) -> None:
        # What BaseException.__new__ has already done with positional
        # arguments, done again for keywords (see new_open_error). No base
        # __init__ runs: subclasses that mix in a client's exception set its
        # attributes themselves, and the message is formatted only when read.
        _store(self, (name, state, retry_after, message, last_failure))

    @property
    def message(self) -> str:
        """The human-readable message."""
        message = self._message
        if message is None:
            name, state, retry_after, message, _ = _values(self)
            if message is None:
                message = open_message(name, state, retry_after)
            self._message = message
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


def _checked_new() -> Callable[..., Any]:
    """``BaseException.__new__`` if it builds a CircuitOpenError as ``__init__`` would."""
    new: Callable[..., Any] = BaseException.__new__
    try:
        made = new(CircuitOpenError, "n", _FORCED_OPEN, 1.5, None, "503")
        if (made.name, made.state, made.retry_after, made.last_failure, made.message) == (
            "n",
            _FORCED_OPEN,
            1.5,
            "503",
            open_message("n", _FORCED_OPEN, 1.5),
        ):
            return new
    except Exception:  # pragma: no cover - an interpreter that builds exceptions otherwise
        pass
    return _called  # pragma: no cover


def _called(cls: type[CircuitOpenError], *values: Any) -> CircuitOpenError:
    return cls(*values)


new_open_error: Callable[..., CircuitOpenError] = _checked_new()
"""``new_open_error(CircuitOpenError, name, state, retry_after, message, last_failure)``.

The same error as the class call, built without its Python ``__init__``:
``BaseException.__new__`` stores its positional arguments in the ``args``
slot, which is where ``__init__`` puts them. That halves what a rejection
costs. Only for ``CircuitOpenError`` itself (subclasses have attributes of
their own to set); the class call where the interpreter disagrees.
"""


def _rebuild(
    cls: type[CircuitOpenError],
    name: str,
    state: CircuitState,
    retry_after: float | None,
    message: str,
    last_failure: str | None = None,
) -> CircuitOpenError:
    return cls(name, state, retry_after, message, last_failure)
