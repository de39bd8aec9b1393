"""``CircuitBreaker``: the thread- and task-safe shell around the pure core.

The shell owns the clock, one small lock around the core, and the listeners.
The lock is never held while the user's function, a ``classify`` hook or a
listener runs, and never across an ``await``, so one breaker serves threads,
asyncio tasks and trio tasks alike without any asyncio-only primitive.

Hot path (closed state): admission reads one attribute of the core and takes
no lock; the outcome takes one lock round trip and one clock read (two when
slow calls or ``classify`` need the duration); a plain success emits nothing.
"""

from __future__ import annotations

import functools
import inspect
import logging
import random as _random
from collections import deque
from collections.abc import Awaitable, Callable
from threading import Lock
from typing import Any, ParamSpec, TypeVar, overload

from . import _clock
from ._core import (
    BreakerConfig,
    BreakerCore,
    BreakerSnapshot,
    CallInfo,
    CircuitState,
    CoreState,
    StateChange,
    Verdict,
)
from ._errors import CircuitOpenError

__all__ = ["CircuitBreaker", "StateListener", "logger"]

logger = logging.getLogger("circuitbreaker_http")
# A library configures no output of its own; applications attach handlers.
logger.addHandler(logging.NullHandler())

P = ParamSpec("P")
R = TypeVar("R")

StateListener = Callable[[StateChange], object]
"""A callable that receives every :class:`StateChange` of a breaker."""

_OPEN = CircuitState.OPEN
_CLOSED = CircuitState.CLOSED
_HALF_OPEN = CircuitState.HALF_OPEN
_FORCED_OPEN = CircuitState.FORCED_OPEN
_DISABLED = CircuitState.DISABLED
_DEFAULT_CONFIG = BreakerConfig()


