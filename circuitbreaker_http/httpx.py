"""httpx integration: ``CircuitBreakerTransport`` and ``AsyncCircuitBreakerTransport``.

Wrap any httpx transport::

    client = httpx.Client(transport=CircuitBreakerTransport())
    client = httpx.AsyncClient(transport=AsyncCircuitBreakerTransport())

Each request goes through the breaker of its key (its origin by default) and
records exactly one outcome, where it really happens: a failure status at once;
a success status when the body ends or the response is closed, read or not
(or, for a response never closed, when it is garbage-collected), so an error
while the body is read counts as a failure. The slow-call clock counts the
upstream's time only: until the headers, plus inside each body read.

httpx ignores a Client's own ``verify``, ``cert``, ``proxy``, ``limits``,
``http2`` and environment proxies once ``transport=`` is given: pass them to
the transport instead (``CircuitBreakerTransport(verify=..., proxy=...)``).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

try:
    import httpx
except ImportError as exc:  # pragma: no cover - exercised by the bare-import test
    raise ImportError(
        'circuitbreaker_http.httpx needs httpx: pip install "circuitbreaker-http[httpx]"'
    ) from exc

from . import _clock
from ._breaker import CircuitBreaker
from ._core import BreakerConfig, CircuitState
from ._errors import CircuitOpenError
from ._fallback import FallbackResponse, LastKnownGood, StoredResponse, stale_headers
from ._gate import GateBase, decide, settle
from ._keys import KeyFunc
from ._options import EXTENSION, request_options
from ._options import _current as _current_options
from ._policy import fallback_headers
from ._registry import BreakerRegistry, registry_from

__all__ = [
    "AsyncCircuitBreakerTransport",
    "CircuitBreakerTransport",
    "CircuitOpenTransportError",
    "Fallback",
]

Fallback = Any
"""``None``, a :class:`FallbackResponse`, a :class:`LastKnownGood`, or a callable
``(httpx.Request, CircuitOpenError) -> httpx.Response`` (a coroutine function
for the async transport)."""

_FAILURE_ERRORS = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
    httpx.ProxyError,
)


class CircuitOpenTransportError(CircuitOpenError, httpx.TransportError):
    """A short-circuited httpx request: both a ``CircuitOpenError`` and an ``httpx.TransportError``.

    ``.request`` is set, as on httpx's own errors. To keep a retry helper from
    retrying into an open circuit, exclude ``CircuitOpenError`` from what it
    retries on.
    """

    def __init__(
        self,
        name: str,
        state: CircuitState,
        retry_after: float | None = None,
        message: str | None = None,
        *,
        request: httpx.Request | None = None,
    ) -> None:
        # Skips httpx's __init__, which would format the message on every
        # rejection; ``.request`` goes through httpx's public setter instead.
        CircuitOpenError.__init__(self, name, state, retry_after, message)
        self._request = None
        if request is not None:
            self.request = request


def _public_url_parts(url: httpx.URL) -> tuple[str, str, int | None, str]:
    path = url.raw_path.decode("ascii", "replace").partition("?")[0]
    return url.scheme, url.raw_host.decode("ascii"), url.port, path


def _private_url_parts(url: httpx.URL) -> tuple[str, str, int | None, str]:
    # httpx keeps the parsed URL in ``_uri_reference``; reading it directly
    # costs a third of the public properties, which re-encode the host.
    ref = url._uri_reference
    return ref.scheme, ref.host, ref.port, ref.path or "/"


def _private_url_parts_agree() -> bool:
    """Whether the private fast path gives what the public API gives, in this httpx."""
    try:
        for text in (
            "HTTP://B\u00fccher.Example:80/x/%2F%20y?q=1#f",
            "https://[::1]:8443/",
            "http://h:81",
            "http://h/caf\u00e9/a b",
        ):
            url = httpx.URL(text)
            if _private_url_parts(url) != _public_url_parts(url):
                return False
    except Exception:
        return False
    return True


_FAST_URL = _private_url_parts_agree()


def _is_failure(exc: BaseException) -> bool:
    """Whether an exception says the upstream failed (else it records nothing)."""
    return isinstance(exc, _FAILURE_ERRORS) and not isinstance(exc, httpx.PoolTimeout)


def _check_fallback(fallback: object, allow_async: bool) -> Fallback:
    if isinstance(fallback, LastKnownGood):
        # Its ``otherwise`` is called like any fallback: check it the same way.
        _check_fallback(fallback.otherwise, allow_async)
        return fallback
    if fallback is None or isinstance(fallback, FallbackResponse):
        return fallback
    if not callable(fallback):
        raise TypeError(
            "fallback must be None, a FallbackResponse, a LastKnownGood or a callable, "
            f"got {fallback!r}"
        )
    if not allow_async and inspect.iscoroutinefunction(fallback):
        raise TypeError("a coroutine-function fallback needs AsyncCircuitBreakerTransport")
    return fallback


class _Gate(GateBase):
    """Everything both transports share: keys, outcomes, fallbacks. No I/O."""

    __slots__ = ("_key_cache",)

    def __init__(
        self,
        registry: BreakerRegistry,
        fallback: Fallback,
        wall_clock: Callable[[], float],
    ) -> None:
        super().__init__(registry, fallback, wall_clock)
        # host -> [(scheme, port, key)]: found without building a tuple per request.
        self._key_cache: dict[str, list[tuple[str, int | None, str | None]]] = {}

    @classmethod
    def build(
        cls,
        registry: BreakerRegistry | None,
        config: BreakerConfig | None,
        rules: Mapping[str, BreakerConfig] | None,
        key: KeyFunc | None,
        fallback: Fallback,
        wall_clock: Callable[[], float],
        allow_async: bool,
    ) -> _Gate:
        """The gate of one transport, from the transport's own arguments."""
        return cls(
            registry_from(registry, config, rules, key),
            _check_fallback(fallback, allow_async),
            wall_clock,
        )

    def route(self, request: httpx.Request) -> CircuitBreaker | None:
        """Return the breaker for ``request`` (its ``.name`` is the key), or ``None`` to bypass."""
        extension = request.extensions.get(EXTENSION)
        opts = _current_options.get() if extension is None else request_options(extension)
        key: str | None = None
        if opts is not None:
            if opts.bypass:
                return None
            key = opts.key
        if key is None:
            key = self._key_of(request)
            if key is None:
                return None
        return self.registry.get(key)

    def _key_of(self, request: httpx.Request) -> str | None:
        url = request.url
        from_parts = self._from_parts
        if from_parts is None:
            return self.key(request.method, str(url))
        if _FAST_URL:
            ref = url._uri_reference  # see _private_url_parts_agree
            scheme, host, port = ref.scheme, ref.host, ref.port
        else:
            scheme, host, port, _ = _public_url_parts(url)
        if self._by_host:
            # Origins are few: cache them on the parsed parts, never on the path.
            cache = self._key_cache
            entries = cache.get(host)
            if entries is not None:
                for known_scheme, known_port, known_key in entries:
                    if known_port == port and known_scheme == scheme:
                        return known_key
            key: str | None = from_parts(request.method, scheme, host, port, "")
            if entries is not None and len(entries) < 8:
                entries.append((scheme, port, key))
            else:
                # Rotating hosts (or ports of one host) must not grow memory.
                if len(cache) >= 4096:
                    cache.clear()
                cache[host] = [(scheme, port, key)]
            return key
        path = (ref.path or "/") if _FAST_URL else _public_url_parts(url)[3]
        return from_parts(request.method, scheme, host, port, path)  # type: ignore[no-any-return]

    # -- outcomes --------------------------------------------------------------

    def describe(self, request: httpx.Request) -> tuple[str, str]:
        """The request's method and URL, for a ``classify`` hook."""
        return request.method, str(request.url)

    def on_error(
        self,
        breaker: CircuitBreaker,
        permit: int,
        request: httpx.Request,
        exc: Exception,
        duration: float,
        status: int | None = None,
        headers: httpx.Headers | None = None,
    ) -> None:
        """Settle a request that raised (before the headers, or while reading the body)."""
        if not permit or isinstance(exc, CircuitOpenError):
            breaker.release(permit)
            return
        failed = decide(
            breaker,
            request.method,
            str(request.url),
            status,
            headers,
            exc,
            duration,
            True if _is_failure(exc) else None,
        )
        settle(breaker, permit, failed, duration)

    def on_response(
        self,
        breaker: CircuitBreaker,
        permit: int,
        request: httpx.Request,
        response: httpx.Response,
        duration: float,
        clock: Callable[[], float] | None,
        asynchronous: bool,
    ) -> httpx.Response:
        """Settle or watch a response whose headers have arrived."""
        if not permit:
            response.extensions[EXTENSION] = {"key": breaker.name, "state": "disabled"}
            return response
        # A closed-state permit is the breaker's fast permit: no method call for it.
        trial = breaker.permit_state(permit) is CircuitState.HALF_OPEN
        # Plain strings: hashing an enum member runs Python code on every request.
        response.extensions[EXTENSION] = {
            "key": breaker.name,
            "state": "half_open" if trial else "closed",
        }
        status = response.status_code
        if (
            breaker.classifier is not None or status in breaker.config.failure_statuses
        ) and self.settle_status(breaker, permit, request, status, response.headers, duration):
            return response
        lkg = self.lkg
        tee = lkg is not None and self._storable(lkg, request, response)
        stream = response.stream
        if isinstance(stream, httpx.ByteStream):
            # Already read (MockTransport, Response(content=...)): settle now.
            breaker.record(permit, False, duration)
            if tee and lkg is not None:
                self.store(
                    lkg,
                    request,
                    status,
                    response.reason_phrase,
                    response.headers,
                    # The raw bytes, not ``.content``: that is already decoded, and
                    # the stored Content-Encoding would make a stale copy undecodable.
                    b"".join(stream),
                )
            return response
        if trial:
            # A long body must not hold the breaker half-open.
            breaker.trial_slot_free(permit)
        pending = _Pending(self, breaker, permit, request, response, duration, clock, tee)
        if asynchronous:
            response.stream = _AsyncBody(stream, pending)  # type: ignore[arg-type]
        else:
            response.stream = _SyncBody(stream, pending)  # type: ignore[arg-type]
        return response

    # -- last known good -------------------------------------------------------

    @staticmethod
    def _storable(lkg: LastKnownGood, request: httpx.Request, response: httpx.Response) -> bool:
        return (
            request.method == "GET"
            and lkg.request_eligible(request.method, request.headers.get)
            and lkg.response_storable(response.status_code, response.headers.get)
        )

    @staticmethod
    def store(
        lkg: LastKnownGood,
        request: httpx.Request,
        status: int,
        reason: str,
        headers: httpx.Headers,
        content: bytes,
    ) -> None:
        # The stored body is what was read; framing headers no longer describe it.
        kept = [
            (name, value)
            for name, value in headers.multi_items()
            if name.lower() not in ("content-length", "transfer-encoding", "connection")
        ]
        lkg.store(str(request.url), status, reason, kept, content, request.headers.get)

    def _from_lkg(self, lkg: LastKnownGood, request: httpx.Request) -> httpx.Response | None:
        if not lkg.request_eligible(request.method, request.headers.get):
            return None
        entry: StoredResponse | None = lkg.lookup(str(request.url), request.headers.get)
        if entry is None:
            return None
        headers = [*entry.headers, *stale_headers(lkg.age(entry))]
        content = b"" if request.method == "HEAD" else entry.content
        response = httpx.Response(
            entry.status_code, headers=headers, content=content, request=request
        )
        response.extensions["reason_phrase"] = entry.reason.encode("ascii", "replace")
        response.extensions[EXTENSION] = {"stale": True}
        return response

    # -- short circuits --------------------------------------------------------

    def resolve_fallback(
        self, request: httpx.Request, error: CircuitOpenTransportError
    ) -> httpx.Response | Callable[..., Any]:
        """Return a ready fallback response, or the callable to ask; raise ``error`` if none."""
        fallback = self.fallback
        if isinstance(fallback, LastKnownGood):
            response = self._from_lkg(fallback, request)
            if response is not None:
                return response
            fallback = fallback.otherwise
        if fallback is None:
            raise error
        if isinstance(fallback, FallbackResponse):
            return httpx.Response(
                fallback.status_code,
                headers=list(fallback.header_list),
                content=fallback.body,
                request=request,
            )
        return fallback  # type: ignore[no-any-return]  # a callable, checked at construction

    @staticmethod
    def finish_fallback(
        response: object, request: httpx.Request, key: str, error: CircuitOpenError
    ) -> httpx.Response:
        if not isinstance(response, httpx.Response):
            raise TypeError(f"a fallback must return an httpx.Response, got {response!r}")
        headers = response.headers
        for name, value in fallback_headers(headers.keys(), error.retry_after):
            headers[name] = value
        marks = response.extensions.get(EXTENSION)
        extension = {"key": key, "state": error.state.value, "fallback": True}
        if isinstance(marks, Mapping):
            extension.update(marks)
        response.extensions[EXTENSION] = extension
        return response


