"""Replay: rows through real registries and breakers on a virtual clock.

Theory of operation. Every configuration gets its own real
:class:`~circuitbreaker_http.BreakerRegistry`; all of them share one
:class:`~circuitbreaker_http.testing.ManualClock`. Rows arrive in time order
(a small reorder window puts nearly ordered logs right). Each row is, for
every configuration, an *admission* at the row's time (``acquire()``, as the
HTTP integrations do) and, if admitted, a *settlement* at time + duration,
kept in one event heap. Before a row is admitted, every settlement due by
then runs first (ties settle before admitting, as a sequential client does),
with the clock set to the settlement's time; the outcome is recorded with the
row's own duration, so slow calls are judged as the integrations judge them
(their duration is read from the same clock). Calls thus overlap as the
durations say, which is what makes half-open trials faithful: a trial holds
its slot until it settles, and the requests meanwhile are short-circuited.

A short-circuited request is scored by what the log says the upstream did:
a failure avoided, or a healthy request refused. A cancelled request
(:data:`CANCELLED`) takes a permit and gives it back, as the integrations do.

Outages are told from the log alone, the same for every configuration: the
upstream's outcomes are counted in 1-second bins; the upstream is down while
the failure rate over the last ``outage_window`` seconds is above
``outage_threshold`` with at least ``_OUTAGE_MIN_REQUESTS`` requests in that
window. An outage is back-dated to the first bin inside the window that was
itself above the threshold, and ends at the end of the last such bin, so a
step change is placed within a second despite the smoothing.
"""

from __future__ import annotations

import heapq
import itertools
import math
import os
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from .._config_file import arguments_from_file, arguments_from_mapping
from .._core import DEFAULT_FAILURE_STATUSES, BreakerConfig, CircuitState, StateChange
from .._errors import CircuitOpenError
from .._keys import KeyFunc, by_host
from .._registry import BreakerRegistry
from ..testing import ManualClock
from ._readers import read_log
from ._report import KeyResult, OutageResult, SimulationReport, Trace, state_at
from ._rows import CANCELLED, ReadStats, Request

__all__ = ["ConfigLike", "Configs", "resolve_configs", "simulate"]

ConfigLike = BreakerConfig | Mapping[str, Any] | str | os.PathLike[str]
"""One setting: a ``BreakerConfig`` (every key), a rules mapping (pattern →
``BreakerConfig``) or a configuration-file mapping (``{"default": ..., "rules":
...}``), or the path of a TOML configuration file."""

Configs = ConfigLike | Mapping[str, ConfigLike] | Sequence[ConfigLike]
"""``configs=`` of :func:`simulate`: one setting, a sequence of them, or a
mapping from names to settings."""

_OUTAGE_MIN_REQUESTS = 3
_TABLES = frozenset({"default", "rules", "keys"})
_KEY_CACHE_MAX = 65536
_OPEN, _HALF_OPEN, _CLOSED = CircuitState.OPEN, CircuitState.HALF_OPEN, CircuitState.CLOSED


def _setting(value: ConfigLike, where: str) -> dict[str, Any]:
    """Registry arguments (``default``, ``rules``, maybe ``key``) of one setting."""
    if isinstance(value, BreakerConfig):
        return {"default": value, "rules": {}}
    if isinstance(value, (str, os.PathLike)):
        return arguments_from_file(value, {})
    if isinstance(value, Mapping):
        if value and all(isinstance(v, BreakerConfig) for v in value.values()):
            return {"default": BreakerConfig(), "rules": dict(value)}
        if set(value) <= _TABLES:
            return arguments_from_mapping(value, {})
    raise TypeError(
        f"{where}: expected a BreakerConfig, a rules mapping, a configuration mapping"
        f" or a configuration file path, got {value!r}"
    )


