"""requests integration: ``CircuitBreakerAdapter``, a ``requests.adapters.HTTPAdapter``.

Mount it on a session for both schemes::

    session = requests.Session()
    adapter = CircuitBreakerAdapter(max_retries=Retry(total=3, status_forcelist=[502, 503]))
    session.mount("http://", adapter)
    session.mount("https://", adapter)

Each request goes through the breaker of its key (its origin by default) and
records exactly one outcome, after urllib3's own retries, where it really
happens: a failure status at once; a success status when the body ends or the
response is closed, read or not (or, for a response never closed, when it is
garbage-collected), so an error while the body is read counts as a failure,
with ``stream=False`` (requests reads the body inside ``Session.send``) as
with ``stream=True``. The slow-call clock counts the upstream's time only:
until the headers, plus inside each body read (nothing is timed when the
breaker has no slow-call rule and no ``classify``). Each redirect hop is a
request of its own, and every response that went through a breaker carries
``response.circuit_breaker``, a dict with its ``key`` and ``state``.

To watch a body, the adapter gives ``response.raw`` (the urllib3 response
requests reads from) a subclass of its own class that times and watches
``read()``, ``read1()``, ``read_chunked()`` and ``close()``, plus a finaliser;
once the outcome has settled the response gets its own class back. It stays
the very object urllib3 made, with every attribute it had.

urllib3's retries and the breaker
---------------------------------

urllib3 retries inside ``HTTPAdapter.send``, so every attempt of one logical
request shares one permit and records one outcome at the end. The adapter
keeps its ``max_retries`` as a ``Retry`` subclass (the one you passed, or a
copy of it with the same settings; your own ``Retry`` subclass keeps its
behaviour) that asks the breaker before each further attempt:

* In the closed state the attempts go on as urllib3 decides, as long as the
  breaker stays in the closed period the request was let through in.
* Once that period ends (the breaker opened through any request, of any
  client sharing the registry), the next attempt is admitted like a new
  request: if the breaker would short-circuit a new request, the remaining
  retries stop and the request is answered as a short circuit
  (``CircuitOpenRequestsError``, or the fallback). A wait between attempts
  (``backoff_factor``, a ``Retry-After`` of hours) ends as soon as the
  breaker opens: it is checked every 50 ms.
* A half-open trial is one probe: its first failure is its outcome, as if the
  retries were exhausted.
* A ``Retry-After`` that urllib3 cannot parse is ignored (the backoff applies)
  instead of failing the request with ``InvalidHeader``, as the breaker does.
"""

from __future__ import annotations

import copy
import http
import inspect
import io
import time
from collections.abc import Callable, Generator, Mapping
from contextvars import ContextVar
from typing import Any

try:
    import requests
    import urllib3
    from requests.adapters import HTTPAdapter
    from requests.structures import CaseInsensitiveDict
    from urllib3 import BaseHTTPResponse  # new in urllib3 2: fails early on urllib3 1.26
    from urllib3.exceptions import (
        ClosedPoolError,
        DecodeError,
        InvalidHeader,
        MaxRetryError,
        ProtocolError,
        ReadTimeoutError,
        ResponseError,
        ResponseNotChunked,
    )
    from urllib3.exceptions import SSLError as Urllib3SSLError
    from urllib3.util.response import is_fp_closed
    from urllib3.util.retry import Retry
except ImportError as exc:  # pragma: no cover - exercised by the bare-import test
    raise ImportError(
        "circuitbreaker_http.requests needs requests and urllib3 2: "
        'pip install "circuitbreaker-http[requests]"'
    ) from exc

from . import _clock
from ._breaker import CircuitBreaker
from ._core import BreakerConfig, CircuitState
from ._errors import CircuitOpenError
from ._fallback import FallbackResponse, LastKnownGood, StoredResponse, stale_headers
from ._gate import GateBase, decide, settle
from ._keys import KeyFunc, _encode_host
from ._options import EXTENSION
from ._options import _current as _current_options
from ._policy import fallback_headers
from ._registry import BreakerRegistry, registry_from

__all__ = ["CircuitBreakerAdapter", "CircuitOpenRequestsError", "Fallback"]

Fallback = Any
"""``None``, a :class:`FallbackResponse`, a :class:`LastKnownGood`, or a callable
``(requests.PreparedRequest, CircuitOpenError) -> requests.Response``."""

# What a logical request raises when the upstream failed (after urllib3's retries).
_FAILURE_ERRORS: tuple[type[BaseException], ...] = (
    requests.exceptions.ConnectionError,  # TLS, proxy and connect timeouts included
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
    requests.exceptions.RetryError,
)
# What urllib3 raises while the body is read (requests translates them later).
_BODY_FAILURE_ERRORS: tuple[type[BaseException], ...] = (
    ProtocolError,  # a connection dropped, a body shorter than its Content-Length
    DecodeError,
    ReadTimeoutError,
    Urllib3SSLError,
)
_HTTPResponse = urllib3.HTTPResponse
_ORIGIN_CACHE_MAX = 4096
_RETRY_POLL = 0.05  # seconds between looks at the breaker while urllib3 waits to retry
_MISSING: Any = object()


