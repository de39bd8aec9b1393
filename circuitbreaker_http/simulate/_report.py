"""What a simulation found: per key and configuration, as dataclasses, a table and JSON."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .._core import CircuitState, StateChange

__all__ = ["KeyResult", "OutageResult", "SimulationReport", "Trace"]


@dataclass(frozen=True, slots=True)
class OutageResult:
    """One outage of the upstream (as the log shows it) and how a breaker met it.

    Attributes:
        start: When it began (log time, seconds).
        end: When it ended.
        tripped_after: Seconds from ``start`` to the breaker's first trip
            (``0.0`` when it was already open at ``start``; ``None``: it never
            tripped during the outage).
        closed_after: Seconds from ``end`` to the breaker closing again;
            negative when it had closed before the outage ended (and let the
            rest of it through); ``None`` when it never tripped, or was still
            not closed when the log ended.
    """

    start: float
    end: float
    tripped_after: float | None
    closed_after: float | None

    def as_dict(self) -> dict[str, Any]:
        """The outage as a JSON-friendly dict."""
        return {
            "start": self.start,
            "end": self.end,
            "tripped_after": self.tripped_after,
            "closed_after": self.closed_after,
        }


@dataclass(frozen=True, slots=True)
class KeyResult:
    """How one configuration's breaker did on one key's traffic.

    Attributes:
        key: The breaker key (``"*"`` in :meth:`SimulationReport.totals`).
        config: The configuration's name.
        requests: Requests in the log for this key.
        reached: Requests let through to the upstream.
        short_circuited: Requests the breaker refused.
        failures_reached: Requests let through that the log says failed.
        failures_avoided: Refused requests that the log says would have failed.
        healthy_refused: Refused requests that the log says would have succeeded.
        trips: Closed → open transitions.
        reopens: Half-open → open transitions (a failed trial).
        open_seconds: Seconds spent open or half-open, up to the log's end.
        outages: Each outage of this key and how the breaker met it.
        transitions: Every state change, in order.
    """

    key: str
    config: str
    requests: int
    reached: int
    short_circuited: int
    failures_reached: int
    failures_avoided: int
    healthy_refused: int
    trips: int
    reopens: int
    open_seconds: float
    outages: tuple[OutageResult, ...] = ()
    transitions: tuple[StateChange, ...] = field(default=(), repr=False)

    @property
    def time_to_trip(self) -> float | None:
        """Mean seconds from an outage's start to the first trip (outages it tripped in)."""
        values = [o.tripped_after for o in self.outages if o.tripped_after is not None]
        return sum(values) / len(values) if values else None

    @property
    def time_to_close(self) -> float | None:
        """Mean seconds from an outage's end to the breaker closing (where known)."""
        values = [o.closed_after for o in self.outages if o.closed_after is not None]
        return sum(values) / len(values) if values else None

    @property
    def missed_outages(self) -> int:
        """Outages during which the breaker never tripped."""
        return sum(1 for o in self.outages if o.tripped_after is None)

    def as_dict(self) -> dict[str, Any]:
        """The result as a JSON-friendly dict (states as their string values)."""
        return {
            "key": self.key,
            "config": self.config,
            "requests": self.requests,
            "reached": self.reached,
            "short_circuited": self.short_circuited,
            "failures_reached": self.failures_reached,
            "failures_avoided": self.failures_avoided,
            "healthy_refused": self.healthy_refused,
            "trips": self.trips,
            "reopens": self.reopens,
            "open_seconds": self.open_seconds,
            "time_to_trip": self.time_to_trip,
            "time_to_close": self.time_to_close,
            "missed_outages": self.missed_outages,
            "outages": [o.as_dict() for o in self.outages],
            "transitions": [
                {"at": c.at, "old": c.old.value, "new": c.new.value, "reason": c.reason}
                for c in self.transitions
            ],
        }


@dataclass(frozen=True, slots=True)
class Trace:
    """One key's traffic over time, in bins, for plots (``simulate(..., trace=True)``).

    Attributes:
        key: The breaker key.
        bin: Seconds per bin; bin ``i`` starts at ``i × bin``.
        requests: Bin → requests that started in it.
        failures: Bin → of those, the ones the log says failed.
        latency: Bin → the sum of their durations.
        refused: Config name → bin → ``(failures avoided, healthy refused)``.
    """

    key: str
    bin: float
    requests: Mapping[int, int]
    failures: Mapping[int, int]
    latency: Mapping[int, float]
    refused: Mapping[str, Mapping[int, tuple[int, int]]]


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


