"""Measure what a circuit breaker adds to a call, beside its peers.

Three figures per library, each a median over interleaved repeats taken in
one run (every repeat measures every contender once, in an order that
rotates from repeat to repeat, so slow drift of the machine hits all alike):

1. closed call: ns a call through a closed breaker adds over a bare ``f()``;
2. rejected call: ns a call rejected by an open breaker adds over a bare
   ``raise`` / ``except`` of a plain exception;
3. 8 threads: throughput of calls that each sleep 200 µs through one shared
   breaker, against 8 bare threads and against 1 bare thread.

Peers (pybreaker, circuitbreaker, interlock-cb) are measured when importable
and skipped with a note otherwise. ``--instructions`` counts instructions
for sections 1 and 2 instead (valgrind's callgrind, circuitbreaker-http
only): the same count whatever else the machine is doing. Run ``python benchmarks/bench_core.py
--help`` for the options; ``benchmarks/README.md`` explains each figure.

This is a benchmark that prints, not a test: it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import gc
import importlib
import json
import logging
import os
import platform
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

from _common import (
    Loop,
    call_loop,
    call_loop_rejected,
    callgrind_instructions,
    rotated,
    summary,
    valgrind_missing,
    version_of,
)

from circuitbreaker_http import BreakerConfig, CircuitBreaker, CircuitOpenError, CircuitState

OURS = "circuitbreaker-http"

# The aims of DESIGN.md rule 11, printed beside the figures.
AIM_CLOSED_NS = 500.0
AIM_REJECT_NS = 1000.0
AIM_SCALING = 7.5

THREADS = 8
SLEEP_S = 0.0002  # the I/O-like call of section 3
OPEN_FOR_S = 3600.0  # open periods far longer than any run
FAILS_TO_TRIP = 5
CHUNK = 10_000  # loop iterations between two looks at the time budget

"""Runs its operation ``n`` times in a tight loop."""

Op = Callable[[], object]
"""One protected call, for the threads of section 3."""


@dataclass(frozen=True)
class Mode:
    """How long to measure: loop sizes, time budgets and repeat count."""

    name: str
    repeats: int
    calls: int  # iterations per tight-loop sample (sections 1 and 2)
    budget_s: float  # time cap on one tight-loop sample
    thread_s: float  # length of one throughput sample (section 3)


MODES = {
    "default": Mode("default", repeats=15, calls=200_000, budget_s=0.25, thread_s=0.3),
    "quick": Mode("quick", repeats=7, calls=50_000, budget_s=0.06, thread_s=0.12),
}


# -- the functions being protected ----------------------------------------------


def const() -> int:
    """The closed-call workload: return a constant."""
    return 1


def boom() -> int:
    """Fail, to trip a breaker open."""
    raise ValueError("upstream failed")


def io_call() -> None:
    """The I/O-like workload of section 3: a 200 µs sleep, which releases the GIL."""
    time.sleep(SLEEP_S)


class PlainError(Exception):
    """The baseline exception of section 2: as plain as an exception gets."""


# -- tight loops ------------------------------------------------------------------
# Every loop binds what it calls to locals first, so the bare and the protected
# loops differ only in the call itself.


def loop_call0(fn: Callable[[], object]) -> Loop:
    """Loop over ``fn()``: the bare call, or a peer's decorated function."""

    def loop(n: int) -> None:
        g = fn
        for _ in repeat(None, n):
            g()

    return loop


def loop_reject0(fn: Callable[[], object], error: type[BaseException]) -> Loop:
    """Loop over a rejected ``fn()``, catching ``error``."""

    def loop(n: int) -> None:
        g, exc = fn, error
        for _ in repeat(None, n):
            try:  # noqa: SIM105 - contextlib.suppress would cost more than what is measured
                g()
            except exc:
                pass

    return loop


def loop_bare_raise(n: int) -> None:
    """The baseline of section 2: build, raise and catch a plain exception."""
    exc = PlainError
    for _ in repeat(None, n):
        try:
            raise exc("circuit 'bench' is open")
        except exc:
            pass


def time_loop(loop: Loop, calls: int, budget_s: float) -> float:
    """Return ns per iteration of ``loop``, run for ``calls`` iterations or ``budget_s``.

    The loop runs in chunks, so a slow contender stops at the time budget
    instead of stretching the run; the garbage collector is off meanwhile, as
    in ``timeit``.
    """
    chunk = min(calls, CHUNK)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        done = 0
        start = time.perf_counter_ns()
        deadline = start + int(budget_s * 1e9)
        while done < calls:
            loop(chunk)
            done += chunk
            if time.perf_counter_ns() >= deadline:
                break
        elapsed = time.perf_counter_ns() - start
    finally:
        if gc_was_enabled:
            gc.enable()
    return elapsed / done


