"""One request's life through a breaker, fed plain values: the outcome engine.

Theory of operation
-------------------

Every client integration (httpx, httpx2, requests, aiohttp) turns its own
objects into the few plain values a breaker needs and feeds them to one
:class:`Outcome` per request, which decides what the request says about the
upstream and settles its permit exactly once. Nothing here imports a client
library or does I/O; the only clock read is the breaker's own, and only when
the breaker needs durations (``CircuitBreaker.timed``).

A request's life, as an integration reports it::

    Outcome(gate, breaker, permit, request)     admitted (the state it was let through in)
      .headers(status, headers) -> settled?     the status line and headers arrived
      .read(seconds)                            one body read took this long (upstream time)
      .chunk(data)                              a body chunk, for Last-Known-Good
      .ended() / .closed()                      the body ended / the response was closed
      .failed(error, failure)                   an error, before or after the headers
      .cancelled()                              the caller cancelled (records nothing)
      .dropped()                                garbage-collected unclosed (no lock taken)

A failure status settles at :meth:`Outcome.headers`; a success status frees a
half-open trial's slot there and settles when the body ends or the response
is closed. The first of the settling inputs wins; the rest change nothing.

The pieces every integration shares beside it live here too, once: how an
error is classified (:class:`ErrorKinds`), the ``classify`` hook's verdict,
the ``Retry-After`` reading, the fallback checks (:func:`check_fallback`),
each key's fallback of a mapping (:class:`FallbackMap`), the fallback
decision (:meth:`Gate.fallback_for`), and the Last-Known-Good tee (:class:`Tee`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ._breaker import CircuitBreaker
from ._core import BreakerConfig, CallInfo, CircuitState, Verdict
from ._errors import CircuitOpenError
from ._fallback import FallbackResponse, LastKnownGood, StoredResponse, not_stored, stale_headers
from ._info import Marks
from ._keys import GuardedKey, HostKey, split_key
from ._options import EXTENSION, RequestOptions, current_options, request_options
from ._policy import parse_retry_after
from ._registry import BreakerRegistry, compile_rules

__all__ = [
    "EXTENSION",
    "ErrorKinds",
    "FallbackMap",
    "FallbackPlan",
    "Gate",
    "HeaderGetter",
    "Outcome",
    "Tee",
    "check_fallback",
    "settle_complete",
    "started",
    "unrecorded_state",
    "verdict",
]

_CLOSED_MARKS_MAX = 4096  # breakers whose closed Marks a gate keeps

HeaderGetter = Callable[[str], "str | None"]
"""``headers.get``: a case-insensitive lookup of one header's value."""

_CLOSED = CircuitState.CLOSED
_HALF_OPEN = CircuitState.HALF_OPEN
_DISABLED = CircuitState.DISABLED
# Keys whose fallback a FallbackMap remembers; past it, it starts over.
_FALLBACK_CACHE_MAX = 4096
_MISSING: Any = object()


class ErrorKinds:
    """Which of a client's exceptions say the upstream failed.

    Args:
        failures: Exception types that are failures (timeouts, dropped connections...).
        excluded: Subtypes of those that say nothing about the upstream
            (httpx's ``PoolTimeout``); they record nothing.
        judge: An optional last word, ``judge(exc) -> bool | None``, for what
            a type cannot tell (requests' ``ConnectionError`` around a closed pool).
    """

    __slots__ = ("excluded", "failures", "judge")

    def __init__(
        self,
        failures: tuple[type[BaseException], ...],
        excluded: tuple[type[BaseException], ...] = (),
        judge: Callable[[BaseException], bool | None] | None = None,
    ) -> None:
        self.failures = failures
        self.excluded = excluded
        self.judge = judge

    def failure(self, exc: BaseException) -> bool | None:
        """``True`` when ``exc`` is a failure of the upstream, ``None`` when it records nothing."""
        if isinstance(exc, CircuitOpenError):
            return None
        if not isinstance(exc, self.failures) or isinstance(exc, self.excluded):
            return None
        if self.judge is not None:
            return self.judge(exc)
        return True


