"""What a response that went through a breaker carries, typed for users.

Each client keeps the mapping where that client keeps such things (httpx's
``response.extensions["circuit_breaker"]``, an attribute on requests' and
aiohttp's responses); the ``breaker_info(response)`` of each client module
reads it back as a :class:`BreakerInfo`, so user code needs no ``Any`` and no
``# type: ignore`` to look at it.
"""

from __future__ import annotations

from typing import Any, Literal, NoReturn, TypedDict, cast

__all__ = ["BreakerInfo", "Marks", "StateName", "read_info"]

StateName = Literal["closed", "half_open", "open", "forced_open", "disabled"]
"""A :class:`~circuitbreaker_http.CircuitState` as its string value."""


class _FallbackMarks(TypedDict, total=False):
    # The keys only a fallback's response has. A base class with total=False,
    # not NotRequired: typing.NotRequired is new in 3.11 and the package
    # supports 3.10 without typing_extensions.
    fallback: bool
    stale: bool


class BreakerInfo(_FallbackMarks):
    """The breaker marks of one response: what ``breaker_info(response)`` returns.

    A read-only ``dict`` at run time (a :class:`Marks`): the very one the
    response carries, shared by the responses one breaker let through closed.
    To change it, change a copy: ``dict(info)``.

    Attributes:
        key: The key of the breaker the request went through (its ``name``),
            such as ``"https://api.example.com"``.
        state: The state the request was let through in (``"closed"``,
            ``"half_open"`` or ``"disabled"``); on a fallback's response, the
            state that refused it (``"open"``, ``"forced_open"`` or
            ``"half_open"``).
        fallback: ``True`` on a response a fallback produced (absent otherwise).
        stale: ``True`` on a Last-Known-Good copy (absent otherwise).
    """

    key: str
    state: StateName


class Marks(dict[str, Any]):
    """The breaker marks a response carries: a ``dict`` that refuses changes.

    Every response one breaker lets through closed carries the same one (no
    mapping is built per request on the hot path), so a change would show on
    all of them: every change raises ``TypeError`` instead. A copy
    (``dict(marks)``, ``copy.copy(marks)``, a pickle round trip) is a plain,
    changeable ``dict``.
    """

    __slots__ = ()

    def _read_only(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError(
            "a response's circuit_breaker marks are read-only (shared by responses alike): "
            "change a copy, dict(marks)"
        )

    __setitem__ = __delitem__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only
    __ior__ = _read_only

    def __copy__(self) -> dict[str, Any]:
        return dict(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        return dict(self)  # the values are strings and booleans

    def __reduce__(self) -> tuple[type[dict[str, Any]], tuple[dict[str, Any]]]:
        return (dict, (dict(self),))


def read_info(value: object) -> BreakerInfo | None:
    """``value`` as a :class:`BreakerInfo` if it is one (a dict with a key and a state)."""
    # Only the dicts the integrations write qualify: anything else under the
    # same name (another library's, a half-built mark) reads as no breaker.
    if isinstance(value, dict) and "key" in value and "state" in value:
        return cast(BreakerInfo, value)
    return None
