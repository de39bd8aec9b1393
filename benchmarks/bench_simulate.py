"""The simulator's figures: replayed requests a minute on one core, memory in the log's length.

Prints, asserts nothing. Run: ``python benchmarks/bench_simulate.py [ROWS]``.

* Throughput: ``simulate()`` with one configuration over rows already in a
  list (the replay alone), over a built-in scenario (generation included) and
  over a CSV file (parsing included). The aim is 3,000,000 requests a minute.
* Memory: the tracemalloc peak of ``simulate()`` over a scenario and over a
  CSV file of 100,000 and of ten times as many rows; the readers and the
  replay stream, so the two peaks should be about equal.
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile
import time
import tracemalloc

from circuitbreaker_http import BreakerConfig
from circuitbreaker_http.simulate import Scenario, read_log, simulate

CONFIG = BreakerConfig()
RATE = 200.0  # requests a second: about a dozen in flight at once


def source(rows: int) -> Scenario:
    return Scenario("flapping", seed=1, duration=rows / RATE, rate=RATE)


def per_minute(rows: int, seconds: float) -> str:
    return f"{rows / seconds * 60:>12,.0f} requests/min ({seconds:.2f} s for {rows:,})"


def throughput(rows: int, path: str) -> None:
    listed = list(source(rows))
    for label, make in (
        ("replay of rows in a list", lambda: listed),
        ("scenario (generated on the fly)", lambda: source(rows)),
        ("CSV file (read and parsed)", lambda: read_log(path)),
    ):
        best = float("inf")
        for _ in range(3):
            gc.collect()
            began = time.perf_counter()
            report = simulate(make(), configs=CONFIG)
            best = min(best, time.perf_counter() - began)
        print(f"  {label:<34} {per_minute(report.rows, best)}")


def write_csv(path: str, rows: int) -> None:
    with open(path, "w", encoding="utf-8") as file:
        file.write("timestamp,key,status,error,duration\n")
        for r in source(rows):
            file.write(f"{r.time:.6f},{r.key},{r.status or ''},{r.error or ''},{r.duration:.4f}\n")


def peak(make: object) -> tuple[int, float]:
    gc.collect()
    tracemalloc.start()
    began = time.perf_counter()
    report = simulate(make(), configs=CONFIG)  # type: ignore[operator]
    took = time.perf_counter() - began
    _, top = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert report.rows > 0
    return top, took


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 300_000
    with tempfile.TemporaryDirectory() as tmp:
        small, large = os.path.join(tmp, "small.csv"), os.path.join(tmp, "large.csv")
        write_csv(small, 100_000)
        write_csv(large, 1_000_000)
        print(f"throughput, one core, one configuration, {rows:,} rows:")
        path = os.path.join(tmp, "rows.csv")
        write_csv(path, rows)
        throughput(rows, path)
        print("memory (tracemalloc peak of simulate()):")
        for label, small_source, large_source in (
            ("scenario", lambda: source(100_000), lambda: source(1_000_000)),
            ("CSV file", lambda: read_log(small), lambda: read_log(large)),
        ):
            a, _ = peak(small_source)
            b, took = peak(large_source)
            print(
                f"  {label:<9} 100,000 rows: {a / 1e6:6.2f} MB   1,000,000 rows: {b / 1e6:6.2f} MB"
                f"   (x{b / a:.2f}; {took:.0f} s under tracemalloc)"
            )


if __name__ == "__main__":
    main()
