"""Per-request options: ``with circuitbreaker_http.options(bypass=True): ...``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

__all__ = ["EXTENSION", "RequestOptions", "current_options", "options", "request_options"]

EXTENSION = "circuit_breaker"
"""The one namespaced key in ``request.extensions`` and ``response.extensions``."""


@dataclass(frozen=True, slots=True)
class RequestOptions:
    """What :func:`options` sets for the requests sent inside it.

    Attributes:
        bypass: Send the requests straight through, past every breaker.
        key: Use this breaker key instead of the one the key function gives.
    """

    bypass: bool = False
    key: str | None = None


_current: ContextVar[RequestOptions | None] = ContextVar(
    "circuitbreaker_http.options", default=None
)

in_use = False
"""Whether :func:`options` was ever entered in this process.

Until it is, no context can hold options, so the hot paths skip the
``ContextVar`` read (a sixth of what keying a request costs). It never turns
back to ``False``: a task may carry a copied context with options set long
after the block that set them has ended.
"""


@contextmanager
def options(bypass: bool | None = None, key: str | None = None) -> Iterator[RequestOptions]:
    """Make the requests sent inside the block skip the breakers or use another key.

    It sets a ``contextvars`` value, so it follows each thread's and each task's
    own context. Nested, an inner call overrides the fields it sets and keeps
    the others. For httpx, ``request.extensions["circuit_breaker"]`` wins over it.

    Args:
        bypass: ``True`` to skip the breakers (default: as the enclosing block, else ``False``).
        key: The breaker key to use (default: as the enclosing block, else the key function's).

    Example:
        >>> with options(bypass=True):
        ...     pass  # client.get("https://status.example.com/health") is not counted
    """
    if bypass is not None and not isinstance(bypass, bool):
        raise TypeError(f"options: bypass must be a bool, got {bypass!r}")
    if key is not None and not isinstance(key, str):
        raise TypeError(f"options: key must be a str, got {key!r}")
    outer = _current.get() or RequestOptions()
    value = RequestOptions(
        bypass=outer.bypass if bypass is None else bypass,
        key=outer.key if key is None else key,
    )
    global in_use
    in_use = True  # before the set: a context copied after it must not be skipped
    token = _current.set(value)
    try:
        yield value
    finally:
        _current.reset(token)


def current_options() -> RequestOptions | None:
    """The options in force in this context, or ``None`` outside any :func:`options` block."""
    return _current.get() if in_use else None


def request_options(extension: object) -> RequestOptions | None:
    """Merge a request's ``extensions["circuit_breaker"]`` over the ``options()`` in force.

    A malformed extension value is ignored rather than failing the request.
    """
    outer = _current.get()
    if not isinstance(extension, Mapping):
        return outer
    bypass = extension.get("bypass")
    key = extension.get("key")
    base = outer or RequestOptions()
    return RequestOptions(
        bypass=bypass if isinstance(bypass, bool) else base.bypass,
        key=key if isinstance(key, str) else base.key,
    )
