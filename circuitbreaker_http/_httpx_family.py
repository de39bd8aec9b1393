"""The httpx transports, written once for httpx and its fork httpx2.

httpx2 keeps httpx's API under another module name, so one implementation
serves both: :class:`Flavour` holds the client module's classes, and
:func:`build` makes the public classes of one client module
(``circuitbreaker_http.httpx``, ``circuitbreaker_http.httpx2``) from the
mixins below. Everything about a request's outcome is decided by
:class:`~circuitbreaker_http._outcome.Outcome`; this module only turns httpx's
objects into its inputs and wraps the response stream.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any, ClassVar, Generic, TypeVar

from . import _clock, _options
from ._breaker import CircuitBreaker
from ._core import BreakerConfig, CircuitState
from ._errors import CircuitOpenError
from ._info import Marks
from ._keys import KeyFunc
from ._options import _current as _current_options
from ._options import current_options, request_options
from ._outcome import (
    EXTENSION,
    ErrorKinds,
    FallbackPlan,
    Gate,
    Outcome,
    check_fallback,
    settle_complete,
)
from ._policy import fallback_headers
from ._registry import BreakerRegistry, registry_from

__all__ = ["AsyncTransport", "Flavour", "OpenTransportError", "SyncTransport", "build"]

_KEY_CACHE_HOSTS = 4096
# The fallback type a client module's transport takes (its ``Fallback`` alias).
_F = TypeVar("_F")


def _describe(request: Any) -> tuple[str, str]:
    return request.method, str(request.url)


class Flavour:
    """One httpx-like module (``httpx`` or ``httpx2``) and what the transports need of it."""

    def __init__(self, hx: Any) -> None:
        self.hx = hx
        self.name: str = hx.__name__
        self.Response = hx.Response
        self.ByteStream = hx.ByteStream
        self.errors = ErrorKinds(
            (hx.TimeoutException, hx.NetworkError, hx.RemoteProtocolError, hx.ProxyError),
            (hx.PoolTimeout,),
        )
        self.DecodingError = hx.DecodingError
        self.fast_url = self._private_url_parts_agree()
        # httpx asserts a response stream is one of its own stream classes.
        self.SyncBody: type[_SyncBody] = type(
            "SyncBody", (_SyncBody, hx.SyncByteStream), {"__slots__": (), "__module__": __name__}
        )
        self.AsyncBody: type[_AsyncBody] = type(
            "AsyncBody", (_AsyncBody, hx.AsyncByteStream), {"__slots__": (), "__module__": __name__}
        )
        # Set by build(): the short-circuit error of this flavour.
        self.open_error: type[OpenTransportError] = OpenTransportError

    @staticmethod
    def public_url_parts(url: Any) -> tuple[str, str, int | None, str]:
        """``(scheme, host, port, path)`` of an ``httpx.URL`` through its public API."""
        path = url.raw_path.decode("ascii", "replace").partition("?")[0]
        return url.scheme, url.raw_host.decode("ascii"), url.port, path

    @staticmethod
    def private_url_parts(url: Any) -> tuple[str, str, int | None, str]:
        """The same from httpx's parsed ``_uri_reference``: a third of the public cost.

        The parts are read by position (``scheme, userinfo, host, port, path,
        ...``), cheaper than the named tuple's fields: the check below proves
        the order in the httpx at hand.
        """
        ref = url._uri_reference
        return ref[0], ref[2], ref[3], ref[4] or "/"

    def _private_url_parts_agree(self) -> bool:
        """Whether the private fast path gives what the public API gives, in this version."""
        try:
            for text in (
                "HTTP://B\u00fccher.Example:80/x/%2F%20y?q=1#f",
                "https://[::1]:8443/",
                "http://h:81",
                "http://h/caf\u00e9/a b",
            ):
                url = self.hx.URL(text)
                if self.private_url_parts(url) != self.public_url_parts(url):
                    return False
        except Exception:
            return False
        return True


def watch_decoding(response: Any, outcome: Outcome, flavour: Flavour) -> bool:
    """Make a decoding error of ``response``'s body (gzip, brotli, zstd) fail ``outcome``.

    httpx decodes a body outside the transport's stream, between two reads of
    it, so the stream never sees a corrupt body's ``DecodingError``: it sees
    only the ``close()`` that follows. httpx has no public hook for this; the
    trick, kept to this function, is to hand the response the decoder it
    would build for itself (``_get_content_decoder()``) wrapped in
    :class:`_DecoderWatch`, through the attribute it caches it in
    (``_decoder``). A test fails loudly when httpx or httpx2 changes either.
    Returns whether the watch is in place.
    """
    try:
        inner = response._get_content_decoder()
    except Exception:
        return False
    response._decoder = _DecoderWatch(inner, outcome, flavour.DecodingError)
    return True


class _DecoderWatch:
    """An httpx content decoder that reports a ``DecodingError`` to the outcome first."""

    __slots__ = ("_error", "_inner", "_outcome")

    def __init__(self, inner: Any, outcome: Outcome, error: type[Exception]) -> None:
        self._inner = inner
        self._outcome = outcome
        self._error = error

    def _report(self, exc: BaseException) -> None:
        self._outcome.failed(exc, True)

    def _each(self, parts: Iterator[bytes]) -> Iterator[bytes]:
        try:
            yield from parts
        except self._error as exc:
            self._report(exc)
            raise

    def _run(self, call: Callable[..., Any], *args: Any) -> Any:
        try:
            result = call(*args)
        except self._error as exc:
            self._report(exc)
            raise
        # httpx returns bytes; httpx2's decoders are generators that fail lazily.
        return result if isinstance(result, (bytes, bytearray)) else self._each(result)

    def decode(self, data: bytes) -> Any:
        """Decode one chunk, as the wrapped decoder does."""
        return self._run(self._inner.decode, data)

    def flush(self) -> Any:
        """Flush, as the wrapped decoder does."""
        return self._run(self._inner.flush)


class _HttpxGate(Gate):
    """A :class:`Gate` that keys httpx requests without reparsing their URLs."""

    __slots__ = ("_key_cache", "fast", "flavour", "routes", "settles_now")

    def __init__(
        self,
        flavour: Flavour,
        registry: BreakerRegistry,
        fallback: Any,
        wall_clock: Callable[[], float],
    ) -> None:
        super().__init__(registry, fallback, wall_clock, _describe)
        self.flavour = flavour
        # host -> [(scheme, port, key)]: found without building a tuple per request.
        self._key_cache: dict[str, list[tuple[str, int | None, str | None]]] = {}
        #: host -> (scheme, port, breaker or None, registry epoch, closed marks):
        #: the breaker of the host's latest origin, used again without
        #: registry.get() while the registry's epoch is the one read before that
        #: get(), and the :class:`Marks` its responses let through closed share.
        self.routes: dict[
            str, tuple[str, int | None, CircuitBreaker | None, int, Marks | None]
        ] = {}
        #: Whether :meth:`route`'s hot path applies: keys by host, URLs read by position.
        self.fast = self.by_host and flavour.fast_url
        #: The stream type of a response that :meth:`settle_now` can settle
        #: (a body already in memory, when Last-Known-Good keeps no copy of
        #: it), else ``None``, which no stream's type is; a subclass, a
        #: rarity, goes to watch().
        self.settles_now: type | None = flavour.ByteStream if self.lkg is None else None

    def route(self, request: Any) -> CircuitBreaker | None:
        """The breaker for ``request`` (its ``.name`` is the key), or ``None`` to bypass.

        The transports inline its first branch (see :meth:`route_origin`).
        """
        if (
            self.fast
            and EXTENSION not in request.extensions
            and (not _options.in_use or _current_options.get() is None)
        ):
            ref = request.url._uri_reference
            hit = self.routes.get(ref[2])
            if (
                hit is not None
                and hit[3] == self.registry.epoch
                and hit[1] == ref[3]
                and hit[0] == ref[0]
            ):
                return hit[2]
            return self.route_origin(request, ref)
        return self.route_options(request)

    def route_options(self, request: Any) -> CircuitBreaker | None:
        """:meth:`route` past its origin cache: under per-request options, or not by host."""
        extension = request.extensions.get(EXTENSION)
        opts = request_options(extension) if extension is not None else current_options()
        return self.route_with(opts, request)

    def route_origin(self, request: Any, ref: Any) -> CircuitBreaker | None:
        """The breaker of an origin not in :attr:`routes` (or an epoch ago): look it up, keep it.

        :meth:`route`'s hot path, which the transports inline, finds the
        breaker of an origin seen before from the parsed URL (``ref``, read
        by position as :meth:`Flavour.private_url_parts` does, checked by
        ``Flavour.fast_url``) without a key, a registry lookup or an LRU tick
        (see ``BreakerRegistry.epoch`` for why skipping the tick is sound).
        """
        registry = self.registry
        epoch = registry.epoch  # before get(): a drop after it changes the epoch again
        key = self.key_of(request)
        breaker = None if key is None else registry.get(key)
        routes = self.routes
        if len(routes) >= _KEY_CACHE_HOSTS:
            routes.clear()  # rotating hosts must not grow memory
        mark = None if breaker is None else self.closed_marks(breaker)
        routes[ref[2]] = (ref[0], ref[3], breaker, epoch, mark)
        return breaker

    def key_of(self, request: Any) -> str | None:
        """The key of ``request`` from its parsed URL (origins are cached)."""
        url = request.url
        from_parts = self.from_parts
        if from_parts is None:
            return self.key(request.method, str(url))
        fast = self.flavour.fast_url
        if fast:
            scheme, host, port, path = Flavour.private_url_parts(url)
        else:
            scheme, host, port, path = Flavour.public_url_parts(url)
        if self.by_host:
            # Origins are few: cache them on the parsed parts, never on the path.
            cache = self._key_cache
            entries = cache.get(host)
            if entries is not None:
                for known_scheme, known_port, known_key in entries:
                    if known_port == port and known_scheme == scheme:
                        return known_key
            key = from_parts(request.method, scheme, host, port, "")
            if entries is not None and len(entries) < 8:
                entries.append((scheme, port, key))
            else:
                # Rotating hosts (or ports of one host) must not grow memory.
                if len(cache) >= _KEY_CACHE_HOSTS:
                    cache.clear()
                cache[host] = [(scheme, port, key)]
            return key
        return from_parts(request.method, scheme, host, port, path)

    request_key = key_of  # what Gate.route_with asks, without a call more

    # -- responses ---------------------------------------------------------------

    def settle_now(
        self, breaker: CircuitBreaker, permit: int, request: Any, start: float, response: Any
    ) -> Any:
        """Settle a response whose body is in memory (``type(stream) is settles_now``).

        The transports settle a plain closed success themselves, inline, and
        come here for the rest.
        """
        state = settle_complete(
            self, breaker, permit, request, start, response.status_code, response.headers
        )
        response.extensions[EXTENSION] = self.marks(breaker, state)
        return response

    def watch(
        self,
        breaker: CircuitBreaker,
        permit: int,
        request: Any,
        start: float,
        response: Any,
        asynchronous: bool,
    ) -> Any:
        """Feed a response's headers to the outcome engine and watch its body when it must."""
        stream = response.stream
        # Already in memory (MockTransport, Response(content=...)): no upstream
        # left to wait on, so the outcome settles now.
        complete = isinstance(stream, self.flavour.ByteStream)
        if complete and self.lkg is None:
            return self.settle_now(breaker, permit, request, start, response)
        outcome = Outcome(self, breaker, permit, request, start)
        response.extensions[EXTENSION] = outcome.extension()
        status = response.status_code
        headers = response.headers
        if outcome.headers(status, headers):
            return response
        if self.lkg is not None:
            outcome.tee = self.tee_for(
                breaker.name,
                request.method,
                str(request.url),
                request.headers.get,
                status,
                response.reason_phrase,
                headers.multi_items,
            )
        if complete:
            # The raw bytes, not ``.content``: that is decoded, and a stale copy
            # under the stored Content-Encoding would not be.
            outcome.ended(b"".join(stream))
            return response
        if "content-encoding" in headers:
            watch_decoding(response, outcome, self.flavour)
        if asynchronous:
            response.stream = self.flavour.AsyncBody(stream, outcome, self.flavour)
        else:
            response.stream = self.flavour.SyncBody(stream, outcome, self.flavour)
        return response

    # -- short circuits ------------------------------------------------------------

    def respond(self, request: Any, plan: FallbackPlan) -> Any:
        """The response of a plan that needs no call (a stored or synthetic one), else ``None``."""
        Response = self.flavour.Response
        if plan.stored is not None:
            response = Response(
                plan.stored.status_code,
                headers=plan.headers,
                content=plan.content,
                request=request,
            )
            response.extensions["reason_phrase"] = plan.stored.reason.encode("ascii", "replace")
            response.extensions[EXTENSION] = {"stale": True}
            return response
        if plan.response is not None:
            fallback = plan.response
            return Response(
                fallback.status_code,
                headers=list(fallback.header_list),
                content=fallback.body,
                request=request,
            )
        return None

    def finish(self, response: object, request: Any, key: str, error: CircuitOpenError) -> Any:
        """Mark a fallback's response: ``X-Circuit-Breaker``, ``Retry-After``, the extension."""
        if not isinstance(response, self.flavour.Response):
            raise TypeError(
                f"a fallback must return an {self.flavour.name}.Response, got {response!r}"
            )
        headers = response.headers
        for name, value in fallback_headers(headers.keys(), error.retry_after):
            headers[name] = value
        response.extensions[EXTENSION] = self.fallback_extension(
            key, error, response.extensions.get(EXTENSION), False
        )
        if not hasattr(response, "_elapsed"):
            # httpx sets elapsed when a network response closes; a synthetic
            # one never does, and reading it would raise RuntimeError.
            response.elapsed = _ZERO
        return response


