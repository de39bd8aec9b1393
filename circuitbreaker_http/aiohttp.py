"""aiohttp integration: ``CircuitBreakerMiddleware``, a client middleware (aiohttp ≥ 3.12).

Give it to a session (or to one request)::

    async with aiohttp.ClientSession(middlewares=[CircuitBreakerMiddleware()]) as session:
        async with session.get("https://api.example.com/users/42") as response:
            data = await response.json()

Each request goes through the breaker of its key (its origin by default) and
records exactly one outcome, where it really happens: a failure status at
once; a success status when the body has been read to its end or the
response is released or closed, read or not (or, for a response never
closed, when it is garbage-collected: aiohttp's connection keeps an unread
response alive until its body has arrived or the connection is gone), so an
error while the body is read (a connection cut short, a read timeout) counts
as a failure, and so does a body the connection cut short before the response
was released unread. The slow-call clock counts the upstream's time only:
until the headers, plus inside each body read. aiohttp runs the middlewares
once per redirect hop, and again for its one retry of an idempotent request
whose connection dropped, so each hop and each attempt is a request of its
own, with its own key and outcome. A WebSocket handshake is a request like
any other: its ``101`` is a success.

Failures are ``aiohttp.ClientConnectionError`` (``ServerDisconnectedError``,
``ClientOSError``, ``ClientConnectorError`` ...), ``aiohttp.ClientPayloadError``,
``asyncio.TimeoutError`` (``ServerTimeoutError``, and the session's
``ClientTimeout(total=...)``, which aiohttp enforces by cancelling the task),
and a malformed response (the ``ClientResponseError`` aiohttp raises when it
cannot parse the status line or headers). An invalid URL, another breaker's
``CircuitOpenError``, a bug in another middleware (or its
``raise_for_status()``) and a cancellation by the caller record nothing. A
short-circuited request raises :class:`CircuitOpenClientError`, both a
:class:`CircuitOpenError` and an ``aiohttp.ClientConnectionError``: a retry
helper that retries on ``ClientConnectionError`` must be told to skip
``CircuitOpenError``.

Every response that went through a breaker carries its key and the state it
was let through in: :func:`breaker_info` returns that mapping
(``{"key": ..., "state": ...}``, plus ``"fallback": True`` and, for a
Last-Known-Good copy, ``"stale": True`` on a fallback's response). It is the
response's ``circuit_breaker`` attribute, as on the requests adapter's
responses; aiohttp has no per-request extensions, so per-request control is
:func:`circuitbreaker_http.options`.

How the body is watched
-----------------------

aiohttp hands the middleware a response whose body is still arriving. When
the body is already complete (small bodies arrive with the headers; HEAD,
204 and 304 have none) the outcome settles there and then, and the response
is returned untouched. Otherwise ``response.content`` becomes a
:class:`aiohttp.StreamReader` subclass that reads through to aiohttp's own
reader, timing each read and watching its errors and its end;
``response.read()``, ``text()``, ``json()`` and every ``content`` method go
through it. Everything else of the reader is passed straight through, and
once the outcome has settled the reads are too. aiohttp's ``release()`` and
``close()`` ask the reader for its error and then set "Connection closed" on
it, which is how the outcome learns of them.
"""

from __future__ import annotations

import asyncio
import http
import inspect
import types
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeAlias

try:
    import aiohttp
    from aiohttp import ClientRequest, ClientResponse, StreamReader
    from aiohttp.base_protocol import BaseProtocol
    from aiohttp.helpers import TimerNoop
    from aiohttp.http_exceptions import HttpProcessingError
    from multidict import CIMultiDict, CIMultiDictProxy
    from yarl import URL
except ImportError as exc:  # pragma: no cover - exercised by the bare-import test
    raise ImportError(
        "circuitbreaker_http.aiohttp needs aiohttp 3.12 or later: "
        'pip install "circuitbreaker-http[aiohttp]"'
    ) from exc

from . import _clock, _options
from ._breaker import CircuitBreaker
from ._core import BreakerConfig
from ._errors import CircuitOpenError
from ._fallback import FallbackFor, FallbackResponse
from ._info import BreakerInfo, Marks, read_info
from ._keys import KeyFunc
from ._options import _current as _current_options
from ._options import current_options
from ._outcome import ErrorKinds, Gate, Outcome, check_fallback, settle_complete
from ._policy import fallback_headers
from ._registry import BreakerRegistry, registry_from

