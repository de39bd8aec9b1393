"""``CircuitBreaker``: the thread- and task-safe shell around the pure core.

The shell owns the clock, one small lock around the core, and the listeners.
The lock is never held while the user's function, a ``classify`` hook or a
listener runs, and never across an ``await``, so one breaker serves threads,
asyncio tasks and trio tasks alike without any asyncio-only primitive.

Hot path (closed state): admission reads one attribute of the core and takes
no lock; the outcome takes one lock round trip and one clock read (two when
slow calls or ``classify`` need the duration); a plain success emits nothing.
What a call adds besides is the re-entrancy mark: one ``ContextVar`` read,
one ``threading.local`` read and two stores of a flag. A rejection reads the
``ContextVar`` and the clock, and builds the error.

Re-entrancy. A call through a breaker made while another call through it
already runs in the same thread or task is part of that outer call: it is
neither admitted nor recorded. The breaker's ``ContextVar`` says what runs in
the current context (a thread's own, or an asyncio or trio task's):

* A synchronous call (:meth:`CircuitBreaker.call`, a decorated function, a
  step of a decorated generator) flips the ``on`` flag of a :class:`_Mark`, the
  variable's value, for as long as the function runs. The mark is put there by
  the first synchronous call in a context and stays (later calls only flip the
  flag, where setting and resetting the variable cost several times more), so
  a context copied from this one (a task created here) starts out sharing it.
  Sharing it within one thread is harmless, since synchronous code cannot
  interleave with anything else in its thread while it runs: whatever runs in
  the thread meanwhile (a nested call, a generator it drives, an event loop
  it runs) runs inside the call. So each mark has an ``owner``, a token of the
  thread that put it there (the thread's own ``__dict__`` of a per-breaker
  ``threading.local``, greenlet-local under gevent monkeypatching done before
  the breaker was created): a mark of another thread (a context copied to
  another thread, as ``asyncio.to_thread`` does) is not this thread's call,
  and a synchronous call here replaces it with a mark of its own. (A greenlet
  switch *inside* a synchronous call to another greenlet, without gevent's
  patching, that runs in a context copied from the same one, as SQLAlchemy's
  asyncio bridge may, would make that greenlet's calls look like part of the
  call.)
* What may span an ``await`` (:meth:`CircuitBreaker.call_async`, ``with`` and
  ``async with`` blocks, steps of async generators) sets the variable for the
  time it runs, to ``_CALL`` or to a :class:`_Block`: its value is then a stack
  of ``with`` blocks (each links to the value it replaced), so ``with
  breaker:`` keeps its permit per thread and task, never on the breaker
  object. Work that starts inside such a call and carries its context along (a
  task created there, ``asyncio.to_thread``, ``contextvars.copy_context().run``)
  is part of that call too.

The low-level :meth:`CircuitBreaker.acquire`/:meth:`CircuitBreaker.record`
protocol of the HTTP integrations does not look at either mark: each request
they send settles on its own.

Clock trouble. The clock is a user callable. A reading that raises or is not
a finite number never costs a function its result: the outcome is not
recorded (a half-open trial gives its slot back) and a WARNING is logged, once
per breaker. Where a reading is needed to decide (admission while not closed,
``state``, ``snapshot``, manual control) the error propagates instead (a
``ValueError`` for a reading that is not finite), before anything runs or
changes.

Deferred outcomes. A response dropped without being closed is settled from its
finaliser through :meth:`CircuitBreaker.record_later`, which must never wait
for the lock (the collector may have interrupted this very thread while it held
it). The outcome is queued with the clock reading of that moment and filed,
when the queue is drained, in the bucket of that time (or dropped if that
bucket has aged out of the window). Queuing an outcome closes the core's
success fast path (when the lock is free; else the next bucket of the window
does), and every outcome recorded off that path and every look drains the
queue first: the next outcome after a dropped response files it. Once the
queue holds more than ``_DEFERRED_DRAIN_AT`` entries ``record_later`` drains it
itself when the lock is free, so it stays short without any traffic but
dropped responses.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import math
import random as _random
import threading
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from contextvars import ContextVar, Token
from threading import Lock
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, cast

from . import _clock
from ._core import (
    BreakerConfig,
    BreakerCore,
    BreakerSnapshot,
    CallInfo,
    CallRecorded,
    CallRejected,
    CircuitState,
    CoreState,
    FleetState,
    MetricsRow,
    StateChange,
    SyncView,
    Verdict,
)
from ._errors import CircuitOpenError
from ._errors import new_open_error as _new_error

__all__ = [
    "EVENT_TYPES",
    "CircuitBreaker",
    "Event",
    "Listener",
    "StateListener",
    "Subscription",
    "logger",
]

logger = logging.getLogger("circuitbreaker_http")
# A library configures no output of its own; applications attach handlers.
logger.addHandler(logging.NullHandler())

P = ParamSpec("P")
R = TypeVar("R")
Y = TypeVar("Y")
S = TypeVar("S")
V = TypeVar("V")
F = TypeVar("F", bound=Callable[..., Any])

StateListener = Callable[[StateChange], object]
"""A callable that receives every :class:`StateChange` of a breaker."""

Event = StateChange | CallRecorded | CallRejected
"""What a breaker delivers to its subscribers."""

Listener = Callable[[Any], object]
"""A callable that receives events (see :meth:`CircuitBreaker.subscribe`)."""

EVENT_TYPES: tuple[type[Any], ...] = (StateChange, CallRecorded, CallRejected)
"""Every event type a breaker delivers."""

_LISTENER_LOG_EVERY = 60.0
"""Seconds between two log lines about the same listener raising."""
_REJECTION_LOG_EVERY = 1.0
"""Seconds between two DEBUG lines about one breaker's rejections."""


class Subscription:
    """A listener and the event types it receives; shared by every breaker it is attached to.

    :meth:`CircuitBreaker.subscribe` makes one; a registry attaches one to each
    of its breakers. ``listener`` is called with each event of ``types``.
    """

    __slots__ = ("_log_after", "listener", "types")

    def __init__(self, listener: Listener, types: tuple[type[Any], ...]) -> None:
        if not callable(listener):
            raise TypeError(f"a listener must be callable, got {listener!r}")
        for kind in types:
            if kind not in EVENT_TYPES:
                raise TypeError(
                    f"cannot subscribe to {kind!r}: the event types are "
                    "StateChange, CallRecorded and CallRejected"
                )
        self.listener = listener
        self.types = tuple(dict.fromkeys(types or EVENT_TYPES))
        self._log_after = _NINF

    def __repr__(self) -> str:
        names = ", ".join(kind.__name__ for kind in self.types)
        return f"<Subscription {self.listener!r} to {names}>"

    def raised(self, name: str, now: float) -> None:
        """Log that the listener raised (call inside ``except``), once a minute at most."""
        if now < self._log_after:
            return
        self._log_after = now + _LISTENER_LOG_EVERY
        logger.exception(
            "a listener of circuit breaker %r raised (logged once a minute at most): %r",
            name,
            self.listener,
        )