def _zero() -> Any:
    from datetime import timedelta

    return timedelta(0)


_ZERO = _zero()


class _Body:
    __slots__ = ("_flavour", "_iter", "_outcome", "_stream")

    def __init__(self, stream: Any, outcome: Outcome, flavour: Flavour) -> None:
        self._stream = stream
        self._outcome = outcome
        self._flavour = flavour

    def _closing(self) -> None:
        self._outcome.closed()

    def __del__(self) -> None:
        # Never closed: the response was dropped. Settle without a lock.
        outcome = getattr(self, "_outcome", None)
        if outcome is not None:
            outcome.dropped()


class _SyncBody(_Body):
    """Watches a response body: upstream time per read, errors, end and close."""

    __slots__ = ()

    def __iter__(self) -> Iterator[bytes]:
        self._iter = iter(self._stream)
        return self

    def __next__(self) -> bytes:
        outcome = self._outcome
        clock = outcome.clock  # None when no duration is ever read
        began = clock() if clock is not None else 0.0
        try:
            chunk: bytes = next(self._iter)
        except StopIteration:
            if clock is not None:
                outcome.upstream += clock() - began
            outcome.ended()
            raise
        except Exception as exc:
            if clock is not None:
                outcome.upstream += clock() - began
            outcome.failed(exc, self._flavour.errors.failure(exc))
            raise
        except BaseException:
            outcome.cancelled()
            raise
        if clock is not None:
            outcome.upstream += clock() - began
        if outcome.tee is not None:
            outcome.chunk(chunk)
        return chunk

    def close(self) -> None:
        try:
            iterator = getattr(self, "_iter", None)
            if iterator is not None and hasattr(iterator, "close"):
                iterator.close()  # as in aclose(): an iteration cut short is closed now
            self._stream.close()
        finally:
            self._closing()