__all__ = [
    "BreakerInfo",
    "CircuitBreakerMiddleware",
    "CircuitOpenClientError",
    "Fallback",
    "breaker_info",
]

Fallback: TypeAlias = FallbackFor[
    ClientRequest,
    "CircuitOpenClientError",
    ClientResponse | FallbackResponse | Awaitable[ClientResponse | FallbackResponse],
]
"""The ``fallback`` of :class:`CircuitBreakerMiddleware`: ``None``, a :class:`FallbackResponse`,
a :class:`LastKnownGood`, a callable ``(aiohttp.ClientRequest, CircuitOpenError)`` returning
an ``aiohttp.ClientResponse`` or a :class:`FallbackResponse` (plain or a coroutine function),
or a mapping of rule patterns to those."""

Handler = Callable[[ClientRequest], Awaitable[ClientResponse]]
"""What aiohttp passes a middleware: the rest of the chain (``aiohttp.ClientHandlerType``)."""

ATTRIBUTE = "circuit_breaker"
"""The attribute of a response that holds :func:`breaker_info`'s mapping."""


def url_origin(url: URL) -> tuple[str, str]:
    """The scheme and netloc of a yarl ``URL``, from the slots yarl parses them into.

    ``url.scheme`` and ``url.raw_authority`` give the same through yarl's
    cached properties at four times the cost; yarl has no cheaper public way.
    The middleware's hot path reads these slots itself; :data:`_YARL_PARTS`
    says whether they agree with the public API in the yarl at hand (else
    the hot path is off), and a test fails loudly when yarl changes them.
    """
    return url._scheme, url._netloc


def _yarl_parts_agree() -> bool:
    try:
        for text in (
            "HTTP://u:p@B\u00fccher.Example:8080/x?q=1#f",
            "https://[::1]:8443/",
            "http://h",
        ):
            url = URL(text)
            if url_origin(url) != (url.scheme, url.raw_authority):
                return False
    except Exception:
        return False
    return True


_YARL_PARTS = _yarl_parts_agree()


class _QuietProtocol:
    def pause_reading(self, *args: Any, **kwargs: Any) -> None:
        pass

    def resume_reading(self, *args: Any, **kwargs: Any) -> None:
        pass


def reader_settled(content: StreamReader) -> bool:
    """Whether ``content`` holds the whole body already: at its end, without an error.

    ``content.is_eof() and content.exception() is None``, read from the
    slots those methods return (``_eof``, ``_exception``) at a third of the
    cost of the two calls. The middleware's hot path reads the slots itself
    when :data:`_READER_SLOTS` says they agree with the methods in the
    aiohttp at hand, for a plain ``StreamReader`` (else it calls the
    methods); a test fails loudly when aiohttp changes them.
    """
    return content._eof and content._exception is None


def _reader_slots_agree() -> bool:
    try:
        protocol: Any = _QuietProtocol()
        ended = StreamReader(protocol, 2**16, loop=protocol)
        ended.feed_data(b"x")
        ended.feed_eof()
        failed = StreamReader(protocol, 2**16, loop=protocol)
        failed.set_exception(ValueError("x"))
        fresh = StreamReader(protocol, 2**16, loop=protocol)
        return all(
            reader_settled(reader) is (reader.is_eof() and reader.exception() is None)
            for reader in (ended, failed, fresh)
        ) and reader_settled(ended)
    except Exception:
        return False


_READER_SLOTS = _reader_slots_agree()
# The reader type whose slots the hot path reads (a subclass, an empty or a
# watched body calls the methods), or None when the slots do not agree.
_SLOTTED_READER = StreamReader if _READER_SLOTS else None


def _malformed(exc: BaseException) -> bool | None:
    # A ClientResponseError is a failure only when aiohttp raised it for a
    # response it could not parse. raise_for_status() in a middleware after
    # this one raises the same class for a plain status: that status never
    # reached this middleware, so nothing is recorded (the session's own
    # raise_for_status runs after every middleware, on a recorded response).
    if isinstance(exc, aiohttp.ClientResponseError):
        return True if isinstance(exc.__cause__, HttpProcessingError) else None
    return True