_OPEN = CircuitState.OPEN
_CLOSED = CircuitState.CLOSED
_HALF_OPEN = CircuitState.HALF_OPEN
_FORCED_OPEN = CircuitState.FORCED_OPEN
_DISABLED = CircuitState.DISABLED
_DEFAULT_CONFIG = BreakerConfig()
_NINF = -math.inf

_DEFERRED_DRAIN_AT = 32
"""Past this many queued deferred outcomes, ``record_later`` drains the queue
itself whenever the lock is free."""
_DEFERRED_CAP = 4096
"""The last resort: a deferred outcome that finds this many queued while the
lock is taken is dropped (and counted in ``deferred_dropped``)."""


class _NotAwaitable(TypeError):
    """Raised inside ``call_async`` for a result that cannot be awaited."""


class _Call:
    """The mark of an async call (or an async generator step) running through a breaker.

    Like a :class:`_Block`, it reads as running and owned by no thread, which is
    all the hot path of a synchronous call needs to know of it (see
    :class:`_Mark`).
    """

    __slots__ = ()
    on = True
    owner = None

    def __repr__(self) -> str:
        return "<call running>"


_CALL = _Call()


class _Mark:
    """Whether a synchronous call through a breaker runs, in one context and thread.

    The value of the breaker's ``ContextVar`` from the first synchronous call in
    a context on, so that marking a call is two stores of ``on``, not a set and
    a reset of the variable. ``owner`` is the token of the thread that put it
    there (see the module docstring).
    """

    __slots__ = ("on", "owner")

    def __init__(self, owner: object) -> None:
        self.on = False
        self.owner = owner

    def __repr__(self) -> str:
        return f"<call {'running' if self.on else 'not running'}>"


class _Block:
    """One ``with breaker:`` block running in one context.

    ``outer`` is the value the breaker's context variable held before the
    block (``None``, a :class:`_Mark`, ``_CALL`` or an enclosing block), put
    back when it ends; ``permit`` is ``None`` for a block nested in another
    call through the same breaker.
    """

    __slots__ = ("outer", "permit", "start", "token")
    on = True  # running, owned by no thread: see _Call
    owner = None

    def __init__(self, outer: object, permit: int | None, start: float | None) -> None:
        self.outer = outer
        self.permit = permit
        self.start = start
        self.token: Token[object] | None = None


def _percent(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate:.0%}"


