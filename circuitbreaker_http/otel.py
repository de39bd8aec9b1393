"""OpenTelemetry metrics and span events for a registry's breakers: ``instrument()``.

::

    from circuitbreaker_http.otel import instrument

    handle = instrument(transport.registry)   # the global MeterProvider
    ...
    handle.close()

registers observable instruments through ``opentelemetry-api``, read from the
breakers' snapshots when the SDK collects (nothing on the request path):

=================================  ===============  ==========================================
instrument                         kind             attributes (besides ``circuit_breaker.name``)
=================================  ===============  ==========================================
``circuit_breaker.state``          gauge            ``circuit_breaker.state``: 1 for the current
                                                    state, 0 for the other four
``circuit_breaker.calls``          counter          ``circuit_breaker.outcome``: ``success``,
                                                    ``failure``, ``ignored``
``circuit_breaker.rejections``     counter          short-circuited calls
``circuit_breaker.shadow_rejections``  counter      calls shadow mode let through that an
                                                    enforcing breaker would have refused
``circuit_breaker.transitions``    counter          state changes
=================================  ===============  ==========================================

It also adds the span event ``circuit_breaker.rejected`` (attributes
``circuit_breaker.name``, ``circuit_breaker.state`` and, when known,
``circuit_breaker.retry_after``) to the current span, when one is recording,
for every request a client integration (or ``CircuitBreaker.call``)
short-circuits. It does so by subscribing to :class:`CallRejected` on the
registry: listeners run in the refused caller's thread and task, so the
current span is the caller's. One corner case: a breaker delivers its events
one at a time, so when two threads are refused by the *same* breaker at the
same instant (or one is refused while another thread delivers that breaker's
state change), the later event may be delivered by the thread already
delivering, and land on that thread's span instead. Counts are never
affected; asyncio and trio programs (one thread) never see it.

Needs the ``otel`` extra: ``pip install "circuitbreaker-http[otel]"``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Protocol

try:
    from opentelemetry import metrics, trace
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
except ImportError as exc:  # pragma: no cover - exercised by the missing-extra test
    raise ImportError(
        'circuitbreaker_http.otel needs opentelemetry-api: pip install "circuitbreaker-http[otel]"'
    ) from exc

from ._core import BreakerSnapshot, CallRejected, CircuitState

__all__ = ["Instrumentation", "instrument"]

NAME = "circuit_breaker.name"
STATE = "circuit_breaker.state"
OUTCOME = "circuit_breaker.outcome"
RETRY_AFTER = "circuit_breaker.retry_after"
SPAN_EVENT = "circuit_breaker.rejected"
_STATES = tuple(state.value for state in CircuitState)


class _Source(Protocol):
    """What :func:`instrument` reads: a :class:`BreakerRegistry`, or anything alike."""

    def snapshot(self) -> list[BreakerSnapshot]: ...

    def subscribe(
        self, listener: Callable[[CallRejected], object], *event_types: type[CallRejected]
    ) -> Callable[[], None]: ...


class Instrumentation:
    """What :func:`instrument` returns (made by it): close it to take the instruments away.

    OpenTelemetry's API has no way to remove an instrument or its callback,
    so after :meth:`close` the callbacks observe nothing (the series stop)
    and the span-event subscription is gone. Usable as a context manager.
    """

    def __init__(self, registry: _Source, meter: metrics.Meter, *, span_events: bool) -> None:
        self._registry = registry
        self._lock = threading.Lock()
        self._closed = False
        self._unsubscribe: Callable[[], None] | None = None
        # One snapshot of the registry serves the five callbacks of one
        # collection: a callback that has already read the held snapshot
        # takes a new one (the next collection has begun).
        self._snaps: list[BreakerSnapshot] | None = None
        self._read_by: set[str] = set()
        meter.create_observable_gauge(
            "circuit_breaker.state",
            callbacks=[self._observe_state],
            unit="1",
            description="1 for the breaker's current state, 0 for the other four.",
        )
        meter.create_observable_counter(
            "circuit_breaker.calls",
            callbacks=[self._observe_calls],
            unit="{call}",
            description="Calls recorded by the breaker, by outcome.",
        )
        meter.create_observable_counter(
            "circuit_breaker.rejections",
            callbacks=[self._observe_rejections],
            unit="{call}",
            description="Calls short-circuited by the breaker.",
        )
        meter.create_observable_counter(
            "circuit_breaker.shadow_rejections",
            callbacks=[self._observe_shadow],
            unit="{call}",
            description="Calls let through in shadow mode that an enforcing breaker would "
            "have short-circuited.",
        )
        meter.create_observable_counter(
            "circuit_breaker.transitions",
            callbacks=[self._observe_transitions],
            unit="{transition}",
            description="State changes of the breaker.",
        )
        if span_events:
            self._unsubscribe = registry.subscribe(self._on_rejection, CallRejected)

    def __repr__(self) -> str:
        return f"<Instrumentation of {self._registry!r}{' closed' if self._closed else ''}>"

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """Stop observing and stop adding span events; calling it again does nothing."""
        with self._lock:
            self._closed = True
            self._snaps = None
            unsubscribe, self._unsubscribe = self._unsubscribe, None
        if unsubscribe is not None:
            unsubscribe()

    def __enter__(self) -> Instrumentation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _snapshots(self, reader: str) -> list[BreakerSnapshot]:
        with self._lock:
            if self._closed:
                return []
            held = self._snaps
            if held is not None and reader not in self._read_by:
                self._read_by.add(reader)
                return held
        snaps = self._registry.snapshot()
        with self._lock:
            if self.closed:  # closed while the snapshot was taken
                return []
            self._snaps = snaps
            self._read_by = {reader}
        return snaps

    # -- callbacks (the SDK calls them at each collection) ------------------

    def _observe_state(self, options: CallbackOptions) -> Iterable[Observation]:
        for snap in self._snapshots("state"):
            current = snap.state.value
            for value in _STATES:
                yield Observation(1 if value == current else 0, {NAME: snap.name, STATE: value})

    def _observe_calls(self, options: CallbackOptions) -> Iterable[Observation]:
        for snap in self._snapshots("calls"):
            name = snap.name
            yield Observation(
                snap.total_calls - snap.total_failures, {NAME: name, OUTCOME: "success"}
            )
            yield Observation(snap.total_failures, {NAME: name, OUTCOME: "failure"})
            yield Observation(snap.total_ignored, {NAME: name, OUTCOME: "ignored"})

    def _observe_rejections(self, options: CallbackOptions) -> Iterable[Observation]:
        for snap in self._snapshots("rejections"):
            yield Observation(snap.total_rejected, {NAME: snap.name})

    def _observe_shadow(self, options: CallbackOptions) -> Iterable[Observation]:
        for snap in self._snapshots("shadow_rejections"):
            yield Observation(snap.total_shadow_rejected, {NAME: snap.name})

    def _observe_transitions(self, options: CallbackOptions) -> Iterable[Observation]:
        for snap in self._snapshots("transitions"):
            yield Observation(snap.total_transitions, {NAME: snap.name})

    # -- span events ---------------------------------------------------------

    def _on_rejection(self, event: CallRejected) -> None:
        """Add ``circuit_breaker.rejected`` to the refused caller's span, if it records."""
        if not event.enforced or self._closed:
            return  # a shadow rejection let the call through: nothing was short-circuited
        span = trace.get_current_span()
        if not span.is_recording():
            return
        attributes: dict[str, str | float] = {NAME: event.name, STATE: event.state.value}
        if event.retry_after is not None:
            attributes[RETRY_AFTER] = event.retry_after
        span.add_event(SPAN_EVENT, attributes)