def verdict(
    breaker: CircuitBreaker,
    describe: Callable[[], tuple[str, str]],
    status: int | None,
    headers: Mapping[str, str] | None,
    error: BaseException | None,
    duration: float,
    default: bool | None,
) -> bool | None:
    """Whether a call failed (``True``), succeeded (``False``) or records nothing (``None``).

    The breaker's ``classify`` is asked first, when it has one; its ``None``,
    or a ``classify`` that raised, leaves the decision to ``default`` (what the
    status or exception rules say). ``describe`` gives the request's method and
    URL, and is called only when ``classify`` is asked.
    """
    if breaker.classifier is None:
        return default
    method, url = describe()
    answer = breaker.classify(CallInfo(breaker.name, method, url, status, headers, error, duration))
    if answer is Verdict.IGNORE:
        return None
    if answer is None:
        return default
    return answer is Verdict.FAILURE


def unrecorded_state(breaker: CircuitBreaker) -> str:
    """The reported state of a request let through with permit 0, which records nothing.

    That is ``"disabled"``, or in shadow mode (``enforce=False``) the state
    that would have refused it (``"open"``, ``"half_open"``, ``"forced_open"``):
    the response came from the upstream all the same.
    """
    if breaker.enforce:
        return "disabled"
    return breaker.state.value


def started(breaker: CircuitBreaker) -> float:
    """The clock reading a request's duration counts from (``0.0``: the breaker reads none)."""
    return breaker.timer() if breaker.timed else 0.0


def _status_verdict(
    breaker: CircuitBreaker,
    describe: Callable[[], tuple[str, str]],
    status: int,
    headers: Mapping[str, str],
    duration: float,
) -> bool | None:
    failed = status in breaker.failure_statuses
    if breaker.classifier is None:
        return failed
    return verdict(breaker, describe, status, headers, None, duration, failed)


def settle_complete(
    gate: Gate,
    breaker: CircuitBreaker,
    permit: int,
    request: Any,
    start: float,
    status: int,
    headers: Mapping[str, str],
) -> str:
    """The whole life of a request whose response arrived with its body in memory.

    The same decisions as ``Outcome(...).headers(status, headers, complete=True)``
    without keeping an :class:`Outcome`: nothing is left to watch (an httpx
    ``MockTransport`` or ``Response(content=...)``). Returns the state the
    request was let through in, as the extension's string.
    """
    if not permit:
        return unrecorded_state(breaker)
    duration = breaker.timer() - start if breaker.timed else 0.0
    # _status_verdict(), inlined on this hottest of paths; ``classify`` is
    # asked in a function of its own, as the lambda it needs would make
    # ``gate`` and ``request`` cells here, built on every call.
    if breaker.classifier is None:
        failed: bool | None = status in breaker.failure_statuses
    else:
        failed = _classified(gate, breaker, request, status, headers, duration)
    if failed is False:
        breaker.record(permit, False, duration, None, status)
    elif failed:
        breaker.record(permit, True, duration, gate.retry_after(breaker, headers.get), status)
    else:
        breaker.release(permit, True)
    # The permit's sign is its admission state (CircuitBreaker.permit_state).
    return "closed" if permit > 0 else "half_open"


def _classified(
    gate: Gate,
    breaker: CircuitBreaker,
    request: Any,
    status: int,
    headers: Mapping[str, str],
    duration: float,
) -> bool | None:
    """:func:`settle_complete`'s verdict when the breaker has a ``classify`` hook."""
    failed = status in breaker.failure_statuses
    return verdict(breaker, lambda: gate.describe(request), status, headers, None, duration, failed)