class _Pending:
    """One response whose success status arrived and whose body is still to come."""

    # It keeps the response's status and headers, not the response: the
    # response holds the body watcher, which holds this, and a cycle would
    # delay the finaliser of a dropped response until the cyclic GC runs.
    __slots__ = (
        "breaker",
        "chunks",
        "clock",
        "gate",
        "headers",
        "permits",
        "reason",
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
        request: httpx.Request,
        response: httpx.Response,
        duration: float,
        clock: Callable[[], float] | None,
        tee: bool,
    ) -> None:
        self.gate = gate
        self.breaker = breaker
        # A one-item list: ``pop()`` is atomic, so the outcome settles exactly once.
        self.permits = [permit]
        self.request = request
        self.status = response.status_code
        self.reason = response.reason_phrase
        self.headers = response.headers
        self.upstream = duration
        self.clock = clock
        self.chunks: list[bytes] | None = [] if tee else None
        self.size = 0

    def add(self, chunk: bytes) -> None:
        chunks = self.chunks
        if chunks is None:
            return
        self.size += len(chunk)
        lkg = self.gate.lkg
        if lkg is None or self.size > lkg.max_entry_bytes:
            self.chunks = None
        else:
            chunks.append(chunk)

    def finish(self, complete: bool) -> None:
        try:
            permit = self.permits.pop()
        except IndexError:
            return
        self.breaker.record(permit, False, self.upstream)
        lkg = self.gate.lkg
        if complete and self.chunks is not None and lkg is not None:
            self.gate.store(
                lkg, self.request, self.status, self.reason, self.headers, b"".join(self.chunks)
            )
        self.chunks = None

    def error(self, exc: Exception) -> None:
        try:
            permit = self.permits.pop()
        except IndexError:
            return
        self.chunks = None
        self.gate.on_error(
            self.breaker,
            permit,
            self.request,
            exc,
            self.upstream,
            self.status,
            self.headers,
        )

    def cancel(self) -> None:
        try:
            permit = self.permits.pop()
        except IndexError:
            return
        self.chunks = None
        self.breaker.release(permit)

    def dropped(self) -> None:
        try:
            permit = self.permits.pop()
        except IndexError:
            return
        self.breaker.record_later(permit, self.upstream)