class CircuitBreaker:
    """A circuit breaker around calls to one upstream.

    Args:
        name: What the breaker protects; in a registry, its key.
        config: Thresholds and timings (default: ``BreakerConfig()``).
        clock: Zero-argument callable returning seconds, like ``time.monotonic``.
            Every duration the breaker measures or waits is read from it.
        on_state_change: Called with a :class:`StateChange` after every
            transition, outside the lock, one at a time and in transition order.
            An exception it raises is logged, never propagated.

    Use it with :meth:`call`, :meth:`call_async`, or as a decorator on a plain
    or ``async def`` function. An exception from the function is a failure, a
    return is a success; a cancellation (``asyncio.CancelledError``, trio's
    ``Cancelled``, ``KeyboardInterrupt``: any ``BaseException`` that is not an
    ``Exception``) records nothing and gives a half-open trial slot back.
    """

    __slots__ = (
        "__weakref__",
        "_core",
        "_deferred",
        "_dispatching",
        "_listener",
        "_lock",
        "_queue",
        "_slow_after",
        "classifier",
        "clock",
        "config",
        "name",
        "timed",
    )

    def __init__(
        self,
        name: str,
        config: BreakerConfig | None = None,
        *,
        clock: Callable[[], float] = _clock.monotonic,
        on_state_change: StateListener | None = None,
        random: Callable[[], float] = _random.random,
    ) -> None:
        if not isinstance(name, str):
            raise TypeError(f"CircuitBreaker name must be a str, got {name!r}")
        if config is None:
            config = _DEFAULT_CONFIG
        elif not isinstance(config, BreakerConfig):
            raise TypeError(f"config must be a BreakerConfig, got {config!r}")
        if not callable(clock):
            raise TypeError(f"clock must be a zero-argument callable, got {clock!r}")
        if on_state_change is not None and not callable(on_state_change):
            raise TypeError(f"on_state_change must be callable, got {on_state_change!r}")
        self.name = name
        self.config = config
        #: The clock every duration of this breaker is read from (read-only).
        self.clock = clock
        self._listener = on_state_change
        self._core = BreakerCore(name, config, random)
        self._lock = Lock()
        self._queue: deque[StateChange] = deque()
        # Outcomes settled from a finaliser, which must never take the lock.
        self._deferred: deque[tuple[int, bool]] = deque()
        self._dispatching = False
        #: The configured ``classify`` hook, or ``None`` (read-only).
        self.classifier = config.classify
        self._slow_after = config.slow_call_duration
        #: Whether outcomes need a duration (a slow-call rule or ``classify``);
        #: when ``False`` the integrations read no clock at all (read-only).
        self.timed = self._slow_after is not None or self.classifier is not None

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} {self._core.state.value}>"

    # -- views ---------------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        """The current state (an open breaker whose period has ended turns half-open here)."""
        core = self._core
        with self._lock:
            now = self.clock()
            if self._deferred:
                self._apply_deferred(now)
            core.poll(now)
            state = core.state
            drain = self._enqueue() if core.changes else False
        if drain:
            self._drain()
        return state

    def snapshot(self) -> BreakerSnapshot:
        """Return a consistent view of the breaker: state, window counts, time to retry."""
        core = self._core
        with self._lock:
            now = self.clock()
            if self._deferred:
                self._apply_deferred(now)
            snap = core.snapshot(now)
            drain = self._enqueue() if core.changes else False
        if drain:
            self._drain()
        return snap

    def export_state(self) -> CoreState:
        """Return the breaker's state as a plain value (window buckets, state, open-until)."""
        with self._lock:
            return self._core.export(self.clock())

    def next_transition_at(self) -> float | None:
        """The clock reading at which time alone would change the state, if any."""
        with self._lock:
            return self._core.next_transition_at()

    # -- manual control ------------------------------------------------------

    def force_open(self) -> None:
        """Open the circuit by hand; it stays ``FORCED_OPEN`` until :meth:`reset`."""
        self._manual(BreakerCore.force_open)

    def disable(self) -> None:
        """Let every call pass and record nothing until :meth:`reset`."""
        self._manual(BreakerCore.disable)

    def reset(self) -> None:
        """Return to ``CLOSED`` with the window, backoff and Retry-After forgotten."""
        self._manual(BreakerCore.reset)

    def _manual(self, action: Callable[[BreakerCore, float], None]) -> None:
        core = self._core
        with self._lock:
            action(core, self.clock())
            drain = self._enqueue() if core.changes else False
        if drain:
            self._drain()

    # -- the low-level protocol used by the HTTP integrations ------------------

    def acquire(self, error: type[CircuitOpenError] = CircuitOpenError) -> int:
        """Ask to let one call through and return its permit.

        This is the low-level protocol the HTTP integrations use; most code
        wants :meth:`call`. Every permit must be settled exactly once with
        :meth:`record` or :meth:`release`.

        Args:
            error: The :class:`CircuitOpenError` subclass to raise on a short
                circuit (the integrations raise their client-flavoured one).

        Raises:
            CircuitOpenError: the call may not pass (an instance of ``error``).
        """
        permit = self._core.fast_permit
        if permit is None:
            permit = self._admit(error)
        return permit

    def record(
        self,
        permit: int,
        failed: bool,
        duration: float | None = None,
        retry_after: float | None = None,
    ) -> None:
        """Settle ``permit`` with an outcome.

        Args:
            permit: What :meth:`acquire` returned.
            failed: Whether the call failed.
            duration: Seconds spent waiting on the upstream, to judge slowness.
            retry_after: For a failure, seconds the upstream asked to wait.
        """
        if not permit:
            return
        slow_after = self._slow_after
        slow = slow_after is not None and duration is not None and duration > slow_after
        core = self._core
        lock = self._lock
        lock.acquire()  # cheaper than ``with`` on the hot path
        try:
            now = self.clock()
            if self._deferred:
                self._apply_deferred(now)
            if failed or slow:
                core.record(
                    permit, now, failed, slow, None if retry_after is None else now + retry_after
                )
            else:
                core.success(permit, now)
            if not core.changes:
                return
            drain = self._enqueue()
        finally:
            lock.release()
        if drain:
            self._drain()

    def record_later(self, permit: int, duration: float | None = None) -> None:
        """Settle ``permit`` as a success without taking the lock (safe in ``__del__``).

        The outcome is applied at the breaker's next recorded outcome or look.
        The HTTP integrations use it for a response that is garbage-collected
        before it was closed.
        """
        if not permit:
            return
        slow_after = self._slow_after
        slow = slow_after is not None and duration is not None and duration > slow_after
        self._deferred.append((permit, slow))

    def _apply_deferred(self, now: float) -> None:
        core = self._core
        deferred = self._deferred
        while deferred:
            permit, slow = deferred.popleft()
            core.record(permit, now, False, slow)

    def is_trial(self, permit: int) -> bool:
        """Whether ``permit`` is a half-open trial's that has not settled yet."""
        core = self._core
        return permit != core.fast_permit and permit in core.trials

    def permit_state(self, permit: int) -> CircuitState:
        """The state ``permit`` was let through in: closed, half-open (a trial) or disabled.

        Ask right after :meth:`acquire`: a closed permit is the closed period's
        own number, so once the breaker has moved on only a trial's stays
        recognisable.
        """
        if not permit:
            return _DISABLED
        return _CLOSED if permit == self._core.fast_permit else _HALF_OPEN

    def is_current(self, permit: int) -> bool:
        """Whether the closed (or disabled) period ``permit`` was let through in is still on.

        Lock-free; a half-open trial's permit is never current in this sense.
        """
        return permit == self._core.fast_permit

    def protected(self, now: float) -> bool:
        """Whether a registry must keep this breaker: set by hand, or open until after ``now``."""
        core = self._core
        state = core.state
        if state is _FORCED_OPEN or state is _DISABLED:
            return True
        return state is _OPEN and now < core.open_until

    def release(self, permit: int) -> None:
        """Settle ``permit`` with no outcome (cancelled, or nothing to say about the upstream)."""
        if not permit:
            return
        core = self._core
        with self._lock:
            core.release(permit)

    def trial_slot_free(self, permit: int) -> None:
        """Give a half-open trial's slot back before its outcome settles.

        The HTTP integrations call this when a success status arrives, so a
        long body never holds the breaker half-open.
        """
        if not permit:
            return
        with self._lock:
            self._core.headers_ok(permit)

    def classify(self, info: CallInfo) -> Verdict | None:
        """Ask the configured ``classify`` hook; one that raises is logged and yields ``None``."""
        hook = self.classifier
        if hook is None:
            return None
        try:
            verdict: object = hook(info)
        except Exception:
            logger.exception("classify raised for breaker %r; the default rules decide", self.name)
            return None
        if verdict is not None and not isinstance(verdict, Verdict):
            logger.error(
                "classify returned %r for breaker %r, not a Verdict or None; ignored",
                verdict,
                self.name,
            )
            return None
        return verdict

    # -- running functions ---------------------------------------------------

    def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run ``fn(*args, **kwargs)`` through the breaker and return its result.

        Raises:
            CircuitOpenError: the breaker does not let the call through.
            Exception: whatever ``fn`` raises (recorded as a failure unless it
                is a ``CircuitOpenError`` of another breaker or ``classify`` says so).
        """
        core = self._core
        permit = core.fast_permit
        if permit is None:
            permit = self._admit()
        if self.timed:
            return self._call_timed(permit, fn, *args, **kwargs)
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            self._failed(permit, 0.0, exc)
            raise
        except BaseException:
            self.release(permit)
            raise
        if not permit:
            return result
        # The plain success, inlined: one lock round trip, one clock read, no event.
        lock = self._lock
        lock.acquire()  # cheaper than ``with`` on the hot path
        try:
            core.success(permit, self.clock())
            if not core.changes:
                return result
            drain = self._enqueue()
        finally:
            lock.release()
        if drain:
            self._drain()
        return result

    def _call_timed(
        self, permit: int, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> R:
        start = self.clock()
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            self._failed(permit, start, exc)
            raise
        except BaseException:
            self.release(permit)
            raise
        if permit:
            self._succeeded(permit, start)
        return result

    async def call_async(
        self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """Await ``fn(*args, **kwargs)`` through the breaker and return its result.

        Works under asyncio and trio alike. Cancelling the task records nothing.

        Raises:
            CircuitOpenError: the breaker does not let the call through.
            Exception: whatever ``fn`` raises.
        """
        core = self._core
        permit = core.fast_permit
        if permit is None:
            permit = self._admit()
        start = self.clock() if self.timed else 0.0
        try:
            result = await fn(*args, **kwargs)
        except Exception as exc:
            self._failed(permit, start, exc)
            raise
        except BaseException:
            self.release(permit)
            raise
        if permit:
            # An await costs far more than a method call: no inlining here.
            if self.timed:
                self._succeeded(permit, start)
            else:
                self.record(permit, False)
        return result

    @overload
    def __call__(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]: ...
    @overload
    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]: ...
    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate a plain or ``async def`` function so every call goes through the breaker."""
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                return await self.call_async(fn, *args, **kwargs)

            return async_wrapper

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            return self.call(fn, *args, **kwargs)

        return wrapper

    # -- internals -----------------------------------------------------------

    def _admit(self, error: type[CircuitOpenError] = CircuitOpenError) -> int:
        core = self._core
        now = self.clock()
        # An open breaker rejects without the lock: a stale read only ever
        # rejects a call that was rejectable an instant ago.
        state = core.state
        if state is _OPEN and now < core.open_until:
            raise error(self.name, _OPEN, core.open_until - now)
        if state is _FORCED_OPEN:
            raise error(self.name, _FORCED_OPEN, None)
        with self._lock:
            if self._deferred:
                # A dropped response's success may be what closes the breaker.
                self._apply_deferred(now)
            permit = core.acquire(now)
            if permit is None:
                state = core.state
                retry_after = core.open_until - now if state is _OPEN else None
            drain = self._enqueue() if core.changes else False
        if drain:
            self._drain()
        if permit is None:
            raise error(self.name, state, retry_after)
        return permit

    def _failed(self, permit: int, start: float, exc: Exception) -> None:
        if not permit or isinstance(exc, CircuitOpenError):
            self.release(permit)
            return
        failed = True
        duration = self.clock() - start if self.timed else None
        if self.classifier is not None:
            verdict = self.classify(CallInfo(self.name, "", "", None, None, exc, duration or 0.0))
            if verdict is Verdict.IGNORE:
                self.release(permit)
                return
            failed = verdict is not Verdict.SUCCESS
        self.record(permit, failed, duration)

    def _succeeded(self, permit: int, start: float) -> None:
        duration = self.clock() - start
        failed = False
        if self.classifier is not None:
            verdict = self.classify(CallInfo(self.name, "", "", None, None, None, duration))
            if verdict is Verdict.IGNORE:
                self.release(permit)
                return
            failed = verdict is Verdict.FAILURE
        self.record(permit, failed, duration)

    def _enqueue(self) -> bool:
        """Move the core's new transitions to the delivery queue. Call with the lock held.

        Returns whether the caller must deliver them (no one else is delivering).
        """
        core = self._core
        self._queue.extend(core.changes)
        core.changes.clear()
        if self._dispatching:
            return False
        self._dispatching = True
        return True

    def _drain(self) -> None:
        """Deliver queued transitions one at a time, in order, outside the lock."""
        queue = self._queue
        while True:
            with self._lock:
                if not queue:
                    self._dispatching = False
                    return
                change = queue.popleft()
            try:
                self._deliver(change)
            except BaseException:
                # A KeyboardInterrupt inside a listener must not wedge delivery.
                with self._lock:
                    self._dispatching = False
                raise

    def _deliver(self, change: StateChange) -> None:
        logger.log(
            logging.WARNING if change.new is _OPEN else logging.INFO,
            "circuit breaker %r: %s -> %s (%s)",
            change.name,
            change.old.value,
            change.new.value,
            change.reason,
        )
        listener = self._listener
        if listener is None:
            return
        try:
            listener(change)
        except Exception:
            logger.exception("on_state_change listener raised for breaker %r", change.name)