class Tee:
    """The body of a response Last-Known-Good may keep, collected as it is read.

    Args:
        lkg: Where it goes.
        url: The request's URL (the key it is stored under).
        status: The response's status.
        reason: Its reason phrase.
        headers: Its headers, as ``(name, value)`` pairs in order.
        request_header: The request's ``headers.get`` (credentials and ``Vary``).
    """

    __slots__ = ("chunks", "headers", "lkg", "reason", "request_header", "size", "status", "url")

    def __init__(
        self,
        lkg: LastKnownGood,
        url: str,
        status: int,
        reason: str,
        headers: Iterable[tuple[str, str]],
        request_header: HeaderGetter,
    ) -> None:
        self.lkg = lkg
        self.url = url
        self.status = status
        self.reason = reason
        self.headers = headers
        self.request_header = request_header
        self.chunks: list[bytes] | None = []
        self.size = 0

    def add(self, chunk: bytes) -> None:
        """Keep one chunk, or give up on a body past ``max_entry_bytes``."""
        chunks = self.chunks
        if chunks is None:
            return
        self.size += len(chunk)
        if self.size > self.lkg.max_entry_bytes:
            self.drop("a body over max_entry_bytes")
        else:
            chunks.append(chunk)

    def drop(self, reason: str = "a body that cannot be stored as it was sent") -> None:
        """Keep nothing: the body will not be complete or cannot be stored faithfully.

        ``reason`` is logged at DEBUG (once per response).
        """
        if self.chunks is not None:
            self.chunks = None
            not_stored(self.url, reason)

    def store(self, content: bytes | None = None, dropped: tuple[str, ...] = ()) -> None:
        """Store the response with the body collected (or ``content``).

        Framing headers (``Content-Length``, ``Transfer-Encoding``,
        ``Connection``) and those named in ``dropped`` (``Content-Encoding``
        for a body that was decoded while read) no longer describe what is
        kept, so they are left out.
        """
        if content is None:
            if self.chunks is None:
                return
            content = b"".join(self.chunks)
        self.chunks = None
        omit = ("content-length", "transfer-encoding", "connection", *dropped)
        kept = [(name, value) for name, value in self.headers if name.lower() not in omit]
        self.lkg.store(self.url, self.status, self.reason, kept, content, self.request_header)