_ERRORS = ErrorKinds(
    (
        aiohttp.ClientConnectionError,  # ServerDisconnectedError, ClientOSError, connect errors
        aiohttp.ClientPayloadError,  # a body cut short or undecodable
        asyncio.TimeoutError,  # ServerTimeoutError, the session's total timeout
        aiohttp.ClientResponseError,  # only a malformed response: see _malformed
    ),
    judge=_malformed,
)

_ORIGINS_MAX = 4096  # authorities whose origin keys a middleware remembers


def _describe(request: Any) -> tuple[str, str]:
    # An Outcome keeps (method, url), not the ClientRequest: the request holds
    # its response, and a cycle through the body watch would keep a dropped
    # response (and its connection) alive until the cyclic collector runs.
    if type(request) is tuple:
        return request[0], str(request[1])
    return request.method, str(request.url)


def breaker_info(response: ClientResponse) -> BreakerInfo | None:
    """The breaker marks of a response, or ``None`` if it went through no breaker.

    Args:
        response: A response returned through :class:`CircuitBreakerMiddleware`.

    Returns:
        A mapping with ``key`` (the breaker's key) and ``state`` (the state the
        request was let through in: ``"closed"``, ``"half_open"`` or
        ``"disabled"``; for a fallback's response, the state that refused it),
        plus ``"fallback": True`` on a fallback's response and ``"stale": True``
        on a Last-Known-Good copy. A request that bypassed the breakers (a key
        function's ``None``, ``options(bypass=True)``) has none.
    """
    return read_info(getattr(response, ATTRIBUTE, None))


# -- what aiohttp keeps private ------------------------------------------------------------------


def _total_timeout_fired(request: ClientRequest) -> bool:
    """Whether the session's total timeout, not the caller, cancelled ``request``.

    aiohttp enforces ``ClientTimeout(total=...)`` by cancelling the task, and
    turns the ``CancelledError`` into ``asyncio.TimeoutError`` only outside the
    middlewares (while connecting or sending; once the headers are awaited it
    does so inside). A middleware therefore sees a timeout as a cancellation,
    and no public API tells the two apart. The trick, kept to this function,
    is to ask the timer the session hands each hop (``ClientRequest._timer``)
    through its own ``assert_timeout()``, which raises once it has fired. A
    test fails loudly when aiohttp changes either.
    """
    check = getattr(getattr(request, "_timer", None), "assert_timeout", None)
    if check is None:
        return False
    try:
        check()
    except asyncio.TimeoutError:
        return True
    return False


def _set_headers(response: ClientResponse, headers: CIMultiDict[str]) -> None:
    """Give ``response`` these headers, as if they had come off the wire.

    A fallback's response must carry ``X-Circuit-Breaker``, and aiohttp offers
    no public way to build a response or change its (read-only) headers. The
    trick, kept to this function, is to set the attributes ``start()`` fills
    (``_headers``, ``_raw_headers``) and to forget the cached ``headers`` and
    ``raw_headers`` properties. A test fails loudly when aiohttp changes them.
    """
    response._headers = CIMultiDictProxy(headers)
    response._raw_headers = tuple(
        (name.encode("utf-8", "surrogateescape"), value.encode("utf-8", "surrogateescape"))
        for name, value in headers.items()
    )
    cache = getattr(response, "_cache", None)
    if isinstance(cache, dict):
        cache.pop("headers", None)
        cache.pop("raw_headers", None)


class _NoUpload:
    """The request writer of a response that was never sent (aiohttp ≥ 3.14 reads its size)."""

    output_size = 0


_TAKES_STREAM_WRITER = "stream_writer" in inspect.signature(ClientResponse.__init__).parameters


