"""What an open circuit answers instead of raising.

``FallbackResponse`` describes a synthetic response that each integration
builds anew, in the client's own type, for every short-circuited request.
``LastKnownGood`` answers GET and HEAD with the last successful response for
the same URL, marked stale; the integrations feed it as responses succeed.
"""

from __future__ import annotations

import json as _json
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

from . import _clock

__all__ = ["FallbackResponse", "LastKnownGood", "StoredResponse", "stale_headers"]


@dataclass(frozen=True, slots=True)
class FallbackResponse:
    """A synthetic response for short-circuited requests, built anew for each one.

    Args:
        status_code: The status (default 503).
        content: The body, as bytes (a ``str`` is encoded as UTF-8).
        json: A JSON-serialisable body instead of ``content``; sets
            ``Content-Type: application/json`` unless ``headers`` set one.
        headers: Extra headers.

    Every fallback response also carries ``X-Circuit-Breaker: open`` and, when
    a trial time is known and ``headers`` has none, ``Retry-After``.

    Raises:
        ValueError: a bad status, both ``content`` and ``json``, or a body that
            cannot be serialised.
    """

    status_code: int = 503
    _: KW_ONLY
    content: bytes = b""
    json: Any = None
    headers: Mapping[str, str] | None = None
    body: bytes = field(init=False, repr=False, compare=False)
    header_list: tuple[tuple[str, str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        status = self.status_code
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise ValueError(f"FallbackResponse.status_code must be 100-599, got {status!r}")
        content: object = self.content
        if isinstance(content, str):
            content = content.encode("utf-8")
        if not isinstance(content, (bytes, bytearray, memoryview)):
            raise ValueError(f"FallbackResponse.content must be bytes, got {content!r}")
        if self.json is not None and content:
            raise ValueError("FallbackResponse: give content or json, not both")
        headers = dict(self.headers or {})
        for name, value in headers.items():
            if not isinstance(name, str) or not isinstance(value, str):
                raise ValueError(f"FallbackResponse.headers must map str to str, got {name!r}")
        if self.json is not None:
            try:
                # allow_nan=False: NaN and Infinity are not JSON, whatever Python accepts.
                text = _json.dumps(self.json, separators=(",", ":"), allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"FallbackResponse.json is not serialisable: {exc}") from None
            body = text.encode("utf-8")
            if not any(name.lower() == "content-type" for name in headers):
                headers["Content-Type"] = "application/json"
        else:
            body = bytes(content)
        object.__setattr__(self, "body", body)
        object.__setattr__(self, "header_list", tuple(headers.items()))


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """One response kept by :class:`LastKnownGood`.

    Attributes:
        status_code: The response's status.
        reason: Its reason phrase.
        headers: Its headers as stored, without ``Age``: the age served is
            :meth:`LastKnownGood.age`, one value, so none is kept to repeat.
        content: Its body.
        stored_at: The :class:`LastKnownGood` clock's reading when it was stored.
        vary: The request headers named by its ``Vary``, with their values.
        age: Its own ``Age`` when stored, in seconds (0 without a valid one).
    """

    status_code: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    content: bytes
    stored_at: float
    vary: tuple[tuple[str, str | None], ...]
    age: int = 0


_UNCACHEABLE = ("no-store", "private")
# RFC 9111 §5.1: the Age a cache sends for any age it cannot represent.
_AGE_MAX = 2**31


def _parse_age(value: str) -> int | None:
    """The seconds of an ``Age`` field value, or ``None`` when it is not valid.

    ``Age`` is delta-seconds (digits only); of a list, RFC 9111 §5.1 says to
    use the first member.
    """
    first = value.split(",", 1)[0].strip()
    if not (first and first.isascii() and first.isdigit()):
        return None
    # More digits than 2**31 has cannot be smaller; int() of a huge string is slow.
    return _AGE_MAX if len(first) > 10 else min(int(first), _AGE_MAX)


def _directives(value: str) -> set[str]:
    return {part.strip().split("=", 1)[0].lower() for part in value.split(",")}


class LastKnownGood:
    """Answer GET and HEAD, while the circuit is open, with the last good response.

    Pass it as ``fallback=`` to a transport or adapter. It stores successful
    (2xx except 206) GET responses whose body was read to the end, and serves
    the newest one for the same URL, marked stale with ``Age`` (one value: the
    response's own age when stored plus the time since), ``Warning: 110`` and
    ``X-Circuit-Breaker: open``. It never serves one user's data to
    another: requests with ``Authorization`` or ``Cookie`` are neither stored
    nor answered, responses with ``Cache-Control: no-store`` or ``private`` or a
    ``Set-Cookie`` are not stored, and ``Vary`` is honoured (``Vary: *`` is
    never stored).

    Args:
        max_entries: How many URLs (with their ``Vary`` variants) to keep.
        max_bytes: Total body bytes kept; the least recently stored go first.
        max_entry_bytes: Larger bodies are not kept.
        max_age: Seconds after which a stored response is no longer served.
        otherwise: What to answer when nothing fits: ``None`` (raise the
            ``CircuitOpenError``), a ``FallbackResponse``, or a fallback callable.
        clock: The clock ages are read from (``time.monotonic`` by default).
    """

    def __init__(
        self,
        *,
        max_entries: int = 1000,
        max_bytes: int = 32 * 1024 * 1024,
        max_entry_bytes: int = 1024 * 1024,
        max_age: float = 300.0,
        otherwise: FallbackResponse | Callable[..., Any] | None = None,
        clock: Callable[[], float] = _clock.monotonic,
    ) -> None:
        for name, value in (
            ("max_entries", max_entries),
            ("max_bytes", max_bytes),
            ("max_entry_bytes", max_entry_bytes),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"LastKnownGood.{name} must be an int >= 1, got {value!r}")
        if (
            isinstance(max_age, bool)
            or not isinstance(max_age, (int, float))
            or not math.isfinite(max_age)
            or max_age <= 0
        ):
            raise ValueError(f"LastKnownGood.max_age must be a number > 0, got {max_age!r}")
        if otherwise is not None and not (
            isinstance(otherwise, FallbackResponse) or callable(otherwise)
        ):
            raise ValueError(
                f"LastKnownGood.otherwise must be None, a FallbackResponse or a callable, "
                f"got {otherwise!r}"
            )
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        self.max_age = float(max_age)
        self.otherwise = otherwise
        self._clock = clock
        self._entries: OrderedDict[str, list[StoredResponse]] = OrderedDict()
        self._bytes = 0
        self._count = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._count

    @property
    def bytes_stored(self) -> int:
        """Total body bytes currently kept."""
        return self._bytes

    def clear(self) -> None:
        """Forget every stored response."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0
            self._count = 0

    @staticmethod
    def request_eligible(method: str, get_header: Callable[[str], str | None]) -> bool:
        """Whether a request may be stored or answered: GET/HEAD with no credentials."""
        if method not in ("GET", "HEAD"):
            return False
        return get_header("authorization") is None and get_header("cookie") is None

    def response_storable(self, status_code: int, get_header: Callable[[str], str | None]) -> bool:
        """Whether a response may be kept (status, ``Cache-Control``, ``Set-Cookie``, ``Vary``)."""
        if not 200 <= status_code < 300 or status_code == 206:
            return False
        if get_header("set-cookie") is not None:
            return False
        cache_control = get_header("cache-control")
        if cache_control and _directives(cache_control) & set(_UNCACHEABLE):
            return False
        vary = get_header("vary")
        return not (vary and "*" in vary)

    def store(
        self,
        url: str,
        status_code: int,
        reason: str,
        headers: Iterable[tuple[str, str]],
        content: bytes,
        request_header: Callable[[str], str | None],
    ) -> None:
        """Keep a successful GET response (the integrations call this).

        Its ``Age`` header is not kept among its headers but as
        :attr:`StoredResponse.age`, which :meth:`age` adds to the time since.
        """
        if len(content) > self.max_entry_bytes or len(content) > self.max_bytes:
            return  # a body that can never fit must not flush the others first
        stored_headers: list[tuple[str, str]] = []
        vary_names: list[str] = []
        own_age: int | None = None  # None: no Age field line seen yet
        for name, value in headers:
            lower = name.lower()
            if lower == "age":
                # Kept as a number, not a header: served, it is one value, this
                # age plus the time since it was stored. Only the first field
                # line counts, and a garbage one counts as none.
                if own_age is None:
                    own_age = _parse_age(value) or 0
                continue
            if lower == "vary":
                vary_names.extend(v.strip().lower() for v in value.split(",") if v.strip())
            stored_headers.append((name, value))
        vary = tuple((name, request_header(name)) for name in sorted(set(vary_names)))
        entry = StoredResponse(
            status_code,
            reason,
            tuple(stored_headers),
            bytes(content),
            self._clock(),
            vary,
            own_age or 0,
        )
        with self._lock:
            variants = self._entries.pop(url, [])
            kept = []
            for old in variants:
                if old.vary == vary:
                    self._bytes -= len(old.content)
                    self._count -= 1
                else:
                    kept.append(old)
            kept.append(entry)
            self._entries[url] = kept
            self._bytes += len(entry.content)
            self._count += 1
            self._shrink()

    def lookup(
        self, url: str, request_header: Callable[[str], str | None]
    ) -> StoredResponse | None:
        """Return the stored response for ``url`` that fits this request and is fresh enough."""
        now = self._clock()
        with self._lock:
            variants = self._entries.get(url)
            if not variants:
                return None
            for entry in reversed(variants):
                if now - entry.stored_at > self.max_age:
                    continue
                if all(request_header(name) == value for name, value in entry.vary):
                    return entry
        return None

    def age(self, entry: StoredResponse) -> int:
        """The ``Age`` to serve ``entry`` with, in whole seconds.

        Its own ``Age`` when it was stored plus the seconds since, so a
        response that was already old when it arrived is not served as younger.
        """
        since = max(0, int(self._clock() - entry.stored_at))
        return min(entry.age + since, _AGE_MAX)

    def _shrink(self) -> None:
        entries = self._entries
        while entries and (self._bytes > self.max_bytes or self._count > self.max_entries):
            _, variants = entries.popitem(last=False)
            self._bytes -= sum(len(v.content) for v in variants)
            self._count -= len(variants)


def stale_headers(age: int) -> list[tuple[str, str]]:
    """The headers that mark a response served by :class:`LastKnownGood`."""
    return [("Age", str(age)), ("Warning", '110 - "Response is Stale"')]