def instrument(
    registry: _Source,
    *,
    meter_provider: MeterProvider | None = None,
    span_events: bool = True,
) -> Instrumentation:
    """Report a registry's breakers through OpenTelemetry.

    Registers the observable instruments of the module's table on a meter
    named ``circuitbreaker_http``, each read from ``registry.snapshot()``
    once per collection; every observation has ``circuit_breaker.name``.
    With ``span_events`` it also adds ``circuit_breaker.rejected`` to the
    current span for every short-circuited call (see the module docstring
    for the one threaded corner case). That subscription makes each
    rejection build a :class:`CallRejected` event; closed calls cost nothing
    more either way.

    Args:
        registry: The :class:`~circuitbreaker_http.BreakerRegistry` (a
            client's ``transport.registry``, ``adapter.registry``, ...).
        meter_provider: Where to register the instruments; the global
            ``MeterProvider`` when ``None``.
        span_events: Whether to add span events for short-circuited calls.

    Returns:
        A handle whose :meth:`~Instrumentation.close` stops the observations
        and the span events.

    Example:
        >>> from circuitbreaker_http import BreakerRegistry
        >>> with instrument(BreakerRegistry()) as handle:
        ...     pass
        >>> handle.closed
        True
    """
    from . import __version__

    meter = metrics.get_meter("circuitbreaker_http", __version__, meter_provider=meter_provider)
    handle = Instrumentation(registry, meter, span_events=span_events)
    return handle