class Outcome:
    """One request let through a breaker, from admission until its outcome settles.

    Args:
        gate: The integration's :class:`Gate` (``Retry-After`` reading, Last-Known-Good).
        breaker: The breaker that admitted the request.
        permit: What ``breaker.acquire()`` returned.
        request: The client's request object, handed to ``describe``.
        start: :func:`started` read just before the request was sent.

    Attributes:
        state: The state the request was let through in (``CLOSED``,
            ``HALF_OPEN`` or ``DISABLED``).
        clock: The breaker's :attr:`~CircuitBreaker.timer` when it needs
            durations, else ``None`` (then no clock is read at all).
        start: The clock reading at admission (``0.0`` when untimed); an
            integration may move it forward by time the client spent waiting
            on its own (urllib3's sleeps between retries).
        upstream: Seconds spent waiting on the upstream: until the headers,
            plus inside each body read.
        status: The response's status once its headers arrived, else ``None``.
        tee: The Last-Known-Good tee of this response, if it may be stored.
    """

    __slots__ = (
        "_live",
        "breaker",
        "clock",
        "gate",
        "headers_seen",
        "request",
        "start",
        "state",
        "status",
        "tee",
        "upstream",
    )

    def __init__(
        self, gate: Gate, breaker: CircuitBreaker, permit: int, request: Any, start: float
    ) -> None:
        self.gate = gate
        self.breaker = breaker
        # A one-item list: ``pop()`` is atomic, so the outcome settles exactly
        # once, even against a finaliser on another thread.
        self._live = [permit]
        self.request = request
        self.state = breaker.permit_state(permit)
        self.clock: Callable[[], float] | None = breaker.timer if breaker.timed else None
        self.start = start
        self.upstream = 0.0
        self.status: int | None = None
        self.headers_seen: Mapping[str, str] | None = None
        self.tee: Tee | None = None

    @property
    def settled(self) -> bool:
        """Whether the outcome has been settled (or there was nothing to settle)."""
        return not self._live or not self._live[0]

    def extension(self) -> Marks:
        """The ``circuit_breaker`` mapping a response carries: its key and admission state."""
        state = self.state
        # Plain strings, by identity: hashing an enum member runs Python code.
        if state is _CLOSED:
            name = "closed"
        elif state is _HALF_OPEN:
            name = "half_open"
        else:
            name = unrecorded_state(self.breaker)
        return self.gate.marks(self.breaker, name)

    def _describe(self) -> tuple[str, str]:
        return self.gate.describe(self.request)

    # -- inputs ----------------------------------------------------------------

    def headers(
        self,
        status: int,
        headers: Mapping[str, str],
        header: HeaderGetter | None = None,
        complete: bool = False,
    ) -> bool:
        """The status and headers arrived; returns whether the outcome is settled.

        A failure status (or a ``classify`` verdict of failure or ignore)
        settles at once; a success status frees a half-open trial's slot and
        waits for the body (``False``), unless ``complete`` says the body is
        already in memory: then it settles as a success too. ``header`` is
        ``headers.get`` when the mapping's own lookup is not case-insensitive.
        """
        live = self._live
        permit = live[0]
        if not permit:
            live.clear()  # disabled: nothing is recorded
            return True
        clock = self.clock
        if clock is not None:
            self.upstream = clock() - self.start
        self.status = status
        self.headers_seen = headers
        breaker = self.breaker
        failed = _status_verdict(breaker, self._describe, status, headers, self.upstream)
        if failed is None:
            self._settle_with(None, None)
            return True
        if failed:
            get = header if header is not None else headers.get
            self._settle_with(True, self.gate.retry_after(breaker, get))
            return True
        if complete:
            live.clear()
            breaker.record(permit, False, self.upstream, None, status)
            return True
        if self.state is _HALF_OPEN:
            # A long body must not hold the breaker half-open.
            breaker.trial_slot_free(permit)
        return False

    def read(self, seconds: float) -> None:
        """One read of the body took ``seconds`` of the upstream's time."""
        self.upstream += seconds

    def chunk(self, data: bytes) -> None:
        """A chunk of the body, kept for Last-Known-Good when it may be stored."""
        tee = self.tee
        if tee is not None:
            tee.add(data)

    def ended(self, content: bytes | None = None, dropped: tuple[str, ...] = ()) -> None:
        """The body was read to its end: a success, and Last-Known-Good may store it.

        ``content`` is the whole body when it was never read through
        :meth:`chunk` (a body already in memory); ``dropped`` names headers
        that no longer describe the body kept (:meth:`Tee.store`).
        """
        if self._settle_with(False, None):
            tee = self.tee
            if tee is not None:
                self.tee = None
                tee.store(content, dropped)

    def closed(self) -> None:
        """The response was closed (read or not): a success unless settled already."""
        if self.tee is not None:
            self._untee("the response was closed before its body was read to the end")
        self._settle_with(False, None)

    def failed(self, error: BaseException, failure: bool | None) -> None:
        """An error, before the headers arrived or while the body was read.

        Args:
            error: The exception ``classify`` sees.
            failure: What the client's error table says (:meth:`ErrorKinds.failure`):
                ``True`` a failure, ``None`` nothing to record.
        """
        live = self._live
        if not live or not live[0]:
            live.clear()
            return
        if self.tee is not None:
            self._untee(f"an error while its body was read ({type(error).__name__})")
        clock = self.clock
        if clock is not None and self.status is None:
            self.upstream = clock() - self.start
        breaker = self.breaker
        if isinstance(error, CircuitOpenError):
            failure = None  # another breaker's rejection says nothing of this upstream
        elif breaker.classifier is not None:
            failure = verdict(
                breaker,
                self._describe,
                self.status,
                self.headers_seen,
                error,
                self.upstream,
                failure,
            )
        self._settle_with(failure, None, error)

    def failed_with_response(
        self,
        error: BaseException,
        failure: bool | None,
        status: int,
        headers: Mapping[str, str],
        header: HeaderGetter | None = None,
    ) -> None:
        """An error that carries the last response (urllib3's status retries ran out).

        The status and headers go to ``classify``; a failure takes that
        response's ``Retry-After``.
        """
        live = self._live
        if not live or not live[0]:
            live.clear()
            return
        if self.tee is not None:
            self._untee(f"an error while its body was read ({type(error).__name__})")
        clock = self.clock
        if clock is not None:
            self.upstream = clock() - self.start
        breaker = self.breaker
        failure = verdict(breaker, self._describe, status, headers, error, self.upstream, failure)
        get = header if header is not None else headers.get
        self.status = status
        self._settle_with(failure, self.gate.retry_after(breaker, get) if failure else None, error)

    def cancelled(self) -> None:
        """The caller cancelled the request: record nothing, give a trial slot back."""
        if self.tee is not None:
            self._untee("the request was cancelled while its body was read")
        self._settle_with(None, None, ignored=False)

    def dropped(self) -> None:
        """The response was garbage-collected unclosed: settle as a success, taking no lock."""
        try:
            permit = self._live.pop()
        except IndexError:
            return
        self.tee = None
        self.breaker.record_later(permit, self.upstream)

    def _untee(self, reason: str) -> None:
        """Give up on storing this response's body (the tee's ``reason`` is logged)."""
        tee = self.tee
        self.tee = None
        if tee is not None:
            tee.drop(reason)

    # -- settling --------------------------------------------------------------

    def _settle_with(
        self,
        failed: bool | None,
        retry_after: float | None,
        error: BaseException | None = None,
        ignored: bool = True,
    ) -> bool:
        """Settle once: ``True``/``False`` an outcome, ``None`` the permit given back.

        A permit given back counts as ignored unless ``ignored`` is ``False``
        (a cancellation).
        """
        try:
            permit = self._live.pop()
        except IndexError:
            return False
        if failed is None:
            self.breaker.release(permit, ignored)
        else:
            self.breaker.record(permit, failed, self.upstream, retry_after, self.status, error)
        return True


