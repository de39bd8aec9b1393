"""Replay traffic through the real breakers on a virtual clock, and pick thresholds.

Read a log (CSV, JSON Lines, nginx ``combined`` with ``$request_time``, Envoy
JSON access logs) or generate a built-in scenario, replay it through real
:class:`~circuitbreaker_http.BreakerRegistry` instances driven by a
:class:`~circuitbreaker_http.testing.ManualClock`, and see per key and
configuration what the breakers would have done::

    from circuitbreaker_http import BreakerConfig
    from circuitbreaker_http.simulate import read_log, simulate

    report = simulate(
        read_log("access.log"),
        configs={"now": "breakers.toml", "stricter": BreakerConfig(failure_rate=0.3)},
    )
    print(report.table())

Everything here is standard library; only :func:`plot` needs the ``plot``
extra (matplotlib); it loads on first touch and stays out of ``__all__``, so
a star import needs no extra. The readers and scenarios are generators, so memory stays
flat however long the log is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._readers import ENVOY_UPSTREAM_FAILURE_FLAGS, FORMATS, LogSource, detect_format, read_log
from ._replay import ConfigLike, Configs, resolve_configs, simulate
from ._report import KeyResult, OutageResult, SimulationReport, Trace
from ._rows import CANCELLED, LogError, ReadStats, Request
from ._scenarios import SCENARIOS, Scenario, scenario
from ._tune import SEARCH_SPACE, Candidate, TuneResult, to_toml, tune, write_config

if TYPE_CHECKING:
    from ._plot import plot as plot


def __getattr__(name: str) -> Any:
    """Load :func:`plot` on first touch: it needs matplotlib (the ``plot`` extra)."""
    if name != "plot":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from ._plot import plot

    globals()["plot"] = plot
    return plot


__all__ = [
    "CANCELLED",
    "ENVOY_UPSTREAM_FAILURE_FLAGS",
    "FORMATS",
    "SCENARIOS",
    "SEARCH_SPACE",
    "Candidate",
    "ConfigLike",
    "Configs",
    "KeyResult",
    "LogError",
    "LogSource",
    "OutageResult",
    "ReadStats",
    "Request",
    "Scenario",
    "SimulationReport",
    "Trace",
    "TuneResult",
    "detect_format",
    "read_log",
    "resolve_configs",
    "scenario",
    "simulate",
    "to_toml",
    "tune",
    "write_config",
]
