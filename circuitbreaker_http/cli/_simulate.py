"""``circuitbreaker-http simulate`` and ``circuitbreaker-http tune``.

Both read a log (``LOG``, format detected or given with ``--format``) or a
built-in scenario (``--scenario NAME``). Errors are one line on stderr: exit
1 when the work failed (a file that cannot be read, a bad configuration, a
row that cannot be read under ``--strict``), 2 on bad usage (argparse's own
errors, a missing extra).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable

__all__ = ["add_simulate", "add_tune", "run_simulate", "run_tune"]


def _source_arguments(parser: argparse.ArgumentParser) -> None:
    from ..simulate import FORMATS, SCENARIOS

    parser.add_argument("log", nargs="?", metavar="LOG", help="the access log to replay")
    parser.add_argument(
        "--scenario", choices=sorted(SCENARIOS), help="replay a built-in scenario instead of a log"
    )
    parser.add_argument("--seed", type=int, default=0, help="the scenario's seed (default 0)")
    parser.add_argument(
        "--duration", type=float, default=600.0, help="the scenario's seconds (default 600)"
    )
    parser.add_argument(
        "--rate", type=float, default=20.0, help="the scenario's requests per second (default 20)"
    )
    parser.add_argument(
        "--format", choices=("auto", *FORMATS), default="auto", help="the log's format"
    )
    parser.add_argument(
        "--base-url",
        default="http://upstream",
        help="nginx logs: the scheme://host requests went to (default http://upstream)",
    )
    parser.add_argument(
        "--strict", action="store_true", help="stop at the first row that cannot be read"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def add_simulate(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``simulate`` subcommand."""
    parser = commands.add_parser(
        "simulate",
        help="replay a log or a scenario through the breakers on a virtual clock",
        description="Replay traffic through real breakers and report what each"
        " configuration would have done.",
    )
    _source_arguments(parser)
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="FILE",
        help="a TOML configuration file; repeat to compare (default: BreakerConfig())",
    )
    parser.add_argument("--plot", metavar="OUT.png", help="draw a picture (the [plot] extra)")


def add_tune(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``tune`` subcommand."""
    parser = commands.add_parser(
        "tune",
        help="search thresholds on a log or a scenario and recommend a configuration",
        description="Replay traffic under many configurations, print the frontier of"
        " failures let through against healthy requests refused, recommend one.",
    )
    _source_arguments(parser)
    parser.add_argument(
        "--config", metavar="FILE", help="the configuration to search around (its [default])"
    )
    parser.add_argument(
        "--objective",
        default="knee",
        help="knee (default: nearest the ideal on the frontier) or cost:R"
        " (a healthy request refused costs R failures let through)",
    )
    parser.add_argument(
        "--samples", type=int, default=40, help="configurations to try (default 40)"
    )
    parser.add_argument("--search-seed", type=int, default=0, help="seed of the search")
    parser.add_argument("--processes", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--write", metavar="rules.toml", help="save the recommendation")


class _Failed(Exception):
    """A one-line error and its exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def _source(args: argparse.Namespace) -> Iterable[object]:
    from ..simulate import read_log, scenario

    if (args.log is None) == (args.scenario is None):
        raise _Failed("give either a LOG or --scenario NAME", 2)
    if args.scenario is not None:
        try:
            return scenario(args.scenario, seed=args.seed, duration=args.duration, rate=args.rate)
        except ValueError as exc:
            raise _Failed(str(exc), 2) from None
    if not os.path.isfile(args.log):
        raise _Failed(f"{args.log}: no such file")
    try:
        return read_log(args.log, args.format, strict=args.strict, base_url=args.base_url)
    except (OSError, ValueError) as exc:
        raise _Failed(str(exc)) from None


def _fail(exc: _Failed) -> int:
    print(f"circuitbreaker-http: {exc}", file=sys.stderr)
    return exc.status


def run_simulate(args: argparse.Namespace) -> int:
    """Run ``simulate``; returns the exit status."""
    from ..simulate import LogError, simulate

    try:
        source = _source(args)
        if args.plot is not None:
            try:
                import matplotlib  # noqa: F401
            except ImportError:
                raise _Failed(
                    '--plot needs matplotlib: pip install "circuitbreaker-http[plot]"', 2
                ) from None
        configs: object = list(args.config) or {"default": _default()}
        try:
            report = simulate(
                source,  # type: ignore[arg-type]
                configs=configs,  # type: ignore[arg-type]
                trace=args.plot is not None,
            )
        except LogError as exc:
            raise _Failed(str(exc)) from None
        except (OSError, ValueError, ImportError) as exc:
            raise _Failed(str(exc).splitlines()[0]) from None
        if args.plot is not None:
            from ..simulate._plot import plot

            try:
                plot(report, args.plot)
            except OSError as exc:
                raise _Failed(f"{args.plot}: {exc.strerror or exc}") from None
    except _Failed as exc:
        return _fail(exc)
    print(report.to_json() if args.json else report.table())
    if args.plot is not None and not args.json:
        print(f"plot written to {args.plot}")
    return 0


def _default() -> object:
    from .. import BreakerConfig

    return BreakerConfig()


def run_tune(args: argparse.Namespace) -> int:
    """Run ``tune``; returns the exit status."""
    import json

    from .. import BreakerRegistry
    from ..simulate import LogError, tune, write_config
    from ..simulate._tune import parse_objective

    try:
        try:
            parse_objective(args.objective)
        except ValueError as exc:
            raise _Failed(str(exc), 2) from None
        if args.samples < 1 or args.processes < 1:
            raise _Failed("--samples and --processes must be at least 1", 2)
        source = _source(args)
        start = None
        if args.config is not None:
            try:
                start = BreakerRegistry.from_file(args.config).default
            except (OSError, ValueError) as exc:
                raise _Failed(str(exc)) from None
        try:
            result = tune(
                source,  # type: ignore[arg-type]
                start=start,
                objective=args.objective,
                samples=args.samples,
                seed=args.search_seed,
                processes=args.processes,
            )
        except LogError as exc:
            raise _Failed(str(exc)) from None
        if args.write is not None:
            try:
                write_config(result, args.write)
            except OSError as exc:
                raise _Failed(f"{args.write}: {exc.strerror or exc}") from None
    except _Failed as exc:
        return _fail(exc)
    print(json.dumps(result.as_dict(), indent=2) if args.json else result.table())
    if args.write is not None and not args.json:
        print(f"recommended configuration written to {args.write}")
    return 0