def throughput(op: Op, threads: int, duration_s: float) -> float:
    """Return calls per second of ``threads`` threads each calling ``op`` in a loop.

    Each thread stops after ``duration_s`` or after twice as many calls as the
    sleep allows in that time, whichever comes first; the rate is all calls
    over the time from the common start to the last thread's stop.
    """
    max_calls = int(duration_s / SLEEP_S * 2) + 1
    counts = [0] * threads
    ends = [0.0] * threads
    start_at = [0.0]

    def set_start() -> None:
        start_at[0] = time.perf_counter()

    barrier = threading.Barrier(threads, action=set_start)

    def worker(slot: int) -> None:
        barrier.wait()
        deadline = start_at[0] + duration_s
        clock = time.perf_counter
        done = 0
        while done < max_calls and clock() < deadline:
            op()
            done += 1
        counts[slot] = done
        ends[slot] = clock()

    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=duration_s + 30.0)
        if thread.is_alive():
            raise RuntimeError("a benchmark thread did not finish in time")
    return sum(counts) / (max(ends) - start_at[0])


# -- contenders -----------------------------------------------------------------


@dataclass
class Contender:
    """One library, ready to be measured.

    Attributes:
        name: The distribution name.
        closed: A tight loop of calls through a closed breaker.
        rejected: A tight loop of calls rejected by an open breaker.
        shared_op: Makes a fresh closed breaker and returns one ``io_call``
            through it, for the threads to share.
        via: How the calls are made, for the notes.
    """

    name: str
    closed: Loop
    rejected: Loop
    shared_op: Callable[[], Op]
    via: str


def must_reject(name: str, attempt: Callable[[], object], error: type[BaseException]) -> None:
    """Check that a breaker meant to be open rejects ``attempt`` with ``error``."""
    try:
        attempt()
    except error:
        return
    raise RuntimeError(f"{name}: the breaker did not open as set up")


def trip(fail: Callable[[], object]) -> None:
    """Fail ``FAILS_TO_TRIP`` calls, swallowing what they raise."""
    for _ in range(FAILS_TO_TRIP):
        # What fails is the call itself, or a rejection that reports the trip.
        with contextlib.suppress(Exception):
            fail()


def ours() -> Contender:
    """circuitbreaker-http: ``CircuitBreaker.call(f)``; tripped by consecutive failures."""
    config = BreakerConfig(
        consecutive_failures=FAILS_TO_TRIP,
        open_duration=OPEN_FOR_S,
        max_open_duration=OPEN_FOR_S,
    )
    closed = CircuitBreaker("bench", config)
    tripped = CircuitBreaker("bench", config)
    trip(lambda: tripped.call(boom))
    if tripped.state is not CircuitState.OPEN:
        raise RuntimeError(f"{OURS}: the breaker did not open as set up")
    must_reject(OURS, lambda: tripped.call(const), CircuitOpenError)

    def shared_op() -> Op:
        call = CircuitBreaker("bench", config).call
        return lambda: call(io_call)

    return Contender(
        OURS,
        closed=call_loop(closed.call, const),
        rejected=call_loop_rejected(tripped.call, const, CircuitOpenError),
        shared_op=shared_op,
        via="CircuitBreaker.call(f); open = tripped by 5 consecutive failures",
    )


def pybreaker_() -> Contender:
    """pybreaker: ``CircuitBreaker(fail_max, reset_timeout).call(f)``."""
    pb: Any = importlib.import_module("pybreaker")
    closed = pb.CircuitBreaker(fail_max=FAILS_TO_TRIP, reset_timeout=OPEN_FOR_S)
    tripped = pb.CircuitBreaker(fail_max=FAILS_TO_TRIP, reset_timeout=OPEN_FOR_S)
    trip(lambda: tripped.call(boom))
    error: type[BaseException] = pb.CircuitBreakerError
    must_reject("pybreaker", lambda: tripped.call(const), error)

    def shared_op() -> Op:
        call = pb.CircuitBreaker(fail_max=FAILS_TO_TRIP, reset_timeout=OPEN_FOR_S).call
        return lambda: call(io_call)

    return Contender(
        "pybreaker",
        closed=call_loop(closed.call, const),
        rejected=call_loop_rejected(tripped.call, const, error),
        shared_op=shared_op,
        via="CircuitBreaker.call(f); open = tripped by 5 failures",
    )


