"""Measure what a Prometheus scrape of many breakers costs: ``BreakerCollector.collect()``.

For a registry of N breakers (10,000 by default) it times, in one run and
interleaved repeat by repeat:

1. ``registry.snapshot()`` alone: the floor every scrape pays;
2. ``collect()`` on a first scrape (no breaker's samples kept yet);
3. ``collect()`` when nothing changed since the previous scrape (idle breakers);
4. ``collect()`` when every breaker had a call since the previous scrape;
5. ``generate_latest()`` of the whole exposition, for scale (prometheus_client's own text).

Each figure is the median over repeats of wall-clock and this thread's CPU
time, with the garbage collector on (as in a real process) and, separately,
off (what the collector's own code costs). Run ``python
benchmarks/bench_observe.py --help`` for the options; ``benchmarks/README.md``
explains the figures.

This is a benchmark that prints, not a test: it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, generate_latest

from circuitbreaker_http import BreakerConfig, BreakerRegistry, CircuitBreaker, CircuitOpenError
from circuitbreaker_http.prometheus import BreakerCollector
from circuitbreaker_http.testing import ManualClock

AIM_MS = 100.0


def ok() -> None:
    return None


def fail() -> None:
    raise ZeroDivisionError


def drain(collector: BreakerCollector) -> None:
    """One scrape's worth of families, as a registry would take them."""
    list(collector.collect())


def build(n: int) -> tuple[BreakerRegistry, list[CircuitBreaker], ManualClock]:
    """N breakers, each with one success; a few in every other state."""
    clock = ManualClock(1000.0)
    registry = BreakerRegistry(
        BreakerConfig(consecutive_failures=2, failure_rate=None),
        clock=clock,
        max_breakers=n + 1,
    )
    breakers = [registry.get(f"https://host{i}.example.com") for i in range(n)]
    for breaker in breakers:
        breaker.call(ok)
    for breaker in breakers[: n // 100]:  # 1 % open
        for _ in range(2):
            with contextlib.suppress(ZeroDivisionError):
                breaker.call(fail)
    for breaker in breakers[n // 100 : n // 50]:  # 1 % forced open
        breaker.force_open()
    return registry, breakers, clock


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall-clock and thread CPU milliseconds of one call."""
    wall, cpu = time.perf_counter(), time.thread_time()
    fn()
    return (time.perf_counter() - wall) * 1e3, (time.thread_time() - cpu) * 1e3


def run(n: int, repeats: int, exposition: bool) -> dict[str, dict[str, float]]:
    registry, breakers, _clock = build(n)
    results: dict[str, list[tuple[float, float]]] = {}

    def record(name: str, value: tuple[float, float]) -> None:
        results.setdefault(name, []).append(value)

    for repeat in range(repeats):
        print(f"  repeat {repeat + 1}/{repeats}", file=sys.stderr)
        for gc_on in (True, False):
            tag = "gc on" if gc_on else "gc off"
            gc.collect()
            if not gc_on:
                gc.disable()
            try:
                record(f"snapshot() [{tag}]", timed(registry.snapshot))
                collector = BreakerCollector(registry)
                scrape = functools.partial(drain, collector)
                record(f"collect(), first scrape [{tag}]", timed(scrape))
                record(f"collect(), nothing changed [{tag}]", timed(scrape))
                for breaker in breakers:
                    with contextlib.suppress(CircuitOpenError):  # the open and forced ones
                        breaker.call(ok)
                record(f"collect(), every breaker called [{tag}]", timed(scrape))
                if exposition and gc_on:
                    metrics = CollectorRegistry()
                    metrics.register(collector)
                    text = functools.partial(generate_latest, metrics)
                    record("generate_latest(), nothing changed [gc on]", timed(text))
            finally:
                gc.enable()
    out = {}
    for name, values in results.items():
        out[name] = {
            "wall_ms": statistics.median(v[0] for v in values),
            "cpu_ms": statistics.median(v[1] for v in values),
            "wall_min_ms": min(v[0] for v in values),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--breakers", type=int, default=10_000, help="breakers in the registry")
    parser.add_argument("--repeats", type=int, default=7, help="repeats (median taken)")
    parser.add_argument("--quick", action="store_true", help="3 repeats")
    parser.add_argument("--no-exposition", action="store_true", help="skip generate_latest()")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    repeats = 3 if args.quick else args.repeats
    print(f"building {args.breakers} breakers", file=sys.stderr)
    figures = run(args.breakers, repeats, not args.no_exposition)
    if args.json:
        print(
            json.dumps(
                {
                    "breakers": args.breakers,
                    "repeats": repeats,
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                    "aim_collect_ms": AIM_MS,
                    "figures": figures,
                },
                indent=2,
            )
        )
        return
    print(f"{args.breakers} breakers, {repeats} repeats, Python {platform.python_version()}")
    print(f"{'':48} {'wall ms':>9} {'cpu ms':>9} {'min wall':>9}")
    for name, fig in figures.items():
        print(f"{name:48} {fig['wall_ms']:9.1f} {fig['cpu_ms']:9.1f} {fig['wall_min_ms']:9.1f}")
    print(f"aim: collect() for 10,000 breakers <= {AIM_MS:.0f} ms")


if __name__ == "__main__":
    main()