def _synthetic_response(
    request: ClientRequest,
    status: int,
    reason: str,
    headers: Iterable[tuple[str, str]],
    body: bytes,
) -> ClientResponse:
    """A complete ``aiohttp.ClientResponse`` built in memory, for a fallback.

    Built through the constructor aiohttp itself uses, with its body in a real
    ``StreamReader`` already at its end, so ``read()``, ``text()``,
    ``json()``, ``content`` and ``release()`` work as on a response read off
    the wire. Only the headers need a trick (:func:`_set_headers`).
    """
    loop = asyncio.get_running_loop()
    extra: dict[str, Any] = {"stream_writer": _NoUpload()} if _TAKES_STREAM_WRITER else {}
    response = ClientResponse(
        request.method,
        request.original_url,
        writer=None,
        continue100=None,
        timer=TimerNoop(),
        request_info=request.request_info,
        traces=[],
        loop=loop,
        session=request.session,
        **extra,
    )
    response.version = aiohttp.HttpVersion11
    response.status = status
    response.reason = reason
    content = StreamReader(BaseProtocol(loop), max(len(body), 2**16), loop=loop)
    if body:
        content.feed_data(body)
    content.feed_eof()
    response.content = content
    _set_headers(response, CIMultiDict(headers))
    return response


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


# -- the body watch ------------------------------------------------------------------------------

# aiohttp's StreamReader methods that wait on the upstream (or end the body):
# each is timed and watched. A test fails if aiohttp grows another coroutine method.
WATCHED_READS = ("read", "readany", "readchunk", "readexactly", "readline", "readuntil", "wait_eof")
# Built on the reads above (they call self.read, self.readany ...): inherited as they are.
BUILT_ON_READS = ("__aiter__", "iter_any", "iter_chunked", "iter_chunks")


class _WatchedBody(StreamReader):
    """``response.content`` while an outcome is open: aiohttp's reader, watched.

    It is a ``StreamReader`` (so ``isinstance`` checks and aiohttp's payload
    registry still know it), but holds none of the reader's state: every read
    goes to the reader aiohttp's connection feeds, timed and watched, and
    every other method and attribute is passed straight through (see
    :func:`_pass_through`).
    """

    __slots__ = ("_cb_encoded", "_cb_inner", "_cb_outcome")

    _cb_inner: StreamReader
    _cb_outcome: Outcome | None  # None once the outcome has settled: reads pass straight on
    _cb_encoded: bool

    def __init__(self, inner: StreamReader, outcome: Outcome, encoded: bool) -> None:
        # StreamReader.__init__ is skipped on purpose: the state is the inner reader's.
        self._cb_inner = inner
        self._cb_outcome = outcome
        self._cb_encoded = encoded

    def __repr__(self) -> str:
        return f"<watched {self._cb_inner!r}>"

    def __del__(self) -> None:
        # Never closed: the response was dropped. Settle without a lock.
        outcome = getattr(self, "_cb_outcome", None)
        if outcome is not None:
            outcome.dropped()

    def _read_ended(self, outcome: Outcome, result: Any) -> None:
        """After a read that returned: keep the chunk for Last-Known-Good, settle at the end."""
        if outcome.tee is not None and result:
            outcome.chunk(result[0] if type(result) is tuple else result)
        if self._cb_inner.at_eof():
            self._cb_outcome = None
            tee = outcome.tee
            if tee is not None and self._cb_encoded:
                # aiohttp decodes as it reads when the session (or this request)
                # says auto_decompress; only aiohttp ≥ 3.14 says whether it did.
                if getattr(self._cb_inner, "total_compressed_bytes", None) is None:
                    tee.drop()
                else:
                    outcome.ended(dropped=("content-encoding",))
                    return
            outcome.ended()

    def _read_failed(self, outcome: Outcome, exc: BaseException) -> None:
        self._cb_outcome = None
        if isinstance(exc, Exception):
            outcome.failed(exc, _ERRORS.failure(exc))
        else:
            outcome.cancelled()  # the caller cancelled the read: nothing is recorded

    # read, readany, readchunk, readexactly, readline, readuntil, wait_eof: see _watched_read

    def read_nowait(self, *args: Any, **kwargs: Any) -> bytes:
        """Read what is buffered, as ``StreamReader.read_nowait`` does, watched."""
        outcome = self._cb_outcome
        if outcome is None:
            return self._cb_inner.read_nowait(*args, **kwargs)
        try:
            data = self._cb_inner.read_nowait(*args, **kwargs)
        except Exception as exc:
            self._read_failed(outcome, exc)
            raise
        self._read_ended(outcome, data)
        return data

    # -- release and close ---------------------------------------------------------------------

    def exception(self) -> BaseException | None:
        """The body's error, as ``StreamReader.exception``; an upstream failure seen here counts.

        aiohttp's ``release()`` and ``close()`` ask this first: a body the
        connection already cut short fails its outcome even if nobody read it.
        """
        exc = self._cb_inner.exception()
        if exc is not None:
            outcome = self._cb_outcome
            if outcome is not None:
                self._read_failed(outcome, exc)
        return exc

    def set_exception(self, *args: Any, **kwargs: Any) -> None:
        """End the body with an error, as ``StreamReader.set_exception``.

        aiohttp's connection feeds the inner reader, never this one, so a call
        here comes from the response being released or closed (aiohttp sets
        "Connection closed" on its ``content``): a success unless settled.
        """
        outcome = self._cb_outcome
        if outcome is not None:
            self._cb_outcome = None
            outcome.closed()
        self._cb_inner.set_exception(*args, **kwargs)


