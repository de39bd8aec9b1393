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
``response.circuit_breaker``, a dict with its ``key`` and ``state`` (the state
its request was let through in, read when it was admitted): :func:`breaker_info`
reads it, typed (requests' ``Response`` declares no such attribute).

How it is built
---------------

Everything about an outcome is decided by the outcome engine
(:mod:`circuitbreaker_http._outcome`), the same for every client: one
:class:`~circuitbreaker_http._outcome.Outcome` per admission, made right
after the breaker lets the request through. This module only turns requests'
and urllib3's objects into its inputs (a status, headers, an exception and
what :class:`~circuitbreaker_http._outcome.ErrorKinds` says of it, the time
spent inside each read), keys URL strings, builds fallback responses, and
watches the body urllib3 reads.

Watching the body
-----------------

requests reads a body through ``response.raw``, urllib3's response:
``stream()`` for ``content`` and ``iter_content()``, or the caller's own
``read()``, ``read1()`` and ``read_chunked()``. While its outcome is unsettled,
that very object wears a subclass of its own class (made once per class)
whose ``read()``, ``read1()``, ``read_chunked()``, ``stream()`` and ``close()``
time each read and watch for errors, the end and the close; a finaliser
settles a response dropped unclosed. Once the outcome settles the response gets
its own class back: nothing is left to pay for. The end of the body is read
from urllib3's public behaviour only: ``stream()`` or ``read_chunked()``
running out, ``read()`` without ``amt``, a read that returns ``b""``. A body
read by hand to its exact length, with no last empty read, settles when it is
closed. Whether urllib3 decoded what it returned (for the copy Last-Known-Good
keeps) is its public ``CONTENT_DECODERS`` rule applied to
``Content-Encoding``. No private attribute of urllib3 or requests is read.

One trick stays, in one function (:func:`_become`): changing the class of an
object in place. Wrapping ``response.raw`` would hand users something that
is not urllib3's response, and per-instance method attributes cannot help the
finaliser: ``io.IOBase``'s own finaliser calls ``close()``, which would then
settle under the breaker's lock, and the garbage collector may run while this
very thread holds it. Only the instance's class can settle first, lock-free.
The same function gives a copy of your ``Retry`` the breaker's retry rules
(below) while it keeps your subclass and every setting.
``tests/requests/test_requests_urllib3.py`` checks, on the installed urllib3,
everything the trick and the watching rely on, and fails loudly when urllib3
changes it.

urllib3's retries and the breaker
---------------------------------

urllib3 retries inside ``HTTPAdapter.send``, so every attempt of one logical
request shares one outcome and records it once, at the end. The adapter
keeps its ``max_retries`` as a ``Retry`` subclass (the one you passed, or a
copy of it with the same settings; your own ``Retry`` subclass keeps its
behaviour) that asks the breaker before each further attempt:

* In the closed state the attempts go on as urllib3 decides, as long as the
  breaker stays in the closed period the request was let through in.
* Once that period ends (the breaker opened through any request, of any
  client sharing the registry), the next attempt is admitted like a new
  request, just before it is sent: if the breaker would short-circuit a new
  request, the remaining retries stop and the request is answered as a short
  circuit (``CircuitOpenRequestsError``, or the fallback). A wait between
  attempts (``backoff_factor``, a ``Retry-After`` of hours) ends as soon as the
  breaker opens: it is checked every 50 ms. Waiting takes no half-open trial
  slot; a retry admitted as a trial is sent.
* A half-open trial is one probe: its first failure is its outcome, as if the
  retries were exhausted.
* A ``Retry-After`` that urllib3 cannot parse is ignored (the backoff applies)
  instead of failing the request with ``InvalidHeader``, as the breaker does.
* A ``Retry`` subclass that overrides ``sleep()`` or ``sleep_for_retry()``
  sleeps its own way; the breaker is asked before and after.
