"""Pictures of a simulation (the ``plot`` extra: matplotlib, drawn headless).

Per key, one panel of the upstream as the log shows it (failure rate and
latency over time) and under it one row per configuration: the breaker's
states as coloured bands and the requests it short-circuited, split into
failures avoided and healthy requests refused, so a good and a bad
configuration tell themselves apart at a glance.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

from .._core import CircuitState
from ._report import SimulationReport, Trace

__all__ = ["PLOT_EXTRA", "plot"]

PLOT_EXTRA = 'pip install "circuitbreaker-http[plot]"'
"""What to install for :func:`plot`."""

_STATE_COLOURS = {
    CircuitState.OPEN: ("#e45756", "open"),
    CircuitState.HALF_OPEN: ("#f2b134", "half-open"),
    CircuitState.FORCED_OPEN: ("#9d3a3a", "forced open"),
}
_AVOIDED = "#2a9d5c"
_REFUSED = "#7b4fc9"
_ERRORS = "#d1495b"
_LATENCY = "#3b6ea8"
_MAX_BINS = 400


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ImportError(f"plotting needs matplotlib: {PLOT_EXTRA}") from None
    # Headless: a plot is a file, never a window (and no display is needed).
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as pyplot

    return pyplot


def _rebin(values: Mapping[int, float], factor: int) -> dict[int, float]:
    out: dict[int, float] = {}
    for index, value in values.items():
        out[index // factor] = out.get(index // factor, 0.0) + value
    return out


def _series(trace: Trace, span: float) -> tuple[float, int, list[float]]:
    """Seconds per plotted bin, the rebinning factor and the bins' left edges."""
    bins = max(1, math.ceil(span / trace.bin))
    factor = max(1, math.ceil(bins / _MAX_BINS))
    width = trace.bin * factor
    count = math.ceil(bins / factor) + 1
    return width, factor, [i * width for i in range(count)]