class CircuitOpenRequestsError(CircuitOpenError, requests.exceptions.ConnectionError):
    """A short-circuited request: both a ``CircuitOpenError`` and a ``requests.ConnectionError``.

    ``.request`` is the ``PreparedRequest`` that was not sent (no connection
    was taken from the pool for it) and ``.response`` is ``None``, as on
    requests' own errors. To keep a retry helper (tenacity, backoff, your own
    loop) from retrying into an open circuit, exclude ``CircuitOpenError`` from
    what it retries on, or wait ``.retry_after``.

    Args:
        name: The breaker's name (its key).
        state: The state that refused the request.
        retry_after: Seconds until a trial may pass, or ``None``.
        message: The message (default: built from the above when first read).
        request: The request that was not sent.
    """

    def __init__(
        self,
        name: str,
        state: CircuitState,
        retry_after: float | None = None,
        message: str | None = None,
        *,
        request: requests.PreparedRequest | None = None,
    ) -> None:
        # Skips RequestException.__init__, which would format the message on
        # every rejection; it only sets these two.
        CircuitOpenError.__init__(self, name, state, retry_after, message)
        self.request = request
        self.response = None


def _is_failure(exc: BaseException) -> bool:
    """Whether an exception says the upstream failed (else it records nothing)."""
    if isinstance(exc, _FAILURE_ERRORS):
        # A pool closed under a request in flight says nothing about the upstream.
        return not (exc.args and isinstance(exc.args[0], ClosedPoolError))
    return isinstance(exc, _BODY_FAILURE_ERRORS) and not isinstance(exc, ResponseNotChunked)


def _as_requests_error(exc: Exception) -> Exception:
    """The exception requests raises for an urllib3 body error, for ``classify``."""
    if isinstance(exc, ProtocolError):
        return requests.exceptions.ChunkedEncodingError(exc)
    if isinstance(exc, DecodeError):
        return requests.exceptions.ContentDecodingError(exc)
    if isinstance(exc, ReadTimeoutError):
        return requests.exceptions.ConnectionError(exc)
    if isinstance(exc, Urllib3SSLError):
        return requests.exceptions.SSLError(exc)
    return exc


def _check_fallback(fallback: object) -> Fallback:
    if fallback is None or isinstance(fallback, FallbackResponse):
        return fallback
    target = fallback.otherwise if isinstance(fallback, LastKnownGood) else fallback
    if target is not None and not isinstance(target, FallbackResponse):
        if not callable(target):
            raise TypeError(
                "fallback must be None, a FallbackResponse, a LastKnownGood or a callable, "
                f"got {fallback!r}"
            )
        if inspect.iscoroutinefunction(target):
            raise TypeError("requests is synchronous: a fallback cannot be a coroutine function")
    return fallback


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


