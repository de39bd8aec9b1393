"""``tune``: search thresholds by replaying the same traffic under many configurations.

The search is random over a modest grid of ``failure_rate``,
``minimum_calls``, ``window``, ``window_calls``, ``consecutive_failures`` and
``open_duration`` (seeded, so the same seed proposes the same candidates);
the configuration the search starts from is always a candidate too. The
candidates are split into one batch per process (``spawn``); each process
replays the source once with its whole batch side by side, streaming from
the log file, so memory stays flat in the log's length and the work is shared
by the cores.

Every candidate is scored by two numbers over all keys: failures let through
(requests the breaker let reach a failing upstream) and healthy requests
refused. The frontier holds the candidates no other beats on both. The
recommendation is taken from it by the objective:

* ``knee`` (default): the frontier point nearest to the ideal of nothing let
  through and nothing refused, with each axis divided by its largest value on
  the frontier, so neither count's scale decides;
* ``cost:R``: the least ``failures let through + R × healthy refused``, for
  when you know how many failures one wrongly refused request is worth.

Ties go to fewer trips (less flapping), then to the earlier candidate.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import random
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields
from typing import Any

from .._core import BreakerConfig
from .._keys import KeyFunc, by_host
from ._replay import simulate
from ._rows import Request

__all__ = [
    "SEARCH_SPACE",
    "Candidate",
    "TuneResult",
    "parse_objective",
    "to_toml",
    "tune",
    "write_config",
]

SEARCH_SPACE: dict[str, tuple[Any, ...]] = {
    "failure_rate": (None, 0.2, 0.3, 0.4, 0.5, 0.7),
    "minimum_calls": (5, 10, 20, 50),
    "window": (5.0, 10.0, 30.0, 60.0),
    "window_calls": (None, 20, 50, 100),
    "consecutive_failures": (None, 3, 5, 10, 20),
    "open_duration": (2.0, 5.0, 10.0, 30.0, 60.0),
}
"""The values the search draws each tuned field from."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """One configuration tried, and how it did over all keys.

    Attributes:
        name: ``"start"`` for the configuration the search started from, else ``"c<n>"``.
        config: The configuration.
        failures_reached: Failures let through to the upstream.
        healthy_refused: Healthy requests short-circuited.
        failures_avoided: Failing requests short-circuited.
        trips: Transitions to open (trips and re-opens).
    """

    name: str
    config: BreakerConfig
    failures_reached: int
    healthy_refused: int
    failures_avoided: int
    trips: int

    def tuned(self) -> dict[str, Any]:
        """The tuned fields of :attr:`config`, by name."""
        return {name: getattr(self.config, name) for name in SEARCH_SPACE}


@dataclass(frozen=True, slots=True)
class TuneResult:
    """What :func:`tune` found.

    Attributes:
        candidates: Every configuration tried, in the order proposed.
        frontier: The candidates no other beats on both failures let through
            and healthy requests refused, fewest failures let through first.
        recommended: The frontier candidate the objective picks.
        objective: The objective, as given.
        requests: Requests in the traffic.
        failures: Requests the log says failed (what no breaker would stop).
    """

    candidates: tuple[Candidate, ...]
    frontier: tuple[Candidate, ...]
    recommended: Candidate
    objective: str
    requests: int
    failures: int

    def table(self) -> str:
        """The frontier and the recommendation as plain text."""
        names = list(SEARCH_SPACE)
        head = ["", "let through", "refused", "avoided", "trips", *names]
        lines = [head]
        for c in self.frontier:
            mark = "*" if c is self.recommended else ""
            lines.append(
                [
                    f"{mark}{c.name}",
                    str(c.failures_reached),
                    str(c.healthy_refused),
                    str(c.failures_avoided),
                    str(c.trips),
                    *(_show(getattr(c.config, n)) for n in names),
                ]
            )
        widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
        out = ["  ".join(cell.rjust(widths[i]) for i, cell in enumerate(line)) for line in lines]
        out.insert(1, "  ".join("-" * w for w in widths))
        r = self.recommended
        out += [
            "",
            f"{len(self.candidates)} configurations tried on {self.requests} requests"
            f" ({self.failures} failed upstream); {len(self.frontier)} on the frontier of"
            " failures let through against healthy requests refused.",
            f"recommended ({self.objective}): {r.name}: "
            + ", ".join(f"{k} = {_show(v)}" for k, v in r.tuned().items()),
        ]
        return "\n".join(out)

    def as_dict(self) -> dict[str, Any]:
        """The result as a JSON-friendly dict."""

        def one(c: Candidate) -> dict[str, Any]:
            return {
                "name": c.name,
                "failures_reached": c.failures_reached,
                "healthy_refused": c.healthy_refused,
                "failures_avoided": c.failures_avoided,
                "trips": c.trips,
                "config": c.tuned(),
            }

        return {
            "objective": self.objective,
            "requests": self.requests,
            "failures": self.failures,
            "recommended": one(self.recommended),
            "frontier": [one(c) for c in self.frontier],
            "candidates": [one(c) for c in self.candidates],
        }


def _show(value: object) -> str:
    if value is None:
        return "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def parse_objective(objective: str) -> float | None:
    """``None`` for ``"knee"``, the ratio R for ``"cost:R"``.

    Raises:
        ValueError: anything else.
    """
    if objective == "knee":
        return None
    name, _, ratio = objective.partition(":")
    if name == "cost":
        try:
            value = float(ratio)
        except ValueError:
            value = math.nan
        if 0 <= value < math.inf:
            return value
    raise ValueError(
        f"unknown objective {objective!r}: use knee, or cost:R (a healthy request refused"
        " costs R failures let through)"
    )


def _proposals(start: BreakerConfig, samples: int, seed: int) -> list[BreakerConfig]:
    rng = random.Random(seed)
    found: list[BreakerConfig] = [start]
    seen = {tuple(getattr(start, n) for n in SEARCH_SPACE)}
    attempts = 0
    while len(found) < samples + 1 and attempts < samples * 50:
        attempts += 1
        choice = {name: rng.choice(values) for name, values in SEARCH_SPACE.items()}
        if choice["failure_rate"] is None and choice["consecutive_failures"] is None:
            continue  # a breaker that can never trip teaches nothing
        calls = choice["window_calls"]
        if calls is not None and calls < choice["minimum_calls"]:
            continue
        signature = tuple(choice.values())
        if signature in seen:
            continue
        try:
            config = start.replace(
                max_open_duration=max(start.max_open_duration, choice["open_duration"]), **choice
            )
        except ValueError:
            continue
        seen.add(signature)
        found.append(config)
    return found


def _score(
    source: Iterable[Request], batch: list[tuple[str, BreakerConfig]], key: KeyFunc
) -> tuple[list[tuple[str, int, int, int, int]], int, int]:
    """Replay ``source`` once with every configuration of ``batch``; runs in a worker."""
    report = simulate(source, configs=dict(batch), key=key)
    out = []
    for name, _ in batch:
        total = report.totals(name)
        out.append(
            (
                name,
                total.failures_reached,
                total.healthy_refused,
                total.failures_avoided,
                total.trips + total.reopens,
            )
        )
    first = report.totals(batch[0][0])
    return out, first.requests, first.failures_reached + first.failures_avoided


def _frontier(candidates: Sequence[Candidate]) -> list[Candidate]:
    ordered = sorted(candidates, key=lambda c: (c.failures_reached, c.healthy_refused, c.trips))
    front: list[Candidate] = []
    best_refused = math.inf
    for c in ordered:
        if c.healthy_refused < best_refused:
            front.append(c)
            best_refused = c.healthy_refused
    return front


def _pick(front: Sequence[Candidate], ratio: float | None) -> Candidate:
    order = {id(c): i for i, c in enumerate(front)}
    if ratio is not None:
        return min(
            front,
            key=lambda c: (c.failures_reached + ratio * c.healthy_refused, c.trips, order[id(c)]),
        )
    top_f = max(c.failures_reached for c in front) or 1
    top_r = max(c.healthy_refused for c in front) or 1
    return min(
        front,
        key=lambda c: (
            (c.failures_reached / top_f) ** 2 + (c.healthy_refused / top_r) ** 2,
            c.trips,
            order[id(c)],
        ),
    )


def tune(
    source: Iterable[Request],
    *,
    start: BreakerConfig | None = None,
    objective: str = "knee",
    samples: int = 40,
    seed: int = 0,
    processes: int | None = 2,
    key: KeyFunc = by_host,
) -> TuneResult:
    """Search thresholds on ``source`` and recommend a configuration.

    Args:
        source: The traffic: a :class:`LogSource`, a :class:`Scenario` or rows.
            With ``processes`` > 1 it is sent to each worker (pickled), which
            replays it on its own: a log source is read from its file there.
        start: The configuration to search around: the untuned fields come
            from it, and it is a candidate itself (default ``BreakerConfig()``).
        objective: ``"knee"`` or ``"cost:R"`` (see the module docstring).
        samples: How many configurations to draw besides ``start``.
        seed: The seed of the draw.
        processes: Worker processes (``spawn``); ``1`` or ``None`` replays here.
        key: The key function, as for :func:`simulate` (with processes it must
            be picklable: ``by_host``, ``by_route(...)`` or a module-level function).

    Returns:
        The :class:`TuneResult`.

    Raises:
        ValueError: a bad objective or sample count.
    """
    ratio = parse_objective(objective)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an int >= 1, got {samples!r}")
    configs = _proposals(start or BreakerConfig(), samples, seed)
    named = [("start" if i == 0 else f"c{i}", c) for i, c in enumerate(configs)]
    workers = max(1, min(processes or 1, len(named)))
    batches = [named[i::workers] for i in range(workers)]
    if workers == 1:
        results = [_score(source, batches[0], key)]
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = [pool.submit(_score, source, batch, key) for batch in batches]
            results = [future.result() for future in futures]
    by_name = dict(named)
    scores = {row[0]: row for result in results for row in result[0]}
    candidates = tuple(Candidate(name, by_name[name], *scores[name][1:]) for name, _ in named)
    front = _frontier(candidates)
    return TuneResult(
        candidates=candidates,
        frontier=tuple(front),
        recommended=_pick(front, ratio),
        objective=objective,
        requests=results[0][1],
        failures=results[0][2],
    )


def _toml_value(value: object) -> str:
    if value is None:
        return "false"  # TOML has no null: a file switches a field off with false
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, frozenset):
        return "[" + ", ".join(str(v) for v in sorted(value)) + "]"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def to_toml(config: BreakerConfig, *, comment: str = "") -> str:
    """``config`` as a configuration file (its ``[default]`` table) for ``from_file``.

    The tuned fields are always written; the others only where they differ from
    ``BreakerConfig()``. ``classify`` cannot be written to a file and is left out.
    """
    defaults = BreakerConfig()
    lines = [f"# {line}".rstrip() for line in comment.splitlines()]
    lines.append("[default]")
    for field in fields(BreakerConfig):
        name = field.name
        if name == "classify":
            continue
        value = getattr(config, name)
        if name in SEARCH_SPACE or value != getattr(defaults, name):
            lines.append(f"{name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def write_config(result: TuneResult, path: str | os.PathLike[str]) -> None:
    """Write the recommended configuration of ``result`` to ``path`` (TOML)."""
    r = result.recommended
    comment = (
        f"Recommended by circuitbreaker-http tune ({result.objective}): on {result.requests}"
        f" requests it let {r.failures_reached} of {result.failures} failures through and"
        f" refused {r.healthy_refused} healthy requests."
    )
    with open(path, "w", encoding="utf-8") as file:
        file.write(to_toml(r.config, comment=comment))