def _watched_read(name: str) -> Any:
    """The coroutine method ``name`` of :class:`_WatchedBody`: the inner read, timed and watched.

    One function per read, made here, so a read costs one coroutine, not two.
    """

    async def read(self: _WatchedBody, *args: Any, **kwargs: Any) -> Any:
        outcome = self._cb_outcome
        if outcome is None:
            return await getattr(self._cb_inner, name)(*args, **kwargs)
        clock = outcome.clock  # None when no duration is ever read
        began = clock() if clock is not None else 0.0
        try:
            result = await getattr(self._cb_inner, name)(*args, **kwargs)
        except BaseException as exc:
            if clock is not None:
                outcome.upstream += clock() - began
            self._read_failed(outcome, exc)
            raise
        if clock is not None:
            outcome.upstream += clock() - began
        self._read_ended(outcome, result)
        return result

    read.__name__ = name
    read.__qualname__ = f"_WatchedBody.{name}"
    read.__doc__ = f"``StreamReader.{name}`` of the reader aiohttp feeds, timed and watched."
    return read


for _name in WATCHED_READS:
    setattr(_WatchedBody, _name, _watched_read(_name))


def _pass_through(cls: type[StreamReader]) -> None:
    """Give ``cls`` every other ``StreamReader`` method and public attribute, delegated.

    Built from aiohttp's own class at import, so a method added in a later
    aiohttp is passed through rather than run on state this class lacks. The
    reader's private state (its buffer, its waiters) is never copied or read.
    """
    own = set(vars(cls))
    for klass in StreamReader.__mro__[:-1]:
        for name, value in vars(klass).items():
            if name in own or name in BUILT_ON_READS:
                continue
            if name.startswith("__") and name.endswith("__"):
                continue
            own.add(name)
            if isinstance(value, (types.MemberDescriptorType, property)):
                if not name.startswith("_"):
                    setattr(cls, name, _attribute(name))
            elif callable(value):
                setattr(cls, name, _method(name))