S = TypeVar("S")


class _Body(Generic[S]):
    __slots__ = ("_iter", "_pending", "_stream")

    def __init__(self, stream: S, pending: _Pending) -> None:
        self._stream = stream
        self._pending = pending

    def __del__(self) -> None:
        # Never closed: the response was dropped. Settle without a lock.
        pending = getattr(self, "_pending", None)
        if pending is not None:
            pending.dropped()


class _SyncBody(_Body[httpx.SyncByteStream], httpx.SyncByteStream):
    """Watches a response body: upstream time per read, errors, end and close."""

    __slots__ = ()

    def __iter__(self) -> Iterator[bytes]:
        self._iter = iter(self._stream)
        return self

    def __next__(self) -> bytes:
        pending = self._pending
        clock = pending.clock  # None when no duration is ever read
        began = clock() if clock is not None else 0.0
        try:
            chunk: bytes = next(self._iter)
        except StopIteration:
            if clock is not None:
                pending.upstream += clock() - began
            pending.finish(complete=True)
            raise
        except Exception as exc:
            if clock is not None:
                pending.upstream += clock() - began
            pending.error(exc)
            raise
        except BaseException:
            pending.cancel()
            raise
        if clock is not None:
            pending.upstream += clock() - began
        if pending.chunks is not None:
            pending.add(chunk)
        return chunk

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._pending.finish(complete=False)


