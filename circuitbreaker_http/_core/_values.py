"""Plain values shared by every layer: states, verdicts, configuration, events.

Nothing here reads a clock, takes a lock or does I/O; every value is immutable.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, overload

__all__ = [
    "DEFAULT_FAILURE_STATUSES",
    "BreakerConfig",
    "BreakerSnapshot",
    "CallInfo",
    "CallRecorded",
    "CallRejected",
    "CircuitState",
    "FleetState",
    "StateChange",
    "SyncView",
    "Verdict",
    "metrics_row",
]


class CircuitState(enum.Enum):
    """The state of one circuit breaker."""

    CLOSED = "closed"
    """Calls flow; outcomes are recorded."""
    OPEN = "open"
    """Calls are short-circuited until the open period ends."""
    HALF_OPEN = "half_open"
    """A limited number of trial calls may pass."""
    FORCED_OPEN = "forced_open"
    """Opened by hand with ``force_open()``; stays open until ``reset()``."""
    DISABLED = "disabled"
    """Disabled by hand with ``disable()``: every call passes, nothing is recorded."""


class Verdict(enum.Enum):
    """What a ``classify`` hook decides about one call."""

    SUCCESS = "success"
    FAILURE = "failure"
    IGNORE = "ignore"
    """Record nothing for this call (a half-open trial gives its slot back)."""


@dataclass(frozen=True, slots=True)
class CallInfo:
    """What a ``classify`` hook is told about one call.

    Attributes:
        key: The breaker's name (for HTTP, the key such as ``https://api.example.com``).
        method: The HTTP method, or ``""`` for ``CircuitBreaker.call``.
        url: The full URL, or ``""`` for ``CircuitBreaker.call``.
        status: The HTTP status code, or ``None`` when no response arrived.
        headers: The response headers (the client's own case-insensitive object), or ``None``.
        error: The exception raised, or ``None``.
        duration: Seconds spent waiting on the upstream so far.
    """

    key: str
    method: str
    url: str
    status: int | None
    headers: Mapping[str, str] | None
    error: BaseException | None
    duration: float


def _default_failure_statuses() -> frozenset[int]:
    # 501 Not Implemented and 505 HTTP Version Not Supported describe the request,
    # not the health of the upstream, so retrying them later changes nothing.
    return frozenset({408, 429} | (set(range(500, 600)) - {501, 505}))


DEFAULT_FAILURE_STATUSES: frozenset[int] = _default_failure_statuses()
"""408, 429 and 500–599 except 501 and 505."""

if TYPE_CHECKING:

    class _StatusesField:
        """How type checkers see ``BreakerConfig.failure_statuses``; never built.

        The field takes any iterable of ints and ``__post_init__`` stores it as a
        frozenset. A dataclass field has one declared type, which would be both
        the ``__init__`` parameter's and the attribute's; declared as a
        descriptor, a type checker takes the parameter's type from ``__set__``
        (``Iterable[int]``) and the attribute's from ``__get__``
        (``frozenset[int]``), as mypy and PEP 681 do for descriptor-typed
        dataclass fields. At run time the field is a plain ``frozenset[int]``.
        """

        @overload
        def __get__(self, instance: None, owner: type[object]) -> _StatusesField: ...
        @overload
        def __get__(self, instance: object, owner: type[object]) -> frozenset[int]: ...
        def __get__(
            self, instance: object, owner: type[object]
        ) -> _StatusesField | frozenset[int]: ...
        def __set__(self, instance: object, value: Iterable[int]) -> None: ...


Classifier = Callable[[CallInfo], "Verdict | None"]


def _check(ok: bool, name: str, requirement: str, value: object) -> None:
    if not ok:
        raise ValueError(f"BreakerConfig.{name} must be {requirement}, got {value!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    """Whether ``value`` is a finite int or float (never a bool, NaN or an infinity)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


MIN_WINDOW = 1e-6
"""The shortest ``window`` accepted, in seconds: its buckets (a tenth of it) stay
far from the floats whose quotients overflow, for any clock reading below 1e290."""
MAX_SECONDS = 1e9
"""The longest ``window``, ``open_duration`` and ``max_open_duration`` accepted
(about 31 years): an open period, jittered and added to any realistic clock
reading, stays a finite float."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerConfig:
    """How one circuit breaker decides to open and close. Immutable.

    Make variants with :meth:`replace` (or :func:`dataclasses.replace`). Every
    field is validated at construction; a bad value raises :class:`ValueError`
    naming the field. No float field accepts NaN or an infinity, and the
    durations the breaker does arithmetic with are bounded: ``window`` from
    1 µs to 1e9 s, ``open_duration`` and ``max_open_duration`` up to 1e9 s.

    Attributes:
        consecutive_failures: Trip after this many failures in a row (``None``: off).
        failure_rate: Trip when failed / recorded calls in the window reaches this
            (``None``: off).
        minimum_calls: No rate-based trip with fewer calls than this in the window.
        window: Seconds covered by the sliding window (1e-6 to 1e9). It is kept in buckets
            aligned to multiples of ``window / 10`` on the clock, so an outcome
            leaves it between ``window`` and ``1.1 × window`` after it was recorded.
        window_calls: When set, the rate rules see only the most recent
            ``window_calls`` outcomes of the time window (a count window bounded
            in time), so a burst of slow or failed calls is not diluted by a
            quiet healthy past; the snapshot's ``calls``, ``failures`` and
            rates are of that view too (``None``: the whole time window; at
            least ``minimum_calls``).
        slow_call_duration: A call longer than this many seconds is slow (``None``: off).
        slow_call_rate: Trip when slow / recorded calls in the window reaches this.
        open_duration: Seconds the breaker stays open the first time it trips.
        open_backoff: Each consecutive re-open multiplies the open period by this
            (the default, 1, keeps every open period ``open_duration`` long).
        max_open_duration: Cap on any open period before jitter; also how long a
            half-open trial may stay unsettled before it is judged.
        open_jitter: Each open period is stretched by a random fraction up to this.
        half_open_max_calls: Trial calls allowed in flight at once while half-open.
        success_threshold: Successful trials needed to close again.
        failure_statuses: HTTP statuses that count as failures: any iterable of ints,
            stored as a frozenset.
        respect_retry_after: Let a failure's ``Retry-After`` lengthen the open period.
        classify: ``classify(CallInfo) -> Verdict | None`` to decide outcomes yourself.
        enforce: ``False`` runs the breaker in shadow mode: states, events and
            metrics as usual, but a call it would have short-circuited passes
            (recording nothing) and is counted as a shadow rejection.
    """

    consecutive_failures: int | None = 5
    failure_rate: float | None = 0.5
    minimum_calls: int = 10
    window: float = 30.0
    window_calls: int | None = None
    slow_call_duration: float | None = None
    slow_call_rate: float = 1.0
    open_duration: float = 30.0
    open_backoff: float = 1.0
    max_open_duration: float = 300.0
    open_jitter: float = 0.0
    half_open_max_calls: int = 1
    success_threshold: int = 1
    if TYPE_CHECKING:  # accepts any iterable of ints, reads as a frozenset: see _StatusesField
        failure_statuses: _StatusesField = _StatusesField()
    else:
        failure_statuses: frozenset[int] = field(default_factory=_default_failure_statuses)
    respect_retry_after: bool = True
    classify: Classifier | None = None
    enforce: bool = True

    def __post_init__(self) -> None:
        cf = self.consecutive_failures
        _check(
            cf is None or (_is_int(cf) and cf >= 1),
            "consecutive_failures",
            "None or an int >= 1",
            cf,
        )
        fr = self.failure_rate
        _check(
            fr is None or (_is_number(fr) and 0 < fr <= 1), "failure_rate", "None or 0 < x <= 1", fr
        )
        mc = self.minimum_calls
        _check(_is_int(mc) and mc >= 1, "minimum_calls", "an int >= 1", mc)
        w = self.window
        _check(
            _is_number(w) and MIN_WINDOW <= w <= MAX_SECONDS,
            "window",
            f"a finite number of seconds from {MIN_WINDOW:g} to {MAX_SECONDS:g}",
            w,
        )
        wc = self.window_calls
        _check(
            wc is None or (_is_int(wc) and wc >= mc),
            "window_calls",
            f"None or an int >= minimum_calls ({mc!r})",
            wc,
        )
        scd = self.slow_call_duration
        _check(
            scd is None or (_is_number(scd) and scd > 0),
            "slow_call_duration",
            "None or a finite number > 0",
            scd,
        )
        scr = self.slow_call_rate
        _check(_is_number(scr) and 0 < scr <= 1, "slow_call_rate", "0 < x <= 1", scr)
        od = self.open_duration
        _check(
            _is_number(od) and 0 < od <= MAX_SECONDS,
            "open_duration",
            f"a finite number of seconds > 0 and <= {MAX_SECONDS:g}",
            od,
        )
        ob = self.open_backoff
        _check(_is_number(ob) and ob >= 1, "open_backoff", "a finite number >= 1", ob)
        mod = self.max_open_duration
        _check(
            _is_number(mod) and od <= mod <= MAX_SECONDS,
            "max_open_duration",
            f"a finite number >= open_duration ({od!r}) and <= {MAX_SECONDS:g}",
            mod,
        )
        oj = self.open_jitter
        _check(_is_number(oj) and 0 <= oj <= 1, "open_jitter", "0 <= x <= 1", oj)
        hm = self.half_open_max_calls
        _check(_is_int(hm) and hm >= 1, "half_open_max_calls", "an int >= 1", hm)
        st = self.success_threshold
        _check(_is_int(st) and st >= 1, "success_threshold", "an int >= 1", st)
        statuses: object = self.failure_statuses  # any iterable of ints is accepted
        if isinstance(statuses, (str, bytes)) or not isinstance(statuses, Iterable):
            raise ValueError(
                f"BreakerConfig.failure_statuses must be an iterable of ints, got {statuses!r}"
            )
        try:
            frozen = frozenset(statuses)
        except TypeError:  # an unhashable item: not an int either
            raise ValueError(
                f"BreakerConfig.failure_statuses must be an iterable of ints, got {statuses!r}"
            ) from None
        for status in frozen:
            _check(
                _is_int(status) and 100 <= status <= 999,
                "failure_statuses",
                "HTTP statuses (ints 100-999)",
                status,
            )
        object.__setattr__(self, "failure_statuses", frozen)
        rra = self.respect_retry_after
        _check(isinstance(rra, bool), "respect_retry_after", "a bool", rra)
        _check(
            self.classify is None or callable(self.classify),
            "classify",
            "None or a callable",
            self.classify,
        )
        _check(isinstance(self.enforce, bool), "enforce", "a bool", self.enforce)

    def replace(self, **changes: Any) -> BreakerConfig:
        """Return a validated copy with ``changes`` applied (fields by name).

        Raises:
            TypeError: a name is not a field.
            ValueError: a value is invalid (the message names the field).
        """
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, slots=True)
class StateChange:
    """One transition of one breaker, as handed to ``on_state_change``.

    Attributes:
        name: The breaker's name (its key in a registry).
        old: The state it left.
        new: The state it entered.
        reason: A short machine-readable cause, such as ``"failure_rate"``,
            ``"consecutive_failures"``, ``"slow_call_rate"``, ``"open_period_ended"``,
            ``"trial_failed"``, ``"trial_timed_out"``, ``"trials_succeeded"``,
            ``"force_open"``, ``"disable"`` or ``"reset"``.
        at: The clock reading at which it happened.
    """

    name: str
    old: CircuitState
    new: CircuitState
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """A consistent, immutable view of one breaker at one moment.

    Attributes:
        name: The breaker's name.
        state: Its state.
        calls: Outcomes recorded in the current window.
        failures: Failed outcomes in the current window.
        slow_calls: Slow outcomes in the current window.
        consecutive_failures: Failures in a row, as the consecutive rule counts them.
        failure_rate: ``failures / calls``, or ``None`` with no calls.
        slow_call_rate: ``slow_calls / calls``, or ``None`` with no calls.
        retry_after: Seconds until a trial may pass; ``None`` unless open.
        open_count: Which open period in a row this is (0 when not opened since it closed).
        trials_in_flight: Half-open trials holding a slot.
        at: The clock reading the snapshot was taken at.
        last_failure: The latest recorded failure as a short string (the status,
            such as ``"503"``, or the exception's type name, such as
            ``"ReadTimeout"``), or ``None``.
        total_calls: Outcomes recorded (successes and failures) since the
            breaker was created; ``total_calls - total_failures`` succeeded.
        total_failures: Failed outcomes since it was created.
        total_slow_calls: Slow outcomes since it was created.
        total_ignored: Calls let through whose outcome was ignored (``classify``
            said ``IGNORE``, or an error that says nothing about the upstream).
        total_rejected: Calls short-circuited.
        total_shadow_rejected: Calls let through in shadow mode
            (``enforce=False``) that an enforcing breaker would have short-circuited.
        total_transitions: State changes.
        open_seconds: Seconds spent open, half-open or forced open since it was created.
    """

    name: str
    state: CircuitState
    calls: int
    failures: int
    slow_calls: int
    consecutive_failures: int
    failure_rate: float | None
    slow_call_rate: float | None
    retry_after: float | None
    open_count: int = 0
    trials_in_flight: int = 0
    at: float = 0.0
    last_failure: str | None = None
    total_calls: int = 0
    total_failures: int = 0
    total_slow_calls: int = 0
    total_ignored: int = 0
    total_rejected: int = 0
    total_shadow_rejected: int = 0
    total_transitions: int = 0
    open_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """Return the snapshot as a JSON-friendly dict (the state as its string value)."""
        return {
            "name": self.name,
            "state": self.state.value,
            "calls": self.calls,
            "failures": self.failures,
            "slow_calls": self.slow_calls,
            "consecutive_failures": self.consecutive_failures,
            "failure_rate": self.failure_rate,
            "slow_call_rate": self.slow_call_rate,
            "retry_after": self.retry_after,
            "open_count": self.open_count,
            "trials_in_flight": self.trials_in_flight,
            "at": self.at,
            "last_failure": self.last_failure,
            "total_calls": self.total_calls,
            "total_failures": self.total_failures,
            "total_slow_calls": self.total_slow_calls,
            "total_ignored": self.total_ignored,
            "total_rejected": self.total_rejected,
            "total_shadow_rejected": self.total_shadow_rejected,
            "total_transitions": self.total_transitions,
            "open_seconds": self.open_seconds,
        }


@dataclass(frozen=True, slots=True)
class CallRecorded:
    """One call's outcome, delivered to subscribers of this type.

    Built only while someone subscribes to it, so it costs nothing otherwise.

    Attributes:
        name: The breaker's name (its key in a registry).
        outcome: ``Verdict.SUCCESS``, ``FAILURE`` or ``IGNORE``.
        slow: Whether the call was slow (a slow failure is both).
        duration: Seconds spent waiting on the upstream, or ``None`` when unknown.
        status: The HTTP status, or ``None`` (no response, or a plain call).
        error: The exception's type name, or ``None``.
        at: The clock reading when it was recorded.
    """

    name: str
    outcome: Verdict
    slow: bool
    duration: float | None
    status: int | None
    error: str | None
    at: float


@dataclass(frozen=True, slots=True)
class CallRejected:
    """A call the breaker short-circuited, or would have in shadow mode.

    Attributes:
        name: The breaker's name.
        state: The state that refused it (``OPEN``, ``HALF_OPEN`` with every
            trial slot taken, or ``FORCED_OPEN``).
        retry_after: Seconds until a trial may pass, or ``None``.
        enforced: ``False`` for a shadow rejection (``enforce=False``): the
            call was let through.
        at: The clock reading when it was refused.
    """

    name: str
    state: CircuitState
    retry_after: float | None
    enforced: bool
    at: float


@dataclass(frozen=True, slots=True)
class SyncView:
    """What a fleet syncer reads of one breaker in a round (see ``storage``).

    Attributes:
        state: The local state.
        window_cycle: The closed period the window counts below belong to.
        calls: Outcomes filed in the window since ``window_cycle`` began
            (a monotonic count: the syncer sends the difference from the
            last count it flushed).
        failures: Failed ones among them.
        slow_calls: Slow ones among them.
        not_before: Seconds until the latest Retry-After not-before time, or
            ``None`` when there is none ahead.
        lease_returns: Trial leases given back since the last view, each with
            the trial's verdict (``True`` success, ``False`` failure, ``None``
            no outcome).
        leases_wanted: Trial leases the breaker would use now (half-open
            under the fleet's trial budget, with free slots).
        fleet_trials: Whether half-open trials need a lease from the fleet.
    """

    state: CircuitState
    window_cycle: int
    calls: int
    failures: int
    slow_calls: int
    not_before: float | None
    lease_returns: tuple[tuple[str, bool | None], ...]
    leases_wanted: int
    fleet_trials: bool


@dataclass(frozen=True, slots=True)
class FleetState:
    """One breaker's state as the fleet's storage holds it, read back in a round.

    Attributes:
        key: The breaker's key.
        state: The fleet's state.
        fleet_cycle: The fleet's cycle: a serial that changes with every fleet-wide
            transition, compared (never ordered) to drop stale reports.
        open_remaining: Seconds left of the open period on the storage's
            clock (``0.0`` unless ``OPEN``).
        open_count: Open periods in a row (the backoff exponent).
        reason: Why the fleet last moved (``"failure_rate"``, ``"reset"``, ...).
        leases: Trial leases granted to this process in this round.
        calls: Calls in the fleet's window.
        failures: Failures in the fleet's window.
        slow_calls: Slow calls in the fleet's window.
        fresh: Whether the storage had no state for the key before this round
            (new, expired or wiped).
    """

    key: str
    state: CircuitState
    fleet_cycle: int
    open_remaining: float = 0.0
    open_count: int = 0
    reason: str = ""
    leases: tuple[str, ...] = ()
    calls: int = 0
    failures: int = 0
    slow_calls: int = 0
    fresh: bool = False


def metrics_row(snap: BreakerSnapshot) -> tuple[Any, ...]:
    """The tuple ``CircuitBreaker.metrics()`` gives, read from a snapshot.

    ``(state, total_calls, total_failures, total_ignored, total_slow_calls,
    total_rejected, total_shadow_rejected, total_transitions, open_seconds,
    calls, failures, slow_calls, retry_after)``.
    """
    return (
        snap.state,
        snap.total_calls,
        snap.total_failures,
        snap.total_ignored,
        snap.total_slow_calls,
        snap.total_rejected,
        snap.total_shadow_rejected,
        snap.total_transitions,
        snap.open_seconds,
        snap.calls,
        snap.failures,
        snap.slow_calls,
        snap.retry_after,
    )