class FallbackPlan:
    """What a short-circuited request is answered with, in plain values.

    Exactly one of ``stored`` (a Last-Known-Good entry, with ``headers`` the
    stale marks added and ``content`` already empty for HEAD), ``response``
    (a :class:`FallbackResponse` to build) and ``call`` (a callable fallback)
    is set.
    """

    __slots__ = ("call", "content", "headers", "response", "stored")

    def __init__(
        self,
        *,
        stored: StoredResponse | None = None,
        headers: list[tuple[str, str]] | None = None,
        content: bytes = b"",
        response: FallbackResponse | None = None,
        call: Callable[..., Any] | None = None,
    ) -> None:
        self.stored = stored
        self.headers = headers
        self.content = content
        self.response = response
        self.call = call


class FallbackMap:
    """A ``fallback`` mapping compiled: rule patterns to fallbacks, each key's found once.

    The patterns and their specificity are those of ``rules``
    (:func:`~circuitbreaker_http._registry.compile_rules`), matched against
    the breaker key; a key no pattern matches gets ``None`` (raise).

    Args:
        mapping: Pattern -> fallback (each already checked).
        client: The integration's name, for the message of a bad pattern.

    Raises:
        TypeError: a pattern that is not a ``str``.
        ValueError: a pattern ``rules`` would refuse (an empty one, a bad port...).
    """

    __slots__ = ("_cache", "_rules", "_values", "lkgs")

    def __init__(self, mapping: Mapping[str, Any], client: str) -> None:
        for pattern in mapping:
            if not isinstance(pattern, str):
                raise TypeError(
                    f"{client}: the patterns of a fallback mapping must be str, got {pattern!r}"
                )
        # Only the patterns matter here: any config will do as the rules' payload.
        placeholder = BreakerConfig()
        try:
            self._rules = compile_rules(dict.fromkeys(mapping, placeholder))
        except ValueError as exc:
            message = str(exc).removeprefix("rules: ")
            raise ValueError(f"{client}: fallback mapping: {message}") from None
        # Rule.order is the pattern's place in the mapping.
        self._values: tuple[Any, ...] = tuple(mapping.values())
        self._cache: dict[str, Any] = {}
        #: The LastKnownGood values, each once, in the mapping's order.
        self.lkgs: tuple[LastKnownGood, ...] = tuple(
            {id(v): v for v in self._values if isinstance(v, LastKnownGood)}.values()
        )

    def __repr__(self) -> str:
        patterns = {rule.order: rule.pattern for rule in self._rules}
        items = ", ".join(f"{patterns[i]!r}: {v!r}" for i, v in enumerate(self._values))
        return f"FallbackMap({{{items}}})"

    def get(self, key: str) -> Any:
        """The fallback of ``key``: its most specific pattern's, or ``None`` when none matches."""
        found = self._cache.get(key, _MISSING)
        if found is not _MISSING:
            return found
        found = None
        parts = split_key(key)
        for rule in self._rules:  # most specific first
            if rule.matches(key, parts):
                found = self._values[rule.order]
                break
        cache = self._cache
        if len(cache) >= _FALLBACK_CACHE_MAX:
            cache.clear()  # many keys (routes, rotating hosts) must not grow memory
        cache[key] = found
        return found