def _name_of(value: ConfigLike, index: int) -> str:
    if isinstance(value, (str, os.PathLike)):
        return os.path.splitext(os.path.basename(os.fspath(value)))[0] or f"config{index}"
    return "config" if index == 0 else f"config{index + 1}"


def resolve_configs(configs: Configs) -> list[tuple[str, dict[str, Any]]]:
    """Name each setting of ``configs`` and turn it into registry arguments.

    A mapping names its settings (``{"now": "breakers.toml", "strict":
    BreakerConfig(failure_rate=0.2)}``), unless it holds only ``default``,
    ``rules`` and ``keys`` tables: then it is one configuration mapping. A rules
    mapping (pattern → ``BreakerConfig``) goes under a name:
    ``{"mine": {"api.example.com": BreakerConfig(...)}}``.

    Raises:
        TypeError: something that is not a setting.
        ValueError: an invalid configuration (file errors name the file).
    """
    if isinstance(configs, (BreakerConfig, str, os.PathLike)):
        items: list[tuple[str | None, ConfigLike]] = [(None, configs)]
    elif isinstance(configs, Mapping):
        values = list(configs.values())
        if values and set(configs) <= _TABLES and all(isinstance(v, Mapping) for v in values):
            items = [(None, configs)]
        else:
            items = [(str(name), value) for name, value in configs.items()]
    elif isinstance(configs, Sequence):
        items = [(None, value) for value in configs]
    else:
        raise TypeError(f"configs: expected settings, got {configs!r}")
    if not items:
        raise ValueError("configs: give at least one configuration")
    resolved: list[tuple[str, dict[str, Any]]] = []
    taken: set[str] = set()
    for index, (name, value) in enumerate(items):
        label = name if name is not None else _name_of(value, index)
        base, n = label, 2
        while label in taken:
            label, n = f"{base}-{n}", n + 1
        taken.add(label)
        resolved.append((label, _setting(value, f"configs[{label!r}]")))
    return resolved


def _ordered(rows: Iterable[Request], window: float, stats: list[int]) -> Iterator[Request]:
    """``rows`` in time order, holding back ``window`` seconds of them to put them right.

    A row earlier than one already given out is late: it is given out at the
    time reached (``stats[0]`` counts them).
    """
    reached = -math.inf
    if window <= 0:
        for row in rows:
            if row[0] < reached:
                stats[0] += 1
                row = row._replace(time=reached)
            else:
                reached = row[0]
            yield row
        return
    heap: list[tuple[float, int, Request]] = []
    push, pop, counter = heapq.heappush, heapq.heappop, itertools.count()
    newest = -math.inf
    for row in rows:
        t = row[0]
        if t < reached:
            stats[0] += 1
            row = row._replace(time=reached)
            t = reached
        push(heap, (t, next(counter), row))
        if t > newest:
            newest = t
            horizon = newest - window
            while heap[0][0] <= horizon:
                reached, _, out = pop(heap)
                yield out
    while heap:
        reached, _, out = pop(heap)
        yield out


class _Outages:
    """Tells one key's outages from its upstream outcomes (see the module docstring)."""

    __slots__ = ("bad_since", "bins", "down", "fails", "last_bad_end", "n", "spans", "width")

    def __init__(self, width: int) -> None:
        self.width = width
        self.bins: deque[tuple[int, int, int]] = deque()  # (bin, requests, failures)
        self.n = 0
        self.fails = 0
        self.down = False
        self.bad_since = 0
        self.last_bad_end = 0
        self.spans: list[tuple[float, float]] = []

    def close_bin(self, index: int, n: int, fails: int, threshold: float) -> None:
        bins = self.bins
        bins.append((index, n, fails))
        self.n += n
        self.fails += fails
        oldest = index - self.width
        while bins[0][0] <= oldest:
            _, gone_n, gone_f = bins.popleft()
            self.n -= gone_n
            self.fails -= gone_f
        if fails > threshold * n:
            self.last_bad_end = index + 1
        if self.n < _OUTAGE_MIN_REQUESTS:
            return
        rate = self.fails / self.n
        if not self.down and rate > threshold:
            self.down = True
            self.bad_since = next(i for i, bn, bf in bins if bf > threshold * bn)
        elif self.down and rate <= threshold:
            self.down = False
            self.spans.append((float(self.bad_since), float(self.last_bad_end)))

    def finish(self) -> None:
        if self.down:
            self.down = False
            self.spans.append((float(self.bad_since), float(self.last_bad_end)))