class _AsyncBody(_Body):
    """The async twin of :class:`_SyncBody`; cancellation records nothing."""

    __slots__ = ()

    def __aiter__(self) -> AsyncIterator[bytes]:
        self._iter = self._stream.__aiter__()
        return self

    async def __anext__(self) -> bytes:
        outcome = self._outcome
        clock = outcome.clock  # None when no duration is ever read
        began = clock() if clock is not None else 0.0
        try:
            chunk: bytes = await self._iter.__anext__()
        except StopAsyncIteration:
            if clock is not None:
                outcome.upstream += clock() - began
            outcome.ended()
            raise
        except Exception as exc:
            if clock is not None:
                outcome.upstream += clock() - began
            outcome.failed(exc, self._flavour.errors.failure(exc))
            raise
        except BaseException:
            outcome.cancelled()
            raise
        if clock is not None:
            outcome.upstream += clock() - began
        if outcome.tee is not None:
            outcome.chunk(chunk)
        return chunk

    async def aclose(self) -> None:
        try:
            # An iteration cut short (an error, a decoding failure) leaves the
            # inner async generator suspended: close it now, not in the GC,
            # where trio warns and asyncio may run it on a closed loop.
            iterator = getattr(self, "_iter", None)
            if iterator is not None and hasattr(iterator, "aclose"):
                await iterator.aclose()
            await self._stream.aclose()
        finally:
            self._closing()


