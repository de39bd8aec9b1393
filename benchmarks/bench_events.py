"""What observability costs on the hot path: issue 10's figures.

Two questions, each answered in nanoseconds (timed) and in instructions
(valgrind's callgrind, which a busy machine does not move):

1. With **no subscriber**, does a closed call cost what it cost before the
   events existed? Pass the package trees to compare with ``--tree`` (a
   checkout of each commit, e.g. ``git worktree add /tmp/before ca7ae98``):
   every figure is measured for each tree, in the same run, each tree in its
   own subprocesses with ``PYTHONPATH`` pointing at it.
2. What does one **CallRecorded subscriber** (a listener that does nothing)
   add per call, on ``CircuitBreaker.call`` and on an httpx request through
   ``CircuitBreakerTransport`` (subscribed on its registry)? Trees without
   ``subscribe`` skip those rows.

Contenders: ``bare`` (``f()``), ``call`` (``breaker.call(f)``), ``call+sub``;
``httpx-noop`` (an ``httpx.Client`` on ``MockTransport`` behind a do-nothing
wrapping transport), ``httpx`` (behind our transport), ``httpx+sub``.

Timing: each round runs one child per tree (in rotating order), which times
every contender in interleaved chunks and reports the median ns per call;
differences (``call - bare``, ``httpx - httpx-noop``, ``+sub`` minus without)
are taken per round, and the table shows their median and ``[p25..p75]``
over rounds. Instructions: each contender of each tree runs twice under
callgrind, at two loop counts; the difference over the extra loops is its
count per call, exact to a few instructions and free of the machine's load,
though memory layout moves it by up to ~1.5k instructions per httpx request.

This is a benchmark that prints, not a test: it asserts nothing.

    python benchmarks/bench_events.py --tree /tmp/before --tree /tmp/after
    python benchmarks/bench_events.py --no-instructions --rounds 11
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gc
import json
import os
import subprocess
import sys
import time
from itertools import repeat
from typing import Any

from _common import callgrind_instructions, rotated, summary, valgrind_missing

CALLS = ("bare", "call", "call+sub")
REQUESTS = ("httpx-noop", "httpx", "httpx+sub")
CONTENDERS = CALLS + REQUESTS
# Per-call loop counts for the instruction runs (calls; httpx requests).
LOOPS = {"call": (2_000, 12_000), "httpx": (100, 400)}
AIM_NS = 20.0  # issue 10: no subscriber, at most +20 ns per call over the old tree


def _noop(event: object) -> None:
    """The subscriber: does nothing."""


def build(name: str) -> Any:
    """A zero-argument callable doing one call of contender ``name``, or ``None`` (skipped)."""
    from circuitbreaker_http import CircuitBreaker

    def f() -> int:
        return 1

    if name == "bare":
        return f
    if name in ("call", "call+sub"):
        breaker = CircuitBreaker("bench")
        if name == "call+sub":
            try:
                from circuitbreaker_http import CallRecorded
            except ImportError:
                return None
            breaker.subscribe(_noop, CallRecorded)
        call = breaker.call
        return lambda: call(f)
    import httpx

    mock = httpx.MockTransport(lambda request: httpx.Response(200, content=b"ok"))
    if name == "httpx-noop":

        class Noop(httpx.BaseTransport):
            def handle_request(self, request: Any) -> Any:
                return mock.handle_request(request)

        transport: Any = Noop()
    else:
        from circuitbreaker_http.httpx import CircuitBreakerTransport

        transport = CircuitBreakerTransport(mock)
        if name == "httpx+sub":
            try:
                from circuitbreaker_http import CallRecorded
            except ImportError:
                return None
            transport.registry.subscribe(_noop, CallRecorded)
    client = httpx.Client(transport=transport)
    get = client.get
    return lambda: get("http://bench.test/users/42")


def child_time(budget_s: float) -> dict[str, float | None]:
    """ns per call of every contender: interleaved chunks, median per contender."""
    ops = {name: build(name) for name in CONTENDERS}
    samples: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    live = [name for name, op in ops.items() if op is not None]
    for name in live:  # warm up
        op = ops[name]
        for _ in range(50):
            op()
    gc.collect()
    gc.disable()
    deadline = time.perf_counter() + budget_s
    turn = 0
    while time.perf_counter() < deadline or turn < 5:
        for name in rotated(live, turn):
            op = ops[name]
            n = 20 if name in REQUESTS else 2_000
            began = time.perf_counter_ns()
            for _ in repeat(None, n):
                op()
            samples[name].append((time.perf_counter_ns() - began) / n)
        turn += 1
    gc.enable()
    return {name: (sorted(s)[len(s) // 2] if s else None) for name, s in samples.items()}


def child_count(name: str, n: int) -> None:
    """Warm up, then ``n`` calls of ``name`` (run under callgrind)."""
    op = build(name)
    if op is None:
        raise SystemExit(3)
    for _ in range(50):
        op()
    gc.disable()
    for _ in repeat(None, n):
        op()


def _env(tree: str) -> dict[str, str]:
    return {"PYTHONPATH": tree, "PYTHONHASHSEED": "0"}


def _differences(row: dict[str, float | None]) -> dict[str, float | None]:
    def minus(a: str, b: str) -> float | None:
        x, y = row.get(a), row.get(b)
        return None if x is None or y is None else x - y

    return {
        "call - bare": minus("call", "bare"),
        "call+sub - call": minus("call+sub", "call"),
        "httpx - httpx-noop": minus("httpx", "httpx-noop"),
        "httpx+sub - httpx": minus("httpx+sub", "httpx"),
    }


def timed(trees: list[str], rounds: int, budget_s: float, progress: bool) -> dict[str, Any]:
    """Per tree: per-round differences of the child timings, summarised."""
    script = os.path.abspath(__file__)
    per: dict[str, list[dict[str, float | None]]] = {tree: [] for tree in trees}
    for r in range(rounds):
        for tree in rotated(trees, r):
            out = subprocess.run(
                [sys.executable, script, "--child-time", str(budget_s)],
                env={**os.environ, **_env(tree)},
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            per[tree].append(_differences(json.loads(out)))
        if progress:
            print(f"  timing round {r + 1}/{rounds}", file=sys.stderr, flush=True)
    result: dict[str, Any] = {}
    for tree, rows in per.items():
        result[tree] = {}
        for figure in rows[0]:
            values = [row[figure] for row in rows if row[figure] is not None]
            result[tree][figure] = summary(values) if values else None  # type: ignore[arg-type]
    return result


def counted(
    trees: list[str], jobs: int, progress: bool, only: tuple[str, ...] = CONTENDERS
) -> dict[str, Any]:
    """Per tree and contender: instructions per call, by callgrind (``only`` those named)."""
    script = os.path.abspath(__file__)
    runs = [
        (tree, name, n)
        for tree in trees
        for name in only
        for n in LOOPS["httpx" if name in REQUESTS else "call"]
    ]

    def one(run: tuple[str, str, int]) -> int | None:
        tree, name, n = run
        try:
            ir = callgrind_instructions(
                [sys.executable, script, "--child-count", name, str(n)], _env(tree)
            )
        except Exception:
            return None  # skipped in this tree (or failed): no row
        if progress:
            print(f"  {tree} {name} x{n}: {ir:,} Ir", file=sys.stderr, flush=True)
        return ir

    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        irs = dict(zip(runs, pool.map(one, runs), strict=True))
    result: dict[str, Any] = {}
    for tree in trees:
        per_call: dict[str, float | None] = {}
        for name in CONTENDERS:
            low, high = LOOPS["httpx" if name in REQUESTS else "call"]
            a, b = irs.get((tree, name, low)), irs.get((tree, name, high))
            per_call[name] = None if a is None or b is None else (b - a) / (high - low)
        result[tree] = {"per_call": per_call, **_differences(per_call)}
    return result


def _fmt(value: Any, unit: str) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, dict):
        return f"{value['median']:+8.1f} {unit} [{value['p25']:+.1f}..{value['p75']:+.1f}]"
    return f"{value:+10.0f} {unit}"


def render(trees: list[str], times: dict[str, Any] | None, irs: dict[str, Any] | None) -> str:
    """The table: one column block per tree."""
    lines = []
    figures = ["call - bare", "call+sub - call", "httpx - httpx-noop", "httpx+sub - httpx"]
    for tree in trees:
        lines.append(f"== {tree}")
        for figure in figures:
            ns = _fmt(times[tree][figure], "ns") if times else ""
            ir = _fmt(irs[tree][figure], "Ir") if irs else ""
            lines.append(f"  {figure:20s} {ns:36s} {ir}")
        if irs:
            per = irs[tree]["per_call"]
            shown = ", ".join(f"{k} {v:,.0f}" for k, v in per.items() if v is not None)
            lines.append(f"  (Ir per call: {shown})")
    if len(trees) > 1:
        first = trees[0]
        lines.append(f"== each tree minus {first} (no subscriber; aim <= +{AIM_NS:g} ns a call)")
        for tree in trees[1:]:
            for figure in ("call - bare", "httpx - httpx-noop"):
                parts = []
                if times and times[tree][figure] and times[first][figure]:
                    delta = times[tree][figure]["median"] - times[first][figure]["median"]
                    parts.append(f"{delta:+.1f} ns")
                if irs and irs[tree][figure] is not None and irs[first][figure] is not None:
                    parts.append(f"{irs[tree][figure] - irs[first][figure]:+.0f} Ir")
                lines.append(f"  {tree}: {figure}: {', '.join(parts)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", help="a package tree to measure (repeatable)")
    parser.add_argument("--rounds", type=int, default=7, help="timing rounds (default 7)")
    parser.add_argument("--budget", type=float, default=1.0, help="seconds per timing child")
    parser.add_argument("--no-instructions", action="store_true", help="timing only")
    parser.add_argument("--no-timing", action="store_true", help="instructions only")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument(
        "--only", help=f"instructions: these contenders only (comma-separated, of {CONTENDERS})"
    )
    parser.add_argument("--child-time", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--child-count", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_time is not None:
        print(json.dumps(child_time(args.child_time)))
        return 0
    if args.child_count:
        child_count(args.child_count[0], int(args.child_count[1]))
        return 0
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    trees = [os.path.abspath(t) for t in (args.tree or [here])]
    times = None if args.no_timing else timed(trees, args.rounds, args.budget, True)
    irs = None
    if not args.no_instructions:
        missing = valgrind_missing()
        if missing:
            parser.error(f"instructions need valgrind: {missing} (or pass --no-instructions)")
        only = tuple(args.only.split(",")) if args.only else CONTENDERS
        irs = counted(trees, args.jobs, True, only)
    if args.json:
        print(json.dumps({"trees": trees, "timing": times, "instructions": irs}, indent=2))
    else:
        print(render(trees, times, irs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