"""

from __future__ import annotations

import copy
import http
import inspect
import io
import time
from collections.abc import Callable, Generator, Mapping
from contextvars import ContextVar
from typing import Any, TypeAlias

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
    from urllib3.util.retry import Retry
except ImportError as exc:  # pragma: no cover - exercised by the bare-import test
    raise ImportError(
        "circuitbreaker_http.requests needs requests and urllib3 2: "
        'pip install "circuitbreaker-http[requests]"'
    ) from exc

from . import _clock, _options
from ._breaker import CircuitBreaker
from ._core import BreakerConfig, CircuitState
from ._errors import CircuitOpenError
from ._fallback import FallbackFor
from ._info import BreakerInfo, read_info
from ._keys import KeyFunc, _encode_host
from ._options import EXTENSION
from ._options import _current as _current_options
from ._outcome import ErrorKinds, FallbackPlan, Gate, Outcome, check_fallback, started
from ._policy import fallback_headers
from ._registry import BreakerRegistry, registry_from

__all__ = [
    "BreakerInfo",
    "CircuitBreakerAdapter",
    "CircuitOpenRequestsError",
    "Fallback",
    "breaker_info",
]

Fallback: TypeAlias = FallbackFor[
    requests.PreparedRequest, "CircuitOpenRequestsError", requests.Response
]
"""The ``fallback`` of :class:`CircuitBreakerAdapter`: ``None``, a :class:`FallbackResponse`,
a :class:`LastKnownGood`, a callable ``(requests.PreparedRequest, CircuitOpenError) ->
requests.Response``, or a mapping of rule patterns to those."""

_HTTPResponse = urllib3.HTTPResponse
_HALF_OPEN = CircuitState.HALF_OPEN
_REFUSING = (CircuitState.OPEN, CircuitState.FORCED_OPEN)
_ORIGIN_CACHE_MAX = 4096
_RETRY_POLL = 0.05  # seconds between looks at the breaker while urllib3 waits to retry
_MISSING: Any = object()
# stream()'s own default chunk size, for a caller that gives none.
_STREAM_AMT = inspect.signature(_HTTPResponse.stream).parameters["amt"].default


def _not_a_closed_pool(exc: BaseException) -> bool | None:
    # A pool closed under a request in flight says nothing about the upstream.
    return None if exc.args and isinstance(exc.args[0], ClosedPoolError) else True


_ERRORS = ErrorKinds(
    (
        # What a logical request raises when the upstream failed (after urllib3's retries).
        requests.exceptions.ConnectionError,  # TLS, proxy and connect timeouts included
        requests.exceptions.Timeout,
        requests.exceptions.ChunkedEncodingError,
        requests.exceptions.ContentDecodingError,
        requests.exceptions.RetryError,
        # What urllib3 raises while the body is read (requests translates them later).
        ProtocolError,  # a connection dropped, a body shorter than its Content-Length
        DecodeError,
        ReadTimeoutError,
        Urllib3SSLError,
    ),
    (ResponseNotChunked,),  # read_chunked() of a body that is not chunked: the caller's slip
    _not_a_closed_pool,
)


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
        last_failure: str | None = None,
        *,
        request: requests.PreparedRequest | None = None,
    ) -> None:
        # Skips RequestException.__init__, which would format the message on
        # every rejection; it only sets these two.
        CircuitOpenError.__init__(self, name, state, retry_after, message, last_failure)
        self.request = request
        self.response = None


def _as_requests_error(exc: BaseException) -> BaseException:
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


def _describe(request: requests.PreparedRequest) -> tuple[str, str]:
    return request.method or "", request.url or ""


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def _become(obj: object, cls: type) -> None:
    """Give ``obj`` the class ``cls`` in place: the one trick this module plays.

    ``cls`` is the object's own class or a subclass of it that adds no slots
    (so both have the same layout). Used to dress an urllib3 response for as
    long as its body is watched (see the module's docstring for why it cannot
    be a wrapper or per-instance methods) and to turn a copy of the caller's
    ``Retry`` into one that asks the breaker. Checked against the installed
    urllib3 by ``tests/requests/test_requests_urllib3.py``.
    """
    obj.__class__ = cls


# -- the body ------------------------------------------------------------------------------------


class _Outcome(Outcome):
    """An :class:`Outcome` with what watching one urllib3 body adds (set by :func:`_watch`).

    Attributes:
        reading: A watched read is running. A ``close()`` meanwhile (urllib3's
            own, from a read about to fail, or another thread's) leaves the
            settling to that read.
        shut: ``close()`` came while a read was running: it settles as closed.
        decoded: Whether the chunks kept for Last-Known-Good were decoded by
            urllib3 (``None`` before the first).
    """

    __slots__ = ("decoded", "reading", "shut")

    decoded: bool | None
    reading: bool
    shut: bool


def _watch(raw: urllib3.HTTPResponse, outcome: _Outcome) -> None:
    """Watch ``raw``'s body until ``outcome`` settles."""
    outcome.reading = False
    outcome.shut = False
    outcome.decoded = None
    raw._cb_outcome = outcome  # type: ignore[attr-defined]
    cls = type(raw)
    _become(raw, _WATCHED.get(cls) or _watched_class(cls))


def _unwatch(raw: urllib3.HTTPResponse) -> None:
    """Stop watching ``raw``: it gets its own class back (whichever thread comes first)."""
    raw._cb_outcome = None  # type: ignore[attr-defined]
    original = getattr(type(raw), "_cb_original", None)
    if original is not None:
        _become(raw, original)


def _decodes(raw: urllib3.HTTPResponse) -> bool:
    """Whether urllib3 decodes this body when asked to: ``Content-Encoding`` by its own rule."""
    encoding = raw.headers.get("content-encoding", "").lower()
    known = raw.CONTENT_DECODERS
    return encoding in known or any(part.strip() in known for part in encoding.split(","))


def _after_read(
    raw: urllib3.HTTPResponse,
    outcome: _Outcome,
    began: float,
    data: bytes,
    decode_content: bool | None,
    end: bool,
) -> None:
    """Account for one read that returned ``data`` (``end``: nothing more can come)."""
    clock = outcome.clock
    if clock is not None:
        outcome.upstream += clock() - began
    outcome.reading = False
    if outcome.shut:
        # Closed (on another thread) while this read ran: what was read is not
        # known to be the whole body.
        _unwatch(raw)
        outcome.closed()
        return
    if data and outcome.tee is not None:
        decoded = bool(raw.decode_content if decode_content is None else decode_content)
        if outcome.decoded is None:
            outcome.decoded = decoded
        if outcome.decoded is decoded:
            outcome.chunk(data)
        else:
            outcome.tee = None  # urllib3 refuses to mix them; keep nothing half-decoded
    if end:
        _ended(raw, outcome)


def _ended(raw: urllib3.HTTPResponse, outcome: _Outcome) -> None:
    """The body was read to its end: a success, and Last-Known-Good may keep it."""
    _unwatch(raw)
    # A decoded body no longer has the Content-Encoding its headers name.
    decoded = outcome.tee is not None and outcome.decoded and _decodes(raw)
    outcome.ended(None, ("content-encoding",) if decoded else ())


def _read_failed(
    raw: urllib3.HTTPResponse, outcome: _Outcome, began: float, exc: BaseException
) -> None:
    """A read raised ``exc``: a failure if urllib3's error says the upstream failed."""
    clock = outcome.clock
    if clock is not None:
        outcome.upstream += clock() - began
    _unwatch(raw)
    if isinstance(exc, Exception):
        outcome.failed(_as_requests_error(exc), _ERRORS.failure(exc))
    else:
        outcome.cancelled()  # KeyboardInterrupt and the like record nothing


def _watched_class(cls: type[urllib3.HTTPResponse]) -> type[urllib3.HTTPResponse]:
    """A subclass of ``cls`` whose reads, ``close()`` and finaliser feed the response's outcome.

    Each method calls ``cls``'s own, looked up at call time; one that runs
    after the outcome settled (another thread's close) just passes through.
    """

    def read(
        self: Any,
        amt: int | None = None,
        decode_content: bool | None = None,
        cache_content: bool = False,
    ) -> bytes:
        """``read()`` of the response's own class, timed and watched."""
        outcome: _Outcome | None = self._cb_outcome
        if outcome is None or outcome.reading:
            return cls.read(self, amt, decode_content, cache_content)
        clock = outcome.clock
        began = 0.0 if clock is None else clock()
        outcome.reading = True
        try:
            data = cls.read(self, amt, decode_content, cache_content)
        except BaseException as exc:
            _read_failed(self, outcome, began, exc)
            raise
        # read() without amt reads to the end; an empty read with one means the end.
        end = amt is None or amt < 0 or (not data and amt != 0)
        if end or clock is not None or outcome.tee is not None:
            _after_read(self, outcome, began, data, decode_content, end)
        else:  # _after_read() when there is nothing to account for, inlined
            outcome.reading = False
            if outcome.shut:
                _unwatch(self)
                outcome.closed()
        return data

    def read1(self: Any, amt: int | None = None, decode_content: bool | None = None) -> bytes:
        """``read1()`` of the response's own class, timed and watched."""
        outcome: _Outcome | None = self._cb_outcome
        if outcome is None or outcome.reading:
            return cls.read1(self, amt, decode_content)
        clock = outcome.clock
        began = 0.0 if clock is None else clock()
        outcome.reading = True
        try:
            data = cls.read1(self, amt, decode_content)
        except BaseException as exc:
            _read_failed(self, outcome, began, exc)
            raise
        _after_read(self, outcome, began, data, decode_content, not data and amt != 0)
        return data

    def read_chunked(
        self: Any, amt: int | None = None, decode_content: bool | None = None
    ) -> Generator[bytes]:
        """``read_chunked()`` of the response's own class, each chunk timed and watched."""
        outcome: _Outcome | None = self._cb_outcome
        chunks = cls.read_chunked(self, amt, decode_content)
        try:
            while outcome is not None and self._cb_outcome is outcome and not outcome.reading:
                clock = outcome.clock
                began = 0.0 if clock is None else clock()
                outcome.reading = True
                try:
                    chunk = next(chunks)
                except StopIteration:
                    _after_read(self, outcome, began, b"", decode_content, True)
                    return
                except BaseException as exc:
                    _read_failed(self, outcome, began, exc)
                    raise
                _after_read(self, outcome, began, chunk, decode_content, False)
                yield chunk
            # Settled meanwhile (closed between two chunks), or nested: read on, unwatched.
            yield from chunks
        finally:
            chunks.close()

    def stream(
        self: Any, amt: int | None = _STREAM_AMT, decode_content: bool | None = None
    ) -> Generator[bytes]:
        """``stream()`` of the response's own class; its end is the body's."""
        outcome: _Outcome | None = self._cb_outcome
        # Its reads go through read() and read_chunked() above, which time them.
        yield from cls.stream(self, amt, decode_content)
        if outcome is not None and amt != 0 and self._cb_outcome is outcome:
            _ended(self, outcome)  # stream() ends where the body does

    def close(self: Any) -> None:
        """``close()`` of the response's own class; an unsettled outcome settles as a success."""
        outcome: _Outcome | None = self._cb_outcome
        try:
            cls.close(self)
        finally:
            if outcome is not None:
                if outcome.reading:
                    outcome.shut = True
                if not outcome.reading:  # looked at again: that read may have just ended
                    _unwatch(self)
                    outcome.closed()

    def __del__(self: Any) -> None:
        # Dropped unsettled: settle without a lock (the collector may have
        # interrupted this very thread while it held one), then let io's own
        # finaliser close it (close() then finds nothing to settle).
        outcome: _Outcome | None = getattr(self, "_cb_outcome", None)
        if outcome is not None:
            self._cb_outcome = None
            outcome.dropped()
        cls.__del__(self)

    namespace: dict[str, Any] = {
        "__slots__": (),
        "__module__": __name__,
        "__qualname__": f"Watched{cls.__name__}",
        "__doc__": f"A ``{cls.__name__}`` whose body is watched by a circuit breaker.",
        "_cb_original": cls,
        "read": read,
        "read1": read1,
        "read_chunked": read_chunked,
        "stream": stream,
        "close": close,
        "__del__": __del__,
    }
    watched: type[urllib3.HTTPResponse] = type(f"Watched{cls.__name__}", (cls,), namespace)
    _WATCHED[cls] = watched
    return watched


_WATCHED: dict[type[urllib3.HTTPResponse], type[urllib3.HTTPResponse]] = {}


# -- urllib3's retries ---------------------------------------------------------------------------


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
    """The breaker side of one logical request while urllib3 may retry it.

    ``outcome`` is the latest admission's: the request's own, or that of the
    retry the breaker admitted like a new request once the period the request
    was let through in had ended.
    """

    __slots__ = ("last_headers", "last_status", "outcome", "permit", "unsent")

    def __init__(self, outcome: _Outcome, permit: int) -> None:
        self.outcome = outcome
        self.permit = permit
        self.unsent = False  # the permit was taken for an attempt not sent yet
        self.last_status: int | None = None
        self.last_headers: Any = None

    def check(self, last_error: Exception | None) -> None:
        """Stop the retries (``_RetryStopped``) if the breaker refuses new requests now.

        Lock-free while the period the request was let through in goes on.
        Takes no half-open trial slot: that is :meth:`admit`'s, just before
        the attempt is sent.
        """
        breaker = self.outcome.breaker
        if self.unsent or breaker.is_current(self.permit):
            return
        if breaker.state in _REFUSING:
            self._readmit(last_error)  # raises the breaker's own error (unless it just moved on)

    def admit(self, last_error: Exception | None) -> None:
        """Let the next attempt through: in the same period, or admitted like a new request."""
        if not self.unsent and not self.outcome.breaker.is_current(self.permit):
            self._readmit(last_error)

    def _readmit(self, last_error: Exception | None) -> None:
        old = self.outcome
        breaker = old.breaker
        try:
            permit = breaker.acquire(CircuitOpenRequestsError)
        except CircuitOpenRequestsError as exc:
            raise _RetryStopped(exc, last_error) from None
        self.outcome = _Outcome(old.gate, breaker, permit, old.request, started(breaker))
        self.permit = permit
        self.unsent = True
        old.cancelled()  # its period is over: it records nothing either way

    def wait(
        self, delay: float, last_error: Exception | None, sleep: Callable[[], None] | None
    ) -> None:
        """Wait before the next attempt, stopping when the breaker opens; then admit it.

        ``sleep`` is a ``Retry`` subclass's own way of sleeping; without one,
        this sleeps ``delay`` seconds, looking at the breaker every 50 ms.
        """
        outcome = self.outcome
        clock = outcome.clock
        began = 0.0 if clock is None else clock()
        try:
            self.check(last_error)
            if sleep is not None:
                sleep()
            else:
                deadline = _clock.monotonic() + delay
                while (remaining := deadline - _clock.monotonic()) > 0:
                    time.sleep(min(remaining, _RETRY_POLL))
                    self.check(last_error)
        finally:
            if clock is not None:
                # Waiting to retry is the client's time, not the upstream's.
                now = clock()
                if self.outcome is outcome:
                    outcome.start += now - began
                else:  # admitted while waiting: its time starts now
                    self.outcome.start = now
        self.admit(last_error)

    def failed(self, exc: Exception) -> None:
        """Settle the request that raised ``exc`` (after urllib3's retries)."""
        failure = _ERRORS.failure(exc)
        status = self.last_status
        if status is not None and isinstance(exc, requests.exceptions.RetryError):
            # Status retries ran out: the last response tells what failed.
            headers = CaseInsensitiveDict(self.last_headers)
            self.outcome.failed_with_response(exc, failure, status, headers)
        else:
            self.outcome.failed(exc, failure)


_ATTEMPT: ContextVar[_Attempt | None] = ContextVar("circuitbreaker_http.requests", default=None)


class _BreakerRetry(Retry):
    """A ``Retry`` that asks the breaker before each further attempt.

    Outside a request sent through a breaker (no ``_ATTEMPT`` in the context)
    it is the ``Retry`` it copies, unchanged. ``Retry.new()`` builds each next
    instance with ``type(self)``, so every increment stays of this class.
    """

    # Whether the copied class sleeps its own way: then it does, and the
    # breaker is asked before and after.
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
        """Count one more attempt (urllib3 calls this), then ask the breaker about the next one.

        Raises:
            MaxRetryError: urllib3's retries are exhausted, or the request is a
                half-open trial (a trial is one probe).
            _RetryStopped: the breaker would short-circuit the next attempt.
        """
        new_retry = super().increment(method, url, response, error, _pool, _stacktrace)
        attempt = _ATTEMPT.get()
        if attempt is None:
            return new_retry
        attempt.unsent = False  # the attempt just counted was sent under this permit
        if response is not None and error is None:
            # The status path: remember it for a RetryError (status, Retry-After).
            attempt.last_status = response.status
            attempt.last_headers = response.headers
        if attempt.outcome.state is _HALF_OPEN:
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
            attempt.check(error)
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
            attempt.wait(0.0, last_error, lambda: super(_BreakerRetry, self).sleep(response))
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
        attempt.wait(delay, last_error, None)


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
            getattr(cls, name) is not getattr(Retry, name) for name in ("sleep", "sleep_for_retry")
        )
        mixed = type(
            f"CircuitBreaker{cls.__name__}",
            (_BreakerRetry, cls),
            {"_cb_custom_sleep": custom, "__module__": __name__},
        )
        _RETRY_CLASSES[cls] = mixed
    # A copy: the caller's Retry may serve other adapters too.
    clone = copy.copy(retries)
    _become(clone, mixed)
    return clone  # type: ignore[return-value]