class OpenTransportError(CircuitOpenError):
    """What the short-circuit errors of httpx and httpx2 share (see ``build``)."""

    def __init__(
        self,
        name: str,
        state: CircuitState,
        retry_after: float | None = None,
        message: str | None = None,
        last_failure: str | None = None,
        *,
        request: Any = None,
    ) -> None:
        # Skips httpx's __init__, which would format the message on every
        # rejection; ``.request`` goes through httpx's public setter instead.
        CircuitOpenError.__init__(self, name, state, retry_after, message, last_failure)
        # httpx's ``.request`` getter reads ``_request``; its type is the flavour's.
        self.__dict__["_request"] = None
        if request is not None:
            self.request = request


class _TransportBase(Generic[_F]):
    """Construction shared by the sync and async transports (``_F``: the fallback type)."""

    flavour: ClassVar[Flavour]
    _inner_name: ClassVar[str]

    def __init__(
        self,
        transport: Any = None,
        *,
        config: BreakerConfig | None = None,
        rules: Mapping[str, BreakerConfig] | None = None,
        registry: BreakerRegistry | None = None,
        key: KeyFunc | None = None,
        fallback: _F | None = None,
        wall_clock: Callable[[], float] = _clock.wall_clock,
        **kwargs: Any,
    ) -> None:
        flavour = self.flavour
        if transport is None:
            transport = getattr(flavour.hx, self._inner_name)(**kwargs)
        elif kwargs:
            raise TypeError(
                f"{self._inner_name} options {sorted(kwargs)} cannot apply to an explicit transport"
            )
        asynchronous = self._inner_name.startswith("Async")
        checked = check_fallback(fallback, asynchronous, type(self).__name__)
        #: The inner transport every admitted request goes to.
        self.transport = transport
        self._gate = _HttpxGate(
            flavour, registry_from(registry, config, rules, key), checked, wall_clock
        )
        #: The :class:`BreakerRegistry` this transport's breakers live in.
        self.registry = self._gate.registry