def circuitbreaker_() -> Contender:
    """circuitbreaker: the decorated function (its ``.call`` skips the open check)."""
    cb: Any = importlib.import_module("circuitbreaker")

    def new() -> Any:
        return cb.CircuitBreaker(failure_threshold=FAILS_TO_TRIP, recovery_timeout=OPEN_FOR_S)

    closed_const = new()(const)
    tripped = new()
    tripped_boom, tripped_const = tripped(boom), tripped(const)
    trip(tripped_boom)
    error: type[BaseException] = cb.CircuitBreakerError
    must_reject("circuitbreaker", tripped_const, error)

    def shared_op() -> Op:
        op: Op = new()(io_call)
        return op

    return Contender(
        "circuitbreaker",
        closed=loop_call0(closed_const),
        rejected=loop_reject0(tripped_const, error),
        shared_op=shared_op,
        via="@CircuitBreaker(...)-decorated f(); open = tripped by 5 failures",
    )


def interlock_() -> Contender:
    """interlock-cb: ``CircuitBreaker.call_sync(f)`` (``call`` would also sniff for async)."""
    il: Any = importlib.import_module("interlock")

    def new() -> Any:
        config = il.Config(
            minimum_number_of_calls=FAILS_TO_TRIP,
            window_size=FAILS_TO_TRIP,
            wait_duration_in_open=OPEN_FOR_S,
        )
        return il.CircuitBreaker(name="bench", config=config)

    closed = new()
    tripped = new()
    trip(lambda: tripped.call_sync(boom))
    error: type[BaseException] = il.CircuitOpenError
    must_reject("interlock-cb", lambda: tripped.call_sync(const), error)

    def shared_op() -> Op:
        call = new().call_sync
        return lambda: call(io_call)

    return Contender(
        "interlock-cb",
        closed=call_loop(closed.call_sync, const),
        rejected=call_loop_rejected(tripped.call_sync, const, error),
        shared_op=shared_op,
        via="CircuitBreaker.call_sync(f); open = tripped by a 100% failure rate over 5 calls",
    )


PEERS: list[tuple[str, Callable[[], Contender]]] = [
    ("pybreaker", pybreaker_),
    ("circuitbreaker", circuitbreaker_),
    ("interlock-cb", interlock_),
]


# -- measuring ------------------------------------------------------------------


@dataclass
class Samples:
    """Per-repeat samples of one contender (or of the baselines)."""

    closed_ns: list[float] = field(default_factory=list)
    closed_added: list[float] = field(default_factory=list)
    closed_ratio: list[float] = field(default_factory=list)
    reject_ns: list[float] = field(default_factory=list)
    reject_added: list[float] = field(default_factory=list)
    reject_ratio: list[float] = field(default_factory=list)
    rate: list[float] = field(default_factory=list)
    rate1: list[float] = field(default_factory=list)  # the baselines only: 1 bare thread
    vs_bare8: list[float] = field(default_factory=list)
    vs_bare1: list[float] = field(default_factory=list)


BARE = "(bare)"


def shared_run(contender: Contender, duration_s: float) -> Callable[[], float]:
    """Return a run of ``THREADS`` threads sharing one fresh breaker of ``contender``."""
    return lambda: throughput(contender.shared_op(), THREADS, duration_s)