# -- keys, outcomes and fallbacks ----------------------------------------------------------------


class _RequestsGate(Gate):
    """A :class:`Gate` that keys requests' URL strings without reparsing them."""

    __slots__ = ("_host_keys", "_parts")

    def __init__(
        self, registry: BreakerRegistry, fallback: Any, wall_clock: Callable[[], float]
    ) -> None:
        super().__init__(registry, fallback, wall_clock, _describe)
        # "scheme://authority" -> key (by_host) or parsed parts (other keys).
        self._host_keys: dict[str, str | None] = {}
        self._parts: dict[str, tuple[str, str, int | None] | None] = {}

    def route(self, request: requests.PreparedRequest) -> CircuitBreaker | None:
        """The breaker for ``request`` (its ``.name`` is the key), or ``None`` to bypass."""
        opts = _current_options.get() if _options.in_use else None
        if opts is None and self.by_host:
            # The hot path, inlined: an origin seen before. A cached origin of
            # http(s) is at least "http://h", so its path starts at index 8 or
            # later; anything this shortcut cuts wrongly misses the cache and
            # goes the long way.
            url = request.url or ""
            end = url.find("/", 8)
            key = self._host_keys.get(url if end < 0 else url[:end])
            if key is not None:
                return self.registry.get(key)
        return self.route_with(opts, request)

    def request_key(self, request: requests.PreparedRequest) -> str | None:
        """The key of ``request`` (``None``: it bypasses the breakers), from its URL string."""
        return self.key_of_url(request.method or "", request.url or "")

    def key_of_url(self, method: str, url: str) -> str | None:
        """The key of ``url`` without reparsing it: origins are cut out and cached."""
        from_parts = self.from_parts
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
        if self.by_host:
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
        return from_parts(method, *parts, path)

    def watch(
        self, outcome: _Outcome, request: requests.PreparedRequest, response: requests.Response
    ) -> requests.Response:
        """Feed a response's headers to its outcome, and watch its body while it must."""
        response.circuit_breaker = outcome.extension()  # type: ignore[attr-defined]
        raw = response.raw
        status = response.status_code
        headers = response.headers
        lkg = self.lkg
        if not isinstance(raw, _HTTPResponse) or (lkg is None and raw.length_remaining == 0):
            # Nothing left to come from the upstream (HEAD, 204, 304, an empty
            # body), or a raw body this adapter cannot watch: settle now.
            outcome.headers(status, headers, complete=True)
            return response
        if outcome.headers(status, headers):
            return response
        if lkg is not None:
            outcome.tee = self.tee_for(
                outcome.breaker.name,
                request.method or "",
                request.url or "",
                request.headers.get,
                status,
                raw.reason or _reason(status),
                raw.headers.items,
            )
            if raw.length_remaining == 0:
                outcome.ended(b"")
                return response
        _watch(raw, outcome)
        return response


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
            a :class:`LastKnownGood`, ``(request, error) -> requests.Response``,
            or a mapping of rule patterns (as in ``rules``, matched against
            the breaker key) to those: each key gets its most specific
            pattern's, and a key no pattern matches raises (:data:`Fallback`).
        wall_clock: Seconds since the epoch, for an HTTP-date ``Retry-After``
            without a ``Date`` header (default ``time.time``).
        **kwargs: Passed to ``HTTPAdapter``: ``max_retries`` (an int or an
            ``urllib3.Retry``), ``pool_connections``, ``pool_maxsize``,
            ``pool_block``.

    Raises:
        TypeError: both ``registry`` and ``config``/``rules``/``key``, a
            ``fallback`` of the wrong shape (a callable that cannot take
            ``(request, error)``, a coroutine function), or an argument
            ``HTTPAdapter`` does not take.

    Every response that went through a breaker carries
    ``response.circuit_breaker`` (read it with :func:`breaker_info`), a dict
    with ``key`` and ``state`` (the state its request was let through in); a
    fallback's also has ``"fallback": True``
    (and ``"stale": True`` from Last-Known-Good). A response a fallback builds
    is complete: ``status_code``, ``reason``, ``headers``, ``content``,
    ``raw`` (a readable urllib3 response of the same bytes), ``request``,
    ``url``, ``elapsed``, with ``X-Circuit-Breaker: open``. ``close()`` closes
    the connection pools; the registry, which other clients may share, is
    left as it is.
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
        checked = check_fallback(fallback, False, "CircuitBreakerAdapter")
        #: The :class:`BreakerRegistry` this adapter's breakers live in.
        self.registry = registry_from(registry, config, rules, key)
        self._gate = _RequestsGate(self.registry, checked, wall_clock)
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
        breaker = gate.route(request)
        if breaker is None:
            return super().send(request, stream, timeout, verify, cert, proxies)
        try:
            permit = breaker.acquire(CircuitOpenRequestsError)
        except CircuitOpenRequestsError as exc:
            exc.request = request
            return self._short_circuit(request, breaker.name, exc, None)
        # Right after admission: the state it was let through in, and the
        # clock reading its duration counts from (none unless the breaker needs it).
        outcome = _Outcome(
            gate, breaker, permit, request, breaker.timer() if breaker.timed else 0.0
        )
        if self._cb_may_retry:
            attempt = _Attempt(outcome, permit)
            return self._send_retrying(attempt, request, stream, timeout, verify, cert, proxies)
        try:
            response = super().send(request, stream, timeout, verify, cert, proxies)
        except Exception as exc:
            outcome.failed(exc, _ERRORS.failure(exc))
            raise
        except BaseException:
            outcome.cancelled()
            raise
        return gate.watch(outcome, request, response)

    def _send_retrying(
        self,
        attempt: _Attempt,
        request: requests.PreparedRequest,
        stream: bool,
        timeout: Any,
        verify: Any,
        cert: Any,
        proxies: Any,
    ) -> requests.Response:
        """``send`` when ``max_retries`` may retry: the breaker rules each retry (``attempt``)."""
        token = _ATTEMPT.set(attempt)
        stopped: _RetryStopped | None = None
        try:
            response = super().send(request, stream, timeout, verify, cert, proxies)
        except _RetryStopped as stop:
            stopped = stop
        except Exception as exc:
            attempt.failed(exc)
            raise
        except BaseException:
            attempt.outcome.cancelled()
            raise
        finally:
            _ATTEMPT.reset(token)
        outcome = attempt.outcome
        if stopped is None:
            return self._gate.watch(outcome, request, response)
        outcome.cancelled()
        # Out of the except block: the error is chained to the upstream's last
        # failure, never to the breaker's own internal rejection.
        return self._short_circuit(request, outcome.breaker.name, stopped.error, stopped)

    # -- short circuits --------------------------------------------------------------------------

    def _short_circuit(
        self,
        request: requests.PreparedRequest,
        key: str,
        exc: CircuitOpenError,
        stopped: _RetryStopped | None,
    ) -> requests.Response:
        """Answer a request the breaker refused: the fallback's response, or raise."""
        error = exc
        if stopped is not None:
            message = exc.message + "; the remaining retries of this request were stopped"
            error = CircuitOpenRequestsError(
                exc.name,
                exc.state,
                exc.retry_after,
                message,
                request=request,
                last_failure=exc.last_failure,
            )
        gate = self._gate
        plan = None
        if gate.fallback is not None:
            plan = gate.fallback_for(
                request.method or "", request.url or "", request.headers.get, key
            )
        if plan is None:
            raise error from (stopped.last_error if stopped is not None else None)
        if plan.call is not None:
            response = plan.call(request, error)
        else:
            response = self._synthetic(request, plan, error)
        if not isinstance(response, requests.Response):
            raise TypeError(f"a fallback must return a requests.Response, got {response!r}")
        # Its own Retry-After is kept; X-Circuit-Breaker always says "open".
        marks = fallback_headers(response.headers.keys(), error.retry_after)
        response.headers.update(marks)
        response.circuit_breaker = gate.fallback_extension(  # type: ignore[attr-defined]
            key, error, getattr(response, EXTENSION, None), plan.stored is not None
        )
        return response

    def _synthetic(
        self, request: requests.PreparedRequest, plan: FallbackPlan, error: CircuitOpenError
    ) -> requests.Response:
        """The complete ``requests.Response`` of a stored or ``FallbackResponse`` plan.

        Its ``raw`` is an urllib3 response reading the same bytes, left unread
        as a network one is: the session reads it when ``stream=False``;
        ``content``, ``iter_content()`` and ``raw`` all work.
        """
        stored, fallback = plan.stored, plan.response
        if stored is not None:
            # The plan's headers as they are: the stale marks (one Age) included.
            status, reason, headers = stored.status_code, stored.reason, list(plan.headers or ())
            content, length = plan.content, len(stored.content)  # HEAD: a GET's length
        else:
            assert fallback is not None
            status, reason, headers = fallback.status_code, "", list(fallback.header_list)
            content = fallback.body
            length = len(content)
        names = {name.lower() for name, _ in headers}
        if "content-length" not in names and "transfer-encoding" not in names:
            headers.append(("Content-Length", str(length)))
        headers.extend(fallback_headers(names, error.retry_after))
        raw = _HTTPResponse(
            body=io.BytesIO(content),
            headers=urllib3.HTTPHeaderDict(headers),
            status=status,
            version=11,
            version_string="HTTP/1.1",
            reason=reason or _reason(status),
            preload_content=False,
            decode_content=False,
            enforce_content_length=False,
            request_method=request.method,
            request_url=request.url,
        )
        return self.build_response(request, raw)

    def close(self) -> None:
        """Close the connection pools (``HTTPAdapter.close``); the registry is left as it is."""
        super().close()


def breaker_info(response: requests.Response) -> BreakerInfo | None:
    """The breaker marks of a response, or ``None`` if it went through no breaker.

    The typed way to read ``response.circuit_breaker``, an attribute that
    requests' own ``Response`` does not declare (so a type checker rejects it).

    Args:
        response: A response returned through :class:`CircuitBreakerAdapter`
            (a redirect's hops in ``response.history`` each carry their own).

    Returns:
        The mapping the response carries (the same ``dict``): ``key`` (the
        breaker's key) and ``state`` (the state the request was let through
        in: ``"closed"``, ``"half_open"`` or ``"disabled"``; for a fallback's
        response, the state that refused it), plus ``"fallback": True`` on a
        fallback's response and ``"stale": True`` on a Last-Known-Good copy.
        ``None`` for a request that bypassed the breakers (a key function's
        ``None``, ``options(bypass=True)``) or a session without the adapter.

    Example::

        info = breaker_info(session.get("https://api.example.com/"))
        if info is not None and info["state"] == "half_open":
            ...  # a trial request: the upstream was failing a moment ago
    """
    return read_info(getattr(response, EXTENSION, None))