_finite = _clock.finite


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

    Use it with :meth:`call`, :meth:`call_async`, as a decorator (on a plain
    function, an ``async def`` function, a generator function or an async
    generator function), or as ``with breaker:`` / ``async with breaker:``.
    An exception from the function (or the block) is a failure, a return is a
    success; a cancellation (``asyncio.CancelledError``, trio's ``Cancelled``,
    ``KeyboardInterrupt``: any ``BaseException`` that is not an
    ``Exception``) records nothing and gives a half-open trial slot back.

    A call through the breaker made while another call through it already
    runs in the same thread or task is part of that outer call: it is neither
    admitted nor recorded separately.
    """

    __slots__ = (
        "__weakref__",
        "_core",
        "_debug_after",
        "_deferred",
        "_dispatching",
        "_guard",
        "_local",
        "_lock",
        "_on_change",
        "_on_recorded",
        "_on_rejected",
        "_queue",
        "_rejected",
        "_running",
        "_shadow_rejected",
        "_slow_after",
        "_subscriptions",
        "_timed",
        "classifier",
        "clock",
        "config",
        "deferred_dropped",
        "enforce",
        "failure_statuses",
        "name",
        "timed",
        "timer",
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
        #: ``config.failure_statuses``, one attribute away for the integrations'
        #: hot paths (read-only).
        self.failure_statuses = config.failure_statuses
        #: The clock every duration of this breaker is read from (read-only).
        self.clock = clock
        #: The clock to time a call with where nothing may raise (read-only):
        #: ``clock`` itself when it is ``time.monotonic`` or another of the
        #: standard library's clocks, else a guard of it whose reading is NaN
        #: (logged once) when the clock raises or gives no finite number. A
        #: duration taken with it is NaN when unknown; :meth:`record` takes
        #: that as unknown (not slow).
        self._guard = _clock.ClockGuard(
            clock, "circuit breaker %r: an outcome or a duration was not recorded", name
        )
        self.timer: Callable[[], float] = clock if _clock.is_standard(clock) else self._guard
        self._core = BreakerCore(name, config, random)
        self._lock = Lock()
        # Events waiting to be delivered outside the lock, each with the
        # arguments of its log line (or None).
        self._queue: deque[tuple[Event, tuple[Any, ...] | None]] = deque()
        # Subscribers by event type: a tuple each, empty when none, so that an
        # event type nobody asked for costs one truth test where it happens.
        self._subscriptions: list[Subscription] = []
        self._on_change: tuple[Subscription, ...] = ()
        self._on_recorded: tuple[Subscription, ...] = ()
        self._on_rejected: tuple[Subscription, ...] = ()
        #: Whether the breaker short-circuits; ``False`` is shadow mode (read-only).
        self.enforce = config.enforce
        # Short-circuited calls, counted without the lock (an int add under
        # the GIL; read by snapshot()).
        self._rejected = 0
        self._shadow_rejected = 0
        self._debug_after = _NINF
        # Outcomes settled where the lock must not be waited for (finalisers):
        # (permit, clock reading when settled or None, failed, slow).
        self._deferred: deque[tuple[int, float | None, bool, bool]] = deque()
        #: Deferred outcomes dropped because the queue was full (read-only).
        self.deferred_dropped = 0
        self._dispatching = False
        # Re-entrancy (see the module docstring): what runs in the current
        # context, a _Mark, _CALL or a _Block.
        self._running: ContextVar[object] = ContextVar(
            f"circuitbreaker_http.running:{name}", default=None
        )
        # Only the identity of each thread's own __dict__ of it is used: the
        # owner token of _Marks. Looked up now, so that gevent's local is used
        # once it is patched in.
        self._local = threading.local()
        #: The configured ``classify`` hook, or ``None`` (read-only).
        self.classifier = config.classify
        self._slow_after = config.slow_call_duration
        self._timed = self._slow_after is not None or self.classifier is not None
        #: Whether outcomes need a duration (a slow-call rule, ``classify`` or a
        #: ``CallRecorded`` subscriber); when ``False`` the integrations read no
        #: clock at all (read-only).
        self.timed = self._timed
        if on_state_change is not None:
            self.attach(Subscription(on_state_change, (StateChange,)))

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} {self._core.state.value}>"

    # -- views ---------------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        """The current state (an open breaker whose period has ended turns half-open here)."""
        core = self._core
        with self._lock:
            now = self._now()
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
        return self._view(BreakerCore.snapshot)

    def metrics(self) -> MetricsRow:
        """The numbers metrics read, as one plain tuple (for collectors scraping many breakers).

        ``(state, total_calls, total_failures, total_ignored, total_slow_calls,
        total_rejected, total_shadow_rejected, total_transitions, open_seconds,
        calls, failures, slow_calls, retry_after)``: the fields of
        :meth:`snapshot` of the same names, without building a snapshot.
        """
        return self._view(BreakerCore.metrics)

    def _view(self, read: Callable[[BreakerCore, float, int, int], V]) -> V:
        """``read(core, now, rejected, shadow_rejected)`` under the lock, as a look.

        Queued deferred outcomes are filed first, and the transitions the look
        causes (open to half-open) are delivered after the lock is released.
        """
        core = self._core
        with self._lock:
            now = self._now()
            if self._deferred:
                self._apply_deferred(now)
            value = read(core, now, self._rejected, self._shadow_rejected)
            drain = self._enqueue() if core.changes else False
        if drain:
            self._drain()
        return value

    def export_state(self) -> CoreState:
        """Return the breaker's state as a plain value (window buckets, state, open-until)."""
        with self._lock:
            now = self._now()
            if self._deferred:
                self._apply_deferred(now)
            return self._core.export(now)

    def next_transition_at(self) -> float | None:
        """The clock reading at which time alone would change the state, if any."""
        with self._lock:
            return self._core.next_transition_at()

    # -- fleets: the seam a storage's syncer uses (off the request path) -------

    def sync_view(self) -> SyncView:
        """Return what a fleet syncer sends for this breaker (see :class:`SyncView`).

        Hands over the trial leases given back since the last view: a syncer
        that cannot send them keeps them itself.

        Raises:
            ValueError: the clock gave a reading that is not finite.
        """
        core = self._core
        with self._lock:
            now = self._now()
            if self._deferred:
                self._apply_deferred(now)
            core.poll(now)
            view = core.sync_view(now)
            drain = self._enqueue() if core.changes else False
        if drain:
            self._drain()
        return view

    def adopt(self, fleet: FleetState) -> None:
        """Move to the fleet's state, as read from a shared storage.

        A change of state is delivered as a :class:`StateChange` whose reason
        starts with ``"fleet:"``. An open fleet also sets when the open period
        ends (``fleet.open_remaining`` from now) and the backoff count, and
        makes half-open trials wait for leases the fleet grants.

        Raises:
            ValueError: the clock gave a reading that is not finite.
        """
        core = self._core
        with self._lock:
            now = self._now()
            if self._deferred:
                self._apply_deferred(now)
            core.adopt(fleet, now)
            drain = self._enqueue() if core.changes else False
        if drain:
            self._drain()

    def grant_leases(self, leases: tuple[str, ...]) -> None:
        """Add half-open trial leases granted by the fleet (ignored unless half-open under it)."""
        with self._lock:
            self._core.grant_leases(leases)

    def leave_fleet(self) -> None:
        """Let half-open trials follow local rules again (the fleet's storage is unreachable)."""
        with self._lock:
            self._core.leave_fleet()

    # -- events --------------------------------------------------------------

    def subscribe(self, listener: Listener, *event_types: type[Any]) -> Callable[[], None]:
        """Deliver this breaker's events of ``event_types`` (all when none) to ``listener``.

        The types are :class:`StateChange`, :class:`CallRecorded` and
        :class:`CallRejected`. Listeners run outside every lock, one event at a
        time and in order for this breaker; an exception from one is logged
        (once a minute per listener at most) and never reaches a caller. An
        event type nobody subscribed to is never built.

        Returns:
            A callable that unsubscribes (calling it again does nothing).

        Raises:
            TypeError: ``listener`` is not callable, or a type is not an event type.
        """
        subscription = Subscription(listener, event_types)
        self.attach(subscription)
        return functools.partial(self.detach, subscription)

    def attach(self, subscription: Subscription) -> None:
        """Start delivering events to ``subscription`` (see :meth:`subscribe`)."""
        with self._lock:
            if subscription not in self._subscriptions:
                self._subscriptions.append(subscription)
                self._resubscribe()

    def detach(self, subscription: Subscription) -> None:
        """Stop delivering events to ``subscription``; nothing happens if it is not attached."""
        with self._lock:
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)
                self._resubscribe()

    def _resubscribe(self) -> None:
        """Rebuild the per-type tuples. Call with the lock held."""
        subs = self._subscriptions
        self._on_change = tuple(sub for sub in subs if StateChange in sub.types)
        self._on_recorded = tuple(sub for sub in subs if CallRecorded in sub.types)
        self._on_rejected = tuple(sub for sub in subs if CallRejected in sub.types)
        recorded = bool(self._on_recorded)
        # Every outcome must reach the code that builds the event: the core's
        # success fast path stays closed, and calls take the timed path.
        core = self._core
        core.hold_slow_path = recorded
        core.close_fast_path()
        self.timed = self._timed or recorded

    def _rejection_seen(
        self, state: CircuitState, retry_after: float | None, now: float | None, enforced: bool
    ) -> None:
        """The rare part of a rejection: its event and its rate-limited DEBUG line."""
        if now is None:
            try:
                now = self.clock()
            except Exception:
                return
            if not _finite(now):
                return
        if self._on_rejected:
            event = CallRejected(self.name, state, retry_after, enforced, now)
            with self._lock:
                self._queue.append((event, None))
                drain = self._claim_dispatch()
            if drain:
                self._drain()
        if now >= self._debug_after:
            self._debug_after = now + _REJECTION_LOG_EVERY
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "circuit breaker %r: %s call (%s; %d so far; at most one line a second)",
                    self.name,
                    "short-circuited a" if enforced else "shadow mode let through a",
                    state.value,
                    self._rejected if enforced else self._shadow_rejected,
                )

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
            action(core, self._now())
            drain = self._enqueue() if core.changes else False
        if drain:
            self._drain()

    # -- the low-level protocol used by the HTTP integrations ------------------

    def acquire(self, error: type[CircuitOpenError] = CircuitOpenError) -> int:
        """Ask to let one call through and return its permit.

        This is the low-level protocol the HTTP integrations use; most code
        wants :meth:`call`. Every permit must be settled exactly once with
        :meth:`record`, :meth:`record_later` or :meth:`release`. It does not
        take part in re-entrancy: every permit is a call of its own.

        A permit is an ``int`` whose sign says the state its call was let
        through in: positive closed, negative a half-open trial, ``0``
        disabled (see :meth:`permit_state`).

        Args:
            error: The :class:`CircuitOpenError` subclass to raise on a short
                circuit (the integrations raise their client-flavoured one).

        Raises:
            CircuitOpenError: the call may not pass (an instance of ``error``).
            ValueError: the breaker is not closed and its clock gave a reading
                that is not a finite number (whatever the clock raises
                propagates too).
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
        status: int | None = None,
        error: BaseException | None = None,
    ) -> None:
        """Settle ``permit`` with an outcome.

        Never raises because of the clock: when it fails, the outcome is not
        recorded (a trial gives its slot back) and a WARNING is logged once.

        Args:
            permit: What :meth:`acquire` returned.
            failed: Whether the call failed.
            duration: Seconds spent waiting on the upstream, to judge slowness.
            retry_after: For a failure, seconds the upstream asked to wait.
            status: The HTTP status, if a response arrived (for
                ``last_failure`` and :class:`CallRecorded`).
            error: The exception, if the call raised (the same).
        """
        if not permit:
            return
        slow_after = self._slow_after
        lock = self._lock
        # Tested without naming ``slow``: the plain success goes on at once.
        if failed or (slow_after is not None and duration is not None and duration > slow_after):
            slow = slow_after is not None and duration is not None and duration > slow_after
            lock.acquire()
            try:
                drain = self._record_locked(
                    permit, failed, slow, retry_after, None, status, error, duration
                )
            finally:
                lock.release()
        else:
            # The plain success of the integrations, as in call(): one lock
            # round trip, one clock read, and the core's fast path without a
            # call. (Outcomes queued by finalisers close that path: see _defer.)
            core = self._core
            clock = self.clock  # ``self.clock()`` would cost a method lookup
            lock.acquire()  # cheaper than ``with`` on the hot path
            try:
                try:
                    now = clock()
                    if now < core.success_fast_until and permit == core.cycle:  # see call()
                        core.pending_successes += 1
                        return
                except Exception:
                    # _record_locked reads it again and reports the failure.
                    drain = self._record_locked(permit, False, False, retry_after)
                else:
                    drain = self._record_locked(
                        permit, False, False, retry_after, now, status, error, duration
                    )
            finally:
                lock.release()
        if drain is True:
            self._drain()
        elif drain is not False:
            self._guard.failed(drain)

    def _record_locked(
        self,
        permit: int,
        failed: bool,
        slow: bool,
        retry_after: float | None,
        now: float | None = None,
        status: int | None = None,
        error: BaseException | None = None,
        duration: float | None = None,
    ) -> bool | Exception:
        """Record with the lock held: whether to deliver events, or why the clock failed.

        ``now`` is a clock reading the caller already took under the lock.
        """
        core = self._core
        try:
            if now is None:
                now = self.clock()
            if self._deferred:
                self._apply_deferred(now)
            if failed or slow:
                retry_at = None if retry_after is None else now + retry_after
                cause = None
                if failed:
                    if status is not None:
                        cause = str(status)
                    elif error is not None:
                        cause = type(error).__name__
                core.record(permit, now, failed, slow, retry_at, cause)
            else:
                core.success(permit, now)
        except Exception as exc:
            # The clock raised, or its reading is one the core refuses (it
            # changes nothing then): no outcome, but the permit is settled.
            core.release(permit)
            return exc
        if self._on_recorded:
            # Before the transitions it caused, so listeners see cause, then effect.
            outcome = Verdict.FAILURE if failed else Verdict.SUCCESS
            name = None if error is None else type(error).__name__
            if duration != duration:  # NaN: timed with a clock that failed (see timer)
                duration = None
            event = CallRecorded(self.name, outcome, slow, duration, status, name, now)
            self._queue.append((event, None))
            if not core.changes:
                return self._claim_dispatch()
        return self._enqueue() if core.changes else False

    def _record_soft(
        self, permit: int, failed: bool, duration: float | None, error: BaseException | None = None
    ) -> None:
        """:meth:`record`, but never waiting for the lock.

        For outcomes that may be settled by the garbage collector (a generator
        closed when it is collected), which may have interrupted this very
        thread while it held the lock: when the lock is taken the outcome is
        deferred, as :meth:`record_later` does.
        """
        if not permit:
            return
        slow_after = self._slow_after
        slow = slow_after is not None and duration is not None and duration > slow_after
        lock = self._lock
        if not lock.acquire(blocking=False):
            self._defer(permit, failed, slow)
            return
        try:
            drain = self._record_locked(permit, failed, slow, None, None, None, error, duration)
        finally:
            lock.release()
        if drain is True:
            self._drain()
        elif drain is not False:
            self._guard.failed(drain)

    def record_later(self, permit: int, duration: float | None = None) -> None:
        """Settle ``permit`` as a success without waiting for the lock (safe in ``__del__``).

        The HTTP integrations use it for a response that is garbage-collected
        before it was closed. The clock is read now, so the outcome is filed
        in the window at the time it settled when it is applied: at the
        breaker's next recorded outcome or look, or right here once enough
        are queued and the lock is free. Events it causes are delivered by the
        next call that takes the lock. Nothing escapes from it, not even an
        error of the clock.
        """
        if not permit:
            return
        slow_after = self._slow_after
        slow = slow_after is not None and duration is not None and duration > slow_after
        self._defer(permit, False, slow)

    def _defer(self, permit: int, failed: bool, slow: bool) -> None:
        """Queue an outcome with the time it settled, never waiting for the lock."""
        try:
            at: float | None = self.clock()
        except Exception:  # a finaliser must not raise: file it when learnt
            at = None
        if not _finite(at):
            at = None
        entry = (permit, at, failed, slow)
        deferred = self._deferred
        queued = len(deferred) < _DEFERRED_CAP
        lock = self._lock
        if queued:
            deferred.append(entry)
            if len(deferred) <= _DEFERRED_DRAIN_AT:
                # The hot paths do not look at the queue: close the core's
                # success fast path, so that the next outcome takes the slow
                # path, which files the queue first. With the lock taken, the
                # end of the window's current bucket closes it soon enough.
                if lock.acquire(blocking=False):
                    try:
                        self._core.close_fast_path()
                    finally:
                        lock.release()
                return
        if at is None or not lock.acquire(blocking=False):
            # No reading to drain with, or the lock is taken (maybe by this
            # very thread, interrupted by the collector): the next drain will
            # do, and past the cap the outcome is lost, counted.
            if not queued:
                self.deferred_dropped += 1
            return
        try:
            if not queued:
                deferred.append(entry)
            # Events stay in core.changes for the next lock holder to deliver:
            # listeners must not run inside a finaliser.
            self._apply_deferred(at)
        finally:
            lock.release()

    def _apply_deferred(self, now: float) -> None:
        """File the queued deferred outcomes. Call with the lock held."""
        if not _finite(now):
            return  # keep them for a reading the core accepts
        late = self._core.record_late
        deferred = self._deferred
        while deferred:
            permit, at, failed, slow = deferred.popleft()
            late(permit, at, now, failed, slow)

    def is_trial(self, permit: int) -> bool:
        """Whether ``permit`` is a half-open trial's that has not settled yet."""
        core = self._core
        return permit != core.fast_permit and permit in core.trials

    def permit_state(self, permit: int) -> CircuitState:
        """The state ``permit`` was let through in: closed, half-open (a trial) or disabled.

        Permits carry it in their sign, so the answer holds however the
        breaker moved since: positive for a closed-state call, negative for a
        half-open trial, ``0`` while disabled. Integrations on a hot path may
        read the sign themselves.
        """
        if permit > 0:
            return _CLOSED
        return _HALF_OPEN if permit else _DISABLED

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

    def release(self, permit: int, ignored: bool = False) -> None:
        """Settle ``permit`` with no outcome (cancelled, or nothing to say about the upstream).

        ``ignored=True`` says the outcome was judged and ignored (a ``classify``
        verdict of ``IGNORE``, an error that says nothing about the upstream):
        it counts in ``total_ignored`` and makes a :class:`CallRecorded` with
        outcome ``IGNORE``. A cancellation is not ignored: it counts nowhere.
        """
        if not permit:
            return
        core = self._core
        drain = False
        with self._lock:
            core.release(permit, ignored)
            if ignored and self._on_recorded:
                try:
                    now = self._now()
                except Exception:
                    pass
                else:
                    event = CallRecorded(self.name, Verdict.IGNORE, False, None, None, None, now)
                    self._queue.append((event, None))
                    drain = self._claim_dispatch()
        if drain:
            self._drain()

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
        if info.duration != info.duration:  # NaN: timed with a clock that failed (see timer)
            info = dataclasses.replace(info, duration=0.0)
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

        Made while a call through this breaker already runs in the same thread
        or task, it is part of that call: ``fn`` just runs.

        Raises:
            CircuitOpenError: the breaker does not let the call through.
            Exception: whatever ``fn`` raises (recorded as a failure unless it
                is a ``CircuitOpenError`` of another breaker or ``classify`` says so).
        """
        # The hot paths, written for the interpreter: locals over attributes,
        # few helper calls, every rare case off them in _call_other. ``try``
        # costs nothing until something raises.
        # A _Mark, _CALL, a _Block or None: told apart by ``on`` and ``owner``,
        # which they all have but None (typed Any: cast() would be a call).
        mark: Any = self._running.get()
        core = self._core
        permit = core.fast_permit
        if not permit:  # not closed (None), or disabled (0)
            if permit is None and (mark is None or not mark.on):
                # Certainly not inside a call through this breaker here: the
                # rejections, inlined (one frame less for them to unwind).
                state = core.state
                if state is _OPEN:
                    clock = self.clock  # ``self.clock()`` would cost a method lookup
                    now = clock()
                    # Unguarded, as any guard here costs every rejection: a
                    # reading that is no number raises TypeError before ``fn``
                    # runs (acquire() says ValueError).
                    if now < core.open_until and self.enforce:
                        self._rejected += 1
                        if self._on_rejected or now >= self._debug_after:
                            self._rejection_seen(_OPEN, core.open_until - now, now, True)
                        raise _new_error(
                            CircuitOpenError,
                            self.name,
                            _OPEN,
                            core.open_until - now,
                            None,
                            core.last_failure,
                        )
                elif state is _FORCED_OPEN and self.enforce:
                    self._rejected += 1
                    if self._on_rejected or logger.isEnabledFor(logging.DEBUG):
                        self._rejection_seen(_FORCED_OPEN, None, None, True)
                    raise _new_error(
                        CircuitOpenError, self.name, _FORCED_OPEN, None, None, core.last_failure
                    )
            return self._call_other(permit, fn, args, kwargs)
        me = self._local.__dict__  # this thread's token
        if mark is None:
            mark = self._claim(me)  # the first synchronous call in this context
        elif mark.owner is not me:
            # A mark of another thread (this context was copied), or an async
            # call or block through this breaker runs here (owned by none).
            if mark.on:  # _call_other tells them apart
                return self._call_other(permit, fn, args, kwargs)
            mark = self._claim(me)
        elif mark.on:
            return fn(*args, **kwargs)  # part of the call already running
        if self.timed:
            return self._call_timed(permit, mark, fn, args, kwargs)
        mark.on = True
        try:
            # Calling ``fn()`` itself when there is nothing to pass is cheaper
            # than unpacking an empty tuple and dict.
            result = fn(*args, **kwargs) if args or kwargs else fn()  # type: ignore[call-arg]
        except Exception as exc:
            mark.on = False
            self._raised(permit, None, exc, fn)
            raise
        except BaseException:
            mark.on = False
            self.release(permit)
            raise
        mark.on = False
        # The plain success, inlined: one lock round trip, one clock read, no
        # event, and the core's own fast path (see BreakerCore) without a call.
        clock = self.clock
        lock = self._lock
        lock.acquire()  # cheaper than ``with`` on the hot path
        try:
            try:
                now = clock()
                # (Outcomes queued by finalisers close this path: see _defer.)
                # Compared inside the ``try``: a reading that is no number
                # raises here, and must not cost the caller the result.
                if now < core.success_fast_until and permit == core.cycle:
                    core.pending_successes += 1
                    return result
            except Exception:
                # _record_locked reads it again and reports the failure.
                drain = self._record_locked(permit, False, False, None)
            else:
                drain = self._record_locked(permit, False, False, None, now)
        finally:
            lock.release()
        if drain is True:
            self._drain()
        elif drain is not False:
            # A clock that raised or gave a reading the core refuses must not
            # cost the caller fn's result.
            self._guard.failed(drain)
        return result

    def _claim(self, me: object) -> _Mark:
        """Put a :class:`_Mark` of this thread (token ``me``) in the current context."""
        mark = _Mark(me)
        self._running.set(mark)  # for good: later calls here only flip it
        return mark

    def _claimed(self) -> tuple[_Mark | None, Token[object] | None]:
        """This thread's :class:`_Mark` in the current context, put there if need be.

        The mark is ``None`` while an async call, a ``with`` block or an async
        generator step through this breaker runs here: a call is part of it
        anyway. The token is not ``None`` when the mark was set for this call
        only, and must be reset after it: over a mark of another thread whose
        call runs (this context was copied from that call's; it stays part of
        that call in that thread).
        """
        running = self._running
        mark = running.get()
        if type(mark) is _Mark:
            me = self._local.__dict__
            if mark.owner is me:
                return mark, None
            if mark.on:
                own = _Mark(me)
                return own, running.set(own)
            return self._claim(me), None
        return (self._claim(self._local.__dict__) if mark is None else None), None

    def _inside(self) -> bool:
        """Whether a call through this breaker already runs in this context and thread."""
        mark: Any = self._running.get()
        # _CALL and _Blocks run and are owned by no thread; a _Mark runs when
        # it is on, and only for the thread that owns it.
        if mark is None or not mark.on:
            return False
        owner = mark.owner  # compared by identity: tokens are dicts
        return owner is None or owner is self._local.__dict__

    @staticmethod
    def _flip(mark: _Mark | None) -> bool:
        """Set ``mark`` running (unless it is ``None``) and return whether it was."""
        if mark is None:
            return True
        was = mark.on
        mark.on = True
        return was

    def _unflip(self, mark: _Mark | None, was: bool, token: Token[object] | None) -> None:
        """Undo :meth:`_flip` and the set of :meth:`_claimed` for one step."""
        if mark is not None:
            mark.on = was
        if token is not None:
            self._running.reset(token)

    def _call_timed(
        self,
        permit: int,
        mark: _Mark,
        fn: Callable[..., R],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> R:
        """The rest of :meth:`call` in the closed state when outcomes need a duration.

        ``mark`` is this thread's mark in the current context, not running yet.
        A duration is NaN when the clock failed (see :attr:`timer`), which
        :meth:`record` and :meth:`classify` take as unknown.
        """
        timer = self.timer
        mark.on = True
        start = timer()
        try:
            result = fn(*args, **kwargs) if args or kwargs else fn()  # as in call()
        except Exception as exc:
            mark.on = False
            self._raised(permit, timer() - start, exc, fn)
            raise
        except BaseException:
            mark.on = False
            self.release(permit)
            raise
        mark.on = False
        if self.classifier is None:
            self.record(permit, False, timer() - start)
        else:
            self._succeeded(permit, timer() - start)
        return result

    def _call_other(
        self,
        permit: int | None,
        fn: Callable[..., R],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> R:
        """The rest of :meth:`call`, off its hot path.

        That is: while not closed (``permit`` is ``None``: a half-open trial,
        an open period that has just ended, a call inside a call already
        running, a rejection), while disabled (``permit`` 0: nothing to
        record), or when the context holds the running mark of an async call
        or of another thread.
        """
        mark, token = self._claimed()
        try:
            if mark is None or mark.on:
                return fn(*args, **kwargs)  # part of the call already running
            if permit is None:
                permit = self._admit()
            timed = self.timed and permit != 0
            mark.on = True
            start = self._reading() if timed else None
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                mark.on = False
                self._raised(permit, self._since(start) if timed else None, exc, fn)
                raise
            except BaseException:
                mark.on = False
                self.release(permit)
                raise
            mark.on = False
        finally:
            if token is not None:
                self._running.reset(token)
        if permit:
            self._succeeded(permit, self._since(start) if timed else None)
        return result

    async def call_async(
        self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """Await ``fn(*args, **kwargs)`` through the breaker and return its result.

        Works under asyncio and trio alike. Cancelling the task records nothing.
        Made while a call through this breaker already runs in the same task,
        it is part of that call.

        Raises:
            CircuitOpenError: the breaker does not let the call through.
            TypeError: ``fn`` is not callable or did not return an awaitable
                (nothing is recorded).
            Exception: whatever ``fn`` raises.
        """
        running = self._running
        mark: Any = running.get()
        if (
            mark is not None
            and mark.on
            and (mark.owner is None or mark.owner is self._local.__dict__)
        ):
            return await fn(*args, **kwargs)  # _inside(), inlined: part of the call running
        if not callable(fn):
            raise TypeError(f"call_async needs a callable returning an awaitable, got {fn!r}")
        core = self._core
        permit = core.fast_permit
        if permit is None:
            permit = self._admit()
        timed = self.timed
        token = running.set(_CALL)
        start = self._reading() if timed else None
        try:
            awaitable: object = fn(*args, **kwargs)
            if not inspect.isawaitable(awaitable):
                # Checked before anything is recorded: a bug of the caller's,
                # not an outcome of the upstream's.
                raise _NotAwaitable(
                    f"call_async needs a callable returning an awaitable; {fn!r} "
                    f"returned {type(awaitable).__name__}"
                )
            result = cast(R, await awaitable)
        except _NotAwaitable as exc:
            running.reset(token)
            self.release(permit)
            raise TypeError(str(exc)) from None
        except Exception as exc:
            running.reset(token)
            self._raised(permit, self._since(start) if timed else None, exc, fn)
            raise
        except BaseException:
            running.reset(token)
            self.release(permit)
            raise
        running.reset(token)
        if permit:
            # An await costs far more than a method call: no inlining here.
            if timed:
                self._succeeded(permit, self._since(start))
            else:
                self.record(permit, False)
        return result

    def __call__(self, fn: F) -> F:
        """Decorate a function so every call of it goes through the breaker.

        A plain function, an ``async def`` function, a generator function and
        an async generator function each stay what they are. For a generator
        the call is the iteration: it is admitted when the iteration starts (at
        the first ``next()``/``send()``/``asend()``, which raises
        :class:`CircuitOpenError` when it may not), an exception raised while
        it is iterated is a failure, exhaustion or ``close()`` a success, a
        cancellation records nothing. Its duration is the time spent inside
        the generator, not the consumer's time between items; it counts as
        running through the breaker only while one of its steps runs. Values
        and exceptions sent in with ``send()``/``throw()`` (``asend()``/
        ``athrow()``) pass through to it.

        Raises:
            TypeError: ``fn`` is not callable.
        """
        if not callable(fn):
            raise TypeError(f"a circuit breaker decorates a callable, got {fn!r}")
        breaker = self
        wrapped: Callable[..., Any]
        if inspect.isasyncgenfunction(fn):
            wrapped = self._wrap_async_generator(fn)
        elif inspect.isgeneratorfunction(fn):

            @functools.wraps(fn)
            def generator_wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
                return (yield from breaker._iterate(fn(*args, **kwargs)))

            wrapped = generator_wrapper
        elif inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                return await breaker.call_async(fn, *args, **kwargs)

            wrapped = async_wrapper
        else:
            call = self.call  # bound once: the wrapper is a hot path too

            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                if args or kwargs:
                    return call(fn, *args, **kwargs)
                return call(fn)  # cheaper than forwarding an empty tuple and dict

            wrapped = wrapper
        return cast(F, wrapped)

    # -- generators ------------------------------------------------------------

    def _iterate(self, gen: Generator[Y, S, R]) -> Generator[Y, S, R]:
        """Drive ``gen`` as one call through the breaker, passing sends and throws on.

        Each step is synchronous, so it is marked as a synchronous call is, with
        the :class:`_Mark` of the context it runs in (looked up anew for each
        step: a generator may be resumed elsewhere), put back as it was after
        it (a step may be driven from inside another call through the breaker).
        """
        if self._inside():
            # Iterated inside a call through this breaker: part of that call.
            return (yield from gen)
        permit = self.acquire()
        running = self._running
        local = self._local
        timed = self.timed
        spent: float | None = 0.0 if timed else None
        closing = False
        sent: Any = None
        thrown: BaseException | None = None
        try:
            while True:
                mark: Any = running.get()
                token = None
                if mark is None or mark.owner is not local.__dict__:
                    mark, token = self._claimed()  # mark None: an async call or block runs here
                was = self._flip(mark)
                began = self._reading() if timed else None
                try:
                    if thrown is None:
                        value = gen.send(sent)
                    else:
                        exc, thrown = thrown, None
                        value = gen.throw(exc)
                finally:
                    if mark is not None:
                        mark.on = was
                    if token is not None:
                        running.reset(token)
                    if timed:
                        spent = self._add_since(spent, began)
                try:
                    sent = yield value
                except GeneratorExit:
                    # close(), maybe by the garbage collector: settle without
                    # waiting for the lock from here on.
                    closing = True
                    mark, token = self._claimed()
                    was = self._flip(mark)
                    try:
                        gen.close()
                    finally:
                        self._unflip(mark, was, token)
                    raise
                except BaseException as exc:  # thrown in: the generator decides
                    thrown = exc
        except StopIteration as stop:
            self._settle_success(permit, spent, soft=False)
            return cast(R, stop.value)
        except GeneratorExit:
            self._settle_success(permit, spent, soft=True)
            raise
        except Exception as exc:
            self._raised(permit, spent, exc, None, soft=closing)
            raise
        except BaseException:
            self.release(permit)
            raise

    def _wrap_async_generator(
        self, fn: Callable[..., AsyncGenerator[Any, Any]]
    ) -> Callable[..., AsyncGenerator[Any, Any]]:
        breaker = self
        running = self._running

        @functools.wraps(fn)
        async def async_generator_wrapper(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
            agen = fn(*args, **kwargs)
            # Iterated inside a call through this breaker: part of that call.
            own = not breaker._inside()
            permit = breaker.acquire() if own else 0
            timed = own and breaker.timed
            spent: float | None = 0.0 if timed else None
            sent: Any = None
            thrown: BaseException | None = None
            try:
                while True:
                    token = running.set(_CALL) if own else None
                    began = breaker._reading() if timed else None
                    try:
                        if thrown is None:
                            value = await agen.asend(sent)
                        else:
                            exc, thrown = thrown, None
                            value = await agen.athrow(exc)
                    finally:
                        if token is not None:
                            running.reset(token)
                        if timed:
                            spent = breaker._add_since(spent, began)
                    try:
                        sent = yield value
                    except GeneratorExit:
                        token = running.set(_CALL) if own else None
                        try:
                            await agen.aclose()
                        finally:
                            if token is not None:
                                running.reset(token)
                        raise
                    except BaseException as exc:  # thrown in: the generator decides
                        thrown = exc
            except StopAsyncIteration:
                if own:
                    breaker._settle_success(permit, spent, soft=False)
                return
            except GeneratorExit:
                if own:
                    breaker._settle_success(permit, spent, soft=True)
                raise
            except Exception as exc:
                if own:
                    breaker._raised(permit, spent, exc, None)
                raise
            except BaseException:
                if own:
                    breaker.release(permit)
                raise

        return async_generator_wrapper

    # -- with breaker: ---------------------------------------------------------

    def __enter__(self) -> CircuitBreaker:
        """Run the block through the breaker.

        Raises:
            CircuitOpenError: the block may not run.
        """
        self._enter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Settle the block: an ``Exception`` is a failure, a cancellation nothing."""
        self._exit(exc)

    async def __aenter__(self) -> CircuitBreaker:
        """Run the ``async with`` block through the breaker.

        Raises:
            CircuitOpenError: the block may not run.
        """
        self._enter()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Settle the block: an ``Exception`` is a failure, a cancellation nothing."""
        self._exit(exc)

    def _enter(self) -> None:
        running = self._running
        outer: Any = running.get()
        if (
            outer is not None
            and outer.on
            and (outer.owner is None or outer.owner is self._local.__dict__)
        ):  # _inside(), inlined
            block = _Block(outer, None, None)  # part of the call already running
        else:
            # ``outer`` may be a _Mark that is not running: put back on exit.
            permit = self.acquire()
            block = _Block(outer, permit, self._reading() if self.timed else None)
        block.token = running.set(block)

    def _exit(self, exc: BaseException | None) -> None:
        running = self._running
        block = running.get()
        if not isinstance(block, _Block):
            raise RuntimeError(
                f"circuit breaker {self.name!r}: a with block exited that was not "
                "entered in this thread or task"
            )
        try:
            running.reset(cast("Token[object]", block.token))
        except (ValueError, RuntimeError):
            # Entered in another context (a generator resumed elsewhere).
            running.set(block.outer)
        permit = block.permit
        if permit is None:
            return
        duration = self._since(block.start) if self.timed else None
        if exc is None:
            self._settle_success(permit, duration, soft=False)
        elif isinstance(exc, GeneratorExit):
            # A generator closed around the block, maybe by the garbage
            # collector: nothing failed.
            self._settle_success(permit, duration, soft=True)
        elif isinstance(exc, Exception):
            self._raised(permit, duration, exc, None)
        else:
            self.release(permit)

    # -- internals -----------------------------------------------------------

    def _admit(self, error: type[CircuitOpenError] = CircuitOpenError) -> int:
        core = self._core
        # An open breaker rejects without the lock: a stale read only ever
        # rejects a call that was rejectable an instant ago.
        if core.state is _FORCED_OPEN and self.enforce:
            return self._refuse(error, _FORCED_OPEN, None, None)  # no reading needed
        now = self.clock()
        try:
            still_open = core.state is _OPEN and now < core.open_until
        except TypeError:  # a reading that is no number: refused just below
            still_open = False
        if still_open and self.enforce:
            return self._refuse(error, _OPEN, core.open_until - now, now)
        if not _finite(now):
            raise self._bad_reading(now)
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
            return self._refuse(error, state, retry_after, now)
        return permit

    def _refuse(
        self,
        error: type[CircuitOpenError],
        state: CircuitState,
        retry_after: float | None,
        now: float | None,
    ) -> int:
        """Short-circuit a call (raise ``error``), or in shadow mode let it through unrecorded.

        ``now`` is ``None`` when the clock gave no usable reading. Returns the
        permit of a shadow rejection: ``0``, which records nothing.
        """
        if self.enforce:
            self._rejected += 1
            if self._on_rejected or self._debug_due(now):
                self._rejection_seen(state, retry_after, now, True)
            # By position: every CircuitOpenError takes last_failure fifth.
            last_failure = self._core.last_failure
            if error is CircuitOpenError:
                raise _new_error(error, self.name, state, retry_after, None, last_failure)
            raise error(self.name, state, retry_after, None, last_failure)
        self._shadow_rejected += 1
        if self._on_rejected or self._debug_due(now):
            self._rejection_seen(state, retry_after, now, False)
        return 0

    def _debug_due(self, now: float | None) -> bool:
        """Whether a rejection at ``now`` (``None``: not read) may write its DEBUG line."""
        if now is None:
            return logger.isEnabledFor(logging.DEBUG)
        return now >= self._debug_after

    def _now(self) -> float:
        """A clock reading to decide with; one that is not finite raises ``ValueError``."""
        now = self.clock()
        if _finite(now):
            return now
        raise self._bad_reading(now)

    def _bad_reading(self, now: object) -> ValueError:
        return ValueError(f"circuit breaker {self.name!r}: {_clock.not_finite(now)}")

    def _reading(self) -> float | None:
        """A clock reading to measure with, or ``None`` (logged once) when the clock fails."""
        now = self.timer()
        return now if now == now else None  # NaN is the only reading unequal to itself

    def _since(self, start: float | None) -> float | None:
        """Seconds since ``start``, or ``None`` when either reading failed."""
        if start is None:
            return None
        end = self._reading()
        return None if end is None else end - start

    def _add_since(self, total: float | None, start: float | None) -> float | None:
        """``total`` plus the seconds since ``start`` (``None`` once a reading failed)."""
        if total is None or start is None:
            return None
        end = self._reading()
        return None if end is None else total + (end - start)

    def _raised(
        self,
        permit: int,
        duration: float | None,
        exc: Exception,
        fn: object,
        soft: bool = False,
    ) -> None:
        """Settle a call that raised ``exc``: a failure, unless it says nothing of the upstream."""
        if not permit or isinstance(exc, CircuitOpenError):
            self.release(permit, ignored=bool(permit))
            return
        if fn is not None and type(exc) is TypeError and not callable(fn):
            # ``fn`` could not even be called: a bug in the caller, not an outcome.
            self.release(permit)
            return
        failed = True
        if self.classifier is not None:
            info = CallInfo(self.name, "", "", None, None, exc, duration or 0.0)
            verdict = self.classify(info)
            if verdict is Verdict.IGNORE:
                self.release(permit, ignored=True)
                return
            failed = verdict is not Verdict.SUCCESS
        if soft:
            self._record_soft(permit, failed, duration, exc)
        else:
            self.record(permit, failed, duration, None, None, exc)

    def _succeeded(self, permit: int, duration: float | None) -> None:
        self._settle_success(permit, duration, soft=False)

    def _settle_success(self, permit: int, duration: float | None, *, soft: bool) -> None:
        if not permit:
            return
        failed = False
        if self.classifier is not None:
            info = CallInfo(self.name, "", "", None, None, None, duration or 0.0)
            verdict = self.classify(info)
            if verdict is Verdict.IGNORE:
                self.release(permit, ignored=True)
                return
            failed = verdict is Verdict.FAILURE
        if soft:
            self._record_soft(permit, failed, duration)
        else:
            self.record(permit, failed, duration)

    def _enqueue(self) -> bool:
        """Move the core's new transitions to the delivery queue. Call with the lock held.

        Returns whether the caller must deliver them (no one else is delivering).
        """
        core = self._core
        queue = self._queue
        for change in core.changes:
            note = None
            if change.new is _OPEN:
                # The window as it tripped (a trip keeps it), for the WARNING.
                snap = core.snapshot(change.at)
                note = (
                    snap.calls,
                    _percent(snap.failure_rate),
                    _percent(snap.slow_call_rate),
                    core.last_failure or "none",
                    core.open_until - change.at,
                )
            queue.append((change, note))
        core.changes.clear()
        return self._claim_dispatch()

    def _claim_dispatch(self) -> bool:
        """Whether the caller must deliver the queue (no one else is). Call with the lock held."""
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
                event, note = queue.popleft()
            try:
                self._deliver(event, note)
            except BaseException:
                # A KeyboardInterrupt inside a listener must not wedge delivery.
                with self._lock:
                    self._dispatching = False
                raise

    def _deliver(self, event: Event, note: tuple[Any, ...] | None) -> None:
        if type(event) is StateChange:
            subs = self._on_change
            if note is not None:
                logger.warning(
                    "circuit breaker %r opened: %s -> open (%s); window: %d calls, "
                    "%s failed, %s slow; last failure: %s; open for %.3gs",
                    event.name,
                    event.old.value,
                    event.reason,
                    *note,
                )
            else:
                logger.info(
                    "circuit breaker %r: %s -> %s (%s)",
                    event.name,
                    event.old.value,
                    event.new.value,
                    event.reason,
                )
        elif type(event) is CallRecorded:
            subs = self._on_recorded
        else:
            subs = self._on_rejected
        for sub in subs:
            try:
                sub.listener(event)
            except Exception:
                sub.raised(event.name, event.at)
