"""Prometheus metrics for a registry's breakers: ``BreakerCollector``.

Register a collector with ``prometheus_client`` and every scrape reads the
breakers' snapshots, so nothing is counted or allocated on the request path
beyond the integers every breaker keeps anyway::

    from prometheus_client import REGISTRY
    from circuitbreaker_http.prometheus import BreakerCollector

    REGISTRY.register(BreakerCollector(transport.registry))

Every series carries the label ``breaker`` (the breaker's key):

======================================================  =======  =====================
metric                                                  type     extra labels
======================================================  =======  =====================
``circuitbreaker_http_state``                           gauge    ``state`` (all five)
``circuitbreaker_http_calls_total``                     counter  ``outcome``
``circuitbreaker_http_slow_calls_total``                counter
``circuitbreaker_http_rejected_total``                  counter
``circuitbreaker_http_shadow_rejected_total``           counter
``circuitbreaker_http_transitions_total``               counter
``circuitbreaker_http_open_seconds_total``              counter
``circuitbreaker_http_window_calls``                    gauge
``circuitbreaker_http_failure_ratio``                   gauge    (NaN with no calls)
``circuitbreaker_http_slow_call_ratio``                 gauge    (NaN with no calls)
``circuitbreaker_http_retry_after_seconds``             gauge    (0 unless open)
======================================================  =======  =====================

A breaker the registry dropped (its ``max_breakers`` bound) is in no snapshot,
so its series disappear from the next scrape.

Needs the ``prometheus`` extra: ``pip install "circuitbreaker-http[prometheus]"``.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

try:
    from prometheus_client.metrics_core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.samples import Sample
except ImportError as exc:  # pragma: no cover - exercised by the missing-extra test
    raise ImportError(
        "circuitbreaker_http.prometheus needs prometheus-client: "
        'pip install "circuitbreaker-http[prometheus]"'
    ) from exc

from ._core import BreakerSnapshot, CircuitState, metrics_row
from ._registry import BreakerRegistry

__all__ = ["BreakerCollector", "SnapshotSource"]

_STATES = tuple(state.value for state in CircuitState)
_OUTCOMES = ("success", "failure", "ignored")
_NAN = math.nan
_OPEN = CircuitState.OPEN
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")

# A scrape of 10,000 breakers makes 170,000 samples, so how one is built
# matters: ``Sample(...)`` goes through namedtuple's Python-level ``__new__``,
# which does what ``tuple.__new__`` with every field given does, at twice the
# cost. The fields after ``value`` come from the class's own defaults, so a
# prometheus_client that adds one (as 0.21 added ``native_histogram``) still works.
_new = tuple.__new__
_PAD: tuple[Any, ...] = tuple(Sample._field_defaults[f] for f in Sample._fields[3:])


class SnapshotSource(Protocol):
    """What :class:`BreakerCollector` reads: a :class:`BreakerRegistry`, or anything alike."""

    def snapshot(self) -> list[BreakerSnapshot]:
        """A snapshot of every breaker held."""
        ...


# One breaker's part of a scrape, kept until its numbers change:
# (the numbers it was built from, breaker labels, state labels, outcome labels,
#  5 state samples, 3 calls samples, one sample for each of the 9 other families).
_Entry = tuple[Any, ...]
_SINGLES = 9  # slow, rejected, shadow, transitions, open seconds, window, 2 ratios, retry


class BreakerCollector:
    """A ``prometheus_client`` collector of a registry's breakers, read at scrape time.

    Each :meth:`collect` reads every breaker's numbers once
    (``CircuitBreaker.metrics()``, a plain tuple, far cheaper than a
    snapshot) and turns them into the metric families in the module's table.
    Nothing is recorded between scrapes. A breaker whose numbers have not
    changed since the previous scrape reuses that scrape's samples, so a
    scrape of mostly idle breakers costs little more than reading them.

    With a shared storage (a registry whose ``storage`` attribute is not
    ``None``) it also exports ``<namespace>_storage_up``,
    ``<namespace>_storage_errors_total`` and
    ``<namespace>_storage_sync_seconds``, read from ``storage.stats()``;
    see :meth:`storage_families`.

    Args:
        registry: The :class:`~circuitbreaker_http.BreakerRegistry` to read
            (anything with a ``snapshot()`` returning
            :class:`~circuitbreaker_http.BreakerSnapshot` objects will do; a
            client's ``transport.registry`` or ``adapter.registry``).
        namespace: The metric names' prefix, a valid Prometheus name.

    Raises:
        ValueError: ``namespace`` is not a valid Prometheus metric name.

    Example:
        >>> from prometheus_client import CollectorRegistry, generate_latest
        >>> from circuitbreaker_http import BreakerRegistry
        >>> breakers = BreakerRegistry()
        >>> _ = breakers.get("https://api.example.com")
        >>> metrics = CollectorRegistry()
        >>> metrics.register(BreakerCollector(breakers))
        >>> b'circuitbreaker_http_state{breaker="https://api.example.com",state="closed"} 1.0' in (
        ...     generate_latest(metrics)
        ... )
        True
    """

    def __init__(self, registry: SnapshotSource, *, namespace: str = "circuitbreaker_http") -> None:
        if not isinstance(namespace, str) or not _NAME.match(namespace):
            raise ValueError(
                f"namespace must be a valid Prometheus metric name ([a-zA-Z_:][a-zA-Z0-9_:]*), "
                f"got {namespace!r}"
            )
        if not callable(getattr(registry, "snapshot", None)):
            raise TypeError(f"registry must have a snapshot() method, got {registry!r}")
        self.registry = registry
        self.namespace = namespace
        n = namespace
        # The sample names; a counter family is named without ``_total``
        # (prometheus_client's convention) and its sample with it.
        self._names = (
            f"{n}_state",
            f"{n}_calls_total",
            f"{n}_slow_calls_total",
            f"{n}_rejected_total",
            f"{n}_shadow_rejected_total",
            f"{n}_transitions_total",
            f"{n}_open_seconds_total",
            f"{n}_window_calls",
            f"{n}_failure_ratio",
            f"{n}_slow_call_ratio",
            f"{n}_retry_after_seconds",
        )
        self._cache: dict[str, _Entry] = {}
        self._cache_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<BreakerCollector {self.namespace!r} of {self.registry!r}>"

    def describe(self) -> list[Metric]:
        """The metric families without samples (``prometheus_client`` reads their names)."""
        families = self._families()
        storage = getattr(self.registry, "storage", None)
        if storage is not None:
            families.extend(self.storage_families(None))
        return families

    def collect(self) -> Iterator[Metric]:
        """Read every breaker's snapshot and yield the metric families.

        The samples' label dicts are shared between scrapes: read them, do
        not change them.
        """
        old = self._cache
        new: dict[str, _Entry] = {}
        build = self._build
        for name, key in self._rows():
            entry = old.get(name)
            if entry is None or entry[0] != key:
                entry = build(name, key, entry)
            new[name] = entry
        # Whole-dict replacement: a concurrent scrape sees one cache or the
        # other, and breakers no longer held drop out of it here.
        with self._cache_lock:
            self._cache = new
        entries = list(new.values())
        families = self._families()
        families[0].samples = [s for e in entries for s in e[4]]
        families[1].samples = [s for e in entries for s in e[5]]
        for i in range(_SINGLES):
            families[2 + i].samples = [e[6][i] for e in entries]
        yield from families
        storage = getattr(self.registry, "storage", None)
        if storage is not None:
            yield from self.storage_families(storage)

    def _rows(self) -> Iterable[tuple[str, tuple[Any, ...]]]:
        """``(breaker key, its numbers)`` for every breaker, in ``_build``'s order.

        A registry's breakers give them as a plain tuple each
        (``CircuitBreaker.metrics()``), several times cheaper than a snapshot;
        another source's snapshots are read field by field.
        """
        source: Any = self.registry
        if isinstance(source, BreakerRegistry):
            return [(breaker.name, breaker.metrics()) for breaker in source]
        return [(snap.name, metrics_row(snap)) for snap in source.snapshot()]

    def _build(self, name: str, key: tuple[Any, ...], old: _Entry | None) -> _Entry:
        """One breaker's samples, reusing from its previous entry whatever did not change.

        A busy breaker changes a few numbers between scrapes (its calls and
        window), not all seventeen, so only those samples are built again.
        ``key`` is the breaker's numbers in the order of ``CircuitBreaker.metrics()``.
        """
        names = self._names
        pad = _PAD
        (
            state,
            total,
            failed,
            ignored,
            slow_total,
            rejected,
            shadow,
            transitions,
            open_seconds,
            window,
            window_failures,
            window_slow,
            retry_after,
        ) = key
        values = (
            float(slow_total),
            float(rejected),
            float(shadow),
            float(transitions),
            float(open_seconds),
            float(window),
            window_failures / window if window else _NAN,
            window_slow / window if window else _NAN,
            float(retry_after) if retry_after is not None and state is _OPEN else 0.0,
        )
        if old is None:
            labels = {"breaker": name}
            state_labels = tuple({"breaker": name, "state": s} for s in _STATES)
            outcome_labels = tuple({"breaker": name, "outcome": o} for o in _OUTCOMES)
            states = calls = None
            singles = tuple(
                _new(Sample, (n, labels, v, *pad)) for n, v in zip(names[2:], values, strict=True)
            )
        else:
            old_key, labels, state_labels, outcome_labels = old[0], old[1], old[2], old[3]
            states = old[4] if old_key[0] is state else None
            calls = old[5] if old_key[1:4] == key[1:4] else None
            # NaN never equals itself: a NaN ratio is simply built again.
            singles = tuple(
                s if s[2] == v else _new(Sample, (s[0], labels, v, *pad))
                for s, v in zip(old[6], values, strict=True)
            )
        if states is None:
            current = state.value
            n = names[0]
            states = tuple(
                _new(Sample, (n, lab, 1.0 if value == current else 0.0, *pad))
                for value, lab in zip(_STATES, state_labels, strict=True)
            )
        if calls is None:
            n = names[1]
            calls = (
                _new(Sample, (n, outcome_labels[0], float(total - failed), *pad)),
                _new(Sample, (n, outcome_labels[1], float(failed), *pad)),
                _new(Sample, (n, outcome_labels[2], float(ignored), *pad)),
            )
        return (key, labels, state_labels, outcome_labels, states, calls, singles)

    def _families(self) -> list[Metric]:
        """The eleven breaker families, empty, in the order ``_build`` fills them."""
        n = self.namespace
        breaker = ["breaker"]
        return [
            GaugeMetricFamily(
                f"{n}_state",
                "Circuit breaker state: 1 for the current state, 0 for the other four.",
                labels=["breaker", "state"],
            ),
            CounterMetricFamily(
                f"{n}_calls",
                "Calls recorded by the breaker, by outcome (success, failure, ignored).",
                labels=["breaker", "outcome"],
            ),
            CounterMetricFamily(
                f"{n}_slow_calls", "Calls slower than slow_call_duration.", labels=breaker
            ),
            CounterMetricFamily(
                f"{n}_rejected", "Calls short-circuited by the breaker.", labels=breaker
            ),
            CounterMetricFamily(
                f"{n}_shadow_rejected",
                "Calls let through in shadow mode (enforce=False) that an enforcing "
                "breaker would have short-circuited.",
                labels=breaker,
            ),
            CounterMetricFamily(
                f"{n}_transitions", "State changes of the breaker.", labels=breaker
            ),
            CounterMetricFamily(
                f"{n}_open_seconds",
                "Seconds the breaker spent open, half-open or forced open.",
                labels=breaker,
            ),
            GaugeMetricFamily(
                f"{n}_window_calls", "Calls recorded in the current window.", labels=breaker
            ),
            GaugeMetricFamily(
                f"{n}_failure_ratio",
                "Failed / recorded calls in the current window (NaN with no calls).",
                labels=breaker,
            ),
            GaugeMetricFamily(
                f"{n}_slow_call_ratio",
                "Slow / recorded calls in the current window (NaN with no calls).",
                labels=breaker,
            ),
            GaugeMetricFamily(
                f"{n}_retry_after_seconds",
                "Seconds until a trial call may pass (0 unless open).",
                labels=breaker,
            ),
        ]

    def storage_families(self, storage: object | None) -> list[Metric]:
        """The shared storage's families, read from ``storage.stats()``.

        This is the hook for a shared storage (``BreakerRegistry(storage=...)``):
        :meth:`collect` calls it when the registry's ``storage`` attribute is
        not ``None``. The storage's ``stats()`` returns a mapping with
        ``up`` (bool: the last round trip worked), ``errors`` (int: failed
        rounds since it was created), ``sync_buckets`` (a sequence of
        ``(upper bound in seconds, cumulative count)``, ending with
        ``math.inf``) and ``sync_sum`` (seconds spent in all rounds). A
        storage without ``stats()`` exports nothing. With ``storage=None``
        (for :meth:`describe`) the families come without samples.

        Args:
            storage: The registry's storage, or ``None``.

        Returns:
            ``<namespace>_storage_up`` (gauge), ``<namespace>_storage_errors_total``
            (counter) and ``<namespace>_storage_sync_seconds`` (histogram), or
            nothing for a storage that has no ``stats()``.
        """
        n = self.namespace
        up = GaugeMetricFamily(
            f"{n}_storage_up", "1 while the shared storage answers, 0 during an outage."
        )
        errors = CounterMetricFamily(
            f"{n}_storage_errors", "Failed synchronisation rounds with the shared storage."
        )
        sync = HistogramMetricFamily(
            f"{n}_storage_sync_seconds", "Seconds one synchronisation round took."
        )
        if storage is None:
            return [up, errors, sync]
        stats_of = getattr(storage, "stats", None)
        if not callable(stats_of):
            return []
        stats: Mapping[str, Any] = stats_of()
        up.add_metric([], 1.0 if stats["up"] else 0.0)
        errors.add_metric([], float(stats["errors"]))
        buckets: Sequence[tuple[float, float]] = stats["sync_buckets"]
        sync.add_metric([], _buckets(buckets), float(stats["sync_sum"]))
        return [up, errors, sync]


def _buckets(buckets: Iterable[tuple[float, float]]) -> list[tuple[str, float]]:
    """Histogram buckets with their bounds spelled as Prometheus spells them."""
    spelled = []
    for bound, count in buckets:
        le = "+Inf" if bound == math.inf else repr(float(bound))
        spelled.append((le, float(count)))
    return spelled