_KINDS = "None, a FallbackResponse, a LastKnownGood or a callable (request, error)"


def _check_one(value: object, allow_async: bool, client: str, where: str) -> None:
    """Check one fallback (not a mapping); ``where`` names it in the message."""
    if isinstance(value, LastKnownGood):
        # Its ``otherwise`` is called like any fallback: check it the same way.
        _check_one(value.otherwise, allow_async, client, f"{where}.otherwise")
        return
    if value is None or isinstance(value, FallbackResponse):
        return
    if isinstance(value, Mapping):
        raise TypeError(f"{client}: {where} must be {_KINDS}, not a mapping, got {value!r}")
    if not callable(value):
        kinds = _KINDS + (", or a mapping of rule patterns to those" if where == "fallback" else "")
        raise TypeError(f"{client}: {where} must be {kinds}, got {value!r}")
    if not allow_async and (
        inspect.iscoroutinefunction(value)
        or inspect.iscoroutinefunction(getattr(value, "__call__", None))  # noqa: B004
    ):
        raise TypeError(
            f"{client} cannot await a coroutine-function fallback: {where} is {value!r}; "
            "give a plain function"
        )
    try:
        signature = inspect.signature(value)
    except (TypeError, ValueError):
        return  # no signature to read (some builtins): trust it
    try:
        signature.bind(None, None)
    except TypeError:
        raise TypeError(
            f"{client}: {where} must be a fallback callable taking (request, error), "
            f"got {value!r} with the signature {signature}"
        ) from None


def check_fallback(fallback: object, allow_async: bool, client: str) -> Any:
    """Check a ``fallback`` argument when an integration is built.

    Args:
        fallback: What the user passed.
        allow_async: Whether a coroutine-function fallback can be awaited.
        client: The integration's name, for the message.

    Returns:
        ``fallback`` as the :class:`Gate` takes it: unchanged, or a mapping
        compiled to a :class:`FallbackMap`.

    Raises:
        TypeError: not ``None``, a :class:`FallbackResponse`, a
            :class:`LastKnownGood`, a callable taking ``(request, error)`` or a
            mapping of patterns to those; or a coroutine function where none
            can be awaited (a value of a mapping and a Last-Known-Good's
            ``otherwise`` are checked alike, and named in the message).
        ValueError: a pattern of a mapping that ``rules`` would refuse.
    """
    if isinstance(fallback, Mapping):
        for pattern, value in fallback.items():
            _check_one(value, allow_async, client, f"fallback[{pattern!r}]")
        return FallbackMap(fallback, client)
    _check_one(fallback, allow_async, client, "fallback")
    return fallback