def _method(name: str) -> Callable[..., Any]:
    def method(self: _WatchedBody, *args: Any, **kwargs: Any) -> Any:
        return getattr(self._cb_inner, name)(*args, **kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"``StreamReader.{name}`` of the reader aiohttp feeds."
    return method


def _attribute(name: str) -> property:
    def get(self: _WatchedBody) -> Any:
        return getattr(self._cb_inner, name)

    def set_(self: _WatchedBody, value: Any) -> None:
        setattr(self._cb_inner, name, value)

    return property(get, set_, doc=f"``StreamReader.{name}`` of the reader aiohttp feeds.")


_pass_through(_WatchedBody)


# -- the gate ------------------------------------------------------------------------------------


class _AiohttpGate(Gate):
    """Keys, outcomes and fallbacks of one middleware: aiohttp objects in, plain values out."""

    __slots__ = ("_origins", "fast", "routes")

    def __init__(
        self,
        registry: BreakerRegistry,
        fallback: Any,
        wall_clock: Callable[[], float],
    ) -> None:
        super().__init__(registry, fallback, wall_clock, _describe)
        # authority ("host:port" as in the URL) -> [(scheme, key)]: an origin's
        # key found from two of yarl's parts, without a tuple per request.
        self._origins: dict[str, list[tuple[str, str | None]]] = {}
        #: netloc -> (scheme, breaker or None, registry epoch, closed marks):
        #: the breaker of the netloc's latest origin, used again without a key
        #: or registry.get() while the registry's epoch is the one read before
        #: that get() (see BreakerRegistry.epoch), and the :class:`Marks` its
        #: responses let through closed share. by_host keys on scheme, host and
        #: port, which scheme and netloc decide.
        self.routes: dict[str, tuple[str, CircuitBreaker | None, int, Marks | None]] = {}
        #: Whether the middleware's hot path applies: keys by host, and yarl's
        #: URL parts as :func:`url_origin` reads them.
        self.fast = self.by_host and _YARL_PARTS

    def route(self, request: ClientRequest) -> CircuitBreaker | None:
        """The breaker for ``request`` (its ``.name`` is the key), or ``None`` to bypass."""
        return self.route_with(current_options(), request)

    def route_origin(self, request: ClientRequest) -> CircuitBreaker | None:
        """:meth:`route` without options, by host: look the origin's breaker up and keep it.

        The middleware's hot path then finds it in :attr:`routes` by the URL's
        scheme and netloc (see :func:`url_origin`).
        """
        registry = self.registry
        epoch = registry.epoch  # before get(): a drop after it changes the epoch again
        key = self.key_of(request)
        breaker = None if key is None else registry.get(key)
        scheme, netloc = url_origin(request.url)
        routes = self.routes
        if len(routes) >= _ORIGINS_MAX:
            routes.clear()  # rotating hosts must not grow memory
        mark = None if breaker is None else self.closed_marks(breaker)
        routes[netloc] = (scheme, breaker, epoch, mark)
        return breaker

    def key_of(self, request: ClientRequest) -> str | None:
        """The key of ``request`` from its parsed URL (yarl's parts, never reparsed)."""
        url = request.url
        from_parts = self.from_parts
        if from_parts is None:
            return self.key(request.method, str(url))
        # yarl's raw_host is the host as sent (IDNA-encoded), its raw_path the
        # path percent-encoded without the query: what httpx and requests give.
        host = url.raw_host or ""
        if not self.by_host:
            return from_parts(request.method, url.scheme, host, url.port, url.raw_path)
        authority, scheme = url.raw_authority, url.scheme
        origins = self._origins
        entries = origins.get(authority)
        if entries is not None:
            for known_scheme, known_key in entries:
                if known_scheme == scheme:
                    return known_key
        key = from_parts(request.method, scheme, host, url.port, "")
        if entries is not None and len(entries) < 8:
            entries.append((scheme, key))
        else:
            # Rotating hosts (or ports of one host) must not grow memory.
            if len(origins) >= _ORIGINS_MAX:
                origins.clear()
            origins[authority] = [(scheme, key)]
        return key

    request_key = key_of  # what Gate.route_with asks, without a call more

    @staticmethod
    def header_getter(request: Any) -> Callable[[str], str | None]:
        """``headers.get`` of ``request``, but every field line of a name, joined.

        aiohttp's own ``get`` gives the first line only: two ``Cookie`` lines
        must not pass for the first alone when Last-Known-Good digests them.
        """
        headers = request.headers

        def get(name: str) -> str | None:
            values = headers.getall(name, None)
            return None if values is None else ", ".join(values)

        return get

    def watch(
        self,
        breaker: CircuitBreaker,
        permit: int,
        request: ClientRequest,
        start: float,
        response: ClientResponse,
    ) -> ClientResponse:
        """Feed a response's headers to the outcome engine, and watch its body when it must."""
        content = response.content
        status = response.status
        headers = response.headers
        if self.lkg is None and content.is_eof() and content.exception() is None:
            # The body is in memory already: nothing is left to wait on.
            state = settle_complete(self, breaker, permit, request, start, status, headers)
            setattr(response, ATTRIBUTE, self.marks(breaker, state))
            return response
        outcome = Outcome(self, breaker, permit, (request.method, request.url), start)
        setattr(response, ATTRIBUTE, outcome.extension())
        if outcome.headers(status, headers):
            return response
        encoded = False
        if self.lkg is not None:
            encoding = headers.get("content-encoding", "identity").strip().lower()
            encoded = encoding != "identity"
            outcome.tee = self.tee_for(
                breaker.name,
                request.method,
                str(request.url),
                self.header_getter(request),
                status,
                response.reason or "",
                headers.items,
            )
        response.content = _WatchedBody(content, outcome, encoded)
        return response

    # -- short circuits ------------------------------------------------------------------------

    def finish(
        self,
        request: ClientRequest,
        response: object,
        key: str,
        error: CircuitOpenError,
        stale: bool = False,
    ) -> ClientResponse:
        """Make a fallback's answer a marked ``ClientResponse``: ``X-Circuit-Breaker``, marks."""
        if isinstance(response, FallbackResponse):
            response = _synthetic_response(
                request,
                response.status_code,
                _reason(response.status_code),
                response.header_list,
                response.body,
            )
        if not isinstance(response, ClientResponse):
            raise TypeError(
                "a fallback must return an aiohttp.ClientResponse or a FallbackResponse, "
                f"got {response!r}"
            )
        headers = CIMultiDict(response.headers)
        for name, value in fallback_headers(headers.keys(), error.retry_after):
            headers[name] = value
        _set_headers(response, headers)
        setattr(
            response,
            ATTRIBUTE,
            self.fallback_extension(key, error, getattr(response, ATTRIBUTE, None), stale),
        )
        return response


# -- the public classes --------------------------------------------------------------------------


class CircuitOpenClientError(CircuitOpenError, aiohttp.ClientConnectionError):
    """A short-circuited request: a ``CircuitOpenError`` and an ``aiohttp.ClientConnectionError``.

    Nothing was sent and no connection was taken for it. To keep a retry
    helper from retrying into an open circuit, exclude ``CircuitOpenError``
    from what it retries on, or wait ``.retry_after``.

    Args:
        name: The breaker's name (its key).
        state: The state that refused the request.
        retry_after: Seconds until a trial may pass, or ``None``.
        message: The message (default: built from the above when first read).

    Attributes:
        request: The ``aiohttp.ClientRequest`` that was not sent (``None`` when
            the error was built by hand).
    """

    request: ClientRequest | None = None

    # aiohttp's ClientConnectionError keeps nothing of its own: the breaker's
    # cheap __init__ (no message formatted), first in the MRO, is all it needs.

    @property
    def request_info(self) -> aiohttp.RequestInfo | None:
        """The ``RequestInfo`` of the request that was not sent, as aiohttp's errors carry."""
        request = self.request
        return None if request is None else request.request_info


class CircuitBreakerMiddleware:
    """An aiohttp client middleware that puts a circuit breaker in front of each request.

    Args:
        config: The default :class:`BreakerConfig` of a registry built here.
        rules: Per-host configurations by pattern (see :class:`BreakerRegistry`).
        registry: A :class:`BreakerRegistry` to share with other middlewares,
            transports and adapters; excludes ``config``, ``rules`` and ``key``.
        key: :data:`by_host` (default), :func:`by_route`, or a callable
            ``(method, url) -> str | None``.
        fallback: What an open circuit answers: ``None`` (raise
            :class:`CircuitOpenClientError`), a :class:`FallbackResponse`, a
            :class:`LastKnownGood`, or a callable ``(request, error)``, plain or
            a coroutine function, returning an ``aiohttp.ClientResponse`` or a
            :class:`FallbackResponse`; or a mapping of rule patterns (as in
            ``rules``, matched against the breaker key) to those, each key
            getting its most specific pattern's and a key no pattern matches
            raising (:data:`Fallback`). A fallback's response is a complete
            ``aiohttp.ClientResponse`` (``status``, ``headers``, ``read()``,
            ``text()``, ``json()``, ``content``) carrying
            ``X-Circuit-Breaker: open``.
        wall_clock: Seconds since the epoch, for an HTTP-date ``Retry-After``
            without a ``Date`` header (default ``time.time``).

    Raises:
        TypeError: both ``registry`` and ``config``/``rules``/``key``, or a bad
            ``fallback``.

    Example:
        >>> middleware = CircuitBreakerMiddleware(config=BreakerConfig(failure_rate=0.2))
        >>> # aiohttp.ClientSession(middlewares=[middleware])

    Every response that went through a breaker carries its key and admission
    state: :func:`breaker_info`. Last-Known-Good stores a response with a
    ``Content-Encoding`` only when aiohttp says it decoded the body (aiohttp ≥
    3.14, ``auto_decompress`` on): the copy is kept decoded, without the header.
    """

    __slots__ = ("_gate", "registry")

    def __init__(
        self,
        *,
        config: BreakerConfig | None = None,
        rules: Mapping[str, BreakerConfig] | None = None,
        registry: BreakerRegistry | None = None,
        key: KeyFunc | None = None,
        fallback: Fallback = None,
        wall_clock: Callable[[], float] = _clock.wall_clock,
    ) -> None:
        checked = check_fallback(fallback, True, "CircuitBreakerMiddleware")
        self._gate = _AiohttpGate(registry_from(registry, config, rules, key), checked, wall_clock)
        #: The :class:`BreakerRegistry` this middleware's breakers live in.
        self.registry: BreakerRegistry = self._gate.registry

    def __repr__(self) -> str:
        return f"CircuitBreakerMiddleware(registry={self.registry!r})"

    async def __call__(self, request: ClientRequest, handler: Handler) -> ClientResponse:
        """Send ``request`` through its breaker (aiohttp calls this, once per redirect hop)."""
        gate = self._gate
        if gate.fast and (not _options.in_use or _current_options.get() is None):
            # route(), inlined on the hot path: the breaker of an origin seen
            # before, found from the URL parts yarl has parsed already, without
            # a key or a registry lookup (the reads of url_origin(), inlined).
            url = request.url
            hit = gate.routes.get(url._netloc)
            if hit is not None and hit[2] == gate.registry.epoch and hit[0] == url._scheme:
                breaker = hit[1]
                mark = hit[3]
            else:
                breaker = gate.route_origin(request)
                mark = None
        else:
            breaker = gate.route(request)
            mark = None
        if breaker is None:
            return await handler(request)
        try:
            permit = breaker.acquire(CircuitOpenClientError)
        except CircuitOpenClientError as exc:
            exc.request = request
            if gate.fallback is None:
                raise  # in place: the cheapest short circuit
            return await self._short_circuit(request, breaker.name, exc)
        start = breaker.timer() if breaker.timed else 0.0  # started(breaker), inlined
        try:
            response = await handler(request)
        except Exception as exc:
            outcome = Outcome(gate, breaker, permit, (request.method, request.url), start)
            outcome.failed(exc, _ERRORS.failure(exc))
            raise
        except BaseException as exc:
            outcome = Outcome(gate, breaker, permit, (request.method, request.url), start)
            if isinstance(exc, asyncio.CancelledError) and _total_timeout_fired(request):
                # What the caller will see, once aiohttp has turned it around.
                outcome.failed(asyncio.TimeoutError(), True)
            else:
                outcome.cancelled()
            raise
        content = response.content
        if gate.lkg is None and (
            content._eof and content._exception is None  # reader_settled(), inlined
            if type(content) is _SLOTTED_READER
            else content.is_eof() and content.exception() is None
        ):
            # watch()'s first branch, inlined: a body in memory already settles now.
            status = response.status
            if permit > 0 and breaker.classifier is None and status not in breaker.failure_statuses:
                # settle_complete()'s plain closed success, inlined.
                breaker.record(
                    permit, False, breaker.timer() - start if breaker.timed else 0.0, None, status
                )
                response.circuit_breaker = mark or gate.closed_marks(breaker)  # type: ignore[attr-defined]
                return response
            state = settle_complete(gate, breaker, permit, request, start, status, response.headers)
            setattr(response, ATTRIBUTE, gate.marks(breaker, state))
            return response
        return gate.watch(breaker, permit, request, start, response)

    async def _short_circuit(
        self, request: ClientRequest, key: str, error: CircuitOpenClientError
    ) -> ClientResponse:
        gate = self._gate
        plan = gate.plan_for(request, error)
        if plan.stored is not None:
            stored = plan.stored
            response = _synthetic_response(
                request, stored.status_code, stored.reason, plan.headers or (), plan.content
            )
            return gate.finish(request, response, key, error, stale=True)
        if plan.response is not None:
            return gate.finish(request, plan.response, key, error)
        assert plan.call is not None
        answer = plan.call(request, error)
        if inspect.isawaitable(answer):
            answer = await answer
        return gate.finish(request, answer, key, error)