def measure(contenders: list[Contender], mode: Mode, progress: bool) -> dict[str, Samples]:
    """Run every repeat of all three sections and return the samples by name."""
    by_name = {c.name: c for c in contenders}
    samples = {name: Samples() for name in [BARE, *by_name]}
    base = samples[BARE]

    # Warm up every loop once (specialisation, caches) before anything counts.
    for loop in [loop_call0(const), loop_bare_raise]:
        loop(2_000)
    for c in contenders:
        c.closed(2_000)
        c.rejected(2_000)

    closed_loops: dict[str, Loop] = {BARE: loop_call0(const)}
    closed_loops.update((c.name, c.closed) for c in contenders)
    reject_loops: dict[str, Loop] = {BARE: loop_bare_raise}
    reject_loops.update((c.name, c.rejected) for c in contenders)
    thread_runs: dict[str, Callable[[], float]] = {
        "(bare x1)": lambda: throughput(io_call, 1, mode.thread_s),
        "(bare x8)": lambda: throughput(io_call, THREADS, mode.thread_s),
    }
    for c in contenders:
        thread_runs[c.name] = shared_run(c, mode.thread_s)

    for r in range(mode.repeats):
        if progress:
            print(f"  repeat {r + 1}/{mode.repeats}", file=sys.stderr, flush=True)
        closed = {
            name: time_loop(closed_loops[name], mode.calls, mode.budget_s)
            for name in rotated(list(closed_loops), r)
        }
        rejected = {
            name: time_loop(reject_loops[name], mode.calls, mode.budget_s)
            for name in rotated(list(reject_loops), r)
        }
        rates = {name: thread_runs[name]() for name in rotated(list(thread_runs), r)}

        bare_closed, bare_reject = closed[BARE], rejected[BARE]
        bare1, bare8 = rates["(bare x1)"], rates["(bare x8)"]
        base.closed_ns.append(bare_closed)
        base.reject_ns.append(bare_reject)
        base.rate.append(bare8)
        base.rate1.append(bare1)
        base.vs_bare1.append(bare8 / bare1)
        for name in by_name:
            s = samples[name]
            s.closed_ns.append(closed[name])
            s.closed_added.append(closed[name] - bare_closed)
            s.closed_ratio.append(closed[name] / bare_closed)
            s.reject_ns.append(rejected[name])
            s.reject_added.append(rejected[name] - bare_reject)
            s.reject_ratio.append(rejected[name] / bare_reject)
            s.rate.append(rates[name])
            s.vs_bare8.append(rates[name] / bare8)
            s.vs_bare1.append(rates[name] / bare1)
    return samples


# -- reporting ------------------------------------------------------------------


def to_json(
    samples: dict[str, Samples],
    contenders: list[Contender],
    skipped: dict[str, str],
    mode: Mode,
    seconds: float,
) -> dict[str, Any]:
    """Collect the run into plain data."""
    base = samples[BARE]
    result: dict[str, Any] = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "mode": mode.name,
        "repeats": mode.repeats,
        "calls_per_sample": mode.calls,
        "thread_sample_s": mode.thread_s,
        "threads": THREADS,
        "sleep_s": SLEEP_S,
        "seconds": round(seconds, 1),
        "aims": {
            "closed_ns_added_max": AIM_CLOSED_NS,
            "reject_ns_added_max": AIM_REJECT_NS,
            "scaling_vs_1_bare_thread_min": AIM_SCALING,
        },
        "baselines": {
            "bare_call_ns": summary(base.closed_ns),
            "bare_raise_except_ns": summary(base.reject_ns),
            "bare_1_thread_calls_per_s": summary(base.rate1),
            "bare_8_threads_calls_per_s": summary(base.rate),
            "bare_8_threads_scaling": summary(base.vs_bare1),
        },
        "contenders": {},
        "skipped": skipped,
    }
    for c in contenders:
        s = samples[c.name]
        result["contenders"][c.name] = {
            "version": version_of(c.name),
            "via": c.via,
            "closed_ns": summary(s.closed_ns),
            "closed_ns_added": summary(s.closed_added),
            "closed_ratio": summary(s.closed_ratio),
            "reject_ns": summary(s.reject_ns),
            "reject_ns_added": summary(s.reject_added),
            "reject_ratio": summary(s.reject_ratio),
            "threads_calls_per_s": summary(s.rate),
            "threads_vs_8_bare": summary(s.vs_bare8),
            "threads_scaling_vs_1_bare": summary(s.vs_bare1),
        }
    return result


def spread(s: dict[str, float]) -> str:
    """Format the quartiles of a summary as ``[p25..p75]`` in whole numbers."""
    return f"[{s['p25']:.0f}..{s['p75']:.0f}]"


# Column widths of the table: name, then per section (median, quartiles, ratio).
NAME_W, MED_W, IQR_W, RATIO_W, RATE_W = 20, 7, 13, 8, 9
GROUP_W = MED_W + 1 + IQR_W + 1 + RATIO_W