class Gate:
    """What one integration instance shares across its requests: no I/O, no client objects.

    Args:
        registry: Where the breakers live.
        fallback: What an open circuit answers, as :func:`check_fallback`
            returns it (a mapping is a :class:`FallbackMap`).
        wall_clock: Seconds since the epoch, for an HTTP-date ``Retry-After``
            without a ``Date`` header.
        describe: ``describe(request) -> (method, url)`` for ``classify``.

    Attributes:
        fallback: That fallback; ``None`` when every short circuit raises.
        lkg: ``None`` when no key's fallback is a :class:`LastKnownGood`, so
            no response needs a :class:`Tee`; else the Last-Known-Good itself,
            or for a mapping the first of its Last-Known-Goods (which one a
            key stores into is :meth:`fallback_of` the key's).
    """

    __slots__ = (
        "_closed_marks",
        "by_host",
        "describe",
        "fallback",
        "fallbacks",
        "from_parts",
        "key",
        "lkg",
        "registry",
        "wall_clock",
    )

    def __init__(
        self,
        registry: BreakerRegistry,
        fallback: Any,
        wall_clock: Callable[[], float],
        describe: Callable[[Any], tuple[str, str]],
    ) -> None:
        self.registry = registry
        self.fallback: Any = fallback
        self.fallbacks = fallback if isinstance(fallback, FallbackMap) else None
        self.lkg: LastKnownGood | None
        if self.fallbacks is not None:
            self.lkg = self.fallbacks.lkgs[0] if self.fallbacks.lkgs else None
        else:
            self.lkg = fallback if isinstance(fallback, LastKnownGood) else None
        self.wall_clock = wall_clock
        self.describe = describe
        # The built-in keys also take URL parts, so a request is never reparsed.
        self.from_parts: Callable[..., str | None] | None = getattr(
            registry.key, "from_parts", None
        )
        # A user's key function may raise or return garbage: never a request's failure.
        self.key = registry.key if self.from_parts is not None else GuardedKey(registry.key)
        self.by_host = isinstance(registry.key, HostKey)
        # breaker -> the Marks its responses let through closed share.
        self._closed_marks: dict[CircuitBreaker, Marks] = {}

    def closed_marks(self, breaker: CircuitBreaker) -> Marks:
        """The :class:`Marks` every response ``breaker`` lets through closed shares."""
        marks = self._closed_marks.get(breaker)
        if marks is None:
            if len(self._closed_marks) >= _CLOSED_MARKS_MAX:
                self._closed_marks.clear()  # rotating keys must not grow memory
            marks = self._closed_marks[breaker] = Marks(key=breaker.name, state="closed")
        return marks

    def marks(self, breaker: CircuitBreaker, state: str) -> Marks:
        """The :class:`Marks` of a response ``breaker`` let through in ``state`` (its string)."""
        if state == "closed":
            return self.closed_marks(breaker)
        return Marks(key=breaker.name, state=state)

    @staticmethod
    def options(extension: object = None) -> RequestOptions | None:
        """The per-request options in force: a request's extension, else ``options()``."""
        if extension is None:
            return current_options()
        return request_options(extension)

    def request_key(self, request: Any) -> str | None:
        """The key of ``request`` by the registry's key function (clients override it)."""
        method, url = self.describe(request)
        return self.key(method, url)

    def route_with(self, opts: RequestOptions | None, request: Any) -> CircuitBreaker | None:
        """The breaker for ``request`` under the per-request options ``opts``, or ``None``.

        ``None`` means the request bypasses the breakers: ``bypass=True``, or a
        request the key function gives no key.
        """
        if opts is None:
            key = self.request_key(request)
        elif opts.bypass:
            return None
        else:
            key = opts.key
            if key is None:
                key = self.request_key(request)
        if key is None:
            return None
        return self.registry.get(key)

    def retry_after(self, breaker: CircuitBreaker, header: HeaderGetter) -> float | None:
        """The delay a failure response's ``Retry-After`` asks for, if the breaker reads it."""
        if not breaker.config.respect_retry_after:
            return None
        value = header("retry-after")
        if value is None:
            return None
        return parse_retry_after(value, header("date"), self.wall_clock)

    # -- fallbacks --------------------------------------------------------------

    def fallback_of(self, key: str) -> Any:
        """The fallback of breaker ``key``: a mapping's most specific pattern's, else the one."""
        fallbacks = self.fallbacks
        if fallbacks is None:
            return self.fallback
        return fallbacks.get(key)

    @staticmethod
    def header_getter(request: Any) -> HeaderGetter:
        """The case-insensitive ``headers.get`` of a client's request (clients override it)."""
        getter: HeaderGetter = request.headers.get
        return getter

    # -- Last-Known-Good -------------------------------------------------------

    def tee_for(
        self,
        key: str,
        method: str,
        url: str,
        request_header: HeaderGetter,
        status: int,
        reason: str,
        headers: Callable[[], Iterable[tuple[str, str]]],
    ) -> Tee | None:
        """A :class:`Tee` when Last-Known-Good may store this GET's response, else ``None``.

        Args:
            key: The breaker key (which Last-Known-Good, for a mapping).
            method: The request's method.
            url: The request's URL.
            request_header: The request's ``headers.get`` (credentials, ``Vary``).
            status: The response's status.
            reason: Its reason phrase.
            headers: Gives its headers as ``(name, value)`` pairs in order.

        Why a GET's response may not be stored is logged at DEBUG.
        """
        lkg = self.lkg
        if lkg is None or method != "GET":
            return None
        if self.fallbacks is not None:
            lkg = self.fallbacks.get(key)
            if not isinstance(lkg, LastKnownGood):
                return None
        pairs = list(headers())
        refusal = lkg.refusal(status, _joined(pairs), bool(lkg.credentials(request_header)))
        if refusal is not None:
            not_stored(url, refusal)
            return None
        return Tee(lkg, url, status, reason, pairs, request_header)

    # -- short circuits ----------------------------------------------------------

    def plan_for(self, request: Any, error: CircuitOpenError) -> FallbackPlan:
        """The fallback plan of a short-circuited request; raises ``error`` when there is none.

        ``request`` is the client's request: :attr:`describe` reads its method
        and URL, and :meth:`header_getter` its credentials and ``Vary``
        headers. The breaker key is ``error.name``.
        """
        method, url = self.describe(request)
        plan = self.fallback_for(method, url, self.header_getter(request), error.name)
        if plan is None:
            raise error
        return plan

    def fallback_for(
        self, method: str, url: str, request_header: HeaderGetter, key: str
    ) -> FallbackPlan | None:
        """What to answer a request short-circuited by breaker ``key``, or ``None`` to raise."""
        fallback = self.fallback_of(key)
        if isinstance(fallback, LastKnownGood):
            if fallback.request_eligible(method):
                entry = fallback.lookup(url, request_header)
                if entry is not None:
                    return FallbackPlan(
                        stored=entry,
                        headers=[*entry.headers, *stale_headers(fallback.age(entry))],
                        content=b"" if method == "HEAD" else entry.content,
                    )
            fallback = fallback.otherwise
        if fallback is None:
            return None
        if isinstance(fallback, FallbackResponse):
            return FallbackPlan(response=fallback)
        return FallbackPlan(call=fallback)

    @staticmethod
    def fallback_extension(key: str, error: CircuitOpenError, marks: object, stale: bool) -> Marks:
        """The ``circuit_breaker`` mapping of a fallback's response."""
        extension: dict[str, Any] = {"key": key, "state": error.state.value, "fallback": True}
        if stale:
            extension["stale"] = True
        if isinstance(marks, Mapping):
            extension.update(marks)
        return Marks(extension)


def _joined(pairs: list[tuple[str, str]]) -> HeaderGetter:
    """A case-insensitive lookup over header pairs, several field lines joined with ``", "``.

    So a second ``Cache-Control`` or ``Vary`` line counts even where the
    client's own ``headers.get`` gives only the first (aiohttp).
    """

    def get(name: str) -> str | None:
        values = [value for field, value in pairs if field.lower() == name]
        return ", ".join(values) if values else None

    return get