def _met(spans: list[tuple[float, float]], changes: list[StateChange]) -> list[OutageResult]:
    """How a breaker with these transitions met each outage."""
    met = []
    for start, end in spans:
        tripped: float | None = None
        if state_at(changes, start) is not _CLOSED:
            tripped = 0.0
        else:
            for change in changes:
                if start <= change.at <= end and change.new is _OPEN:
                    tripped = change.at - start
                    break
        closed: float | None = None
        if tripped is not None:
            if state_at(changes, end) is _CLOSED:
                last = [c.at for c in changes if c.new is _CLOSED and c.at <= end]
                closed = (last[-1] - end) if last else None
            else:
                later = [c.at for c in changes if c.new is _CLOSED and c.at > end]
                closed = (later[0] - end) if later else None
        met.append(OutageResult(start, end, tripped, closed))
    return met


def _open_seconds(changes: list[StateChange], until: float) -> float:
    total = 0.0
    since: float | None = None
    for change in changes:
        closed = change.new is _CLOSED or change.new is CircuitState.DISABLED
        if since is None and not closed:
            since = change.at
        elif since is not None and closed:
            total += change.at - since
            since = None
    if since is not None:
        total += max(0.0, until - since)
    return total


def _source_of(source: Iterable[Request] | str | os.PathLike[str]) -> Iterable[Request]:
    if isinstance(source, (str, os.PathLike)):
        return read_log(source)
    return source


def _label(source: object) -> str:
    name = getattr(source, "name", None)
    seed = getattr(source, "seed", None)
    if isinstance(name, str):
        return f"scenario {name} (seed {seed})" if seed is not None else name
    return "rows"