class SyncTransport(_TransportBase[_F]):
    """An httpx transport that puts a circuit breaker in front of another one.

    Args:
        transport: The inner transport (default: ``HTTPTransport(**kwargs)``).
        config: The default :class:`BreakerConfig` of a registry built here.
        rules: Per-host configurations by pattern (see :class:`BreakerRegistry`).
        registry: A :class:`BreakerRegistry` to share with other transports
            and adapters; excludes ``config``, ``rules`` and ``key``.
        key: :data:`by_host` (default), :func:`by_route`, or a callable
            ``(method, url) -> str | None``.
        fallback: What an open circuit answers: ``None`` (raise the
            ``CircuitOpenTransportError``), a :class:`FallbackResponse`, a
            :class:`LastKnownGood`, ``(request, error) -> Response``, or a
            mapping of rule patterns (as in ``rules``, matched against the
            breaker key) to those: each key gets its most specific pattern's,
            and a key no pattern matches raises. Typed as the client module's
            ``Fallback`` (``AsyncFallback`` for the async transport).
        wall_clock: Seconds since the epoch, for an HTTP-date ``Retry-After``
            without a ``Date`` header (default ``time.time``).
        **kwargs: Passed to ``HTTPTransport`` (``verify``, ``cert``,
            ``http2``, ``limits``, ``proxy``, ``retries``, ...).

    Raises:
        TypeError: both ``transport`` and ``kwargs``, or both ``registry`` and
            ``config``/``rules``/``key``, or a bad ``fallback``.

    Closing the transport closes the inner one. Each request records one
    outcome where it really happens: a failure status at once; a success when
    the body ends or the response is closed, read or not (or, for a response
    never closed, when it is garbage-collected); an error while the body is
    read or decoded is a failure.
    """

    _inner_name = "HTTPTransport"

    def handle_request(self, request: Any) -> Any:
        """Send ``request`` through its breaker (httpx calls this)."""
        gate = self._gate
        if (
            gate.fast
            and EXTENSION not in request.extensions
            and (not _options.in_use or _current_options.get() is None)
        ):
            ref = request.url._uri_reference  # gate.route()'s hot path, inlined
            hit = gate.routes.get(ref[2])
            if (
                hit is not None
                and hit[3] == gate.registry.epoch
                and hit[1] == ref[3]
                and hit[0] == ref[0]
            ):
                breaker = hit[2]
                mark = hit[4]
            else:
                breaker = gate.route_origin(request, ref)
                mark = None
        else:
            breaker = gate.route_options(request)
            mark = None
        if breaker is None:
            return self.transport.handle_request(request)
        try:
            # gate.flavour: a class attribute read through the instance costs more.
            permit = breaker.acquire(gate.flavour.open_error)
        except OpenTransportError as exc:
            exc.request = request
            if gate.fallback is None:
                raise  # in place: the cheapest short circuit
            return self._short_circuit(request, breaker.name, exc)
        start = breaker.timer() if breaker.timed else 0.0  # started(breaker), inlined
        try:
            response = self.transport.handle_request(request)
        except Exception as exc:
            outcome = Outcome(gate, breaker, permit, request, start)
            outcome.failed(exc, self.flavour.errors.failure(exc))
            raise
        except BaseException:
            Outcome(gate, breaker, permit, request, start).cancelled()
            raise
        if type(response.stream) is gate.settles_now:
            status = response.status_code
            if permit > 0 and breaker.classifier is None and status not in breaker.failure_statuses:
                # settle_complete()'s plain closed success, inlined on the hottest path.
                breaker.record(
                    permit, False, breaker.timer() - start if breaker.timed else 0.0, None, status
                )
                response.extensions[EXTENSION] = mark or gate.closed_marks(breaker)
                return response
            return gate.settle_now(breaker, permit, request, start, response)
        return gate.watch(breaker, permit, request, start, response, False)

    def _short_circuit(self, request: Any, key: str, error: OpenTransportError) -> Any:
        gate = self._gate
        plan = gate.plan_for(request, error)
        response = gate.respond(request, plan)
        if response is None:
            assert plan.call is not None
            response = plan.call(request, error)
        return gate.finish(response, request, key, error)

    def close(self) -> None:
        """Close the inner transport."""
        self.transport.close()