def plot(
    report: SimulationReport,
    path: str | os.PathLike[str],
    *,
    max_keys: int = 3,
    title: str | None = None,
) -> None:
    """Draw ``report`` to a PNG file.

    The report must come from ``simulate(..., trace=True)``. Per key (the
    ``max_keys`` busiest), one panel of the upstream's failure rate and mean
    latency over time, then one row per configuration with its states as
    bands (red open, amber half-open) and its short-circuited requests per
    time bin (green: failures avoided; purple: healthy requests refused).

    Args:
        report: What :func:`simulate` returned, with ``trace=True``.
        path: The PNG file to write.
        max_keys: How many keys to draw, busiest first.
        title: A title over the picture (default: the report's source).

    Raises:
        ImportError: matplotlib is not installed (the message names the extra).
        ValueError: the report has no trace.
    """
    if report.traces is None:
        raise ValueError("plot needs a report made with simulate(..., trace=True)")
    pyplot = _pyplot()
    keys = [k for k in report.keys() if k in report.traces][:max_keys]  # noqa: SIM118
    configs = report.configs
    span = max(report.end - report.start, 1.0)
    minutes = span > 1200
    unit, scale = ("min", 60.0) if minutes else ("s", 1.0)
    rows_per_key = 1 + len(configs)
    heights: list[float] = []
    for _ in keys:
        heights += [2.2] + [1.0] * len(configs)
    figure, axes = pyplot.subplots(
        len(heights),
        1,
        figsize=(11, 0.9 + 1.05 * sum(heights)),
        sharex=True,
        gridspec_kw={"height_ratios": heights, "hspace": 0.55},
        squeeze=False,
    )
    for n, key in enumerate(keys):
        trace = report.traces[key]
        width, factor, edges = _series(trace, span)
        requests = _rebin(trace.requests, factor)
        failures = _rebin(trace.failures, factor)
        latency = _rebin(trace.latency, factor)
        xs = [e / scale for e in edges]
        bar_width = width / scale
        top = axes[n * rows_per_key][0]
        rates = [
            100.0 * failures.get(i, 0.0) / requests[i] if requests.get(i) else 0.0
            for i in range(len(edges))
        ]
        top.fill_between(xs, rates, step="post", color=_ERRORS, alpha=0.35, linewidth=0)
        top.step(xs, rates, where="post", color=_ERRORS, linewidth=1.0, label="failure rate")
        top.set_ylim(0, 105)
        top.set_ylabel("failed %", color=_ERRORS)
        top.tick_params(axis="y", colors=_ERRORS)
        means = [
            1000.0 * latency[i] / requests[i] if requests.get(i) else math.nan
            for i in range(len(edges))
        ]
        right = top.twinx()
        right.step(xs, means, where="post", color=_LATENCY, linewidth=1.2, label="mean latency")
        right.set_ylabel("latency ms", color=_LATENCY)
        right.tick_params(axis="y", colors=_LATENCY)
        right.set_ylim(bottom=0)
        per_second = sum(trace.requests.values()) / span
        top.set_title(
            f"{key}: the upstream as logged ({per_second:.3g} requests/s)",
            loc="left",
            fontsize=10,
            fontweight="bold",
        )
        for spine in ("top",):
            top.spines[spine].set_visible(False)
        for c, name in enumerate(configs):
            ax = axes[n * rows_per_key + 1 + c][0]
            result = report.result(key, name)
            _bands(ax, result.transitions, report.start, report.end, scale)
            refused = trace.refused.get(name, {})
            avoided = _rebin({i: v[0] for i, v in refused.items()}, factor)
            healthy = _rebin({i: v[1] for i, v in refused.items()}, factor)
            share_a = [
                100.0 * avoided.get(i, 0.0) / requests[i] if requests.get(i) else 0.0
                for i in range(len(edges))
            ]
            share_h = [
                100.0 * healthy.get(i, 0.0) / requests[i] if requests.get(i) else 0.0
                for i in range(len(edges))
            ]
            ax.bar(xs, share_a, width=bar_width, align="edge", color=_AVOIDED, linewidth=0)
            ax.bar(
                xs,
                share_h,
                width=bar_width,
                align="edge",
                bottom=share_a,
                color=_REFUSED,
                linewidth=0,
            )
            ax.set_ylim(0, 130)
            ax.set_yticks([0, 50, 100])
            ax.set_ylabel("short %", fontsize=8)
            ax.tick_params(axis="y", labelsize=7)
            trips = result.trips + result.reopens
            ax.set_title(
                f"{name}: {result.failures_avoided} failures avoided,"
                f" {result.healthy_refused} healthy refused,"
                f" {result.failures_reached} failures let through, {trips} trips,"
                f" open {result.open_seconds:.0f} s",
                loc="left",
                fontsize=9,
            )
            for spine in ("top", "right"):
                ax.spines[spine].set_visible(False)
    last = axes[-1][0]
    last.set_xlim(0, span / scale)
    last.set_xlabel(f"time since the first request ({unit})")
    from matplotlib.patches import Patch

    handles = [
        Patch(color=_ERRORS, alpha=0.5, label="upstream failure rate"),
        Patch(color=_LATENCY, label="upstream mean latency"),
        Patch(color=_STATE_COLOURS[CircuitState.OPEN][0], label="breaker open"),
        Patch(color=_STATE_COLOURS[CircuitState.HALF_OPEN][0], label="breaker half-open"),
        Patch(color=_AVOIDED, label="short-circuited: failure avoided"),
        Patch(color=_REFUSED, label="short-circuited: healthy refused"),
    ]
    figure.legend(
        handles=handles,
        loc="upper center",
        ncol=3,
        fontsize=8,
        frameon=False,
        bbox_to_anchor=(0.5, 0.0),
    )
    figure.suptitle(title or report.source, fontsize=11, fontweight="bold")
    figure.savefig(os.fspath(path), dpi=110, bbox_inches="tight")
    pyplot.close(figure)


def _bands(ax: Any, transitions: Any, start: float, end: float, scale: float) -> None:
    """Shade the time spent open and half-open."""
    state = CircuitState.CLOSED
    since = start
    for change in (*transitions, None):
        at = end if change is None else change.at
        if state in _STATE_COLOURS and at > since:
            colour = _STATE_COLOURS[state][0]
            left, right = (since - start) / scale, (at - start) / scale
            # A faint band over the whole row, and a solid strip above the
            # bars: the bars fill the band while open, the strip stays visible.
            ax.axvspan(left, right, color=colour, alpha=0.15, linewidth=0)
            ax.axvspan(left, right, ymin=0.83, ymax=1.0, color=colour, alpha=0.9, linewidth=0)
        if change is not None:
            state, since = change.new, change.at