class _RetryStopped(Exception):
    """The breaker refused a retry; raised through urllib3 and caught by the adapter.

    A plain ``Exception`` on purpose: requests translates ``OSError`` and
    urllib3's errors, and this must reach the adapter untouched.
    """

    def __init__(self, error: CircuitOpenError, last_error: Exception | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.last_error = last_error


class _Attempt:
    """The breaker side of one logical request while urllib3 may retry it."""

    __slots__ = ("breaker", "clock", "last_headers", "last_status", "permit", "slept", "trial")

    def __init__(self, breaker: CircuitBreaker, permit: int, clock: Callable[[], float]) -> None:
        self.breaker = breaker
        self.permit = permit
        self.clock = clock
        # A closed-state permit is the cycle itself (DISABLED's is 0): anything
        # else is a half-open trial.
        self.trial = not breaker.is_current(permit)
        self.slept = 0.0
        self.last_status: int | None = None
        self.last_headers: Any = None

    def admit_retry(self, last_error: Exception | None) -> None:
        """Let the next attempt through, or raise ``_RetryStopped``.

        Lock-free while the breaker is still in the closed (or disabled)
        period the request was let through in; otherwise the retry is admitted
        like a new request, under a permit of its own.
        """
        breaker = self.breaker
        permit = self.permit
        if breaker.is_current(permit):
            return
        try:
            fresh = breaker.acquire()
        except CircuitOpenError as exc:
            raise _RetryStopped(exc, last_error) from None
        # The old permit's period is over, so it records nothing either way.
        breaker.release(permit)
        self.permit = fresh
        self.trial = not breaker.is_current(fresh)

    def wait(self, delay: float, last_error: Exception | None) -> None:
        """Sleep ``delay`` seconds before the next attempt, stopping when the breaker opens."""
        clock = self.clock
        began = clock()
        deadline = _clock.monotonic() + delay
        try:
            while True:
                self.admit_retry(last_error)
                remaining = deadline - _clock.monotonic()
                if remaining <= 0:
                    return
                time.sleep(min(remaining, _RETRY_POLL))
        finally:
            # Waiting to retry is the client's time, not the upstream's.
            self.slept += clock() - began


_ATTEMPT: ContextVar[_Attempt | None] = ContextVar("circuitbreaker_http.requests", default=None)


class _BreakerRetry(Retry):
    """A ``Retry`` that asks the breaker before each further attempt.

    Outside a request sent through a breaker (no ``_ATTEMPT`` in the context)
    it is the ``Retry`` it copies, unchanged. ``Retry.new()`` builds each next
    instance with ``type(self)``, so every increment stays of this class.
    """

    # Whether the copied class has its own sleep: then it sleeps as it likes,
    # and the breaker is asked before and after.
    _cb_custom_sleep = False

    def increment(
        self,
        method: str | None = None,
        url: str | None = None,
        response: BaseHTTPResponse | None = None,
        error: Exception | None = None,
        _pool: urllib3.connectionpool.ConnectionPool | None = None,
        _stacktrace: Any = None,
    ) -> _BreakerRetry:
        """Count one more attempt (urllib3 calls this), then ask the breaker for the next one.

        Raises:
            MaxRetryError: urllib3's retries are exhausted, or the request is a
                half-open trial (a trial is one probe).
            _RetryStopped: the breaker would short-circuit the next attempt.
        """
        new_retry = super().increment(method, url, response, error, _pool, _stacktrace)
        attempt = _ATTEMPT.get()
        if attempt is None:
            return new_retry
        if response is not None and error is None:
            # The status path: remember it for a RetryError (status, Retry-After).
            attempt.last_status = response.status
            attempt.last_headers = response.headers
        if attempt.trial:
            if error is not None:
                reason: Exception = error
            elif response is not None and response.status:
                reason = ResponseError(
                    ResponseError.SPECIFIC_ERROR.format(status_code=response.status)
                )
            else:
                reason = ResponseError(ResponseError.GENERIC_ERROR)
            raise MaxRetryError(_pool, url, reason) from reason  # type: ignore[arg-type]
        try:
            attempt.admit_retry(error)
        except _RetryStopped:
            if response is not None:
                # urllib3 drains before retrying; the connection goes back to the pool.
                response.drain_conn()
            raise
        return new_retry

    def sleep(self, response: BaseHTTPResponse | None = None) -> None:
        """Wait before the next attempt, as urllib3 would, ending early when the breaker opens.

        Raises:
            _RetryStopped: the breaker would short-circuit the next attempt.
        """
        attempt = _ATTEMPT.get()
        if attempt is None:
            super().sleep(response)
            return
        last_error = self.history[-1].error if self.history else None
        if self._cb_custom_sleep:
            attempt.admit_retry(last_error)
            began = attempt.clock()
            try:
                super().sleep(response)
            finally:
                attempt.slept += attempt.clock() - began
            attempt.admit_retry(last_error)
            return
        delay: float | None = None
        if self.respect_retry_after_header and response is not None:
            try:
                delay = self.get_retry_after(response)
            except (InvalidHeader, ValueError, OverflowError):
                # Garbage (urllib3 raises ValueError past 4300 digits, ValueError or
                # OverflowError for a year out of range): the backoff applies, as
                # the breaker ignores it too.
                delay = None
        if not delay:
            delay = self.get_backoff_time()
        attempt.wait(delay, last_error)


_RETRY_CLASSES: dict[type[Retry], type[_BreakerRetry]] = {Retry: _BreakerRetry}


def _breaker_retry(retries: Retry | int | None) -> _BreakerRetry:
    """Return a copy of ``retries`` (or ``Retry.from_int(retries)``) that asks the breaker."""
    if not isinstance(retries, Retry):
        retries = Retry.from_int(retries)
    if isinstance(retries, _BreakerRetry):
        return retries
    cls = type(retries)
    mixed = _RETRY_CLASSES.get(cls)
    if mixed is None:
        custom = any(
            getattr(cls, name) is not getattr(Retry, name)
            for name in ("sleep", "sleep_for_retry", "_sleep_backoff")
        )
        mixed = type(
            f"CircuitBreaker{cls.__name__}",
            (_BreakerRetry, cls),
            {"_cb_custom_sleep": custom, "__module__": __name__},
        )
        _RETRY_CLASSES[cls] = mixed
    # A copy: the caller's Retry may serve other adapters too.
    clone = copy.copy(retries)
    clone.__class__ = mixed
    return clone  # type: ignore[return-value]


class _Gate(GateBase):
    """Keys, outcomes and fallbacks of one adapter. No I/O."""

    __slots__ = ("_host_keys", "_parts")

    def __init__(
        self,
        registry: BreakerRegistry,
        fallback: Fallback,
        wall_clock: Callable[[], float],
    ) -> None:
        super().__init__(registry, fallback, wall_clock)
        # "scheme://authority" -> key (by_host) or parsed parts (other keys).
        self._host_keys: dict[str, str | None] = {}
        self._parts: dict[str, tuple[str, str, int | None] | None] = {}

    def route(self, request: requests.PreparedRequest) -> tuple[str, CircuitBreaker] | None:
        """Return the key and breaker for ``request``, or ``None`` to bypass."""
        opts = _current_options.get()
        if opts is None:
            url = request.url or ""
            if self._by_host:
                # The hot path, inlined. A cached origin of http(s) is at least
                # "http://h", so its path starts at index 8 or later; anything
                # this shortcut cuts wrongly misses the cache and goes the long way.
                end = url.find("/", 8)
                key = self._host_keys.get(url if end < 0 else url[:end])
                if key is not None:
                    return key, self.registry.get(key)
            key = self.key_of(request.method or "", url)
        else:
            if opts.bypass:
                return None
            key = opts.key
            if key is None:
                key = self.key_of(request.method or "", request.url or "")
        if key is None:
            return None
        return key, self.registry.get(key)

    def key_of(self, method: str, url: str) -> str | None:
        """The key of ``url`` without reparsing it: origins are cut out and cached."""
        from_parts = self._from_parts
        if from_parts is None:
            return self.key(method, url)
        sep = url.find("://")
        if sep <= 0:
            return None  # not an absolute URL: requests raises its own error
        end = url.find("/", sep + 3)
        origin = url if end < 0 else url[:end]
        if "?" in origin or "#" in origin:
            # A query or fragment with no path before it (requests always adds one).
            origin = origin.partition("?")[0].partition("#")[0]
        if self._by_host:
            key = self._host_keys.get(origin, _MISSING)
            if key is _MISSING:
                parts = _split_origin(origin, sep)
                key = None if parts is None else from_parts(method, *parts, "")
                cache = self._host_keys
                if len(cache) >= _ORIGIN_CACHE_MAX:
                    cache.clear()  # rotating hosts must not grow memory
                cache[origin] = key
            return key  # type: ignore[no-any-return]
        parts = self._parts.get(origin, _MISSING)
        if parts is _MISSING:
            parts = _split_origin(origin, sep)
            cache_parts = self._parts
            if len(cache_parts) >= _ORIGIN_CACHE_MAX:
                cache_parts.clear()
            cache_parts[origin] = parts
        if parts is None:
            return None
        path = url[len(origin) :].partition("?")[0].partition("#")[0]
        return from_parts(method, *parts, path)  # type: ignore[no-any-return]

    # -- outcomes --------------------------------------------------------------

    def describe(self, request: requests.PreparedRequest) -> tuple[str, str]:
        """The request's method and URL, for a ``classify`` hook."""
        return request.method or "", request.url or ""

    def on_error(
        self,
        breaker: CircuitBreaker,
        permit: int,
        request: requests.PreparedRequest,
        exc: Exception,
        duration: float,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        """Settle a request that raised (before the headers, or while reading the body).

        ``status`` and ``headers`` are those of the response whose body failed,
        or of the last response when urllib3's status retries ran out
        (``RetryError``); ``retry_after`` is the latter's ``Retry-After``.
        """
        if not permit or isinstance(exc, CircuitOpenError):
            breaker.release(permit)
            return
        default = True if _is_failure(exc) else None
        failed = default
        if breaker.classifier is not None:
            failed = decide(
                breaker,
                request.method or "",
                request.url or "",
                status,
                headers,
                _as_requests_error(exc),
                duration,
                default,
            )
        settle(breaker, permit, failed, duration, retry_after)

    def on_response(
        self,
        breaker: CircuitBreaker,
        permit: int,
        key: str,
        request: requests.PreparedRequest,
        response: requests.Response,
        duration: float,
        clock: Callable[[], float] | None,
    ) -> requests.Response:
        """Settle or watch a response whose headers have arrived.

        ``clock`` is ``None`` when the breaker reads no durations (no slow-call
        rule, no ``classify``): then nothing is timed.
        """
        # breaker.permit_state(), inlined: closed, a half-open trial, or disabled.
        if not permit:
            response.circuit_breaker = {"key": key, "state": "disabled"}  # type: ignore[attr-defined]
            return response
        trial = breaker.is_trial(permit)
        response.circuit_breaker = {  # type: ignore[attr-defined]
            "key": key,
            "state": "half_open" if trial else "closed",
        }
        status = response.status_code
        if self.settle_status(breaker, permit, request, status, response.headers, duration):
            return response
        lkg = self.lkg
        tee = lkg is not None and self._storable(lkg, request, response)
        raw = response.raw
        if not isinstance(raw, _HTTPResponse) or raw.length_remaining == 0:
            # Nothing left to come from the upstream (HEAD, 204, 304, an empty
            # body), or a raw body this adapter cannot watch: settle now.
            breaker.record(permit, False, duration)
            if tee and lkg is not None and isinstance(raw, _HTTPResponse):
                self.store(lkg, request, status, raw, b"", False)
            return response
        if trial:
            # A long body must not hold the breaker half-open.
            breaker.trial_slot_free(permit)
        raw._cb_pending = _Pending(  # type: ignore[attr-defined]
            self, breaker, permit, request, response, duration, clock, tee
        )
        cls = type(raw)
        raw.__class__ = _WATCHED_CLASSES.get(cls) or _watched_class(cls)
        return response

    # -- last known good -------------------------------------------------------

    @staticmethod
    def _storable(
        lkg: LastKnownGood, request: requests.PreparedRequest, response: requests.Response
    ) -> bool:
        return (
            request.method == "GET"
            and lkg.request_eligible("GET", request.headers.get)
            and lkg.response_storable(response.status_code, response.headers.get)
        )

    @staticmethod
    def store(
        lkg: LastKnownGood,
        request: requests.PreparedRequest,
        status: int,
        raw: urllib3.HTTPResponse,
        content: bytes,
        decoded: bool,
    ) -> None:
        """Keep a complete successful GET response in ``lkg``."""
        # The stored body is what was read; framing headers no longer describe
        # it, nor does Content-Encoding once urllib3 has decoded it.
        dropped: tuple[str, ...] = ("content-length", "transfer-encoding", "connection")
        if decoded:
            dropped += ("content-encoding",)
        kept = [(name, value) for name, value in raw.headers.items() if name.lower() not in dropped]
        reason = raw.reason or _reason(status)
        lkg.store(request.url or "", status, reason, kept, content, request.headers.get)

    @staticmethod
    def from_lkg(
        lkg: LastKnownGood, request: requests.PreparedRequest
    ) -> tuple[StoredResponse, bytes, list[tuple[str, str]]] | None:
        """The stored response that answers ``request``, its body and its headers, if any."""
        method = request.method or ""
        if not lkg.request_eligible(method, request.headers.get):
            return None
        entry = lkg.lookup(request.url or "", request.headers.get)
        if entry is None:
            return None
        headers = [*entry.headers, *stale_headers(lkg.age(entry))]
        return entry, b"" if method == "HEAD" else entry.content, headers


def _split_origin(origin: str, sep: int) -> tuple[str, str, int | None] | None:
    """``(scheme, host, port)`` of ``origin``, ``scheme://authority`` with ``://`` at ``sep``."""
    authority = origin[sep + 3 :]
    at = authority.rfind("@")
    if at >= 0:
        authority = authority[at + 1 :]  # never key on credentials
    port_text = ""
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            return None
        host = authority[1:close]
        tail = authority[close + 1 :]
        if tail.startswith(":"):
            port_text = tail[1:]
    else:
        host, _, port_text = authority.partition(":")
    if not host:
        return None
    port = int(port_text) if port_text.isascii() and port_text.isdigit() else None
    return origin[:sep].lower(), _encode_host(host), port


class _Pending:
    """One response whose success status arrived and whose body is still to come."""

    # It keeps the response's status and headers, not the response: the
    # response holds the raw body, which holds this, and a cycle would delay
    # the finaliser of a dropped response until the cyclic GC runs.
    __slots__ = (
        "breaker",
        "busy",
        "chunks",
        "clock",
        "decoded",
        "gate",
        "headers",
        "permits",
        "request",
        "size",
        "status",
        "upstream",
    )

    def __init__(
        self,
        gate: _Gate,
        breaker: CircuitBreaker,
        permit: int,
        request: requests.PreparedRequest,
        response: requests.Response,
        duration: float,
        clock: Callable[[], float] | None,
        tee: bool,
    ) -> None:
        self.gate = gate
        self.breaker = breaker
        # A one-item list: ``pop()`` is atomic, so the outcome settles exactly
        # once, even against a finaliser running on another thread.
        self.permits = [permit]
        self.request = request
        self.status = response.status_code
        self.headers = response.headers
        self.upstream = duration
        self.clock = clock  # None: the breaker reads no durations, so nothing is timed
        self.busy = False  # inside a watched read: nested reads are not timed twice
        self.chunks: list[bytes] | None = [] if tee else None
        self.decoded: bool | None = None
        self.size = 0

    def add(self, chunk: bytes, decoded: bool) -> None:
        """Tee a chunk for ``LastKnownGood``, as long as all chunks were read alike."""
        chunks = self.chunks
        if chunks is None:
            return
        if self.decoded is None:
            self.decoded = decoded
        elif self.decoded is not decoded:
            self.chunks = None  # urllib3 forbids mixing; keep nothing half-decoded
            return
        self.size += len(chunk)
        lkg = self.gate.lkg
        if lkg is None or self.size > lkg.max_entry_bytes:
            self.chunks = None
        else:
            chunks.append(chunk)

    def finish(self, raw: urllib3.HTTPResponse | None) -> None:
        """Settle as a success: the body ended (``raw`` given) or the response was closed."""
        try:
            permit = self.permits.pop()
        except IndexError:
            return
        self.breaker.record(permit, False, self.upstream)
        chunks = self.chunks
        if chunks is None or raw is None:
            return
        self.chunks = None
        lkg = self.gate.lkg
        if lkg is not None:
            decoded = bool(self.decoded) and raw._decoder is not None
            self.gate.store(lkg, self.request, self.status, raw, b"".join(chunks), decoded)

    def error(self, exc: Exception) -> None:
        """Settle after an error while the body was read."""
        try:
            permit = self.permits.pop()
        except IndexError:
            return
        self.chunks = None
        self.gate.on_error(
            self.breaker, permit, self.request, exc, self.upstream, self.status, self.headers
        )

    def cancel(self) -> None:
        """Settle with no outcome: the read was interrupted (``KeyboardInterrupt``)."""
        try:
            permit = self.permits.pop()
        except IndexError:
            return
        self.chunks = None
        self.breaker.release(permit)

    def dropped(self) -> None:
        """Settle a response garbage-collected before it was closed, without a lock."""
        try:
            permit = self.permits.pop()
        except IndexError:
            return
        self.chunks = None
        self.breaker.record_later(permit, self.upstream)


def _body_done(raw: urllib3.HTTPResponse) -> bool:
    """Whether nothing more can come out of ``raw``: the wire is done and no buffer is left."""
    fp = raw._fp
    if fp is not None:
        try:
            if not fp.isclosed():  # http.client's response, the usual case
                return False
        except AttributeError:
            if not is_fp_closed(fp):
                return False
    if len(raw._decoded_buffer) > 0:
        return False
    decoder = raw._decoder
    # has_unconsumed_tail: urllib3 2.6 and later.
    return not (decoder is not None and getattr(decoder, "has_unconsumed_tail", False))


class _WatchedResponse(urllib3.HTTPResponse):
    """An urllib3 response whose body reads settle its request's outcome.

    The adapter swaps a response's class to this one (or to a subclass of it
    and the response's own class), so ``response.raw`` stays the very urllib3
    object requests expects, with every attribute and method it had. Each
    read is timed and watched; the end of the body, an error, ``close()`` or
    the finaliser settles the outcome once, and the response gets its own
    class back (no watching left to pay for). requests reads through
    ``stream()``, which calls ``read()`` or ``read_chunked()``.
    """

    _cb_pending: _Pending | None
    _cb_original: type[urllib3.HTTPResponse] = urllib3.HTTPResponse
    # The methods wrapped, as the response's own class has them: cheaper than
    # building a super() object on every read.
    _cb_read = staticmethod(urllib3.HTTPResponse.read)
    _cb_read1 = staticmethod(urllib3.HTTPResponse.read1)
    _cb_read_chunked = staticmethod(urllib3.HTTPResponse.read_chunked)

    def _cb_settled(self) -> None:
        # Call last in a method: super() no longer works once the class is back.
        # Always called through the class: a close() on another thread may have
        # given the response its own class back already, just after a read.
        self._cb_pending = None
        original = getattr(type(self), "_cb_original", None)
        if original is not None:
            self.__class__ = original

    def _cb_failed(self, pending: _Pending, exc: BaseException) -> None:
        pending.busy = False
        _WatchedResponse._cb_settled(self)
        if isinstance(exc, Exception):
            pending.error(exc)
        else:
            pending.cancel()  # KeyboardInterrupt and the like record nothing

    def _cb_ended(self, pending: _Pending) -> None:
        _WatchedResponse._cb_settled(self)
        pending.finish(self)

    def read(
        self,
        amt: int | None = None,
        decode_content: bool | None = None,
        cache_content: bool = False,
    ) -> bytes:
        """``urllib3.HTTPResponse.read``, timed and watched."""
        pending = self._cb_pending
        if pending is None or pending.busy:
            return self._cb_read(self, amt, decode_content, cache_content)
        clock = pending.clock
        pending.busy = True
        try:
            if clock is None:
                data = self._cb_read(self, amt, decode_content, cache_content)
            else:
                began = clock()
                try:
                    data = self._cb_read(self, amt, decode_content, cache_content)
                finally:
                    pending.upstream += clock() - began
        except BaseException as exc:
            _WatchedResponse._cb_failed(self, pending, exc)
            raise
        pending.busy = False
        if data and pending.chunks is not None:
            pending.add(data, self.decode_content if decode_content is None else decode_content)
        # read() without amt reads to the end; an empty read with one means the end.
        if amt is None or amt < 0 or (not data and amt != 0) or _body_done(self):
            _WatchedResponse._cb_settled(self)
            pending.finish(self)
        return data

    def read1(self, amt: int | None = None, decode_content: bool | None = None) -> bytes:
        """``urllib3.HTTPResponse.read1``, timed and watched."""
        pending = self._cb_pending
        if pending is None or pending.busy:
            return self._cb_read1(self, amt, decode_content)
        clock = pending.clock
        pending.busy = True
        try:
            if clock is None:
                data = self._cb_read1(self, amt, decode_content)
            else:
                began = clock()
                try:
                    data = self._cb_read1(self, amt, decode_content)
                finally:
                    pending.upstream += clock() - began
        except BaseException as exc:
            _WatchedResponse._cb_failed(self, pending, exc)
            raise
        pending.busy = False
        if data and pending.chunks is not None:
            pending.add(data, self.decode_content if decode_content is None else decode_content)
        if (not data and amt != 0) or _body_done(self):
            _WatchedResponse._cb_ended(self, pending)
        return data

    def read_chunked(
        self, amt: int | None = None, decode_content: bool | None = None
    ) -> Generator[bytes]:
        """``urllib3.HTTPResponse.read_chunked``, each chunk timed and watched."""
        chunks = self._cb_read_chunked(self, amt, decode_content)
        pending = self._cb_pending
        if pending is None or pending.busy:
            yield from chunks
            return
        clock = pending.clock
        decode = self.decode_content if decode_content is None else decode_content
        try:
            while self._cb_pending is pending:
                pending.busy = True
                began = 0.0 if clock is None else clock()
                try:
                    chunk = next(chunks)
                except StopIteration:
                    if clock is not None:
                        pending.upstream += clock() - began
                    pending.busy = False
                    if _body_done(self):
                        _WatchedResponse._cb_ended(self, pending)
                    return
                except BaseException as exc:
                    if clock is not None:
                        pending.upstream += clock() - began
                    _WatchedResponse._cb_failed(self, pending, exc)
                    raise
                if clock is not None:
                    pending.upstream += clock() - began
                pending.busy = False
                if chunk and pending.chunks is not None:
                    pending.add(chunk, decode)
                yield chunk
            # Settled meanwhile (closed between two chunks): read on, unwatched.
            yield from chunks
        finally:
            chunks.close()

    def close(self) -> None:
        """Close the body; an outcome not settled yet settles as a success."""
        pending = self._cb_pending
        try:
            super().close()
        finally:
            # urllib3 also closes from inside a failing read: that read settles it.
            if pending is not None and not pending.busy:
                _WatchedResponse._cb_settled(self)
                pending.finish(None)

    def __del__(self) -> None:
        # Never settled: the response was dropped. Settle without a lock, then
        # let io.IOBase close it (close() then finds nothing to settle).
        pending = self.__dict__.get("_cb_pending")
        if pending is not None:
            self._cb_pending = None
            pending.dropped()
        super().__del__()


_WATCHED_CLASSES: dict[type[urllib3.HTTPResponse], type[_WatchedResponse]] = {
    urllib3.HTTPResponse: _WatchedResponse
}


def _watched_class(cls: type[urllib3.HTTPResponse]) -> type[_WatchedResponse]:
    """``_WatchedResponse`` for urllib3's own class, else a subclass of it and ``cls``."""
    watched = _WATCHED_CLASSES.get(cls)
    if watched is None:
        watched = type(
            f"Watched{cls.__name__}",
            (_WatchedResponse, cls),
            {
                "__module__": __name__,
                "_cb_original": cls,
                "_cb_read": staticmethod(cls.read),
                "_cb_read1": staticmethod(cls.read1),
                "_cb_read_chunked": staticmethod(cls.read_chunked),
            },
        )
        _WATCHED_CLASSES[cls] = watched
    return watched


class CircuitBreakerAdapter(HTTPAdapter):
    """A ``requests.adapters.HTTPAdapter`` that puts a circuit breaker in front of each upstream.

    Mount it on a ``requests.Session`` for ``http://`` and ``https://``.

    Args:
        config: The default :class:`BreakerConfig` of a registry built here.
        rules: Per-host configurations by pattern (see :class:`BreakerRegistry`).
        registry: A :class:`BreakerRegistry` to share with other adapters and
            httpx transports; excludes ``config``, ``rules`` and ``key``.
        key: :data:`by_host` (default), :func:`by_route`, or a callable
            ``(method, url) -> str | None``.
        fallback: What an open circuit answers: ``None`` (raise
            :class:`CircuitOpenRequestsError`), a :class:`FallbackResponse`,
            a :class:`LastKnownGood`, or ``(request, error) -> requests.Response``.
        wall_clock: Seconds since the epoch, for an HTTP-date ``Retry-After``
            without a ``Date`` header (default ``time.time``).
        **kwargs: Passed to ``HTTPAdapter``: ``max_retries`` (an int or an
            ``urllib3.Retry``), ``pool_connections``, ``pool_maxsize``,
            ``pool_block``.

    Raises:
        TypeError: both ``registry`` and ``config``/``rules``/``key``, a bad
            ``fallback``, or an argument ``HTTPAdapter`` does not take.

    Every response that went through a breaker carries
    ``response.circuit_breaker``, a dict with ``key`` and ``state`` (the state
    its request was let through in); a fallback's also has ``"fallback": True``.
    ``close()`` closes the connection pools; the registry, which other clients
    may share, is left as it is.
    """

    def __init__(
        self,
        *,
        config: BreakerConfig | None = None,
        rules: Mapping[str, BreakerConfig] | None = None,
        registry: BreakerRegistry | None = None,
        key: KeyFunc | None = None,
        fallback: Fallback = None,
        wall_clock: Callable[[], float] = _clock.wall_clock,
        **kwargs: Any,
    ) -> None:
        self.registry = registry_from(registry, config, rules, key)
        self._gate = _Gate(self.registry, _check_fallback(fallback), wall_clock)
        super().__init__(**kwargs)

    @property
    def max_retries(self) -> Retry:
        """urllib3's ``Retry`` for this adapter's requests, as a copy that asks the breaker.

        Setting it (an ``int`` or a ``Retry``) stores such a copy.
        """
        return self._cb_retries

    @max_retries.setter
    def max_retries(self, value: Retry | int | None) -> None:
        retries = _breaker_retry(value)
        total = retries.total
        # Retry(0) (requests' default) can never retry: skip the per-request context.
        self._cb_may_retry = total is None or total is False or total > 0
        self._cb_retries = retries

    def __getstate__(self) -> dict[str, Any]:
        """Refuse to pickle: the breakers hold live state (locks, permits in flight).

        Raises:
            TypeError: always.
        """
        raise TypeError("a CircuitBreakerAdapter cannot be pickled; build one in each process")

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """Send ``request`` through its breaker (the session calls this).

        Returns:
            The upstream's response, or a fallback's when the circuit is open.

        Raises:
            CircuitOpenRequestsError: the circuit is open and there is no fallback.
            requests.RequestException: whatever ``HTTPAdapter.send`` raises.
        """
        gate = self._gate
        routed = gate.route(request)
        if routed is None:
            return super().send(request, stream, timeout, verify, cert, proxies)
        key, breaker = routed
        try:
            permit = breaker.acquire(CircuitOpenRequestsError)
        except CircuitOpenRequestsError as exc:
            exc.request = request
            return self._short_circuit(request, key, exc, None)
        if self._cb_may_retry:
            return self._send_retrying(
                gate, key, breaker, permit, request, stream, timeout, verify, cert, proxies
            )
        # Durations are measured only when the breaker reads them (slow calls, classify).
        clock = breaker.clock if breaker.timed else None
        start = 0.0 if clock is None else clock()
        try:
            response = super().send(request, stream, timeout, verify, cert, proxies)
        except Exception as exc:
            gate.on_error(breaker, permit, request, exc, 0.0 if clock is None else clock() - start)
            raise
        except BaseException:
            breaker.release(permit)
            raise
        duration = 0.0 if clock is None else clock() - start
        return gate.on_response(breaker, permit, key, request, response, duration, clock)

    def _send_retrying(
        self,
        gate: _Gate,
        key: str,
        breaker: CircuitBreaker,
        permit: int,
        request: requests.PreparedRequest,
        stream: bool,
        timeout: Any,
        verify: Any,
        cert: Any,
        proxies: Any,
    ) -> requests.Response:
        """``send`` for an adapter whose ``max_retries`` may retry: the breaker rules each retry."""
        timed = breaker.timed
        clock = breaker.clock
        attempt = _Attempt(breaker, permit, clock)
        token = _ATTEMPT.set(attempt)
        start = clock() if timed else 0.0
        stopped: _RetryStopped | None = None
        try:
            response = super().send(request, stream, timeout, verify, cert, proxies)
        except _RetryStopped as stop:
            stopped = stop
        except Exception as exc:
            duration = clock() - start - attempt.slept if timed else 0.0
            headers = None
            if attempt.last_headers is not None and isinstance(exc, requests.exceptions.RetryError):
                # Status retries ran out: the last response tells what failed.
                headers = CaseInsensitiveDict(attempt.last_headers)
            status = attempt.last_status if headers is not None else None
            retry_after = None if headers is None else gate.retry_after(breaker, headers)
            gate.on_error(
                breaker, attempt.permit, request, exc, duration, status, headers, retry_after
            )
            raise
        except BaseException:
            breaker.release(attempt.permit)
            raise
        finally:
            _ATTEMPT.reset(token)
        if stopped is not None:
            breaker.release(attempt.permit)
            return self._short_circuit(request, key, stopped.error, stopped)
        if not timed:
            return gate.on_response(breaker, attempt.permit, key, request, response, 0.0, None)
        duration = clock() - start - attempt.slept
        return gate.on_response(breaker, attempt.permit, key, request, response, duration, clock)

    # -- short circuits --------------------------------------------------------

    def _short_circuit(
        self,
        request: requests.PreparedRequest,
        key: str,
        exc: CircuitOpenError,
        stopped: _RetryStopped | None,
    ) -> requests.Response:
        """Answer a request the breaker refused: the fallback's response, or raise."""
        if isinstance(exc, CircuitOpenRequestsError) and stopped is None:
            error = exc
        else:
            message = exc.message
            if stopped is not None:
                message += "; the remaining retries of this request were stopped"
            error = CircuitOpenRequestsError(
                exc.name, exc.state, exc.retry_after, message, request=request
            )
        fallback = self._gate.fallback
        if isinstance(fallback, LastKnownGood):
            found = self._gate.from_lkg(fallback, request)
            if found is not None:
                entry, content, headers = found
                response = self._synthetic(
                    request, entry.status_code, entry.reason, headers, content, error
                )
                response.circuit_breaker = {"stale": True}  # type: ignore[attr-defined]
                return self._finish_fallback(response, key, error)
            fallback = fallback.otherwise
        if fallback is None:
            # Chained to the upstream's last failure when retries were cut short,
            # never to the breaker's own internal rejection.
            raise error from (stopped.last_error if stopped is not None else None)
        if isinstance(fallback, FallbackResponse):
            response = self._synthetic(
                request,
                fallback.status_code,
                _reason(fallback.status_code),
                list(fallback.header_list),
                fallback.body,
                error,
            )
        else:
            response = fallback(request, error)
        return self._finish_fallback(response, key, error)

    def _synthetic(
        self,
        request: requests.PreparedRequest,
        status: int,
        reason: str,
        headers: list[tuple[str, str]],
        content: bytes,
        error: CircuitOpenError,
    ) -> requests.Response:
        """A complete ``requests.Response`` whose ``raw`` is a readable stream of ``content``."""
        names = {name.lower() for name, _ in headers}
        if "content-length" not in names and "transfer-encoding" not in names:
            headers.append(("Content-Length", str(len(content))))
        headers.extend(fallback_headers(names, error.retry_after))
        raw = urllib3.HTTPResponse(
            body=io.BytesIO(content),
            headers=urllib3.HTTPHeaderDict(headers),
            status=status,
            version=11,
            version_string="HTTP/1.1",
            reason=reason,
            preload_content=False,
            decode_content=False,
            enforce_content_length=False,
            request_method=request.method,
            request_url=request.url,
        )
        # The body is left to be read as a network one would be: the session
        # reads it when stream=False; content, iter_content() and raw all work.
        return self.build_response(request, raw)

    @staticmethod
    def _finish_fallback(response: object, key: str, error: CircuitOpenError) -> requests.Response:
        if not isinstance(response, requests.Response):
            raise TypeError(f"a fallback must return a requests.Response, got {response!r}")
        headers = response.headers
        for name, value in fallback_headers(headers.keys(), error.retry_after):
            headers[name] = value
        marks = getattr(response, EXTENSION, None)
        result: dict[str, Any] = {"key": key, "state": error.state.value, "fallback": True}
        if isinstance(marks, Mapping):
            result.update(marks)
        response.circuit_breaker = result  # type: ignore[attr-defined]
        return response

    def close(self) -> None:
        """Close the connection pools (``HTTPAdapter.close``); the registry is left as it is."""
        super().close()