class AsyncTransport(_TransportBase[_F]):
    """The same as the sync transport, for ``AsyncClient`` under asyncio or trio.

    The inner transport defaults to ``AsyncHTTPTransport(**kwargs)``, a
    callable ``fallback`` may be a coroutine function, and cancelling a
    request records nothing.
    """

    _inner_name = "AsyncHTTPTransport"

    async def handle_async_request(self, request: Any) -> Any:
        """Send ``request`` through its breaker (httpx calls this)."""
        gate = self._gate
        if (
            gate.fast
            and EXTENSION not in request.extensions
            and (not _options.in_use or _current_options.get() is None)
        ):
            ref = request.url._uri_reference  # gate.route()'s hot path, inlined
            hit = gate.routes.get(ref[2])
            if (
                hit is not None
                and hit[3] == gate.registry.epoch
                and hit[1] == ref[3]
                and hit[0] == ref[0]
            ):
                breaker = hit[2]
                mark = hit[4]
            else:
                breaker = gate.route_origin(request, ref)
                mark = None
        else:
            breaker = gate.route_options(request)
            mark = None
        if breaker is None:
            return await self.transport.handle_async_request(request)
        try:
            permit = breaker.acquire(gate.flavour.open_error)
        except OpenTransportError as exc:
            exc.request = request
            if gate.fallback is None:
                raise  # in place: the cheapest short circuit
            return await self._short_circuit(request, breaker.name, exc)
        start = breaker.timer() if breaker.timed else 0.0  # started(breaker), inlined
        try:
            response = await self.transport.handle_async_request(request)
        except Exception as exc:
            outcome = Outcome(gate, breaker, permit, request, start)
            outcome.failed(exc, self.flavour.errors.failure(exc))
            raise
        except BaseException:
            Outcome(gate, breaker, permit, request, start).cancelled()
            raise
        if type(response.stream) is gate.settles_now:
            status = response.status_code
            if permit > 0 and breaker.classifier is None and status not in breaker.failure_statuses:
                # settle_complete()'s plain closed success, inlined on the hottest path.
                breaker.record(
                    permit, False, breaker.timer() - start if breaker.timed else 0.0, None, status
                )
                response.extensions[EXTENSION] = mark or gate.closed_marks(breaker)
                return response
            return gate.settle_now(breaker, permit, request, start, response)
        return gate.watch(breaker, permit, request, start, response, True)

    async def _short_circuit(self, request: Any, key: str, error: OpenTransportError) -> Any:
        gate = self._gate
        plan = gate.plan_for(request, error)
        response = gate.respond(request, plan)
        if response is None:
            assert plan.call is not None
            response = plan.call(request, error)
            if inspect.isawaitable(response):
                response = await response
        return gate.finish(response, request, key, error)

    async def aclose(self) -> None:
        """Close the inner transport."""
        await self.transport.aclose()