@dataclass(frozen=True, slots=True)
class SimulationReport:
    """The result of :func:`~circuitbreaker_http.simulate.simulate`.

    Attributes:
        source: What was replayed (a file name or a scenario).
        configs: The configurations' names, in the order given.
        results: One :class:`KeyResult` per key and configuration.
        rows: Rows replayed.
        skipped: Rows that could not be read and were left out.
        skip_reasons: The first few of those, naming the line.
        late: Rows later than the reorder window allows (replayed late).
        bypassed: Rows whose key function said ``None`` (no breaker).
        start: The first row's time.
        end: When the last request ended.
        outage_rule: How outages were told from the log, in words.
        traces: Per key, its traffic in bins (only with ``trace=True``).
    """

    source: str
    configs: tuple[str, ...]
    results: tuple[KeyResult, ...]
    rows: int
    skipped: int
    skip_reasons: tuple[str, ...]
    late: int
    bypassed: int
    start: float
    end: float
    outage_rule: str
    traces: Mapping[str, Trace] | None = field(default=None, repr=False, compare=False)

    def keys(self) -> list[str]:
        """The keys, busiest first."""
        counts: dict[str, int] = {}
        for result in self.results:
            counts[result.key] = max(counts.get(result.key, 0), result.requests)
        return sorted(counts, key=lambda key: (-counts[key], key))

    def result(self, key: str, config: str | None = None) -> KeyResult:
        """The result for ``key`` under ``config`` (the only one when ``None``).

        Raises:
            KeyError: no such key or configuration.
        """
        name = self._config(config)
        for result in self.results:
            if result.key == key and result.config == name:
                return result
        raise KeyError(f"no result for key {key!r} under {name!r}")

    def _config(self, config: str | None) -> str:
        if config is None:
            if len(self.configs) != 1:
                raise KeyError(f"several configurations: name one of {list(self.configs)}")
            return self.configs[0]
        if config not in self.configs:
            raise KeyError(f"no configuration {config!r}; the report has {list(self.configs)}")
        return config

    def totals(self, config: str | None = None) -> KeyResult:
        """Every key's counts added up for one configuration (``key="*"``)."""
        name = self._config(config)
        mine = [r for r in self.results if r.config == name]
        outages = tuple(o for r in mine for o in r.outages)
        return KeyResult(
            key="*",
            config=name,
            requests=sum(r.requests for r in mine),
            reached=sum(r.reached for r in mine),
            short_circuited=sum(r.short_circuited for r in mine),
            failures_reached=sum(r.failures_reached for r in mine),
            failures_avoided=sum(r.failures_avoided for r in mine),
            healthy_refused=sum(r.healthy_refused for r in mine),
            trips=sum(r.trips for r in mine),
            reopens=sum(r.reopens for r in mine),
            open_seconds=sum(r.open_seconds for r in mine),
            outages=outages,
        )

    def as_dict(self) -> dict[str, Any]:
        """The report as a JSON-friendly dict."""
        return {
            "source": self.source,
            "configs": list(self.configs),
            "rows": self.rows,
            "skipped": self.skipped,
            "skip_reasons": list(self.skip_reasons),
            "late": self.late,
            "bypassed": self.bypassed,
            "start": self.start,
            "end": self.end,
            "outage_rule": self.outage_rule,
            "results": [r.as_dict() for r in self.results],
            "totals": [self.totals(name).as_dict() for name in self.configs],
        }

    def to_json(self, indent: int | None = 2) -> str:
        """The report as JSON text (see :meth:`as_dict`)."""
        return json.dumps(self.as_dict(), indent=indent)

    def table(self) -> str:
        """The report as a plain-text table, one line per key and configuration."""
        header = (
            "key",
            "config",
            "requests",
            "reached",
            "short",
            "failed·reached",
            "failed·avoided",
            "healthy·refused",
            "trips",
            "open s",
            "to trip s",
            "to close s",
        )
        lines: list[tuple[str, ...]] = [header]
        keys = self.keys()
        order = {name: i for i, name in enumerate(self.configs)}
        by_key = sorted(self.results, key=lambda r: (keys.index(r.key), order[r.config]))
        rows = list(by_key)
        if len(keys) > 1:
            rows += [self.totals(name) for name in self.configs]
        for r in rows:
            lines.append(
                (
                    "(all)" if r.key == "*" else r.key,
                    r.config,
                    str(r.requests),
                    str(r.reached),
                    str(r.short_circuited),
                    str(r.failures_reached),
                    str(r.failures_avoided),
                    str(r.healthy_refused),
                    str(r.trips) + (f"+{r.reopens}" if r.reopens else ""),
                    f"{r.open_seconds:.1f}",
                    _seconds(r.time_to_trip),
                    _seconds(r.time_to_close),
                )
            )
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        out = []
        for n, line in enumerate(lines):
            cells = [
                cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i])
                for i, cell in enumerate(line)
            ]
            out.append("  ".join(cells).rstrip())
            if n == 0:
                out.append("  ".join("-" * w for w in widths))
        out.append("")
        out.append(
            f"{self.rows} requests from {self.source} over {self.end - self.start:.1f} s;"
            " trips +N: re-opens after a failed trial."
        )
        seen: set[str] = set()
        for r in by_key:
            if r.key in seen or not r.outages:
                continue
            seen.add(r.key)
            spans = ", ".join(
                f"{o.start - self.start:.1f}-{o.end - self.start:.1f} s" for o in r.outages[:8]
            )
            more = f" and {len(r.outages) - 8} more" if len(r.outages) > 8 else ""
            out.append(f"outages of {r.key}: {spans}{more}")
        out.append(f"outage: {self.outage_rule}")
        for r in by_key:
            if r.missed_outages:
                out.append(
                    f"{r.config} never tripped in {r.missed_outages} of {len(r.outages)}"
                    f" outages of {r.key}"
                )
        if self.skipped:
            out.append(f"skipped {self.skipped} rows that could not be read; first reasons:")
            out.extend(f"  {reason}" for reason in self.skip_reasons)
        if self.late:
            out.append(
                f"{self.late} rows came later than the reorder window allows and were replayed"
                " at the time reached"
            )
        if self.bypassed:
            out.append(f"{self.bypassed} rows had no breaker key (the key function said None)")
        return "\n".join(out)


def state_at(transitions: tuple[StateChange, ...] | list[StateChange], at: float) -> CircuitState:
    """The state a breaker was in at ``at``, from its transitions (closed before the first)."""
    state = CircuitState.CLOSED
    for change in transitions:
        if change.at > at:
            break
        state = change.new
    return state