def simulate(
    source: Iterable[Request] | str | os.PathLike[str],
    *,
    configs: Configs,
    key: KeyFunc = by_host,
    reorder_window: float = 10.0,
    outage_window: float = 10.0,
    outage_threshold: float = 0.5,
    trace: bool = False,
    trace_bin: float = 1.0,
) -> SimulationReport:
    """Replay traffic through real breakers on a virtual clock and score each configuration.

    Args:
        source: Rows (a :class:`LogSource` from :func:`read_log`, a
            :class:`Scenario`, any iterable of :class:`Request`), or a log's
            path (format detected).
        configs: One or more settings: a ``BreakerConfig``, a rules mapping, a
            configuration mapping or a TOML file's path, alone, in a sequence,
            or in a mapping that names them (see :func:`resolve_configs`).
        key: How a row's ``url`` maps to a breaker key, as for a registry (a
            row's own ``key`` wins; a file's ``[keys] routes`` wins for it).
        reorder_window: Seconds of rows held back to put a nearly ordered log
            in order (nginx logs a request when it ends); later rows are
            replayed at the time reached and counted as late.
        outage_window: Seconds of the sliding window that tells an outage.
        outage_threshold: The upstream's failure rate over that window above
            which it is down.
        trace: Keep each key's traffic in bins of ``trace_bin`` seconds, for
            :func:`~circuitbreaker_http.simulate.plot`.
        trace_bin: Seconds per bin of the trace.

    Returns:
        The :class:`SimulationReport`.

    Raises:
        LogError: a row cannot be read and the source is strict.
        TypeError, ValueError: bad configurations or arguments.
    """
    if not 0 < outage_threshold < 1:
        raise ValueError(f"outage_threshold must be between 0 and 1, got {outage_threshold!r}")
    if not 1.0 <= outage_window < math.inf:
        raise ValueError(f"outage_window must be at least 1 second, got {outage_window!r}")
    if trace and not 0 < trace_bin < math.inf:
        raise ValueError(f"trace_bin must be a positive number of seconds, got {trace_bin!r}")
    named = resolve_configs(configs)
    rows_in = _source_of(source)
    late = [0]
    ordered = iter(_ordered(rows_in, reorder_window, late))
    first = next(ordered, None)
    start = 0.0 if first is None else first[0]
    clock = ManualClock(start)
    set_clock = clock.set
    names = [name for name, _ in named]
    registries: list[BreakerRegistry] = []
    changes: list[dict[str, list[StateChange]]] = []
    key_funcs: list[KeyFunc] = []
    key_index: list[int] = []
    for _, arguments in named:
        arguments = dict(arguments)
        func = arguments.pop("key", key)
        if func not in key_funcs:
            key_funcs.append(func)
        key_index.append(key_funcs.index(func))
        registry = BreakerRegistry(**arguments, key=func, clock=clock, max_breakers=1_000_000)
        log: dict[str, list[StateChange]] = {}

        def listen(change: StateChange, log: dict[str, list[StateChange]] = log) -> None:
            log.setdefault(change.name, []).append(change)

        registry.subscribe(listen, StateChange)
        registries.append(registry)
        changes.append(log)
    single_key = len(key_funcs) == 1
    caches: list[dict[str, str | None]] = [{} for _ in key_funcs]

    # Per key: [outage tracker, current bin, its requests, its failures, entries],
    # entries being one list per configuration:
    # [registry, failure statuses, requests, reached, short, failed-reached, avoided, refused]
    keys: dict[str, list[Any]] = {}
    width = max(1, round(outage_window))
    heap: list[tuple[float, int, Any, int, bool, float, int | None]] = []
    push, pop = heapq.heappush, heapq.heappop
    counter = itertools.count()
    bypassed = 0
    threshold = outage_threshold
    default_statuses = DEFAULT_FAILURE_STATUSES
    traces: dict[str, list[Any]] = {}
    n_configs = len(registries)
    config_range = range(n_configs)
    now = start

    def entry_for(k: str) -> list[Any]:
        entries = []
        for ci in config_range:
            registry = registries[ci]
            entries.append([registry, registry.config_for(k).failure_statuses, 0, 0, 0, 0, 0, 0])
        record = [_Outages(width), None, 0, 0, entries]
        keys[k] = record
        if trace:
            traces[k] = [{}, {}, {}, [{} for _ in config_range]]
        return record

    def key_of(row: Request, which: int) -> str | None:
        cache = caches[which]
        url = row[1]
        found = cache.get(url, cache)
        if found is cache:
            if len(cache) >= _KEY_CACHE_MAX:
                cache.clear()
            found = cache[url] = key_funcs[which](row[3], url)
        return found  # type: ignore[return-value]

    rows = itertools.chain(() if first is None else (first,), ordered)
    replayed = 0
    for row in rows:
        replayed += 1
        t = row[0]
        while heap and heap[0][0] <= t:
            end, _, breaker, permit, failed, took, status = pop(heap)
            if end > now:
                set_clock(end)
                now = end
            if status == -1:
                breaker.release(permit)
            else:
                breaker.record(permit, failed, took, None, status)
        if t > now:
            set_clock(t)
            now = t
        k = row[2]
        if k is None:
            # With keys that differ by configuration ([keys] routes), the
            # first configuration's key files the key-level statistics.
            k = key_of(row, key_index[0])
            if k is None:
                bypassed += 1
                continue
        record = keys.get(k)
        if record is None:
            record = entry_for(k)
        status = row[4]
        error = row[5]
        cancelled = error == CANCELLED
        upstream_failed = not cancelled and (error is not None or status in default_statuses)
        index = int(t)
        if index != record[1]:
            if record[1] is not None:
                record[0].close_bin(record[1], record[2], record[3], threshold)
            record[1] = index
            record[2] = 0
            record[3] = 0
        record[2] += 1
        if upstream_failed:
            record[3] += 1
        took = row[6]
        if trace:
            tr = traces[k]
            b = int((t - start) // trace_bin)
            tr[0][b] = tr[0].get(b, 0) + 1
            if upstream_failed:
                tr[1][b] = tr[1].get(b, 0) + 1
            tr[2][b] = tr[2].get(b, 0.0) + took
        end = t + took
        for ci, entry in enumerate(record[4]):
            registry = entry[0]
            if single_key or row[2] is not None:
                breaker = registry.get(k)
            else:
                own = key_of(row, key_index[ci])
                if own is None:
                    continue
                breaker = registry.get(own)
            failed = not cancelled and (error is not None or status in entry[1])
            entry[2] += 1
            try:
                permit = breaker.acquire()
            except CircuitOpenError:
                entry[4] += 1
                if cancelled:
                    continue
                if failed:
                    entry[6] += 1
                else:
                    entry[7] += 1
                if trace:
                    refused = traces[k][3][ci]
                    was = refused.get(b, (0, 0))
                    refused[b] = (was[0] + 1, was[1]) if failed else (was[0], was[1] + 1)
                continue
            entry[3] += 1
            if failed:
                entry[5] += 1
            code = -1 if cancelled else status
            push(heap, (end, next(counter), breaker, permit, failed, took, code))
    while heap:
        end, _, breaker, permit, failed, took, status = pop(heap)
        if end > now:
            set_clock(end)
            now = end
        if status == -1:
            breaker.release(permit)
        else:
            breaker.record(permit, failed, took, None, status)

    results: list[KeyResult] = []
    report_traces: dict[str, Trace] | None = {} if trace else None
    for k, record in keys.items():
        tracker: _Outages = record[0]
        if record[1] is not None:
            tracker.close_bin(record[1], record[2], record[3], threshold)
        tracker.finish()
        for ci, entry in enumerate(record[4]):
            seen = changes[ci].get(k, [])
            results.append(
                KeyResult(
                    key=k,
                    config=names[ci],
                    requests=entry[2],
                    reached=entry[3],
                    short_circuited=entry[4],
                    failures_reached=entry[5],
                    failures_avoided=entry[6],
                    healthy_refused=entry[7],
                    trips=sum(1 for c in seen if c.new is _OPEN and c.old is _CLOSED),
                    reopens=sum(1 for c in seen if c.new is _OPEN and c.old is _HALF_OPEN),
                    open_seconds=_open_seconds(seen, now),
                    outages=tuple(_met(tracker.spans, seen)),
                    transitions=tuple(seen),
                )
            )
        if report_traces is not None:
            tr = traces[k]
            report_traces[k] = Trace(
                key=k,
                bin=trace_bin,
                requests=tr[0],
                failures=tr[1],
                latency=tr[2],
                refused={names[ci]: tr[3][ci] for ci in config_range},
            )
    stats = getattr(rows_in, "stats", None)
    if not isinstance(stats, ReadStats):
        stats = ReadStats()
    return SimulationReport(
        source=_label(rows_in),
        configs=tuple(names),
        results=tuple(results),
        rows=replayed,
        skipped=stats.skipped,
        skip_reasons=tuple(stats.reasons),
        late=late[0],
        bypassed=bypassed,
        start=start,
        end=now,
        outage_rule=(
            f"the upstream's failure rate over a sliding {outage_window:g} s window above"
            f" {outage_threshold:.0%} (at least {_OUTAGE_MIN_REQUESTS} requests), back-dated to"
            " the first 1 s bin above it"
        ),
        traces=report_traces,
    )