_ERROR_DOC = """A short-circuited {hx} request: a ``CircuitOpenError`` and a ``TransportError``.

``.request`` is set, as on {hx}'s own errors. To keep a retry helper from
retrying into an open circuit, exclude ``CircuitOpenError`` from what it
retries on.
"""


def build(hx: Any, module: str) -> tuple[type[Any], type[Any], type[Any]]:
    """Make the public classes of one client module from the mixins above.

    Returns:
        ``(CircuitOpenTransportError, CircuitBreakerTransport, AsyncCircuitBreakerTransport)``,
        subclasses of ``hx.TransportError``, ``hx.BaseTransport`` and
        ``hx.AsyncBaseTransport``, whose ``__module__`` is ``module``.
    """
    flavour = Flavour(hx)
    name = hx.__name__

    def make(cls_name: str, bases: tuple[type, ...], doc: str) -> type[Any]:
        namespace: dict[str, Any] = {"__module__": module, "__qualname__": cls_name, "__doc__": doc}
        if any(issubclass(base, _TransportBase) for base in bases):
            namespace["flavour"] = flavour
        return type(cls_name, bases, namespace)

    error = make(
        "CircuitOpenTransportError",
        (OpenTransportError, hx.TransportError),
        _ERROR_DOC.format(hx=name),
    )
    flavour.open_error = error
    sync = make(
        "CircuitBreakerTransport",
        (SyncTransport, hx.BaseTransport),
        (SyncTransport.__doc__ or "").replace("An httpx transport", f"An ``{name}.BaseTransport``"),
    )
    asynchronous = make(
        "AsyncCircuitBreakerTransport",
        (AsyncTransport, hx.AsyncBaseTransport),
        (AsyncTransport.__doc__ or "").replace("AsyncClient", f"{name}.AsyncClient"),
    )
    return error, sync, asynchronous