def render(data: dict[str, Any]) -> str:
    """Render the JSON data as the compact text table."""
    b = data["baselines"]
    aims = data["aims"]
    threads = data["threads"]
    lines = [
        f"circuitbreaker-http bench_core: {data['implementation']} {data['python']}, "
        f"{data['cpus']} CPUs, mode {data['mode']}: medians of {data['repeats']} interleaved "
        f"repeats [p25..p75], {data['seconds']} s",
        f"baselines: bare f() {b['bare_call_ns']['median']:.1f} ns; "
        f"bare raise/except {b['bare_raise_except_ns']['median']:.0f} ns; "
        f"1 bare thread {b['bare_1_thread_calls_per_s']['median']:,.0f} calls/s; "
        f"{threads} bare threads {b['bare_8_threads_calls_per_s']['median']:,.0f} calls/s "
        f"= {b['bare_8_threads_scaling']['median']:.2f}x 1 thread",
        "",
        f"{'':{NAME_W}} {'closed call (ns added)':^{GROUP_W}}   "
        f"{'rejected call (ns added)':^{GROUP_W}}   "
        f"{f'{threads} threads, 200 us sleep each':^{RATE_W + 2 + 2 * RATIO_W + 4}}",
        f"{'contender':{NAME_W}} {'median':>{MED_W}} {'p25..p75':^{IQR_W}} {'x bare':>{RATIO_W}}   "
        f"{'median':>{MED_W}} {'p25..p75':^{IQR_W}} {'x bare':>{RATIO_W}}   "
        f"{'calls/s':>{RATE_W}} {'vs 8 bare':>{RATIO_W + 2}} {'vs 1 bare':>{RATIO_W + 2}}",
    ]
    for name, c in data["contenders"].items():
        ca, cr = c["closed_ns_added"], c["closed_ratio"]
        ra, rr = c["reject_ns_added"], c["reject_ratio"]
        lines.append(
            f"{name:{NAME_W}} {ca['median']:>+{MED_W}.0f} {spread(ca):^{IQR_W}} "
            f"{cr['median']:>{RATIO_W - 1}.2f}x   "
            f"{ra['median']:>+{MED_W}.0f} {spread(ra):^{IQR_W}} "
            f"{rr['median']:>{RATIO_W - 1}.2f}x   "
            f"{c['threads_calls_per_s']['median']:>{RATE_W},.0f} "
            f"{c['threads_vs_8_bare']['median']:>{RATIO_W + 1}.3f}x "
            f"{c['threads_scaling_vs_1_bare']['median']:>{RATIO_W + 1}.2f}x"
        )
    closed_aim = f"<={aims['closed_ns_added_max']:.0f}"
    reject_aim = f"<={aims['reject_ns_added_max']:.0f}"
    scaling_aim = f">={aims['scaling_vs_1_bare_thread_min']:.1f}x"
    lines.append(
        f"{'aim':{NAME_W}} {closed_aim:>{MED_W}} {'':{IQR_W}} {'':{RATIO_W}}   "
        f"{reject_aim:>{MED_W}} {'':{IQR_W}} {'':{RATIO_W}}   "
        f"{'':{RATE_W}} {'':{RATIO_W + 2}} {scaling_aim:>{RATIO_W + 2}}"
    )
    mine = data["contenders"].get(OURS)
    if mine is not None:
        checks = [
            ("closed call", mine["closed_ns_added"]["median"] <= aims["closed_ns_added_max"]),
            ("rejected call", mine["reject_ns_added"]["median"] <= aims["reject_ns_added_max"]),
            (
                "8-thread scaling",
                mine["threads_scaling_vs_1_bare"]["median"] >= aims["scaling_vs_1_bare_thread_min"],
            ),
        ]
        verdicts = ", ".join(f"{k} {'met' if ok else 'MISSED'}" for k, ok in checks)
        lines.append(f"{OURS} against the aims: {verdicts}")
    lines.append("")
    for name, c in data["contenders"].items():
        lines.append(f"  {name} {c['version']}: {c['via']}")
    for name, reason in data["skipped"].items():
        lines.append(f"  {name}: skipped ({reason})")
    return "\n".join(lines)


# -- instruction counts -------------------------------------------------------------

# --instructions: iterations per child run (the figure is the difference / their gap).
INSTRUCTION_LOOPS = (2_000, 22_000)
INSTRUCTION_WARM = 2_000
INSTRUCTION_ENV = {"PYTHONHASHSEED": "0"}
INSTRUCTION_CASES = (
    "bare f()",
    "closed call",
    "closed, slow rule",
    "bare raise/except",
    "rejected call",
)


def instruction_loop(case: str) -> Loop:
    """The tight loop of one ``--instructions`` case."""
    if case == "bare f()":
        return loop_call0(const)
    if case == "bare raise/except":
        return loop_bare_raise
    if case == "closed, slow rule":
        # A slow-call rule: every call reads the clock before and after.
        timed = CircuitBreaker("bench", BreakerConfig(slow_call_duration=OPEN_FOR_S))
        return call_loop(timed.call, const)
    mine = ours()
    return mine.closed if case == "closed call" else mine.rejected