class _AsyncBody(_Body[httpx.AsyncByteStream], httpx.AsyncByteStream):
    """The async twin of :class:`_SyncBody`; cancellation records nothing."""

    __slots__ = ()

    def __aiter__(self) -> AsyncIterator[bytes]:
        self._iter = self._stream.__aiter__()
        return self

    async def __anext__(self) -> bytes:
        pending = self._pending
        clock = pending.clock  # None when no duration is ever read
        began = clock() if clock is not None else 0.0
        try:
            chunk: bytes = await self._iter.__anext__()
        except StopAsyncIteration:
            if clock is not None:
                pending.upstream += clock() - began
            pending.finish(complete=True)
            raise
        except Exception as exc:
            if clock is not None:
                pending.upstream += clock() - began
            pending.error(exc)
            raise
        except BaseException:
            pending.cancel()
            raise
        if clock is not None:
            pending.upstream += clock() - began
        if pending.chunks is not None:
            pending.add(chunk)
        return chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            self._pending.finish(complete=False)


class CircuitBreakerTransport(httpx.BaseTransport):
    """An ``httpx.BaseTransport`` that puts a circuit breaker in front of another one.

    Args:
        transport: The inner transport (default: ``httpx.HTTPTransport(**kwargs)``).
        config: The default :class:`BreakerConfig` of a registry built here.
        rules: Per-host configurations by pattern (see :class:`BreakerRegistry`).
        registry: A :class:`BreakerRegistry` to share with other transports
            and adapters; excludes ``config``, ``rules`` and ``key``.
        key: :data:`by_host` (default), :func:`by_route`, or a callable.
        fallback: What an open circuit answers: ``None`` (raise
            :class:`CircuitOpenTransportError`), a :class:`FallbackResponse`,
            a :class:`LastKnownGood`, or ``(request, error) -> httpx.Response``.
        wall_clock: Seconds since the epoch, for an HTTP-date ``Retry-After``
            without a ``Date`` header (default ``time.time``).
        **kwargs: Passed to ``httpx.HTTPTransport`` (``verify``, ``cert``,
            ``http2``, ``limits``, ``proxy``, ``retries``, ...).

    Raises:
        TypeError: both ``transport`` and ``kwargs``, or both ``registry`` and
            ``config``/``rules``/``key``, or a bad ``fallback``.

    Closing the transport closes the inner one.
    """

    def __init__(
        self,
        transport: httpx.BaseTransport | None = None,
        *,
        config: BreakerConfig | None = None,
        rules: Mapping[str, BreakerConfig] | None = None,
        registry: BreakerRegistry | None = None,
        key: KeyFunc | None = None,
        fallback: Fallback = None,
        wall_clock: Callable[[], float] = _clock.wall_clock,
        **kwargs: Any,
    ) -> None:
        if transport is None:
            transport = httpx.HTTPTransport(**kwargs)
        elif kwargs:
            raise TypeError(
                f"HTTPTransport options {sorted(kwargs)} cannot apply to an explicit transport"
            )
        self.transport = transport
        self._gate = _Gate.build(registry, config, rules, key, fallback, wall_clock, False)
        self.registry = self._gate.registry

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` through its breaker (httpx calls this)."""
        gate = self._gate
        breaker = gate.route(request)
        if breaker is None:
            return self.transport.handle_request(request)
        try:
            permit = breaker.acquire(CircuitOpenTransportError)
        except CircuitOpenTransportError as exc:
            if gate.fallback is None:
                exc.request = request
                raise
            return self._short_circuit(request, breaker.name, exc)
        clock = breaker.clock
        # Durations are read only when a slow-call rule or classify needs them.
        timed = breaker.timed
        start = clock() if timed else 0.0
        try:
            response = self.transport.handle_request(request)
        except Exception as exc:
            gate.on_error(breaker, permit, request, exc, clock() - start if timed else 0.0)
            raise
        except BaseException:
            breaker.release(permit)
            raise
        return gate.on_response(
            breaker,
            permit,
            request,
            response,
            clock() - start if timed else 0.0,
            clock if timed else None,
            False,
        )

    def _short_circuit(
        self, request: httpx.Request, key: str, error: CircuitOpenTransportError
    ) -> httpx.Response:
        gate = self._gate
        error.request = request
        resolved = gate.resolve_fallback(request, error)
        if not isinstance(resolved, httpx.Response):
            resolved = resolved(request, error)
        return gate.finish_fallback(resolved, request, key, error)

    def close(self) -> None:
        """Close the inner transport."""
        self.transport.close()


class AsyncCircuitBreakerTransport(httpx.AsyncBaseTransport):
    """An ``httpx.AsyncBaseTransport`` that puts a circuit breaker in front of another one.

    The same as :class:`CircuitBreakerTransport`, for ``httpx.AsyncClient``
    under asyncio or trio; the inner transport defaults to
    ``httpx.AsyncHTTPTransport(**kwargs)`` and a callable ``fallback`` may be
    a coroutine function. Cancelling a request records nothing.
    """

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        config: BreakerConfig | None = None,
        rules: Mapping[str, BreakerConfig] | None = None,
        registry: BreakerRegistry | None = None,
        key: KeyFunc | None = None,
        fallback: Fallback = None,
        wall_clock: Callable[[], float] = _clock.wall_clock,
        **kwargs: Any,
    ) -> None:
        if transport is None:
            transport = httpx.AsyncHTTPTransport(**kwargs)
        elif kwargs:
            raise TypeError(
                f"AsyncHTTPTransport options {sorted(kwargs)} cannot apply to an explicit transport"
            )
        self.transport = transport
        self._gate = _Gate.build(registry, config, rules, key, fallback, wall_clock, True)
        self.registry = self._gate.registry

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` through its breaker (httpx calls this)."""
        gate = self._gate
        breaker = gate.route(request)
        if breaker is None:
            return await self.transport.handle_async_request(request)
        try:
            permit = breaker.acquire(CircuitOpenTransportError)
        except CircuitOpenTransportError as exc:
            if gate.fallback is None:
                exc.request = request
                raise
            return await self._short_circuit(request, breaker.name, exc)
        clock = breaker.clock
        # Durations are read only when a slow-call rule or classify needs them.
        timed = breaker.timed
        start = clock() if timed else 0.0
        try:
            response = await self.transport.handle_async_request(request)
        except Exception as exc:
            gate.on_error(breaker, permit, request, exc, clock() - start if timed else 0.0)
            raise
        except BaseException:
            breaker.release(permit)
            raise
        return gate.on_response(
            breaker,
            permit,
            request,
            response,
            clock() - start if timed else 0.0,
            clock if timed else None,
            True,
        )

    async def _short_circuit(
        self, request: httpx.Request, key: str, error: CircuitOpenTransportError
    ) -> httpx.Response:
        gate = self._gate
        error.request = request
        resolved = gate.resolve_fallback(request, error)
        if not isinstance(resolved, httpx.Response):
            result = resolved(request, error)
            resolved = await result if inspect.isawaitable(result) else result
        return gate.finish_fallback(resolved, request, key, error)

    async def aclose(self) -> None:
        """Close the inner transport."""
        await self.transport.aclose()
