"""What an open circuit answers instead of raising.

``FallbackResponse`` describes a synthetic response that each integration
builds anew, in the client's own type, for every short-circuited request.
``LastKnownGood`` answers GET and HEAD with the last successful response for
the same URL (and the same credentials), marked stale; the integrations feed
it as responses succeed.
"""

from __future__ import annotations

import hashlib
import json as _json
import logging
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, TypeAlias, TypeVar

from . import _clock

__all__ = [
    "FallbackFor",
    "FallbackResponse",
    "FallbackValue",
    "LastKnownGood",
    "StoredResponse",
    "not_stored",
    "stale_headers",
]


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


logger = logging.getLogger("circuitbreaker_http")

# The request headers that say who is asking: a response to them is kept and
# served only under their digest (LastKnownGood.credentials).
_CREDENTIALS = ("authorization", "cookie", "proxy-authorization")
# Response headers never kept: one client's session cookie must not be handed
# to another, nor replayed to the same one later.
_STRIPPED = ("set-cookie", "set-cookie2")
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


def _members(value: str) -> list[str]:
    return [part.strip() for part in value.split(",")]


class LastKnownGood:
    """Answer GET and HEAD, while the circuit is open, with the last good response.

    Pass it as ``fallback=`` to a transport, adapter or middleware (alone or
    as a value of a fallback mapping). It stores successful (2xx except 206)
    GET responses whose body was read to the end, and serves the newest one
    for the same URL, marked stale with ``Age`` (one value: the response's own
    age when stored plus the time since), ``Warning: 110`` and
    ``X-Circuit-Breaker: open``.

    It never serves one principal's data to another:

    * a request carrying credentials (``Authorization``, ``Cookie``,
      ``Proxy-Authorization``) is stored and answered only under a digest of
      those header values (a keyed BLAKE2b, its key random to this instance),
      so only a request with the same credentials gets the copy back, and a
      request without any never gets a credentialed copy;
    * a response marked ``Cache-Control: private`` is stored only for such a
      credentialed request;
    * ``Set-Cookie`` is stripped from what is stored, so it is never served;
    * ``Vary`` is honoured, and ``Vary: *`` is never stored;
    * a ``Cache-Control: no-store`` response is not stored unless
      ``honor_no_store=False``.

    Why a GET response was not stored is logged at DEBUG on the
    ``circuitbreaker_http`` logger, with its URL.

    Args:
        max_entries: How many responses to keep, counting each URL's
            ``Vary`` variants and each set of credentials apart.
        max_bytes: Total body bytes kept; the least recently stored go first.
        max_entry_bytes: Larger bodies are not kept.
        max_age: Seconds after which a stored response is no longer served.
        otherwise: What to answer when nothing fits: ``None`` (raise the
            ``CircuitOpenError``), a ``FallbackResponse``, or a fallback callable.
        honor_no_store: Whether ``Cache-Control: no-store`` keeps a response
            from being stored (default ``True``). An upstream that marks every
            answer ``no-store`` (Spring Security's default) leaves nothing to
            serve while it is down; ``False`` keeps such responses, in memory
            only, under the rules above.
        clock: The clock ages are read from (``time.monotonic`` by default).
            While it fails (raises, or gives no finite number) nothing is
            stored or served, and a WARNING says so once; no request fails.

    Raises:
        ValueError: a size or ``max_age`` that is not a positive number, an
            ``otherwise`` that is not a fallback, a ``honor_no_store`` that
            is not a bool, or a ``clock`` that is not callable.
    """

    def __init__(
        self,
        *,
        max_entries: int = 1000,
        max_bytes: int = 32 * 1024 * 1024,
        max_entry_bytes: int = 1024 * 1024,
        max_age: float = 300.0,
        otherwise: FallbackResponse | Callable[..., Any] | None = None,
        honor_no_store: bool = True,
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
        if not isinstance(honor_no_store, bool):
            raise ValueError(f"LastKnownGood.honor_no_store must be a bool, got {honor_no_store!r}")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        self.max_age = float(max_age)
        self.otherwise = otherwise
        self.honor_no_store = honor_no_store
        if not callable(clock):
            raise ValueError(f"LastKnownGood.clock must be a zero-argument callable, got {clock!r}")
        self._guard = _clock.ClockGuard(
            clock, "Last-Known-Good: nothing is stored or served while its clock fails"
        )
        # Keys the credential digests: what is kept in memory cannot be
        # checked against guessed passwords offline, nor matched across processes.
        self._secret = os.urandom(32)
        # (url, credential digest) -> variants by Vary, oldest first; b"" is no credentials.
        self._entries: OrderedDict[tuple[str, bytes], list[StoredResponse]] = OrderedDict()
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
    def request_eligible(
        method: str, get_header: Callable[[str], str | None] | None = None
    ) -> bool:
        """Whether a request may be stored or answered at all: a GET or a HEAD.

        A request with credentials is eligible too; it is kept apart under
        their digest (:meth:`credentials`). ``get_header`` is not needed any
        more and is accepted for the callers that still pass it.
        """
        return method in ("GET", "HEAD")

    def credentials(self, request_header: Callable[[str], str | None]) -> bytes:
        """The digest a request's credentials are stored and looked up under.

        Args:
            request_header: The request's case-insensitive ``headers.get``.

        Returns:
            ``b""`` for a request without ``Authorization``, ``Cookie`` and
            ``Proxy-Authorization``; else a keyed digest of the names and values
            of those it carries (present but empty counts as carried).
        """
        parts: list[str] = []
        for name in _CREDENTIALS:
            value = request_header(name)
            if value is not None:
                # Length-prefixed, so no two different sets of values can join alike.
                parts.append(f"{name}:{len(value)}:{value}")
        if not parts:
            return b""
        data = "\n".join(parts).encode("utf-8", "surrogatepass")
        return hashlib.blake2b(data, key=self._secret, digest_size=32).digest()

    def refusal(
        self, status_code: int, get_header: Callable[[str], str | None], credentialed: bool
    ) -> str | None:
        """Why a response to a GET may not be stored, or ``None`` when it may.

        Args:
            status_code: The response's status.
            get_header: The response's case-insensitive ``headers.get``
                (several field lines of one name joined with ``", "``).
            credentialed: Whether the request carried credentials.

        Returns:
            The reason, as logged, or ``None``.
        """
        if not 200 <= status_code < 300 or status_code == 206:
            return f"status {status_code}"
        cache_control = get_header("cache-control")
        if cache_control:
            directives = _directives(cache_control)
            if "no-store" in directives and self.honor_no_store:
                return "Cache-Control: no-store"
            if "private" in directives and not credentialed:
                return "Cache-Control: private on a request without credentials"
        vary = get_header("vary")
        if vary and "*" in _members(vary):
            return "Vary: *"
        return None

    def response_storable(
        self,
        status_code: int,
        get_header: Callable[[str], str | None],
        request_header: Callable[[str], str | None] | None = None,
    ) -> bool:
        """Whether a response may be kept (status, ``Cache-Control``, ``Vary``).

        ``request_header`` is the request's ``headers.get``: a ``private``
        response may be kept only for a request with credentials.
        """
        credentialed = request_header is not None and bool(self.credentials(request_header))
        return self.refusal(status_code, get_header, credentialed) is None

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

        It is kept under the URL, the request's credentials
        (:meth:`credentials`) and the request headers its ``Vary`` names.
        ``Set-Cookie`` is left out, and so is ``Age``: that is kept as
        :attr:`StoredResponse.age`, which :meth:`age` adds to the time since.
        """
        if len(content) > self.max_entry_bytes or len(content) > self.max_bytes:
            # A body that can never fit must not flush the others first.
            limit = "max_entry_bytes" if len(content) > self.max_entry_bytes else "max_bytes"
            not_stored(url, f"a body of {len(content)} bytes, over {limit}")
            return
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
            if lower in _STRIPPED:
                continue
            if lower == "vary":
                vary_names.extend(v.lower() for v in _members(value) if v)
            stored_headers.append((name, value))
        if "*" in vary_names:
            # A second Vary field line a single-value lookup did not show.
            not_stored(url, "Vary: *")
            return
        vary = tuple((name, request_header(name)) for name in sorted(set(vary_names)))
        stored_at = self._now()
        if stored_at is None:
            not_stored(url, "its clock gave no reading")
            return
        entry = StoredResponse(
            status_code,
            reason,
            tuple(stored_headers),
            bytes(content),
            stored_at,
            vary,
            own_age or 0,
        )
        identity = (url, self.credentials(request_header))
        with self._lock:
            variants = self._entries.pop(identity, [])
            kept = []
            for old in variants:
                if old.vary == vary:
                    self._bytes -= len(old.content)
                    self._count -= 1
                else:
                    kept.append(old)
            kept.append(entry)
            self._entries[identity] = kept
            self._bytes += len(entry.content)
            self._count += 1
            self._shrink()

    def lookup(
        self, url: str, request_header: Callable[[str], str | None]
    ) -> StoredResponse | None:
        """Return the stored response for ``url`` that fits this request and is fresh enough.

        It fits when it was stored for the same credentials (none, or the same
        values) and the request headers its ``Vary`` names match.
        """
        identity = (url, self.credentials(request_header))
        now = self._now()
        if now is None:
            return None  # how old anything is cannot be told
        with self._lock:
            variants = self._entries.get(identity)
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
        now = self._now()
        since = 0 if now is None else max(0, int(now - entry.stored_at))
        return min(entry.age + since, _AGE_MAX)

    def _now(self) -> float | None:
        """A clock reading, or ``None`` (a WARNING, once) when the clock fails.

        A failing clock never fails the request that asked: nothing is stored
        or served while it fails.
        """
        now = self._guard()
        return None if now != now else now  # NaN: the guard saw the clock fail

    def _shrink(self) -> None:
        entries = self._entries
        while entries and (self._bytes > self.max_bytes or self._count > self.max_entries):
            _, variants = entries.popitem(last=False)
            self._bytes -= sum(len(v.content) for v in variants)
            self._count -= len(variants)


def not_stored(url: str, reason: str) -> None:
    """Log, at DEBUG, why Last-Known-Good did not keep the response to ``url``."""
    logger.debug("Last-Known-Good did not store the response to %s: %s", url, reason)


def stale_headers(age: int) -> list[tuple[str, str]]:
    """The headers that mark a response served by :class:`LastKnownGood`."""
    return [("Age", str(age)), ("Warning", '110 - "Response is Stale"')]


_Request = TypeVar("_Request")
_Error = TypeVar("_Error")
_Response = TypeVar("_Response")

FallbackValue: TypeAlias = (
    FallbackResponse | LastKnownGood | Callable[[_Request, _Error], _Response] | None
)
"""One fallback, generic in a client's request, short-circuit error and response types.

``None`` (raise), a :class:`FallbackResponse`, a :class:`LastKnownGood`, or a
callable ``(request, error) -> response``.
"""

FallbackFor: TypeAlias = (
    FallbackValue[_Request, _Error, _Response]
    | Mapping[str, FallbackValue[_Request, _Error, _Response]]
)
"""What a ``fallback=`` argument may be: one fallback, or a mapping of rule patterns to them.

Each client module names its own: ``circuitbreaker_http.httpx.Fallback`` is
``FallbackFor[httpx.Request, CircuitOpenTransportError, httpx.Response]``.
"""