def child(case: str, n: int) -> int:
    """One ``--instructions`` subprocess: warm up, then ``n`` iterations of one case."""
    logging.getLogger("circuitbreaker_http").addHandler(logging.NullHandler())
    loop = instruction_loop(case)
    gc.disable()
    loop(INSTRUCTION_WARM)
    loop(n)
    return 0


def count_instructions(jobs: int) -> dict[str, Any]:
    """Instructions per iteration of every case, by callgrind, and what the breaker adds."""
    low, high = INSTRUCTION_LOOPS
    runs = [(case, n) for case in INSTRUCTION_CASES for n in INSTRUCTION_LOOPS]
    script = os.path.abspath(__file__)

    def one(run: tuple[str, int]) -> int:
        case, n = run
        ir = callgrind_instructions(
            [sys.executable, script, "--child", case, str(n)], INSTRUCTION_ENV
        )
        print(f"  {case}, {n} iterations: {ir:,} Ir", file=sys.stderr, flush=True)
        return ir

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        counted = dict(zip(runs, pool.map(one, runs), strict=True))
    per = {
        case: (counted[(case, high)] - counted[(case, low)]) / (high - low)
        for case in INSTRUCTION_CASES
    }
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "mode": "instructions",
        "loops": list(INSTRUCTION_LOOPS),
        "env": INSTRUCTION_ENV,
        "seconds": round(time.perf_counter() - started, 1),
        "per_iteration_ir": per,
        "closed_ir_added": per["closed call"] - per["bare f()"],
        "closed_slow_rule_ir_added": per["closed, slow rule"] - per["bare f()"],
        "reject_ir_added": per["rejected call"] - per["bare raise/except"],
    }


def render_instructions(data: dict[str, Any]) -> str:
    """Render the ``--instructions`` data as lines."""
    low, high = data["loops"]
    per = data["per_iteration_ir"]
    return "\n".join(
        [
            f"circuitbreaker-http bench_core --instructions: {data['implementation']} "
            f"{data['python']}: callgrind Ir of {high} iterations minus Ir of {low}, over "
            f"{high - low}, {data['seconds']} s",
            *(f"  {case:20} {ir:>8,.0f} Ir" for case, ir in per.items()),
            f"closed call adds {data['closed_ir_added']:,.0f} Ir over a bare f() "
            f"({per['closed call'] / per['bare f()']:.2f}x); with a slow-call rule "
            f"{data['closed_slow_rule_ir_added']:,.0f} Ir",
            f"rejected call adds {data['reject_ir_added']:,.0f} Ir over a bare raise/except "
            f"({per['rejected call'] / per['bare raise/except']:.2f}x)",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """Parse the options, measure, print."""
    parser = argparse.ArgumentParser(
        description="Overhead of a closed call, a rejected call and 8-thread "
        "throughput through circuitbreaker-http and its peers."
    )
    parser.add_argument("--quick", action="store_true", help="fewer, shorter repeats (< 20 s)")
    parser.add_argument(
        "--json", action="store_true", help="print the numbers as JSON instead of the table"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="override the mode's repeat count"
    )
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count instructions per call under valgrind's callgrind instead of timing "
        "(circuitbreaker-http only; about a minute)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        help="--instructions: valgrind runs at once (default: the CPU count)",
    )
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        case, n = args.child
        return child(case, int(n))
    if args.instructions:
        missing = valgrind_missing()
        if missing:
            parser.error(f"--instructions needs valgrind: {missing}")
        data = count_instructions(max(1, args.jobs))
        print(json.dumps(data, indent=2) if args.json else render_instructions(data))
        return 0
    mode = MODES["quick" if args.quick else "default"]
    if args.repeats is not None:
        if args.repeats < 1:
            parser.error("--repeats must be >= 1")
        mode = Mode(mode.name, args.repeats, mode.calls, mode.budget_s, mode.thread_s)

    # Tripping the breakers open logs their transitions; keep them off stderr.
    for library in ("circuitbreaker_http", "pybreaker", "interlock"):
        logging.getLogger(library).addHandler(logging.NullHandler())
    contenders = [ours()]
    skipped: dict[str, str] = {}
    for name, build in PEERS:
        try:
            contenders.append(build())
        except ImportError as exc:
            skipped[name] = f"not importable: {exc}"

    started = time.perf_counter()
    samples = measure(contenders, mode, progress=True)
    data = to_json(samples, contenders, skipped, mode, time.perf_counter() - started)
    print(json.dumps(data, indent=2) if args.json else render(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
