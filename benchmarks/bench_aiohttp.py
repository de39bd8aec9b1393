"""Measure what ``CircuitBreakerMiddleware`` adds to an aiohttp request over loopback.

Every request is ``async with session.get(url) as r: await r.read()`` on an
``aiohttp.ClientSession`` against a minimal keep-alive HTTP/1.1 server on
loopback, in a child process (so it never competes with the client for the
GIL or the event loop). Three sessions are compared:

* bare: no middleware;
* do-nothing: one middleware that only awaits ``handler(request)``, the floor
  any middleware pays (aiohttp builds the middleware chain per request);
* circuitbreaker-http: ``CircuitBreakerMiddleware()`` with its defaults
  (``by_host``, a closed breaker).

Two bodies: 13 bytes (it arrives with the headers, so the outcome settles at
once and the body is never wrapped) and 256 KiB (it arrives after the headers,
so ``response.content`` is watched until the body ends).

All three sessions share one connector, so one keep-alive connection: they
differ by their middlewares only. Each round sends a batch of requests through
every session interleaved one by one (request ``k`` goes through the three in
an order rotated by ``k`` and by the round), each timed on its own, so a slow
moment of a busy machine lands on every session alike; the garbage collector
is off during a round. Ratios are taken within a round (paired) and the median
over rounds is reported with its ``[p25..p75]``, for wall-clock time and for
this process's CPU time (the client's own work, which other processes on a
busy machine barely move). Run ``python benchmarks/bench_aiohttp.py --help``
for the options. This is a benchmark that prints, not a test: it asserts
nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import platform
import socket
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import _common
import aiohttp

from circuitbreaker_http.aiohttp import CircuitBreakerMiddleware

AIM_PCT = 2.0  # at most 2 % over the bare session, beside the do-nothing middleware

SMALL = b"hello, world\n"
BIG = bytes(range(256)) * 1024  # 256 KiB
RESPONSES = {
    b"/small": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s"
    % (len(SMALL), SMALL),
    b"/big": b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(BIG), BIG),
}
BODIES = {"13 B": "/small", "256 KiB": "/big"}


@dataclass(frozen=True)
class Mode:
    """How long to measure."""

    name: str
    rounds: int  # interleaved rounds (at most)
    batch: int  # requests per session per round
    deadline_s: float  # time cap on the measured rounds, per body


MODES = {
    "default": Mode("default", rounds=300, batch=50, deadline_s=45.0),
    "quick": Mode("quick", rounds=60, batch=30, deadline_s=8.0),
}


# -- a minimal keep-alive server, in a child process ---------------------------------------------


def _serve_connection(conn: socket.socket) -> None:
    buffer = b""
    with contextlib.suppress(OSError), conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            data = conn.recv(65536)
            if not data:
                return
            buffer += data
            # GET requests only: there are no bodies to skip.
            while b"\r\n\r\n" in buffer:
                request, buffer = buffer.split(b"\r\n\r\n", 1)
                path = request.split(b" ", 2)[1]
                conn.sendall(RESPONSES.get(path, RESPONSES[b"/small"]))


@contextlib.contextmanager
def canned_server() -> Iterator[str]:
    """The canned server of ``_serve_connection`` (see ``_common.canned_server``)."""
    with _common.canned_server(_serve_connection) as origin:
        yield origin + ""


# -- contenders ---------------------------------------------------------------------------------


async def do_nothing(
    request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
) -> aiohttp.ClientResponse:
    """The floor: a middleware that only passes the request on."""
    return await handler(request)


FIGURES = (
    "wall_us",
    "wall_x_bare",
    "wall_x_do_nothing",
    "cpu_us",
    "cpu_x_bare",
    "cpu_x_do_nothing",
)
BARE = "bare session"
FLOOR = "do-nothing middleware"
OURS = "circuitbreaker-http"


def middlewares() -> dict[str, list[Any]]:
    return {BARE: [], FLOOR: [do_nothing], OURS: [CircuitBreakerMiddleware()]}


async def one_round(
    sessions: dict[str, aiohttp.ClientSession], url: str, n: int, turn: int
) -> tuple[dict[str, float], dict[str, float]]:
    """``n`` requests through every session, interleaved one by one.

    Request ``k`` of the round goes through the sessions in an order rotated by
    ``turn + k``, so a slow moment of the machine lands on every session alike.
    Returns µs per request of each session: wall-clock time, and this
    process's CPU time (which a busy machine's other processes barely move).
    """
    names = list(sessions)
    gets = [sessions[name].get for name in names]
    wall = [0] * len(names)
    cpu = [0] * len(names)
    wall_clock, cpu_clock = time.perf_counter_ns, time.process_time_ns
    gc.disable()
    try:
        for k in range(n):
            shift = (turn + k) % len(names)
            for index in range(shift, shift + len(names)):
                i = index % len(names)
                began, began_cpu = wall_clock(), cpu_clock()
                async with gets[i](url) as response:
                    await response.read()
                cpu[i] += cpu_clock() - began_cpu
                wall[i] += wall_clock() - began
    finally:
        gc.enable()
    return (
        {name: wall[i] / n / 1000.0 for i, name in enumerate(names)},
        {name: cpu[i] / n / 1000.0 for i, name in enumerate(names)},
    )


def quartiles(values: list[float]) -> dict[str, float]:
    if len(values) == 1:
        return {"median": values[0], "p25": values[0], "p75": values[0]}
    q = statistics.quantiles(values, n=4, method="inclusive")
    return {"median": q[1], "p25": q[0], "p75": q[2]}


async def measure(mode: Mode, url: str) -> tuple[dict[str, dict[str, Any]], int]:
    # One connector (one keep-alive connection) under every session: the
    # sessions differ by their middlewares only.
    connector = aiohttp.TCPConnector(limit=1)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(connector.close)
        sessions = {
            name: await stack.enter_async_context(
                aiohttp.ClientSession(
                    connector=connector,
                    connector_owner=False,
                    middlewares=chain,
                    timeout=aiohttp.ClientTimeout(total=10),
                )
            )
            for name, chain in middlewares().items()
        }
        for session in sessions.values():  # warm up: the connection, caches, breakers
            for _ in range(100):
                async with session.get(url) as response:
                    assert response.status == 200
                    await response.read()
        names = list(sessions)
        series: dict[str, dict[str, list[float]]] = {
            figure: {name: [] for name in names} for figure in FIGURES
        }
        deadline = time.monotonic() + mode.deadline_s
        rounds = 0
        while rounds < mode.rounds and time.monotonic() < deadline:
            wall, cpu = await one_round(sessions, url, mode.batch, rounds)
            gc.collect()
            for name in names:
                for prefix, this in (("wall", wall), ("cpu", cpu)):
                    series[f"{prefix}_us"][name].append(this[name])
                    series[f"{prefix}_x_bare"][name].append(this[name] / this[BARE])
                    series[f"{prefix}_x_do_nothing"][name].append(this[name] / this[FLOOR])
            rounds += 1
            if rounds % 50 == 0:
                print(f"  round {rounds}/{mode.rounds}", file=sys.stderr)
    return {
        name: {figure: quartiles(series[figure][name]) for figure in FIGURES} for name in names
    }, rounds


def run(mode: Mode, emit_json: bool) -> None:
    results: dict[str, Any] = {}
    with canned_server() as origin:
        for label, path in BODIES.items():
            print(f"measuring the {label} body ...", file=sys.stderr)
            rows, rounds = asyncio.run(measure(mode, origin + path))
            results[label] = {"rounds": rounds, "contenders": rows}
    verdicts = {}
    for label, body in results.items():
        rows = body["contenders"]
        verdicts[label] = {
            f"{clock}_{name}_pct_over_bare": (rows[who][f"{clock}_x_bare"]["median"] - 1) * 100
            for clock in ("wall", "cpu")
            for name, who in (("ours", OURS), ("floor", FLOOR))
        }
        verdicts[label]["met"] = verdicts[label]["cpu_ours_pct_over_bare"] <= AIM_PCT
    if emit_json:
        json.dump(
            {
                "mode": mode.name,
                "batch": mode.batch,
                "python": platform.python_version(),
                "platform": platform.platform(),
                "aiohttp": aiohttp.__version__,
                "aim_pct_over_bare": AIM_PCT,
                "bodies": results,
                "verdicts": verdicts,
            },
            sys.stdout,
            indent=2,
        )
        print()
        return
    print(
        f"aiohttp {aiohttp.__version__}, Python {platform.python_version()}, {mode.name} mode: "
        f"rounds of {mode.batch} GETs per session, interleaved one by one"
    )
    print("over one shared loopback keep-alive connection to a canned server in a child process")
    for label, body in results.items():
        for clock, title in (("wall", "wall-clock"), ("cpu", "client CPU")):
            print(f"\n{label} body, {title} time, {body['rounds']} rounds")
            header = (
                f"{'session':24s} {'µs/request [p25..p75]':>25s} "
                f"{'x bare [p25..p75]':>25s} {'x do-nothing [p25..p75]':>27s}"
            )
            print(header)
            print("-" * len(header))
            for name, row in body["contenders"].items():
                t = row[f"{clock}_us"]
                b = row[f"{clock}_x_bare"]
                f = row[f"{clock}_x_do_nothing"]
                print(
                    f"{name:24s} {t['median']:7.1f} [{t['p25']:6.1f}..{t['p75']:6.1f}]   "
                    f"{b['median']:6.3f}x [{b['p25']:.3f}..{b['p75']:.3f}]   "
                    f"{f['median']:6.3f}x [{f['p25']:.3f}..{f['p75']:.3f}]"
                )
    print()
    for label, verdict in verdicts.items():
        print(
            f"aim: at most +{AIM_PCT:.0f} % over bare ({label}, client CPU): circuitbreaker-http "
            f"{verdict['cpu_ours_pct_over_bare']:+.1f} %, do-nothing middleware "
            f"{verdict['cpu_floor_pct_over_bare']:+.1f} %: {'met' if verdict['met'] else 'NOT met'}"
            f" (wall clock: {verdict['wall_ours_pct_over_bare']:+.1f} % and "
            f"{verdict['wall_floor_pct_over_bare']:+.1f} %)"
        )


# -- --instructions: callgrind's count of the client's instructions -----------------------------

# Requests per child run: the figure is the difference of the two runs over their gap,
# so start-up, imports and the warm-up cancel out.
INSTRUCTION_LOOPS = {"default": (200, 1200), "quick": (100, 400)}


async def _child(name: str, url: str, n: int) -> None:
    chain = middlewares()[name]
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1), middlewares=chain
    ) as session:
        for _ in range(50 + n):
            async with session.get(url) as response:
                await response.read()


def _callgrind(argv: list[str]) -> int:
    """Instructions (``Ir``) one run of ``argv`` executes under valgrind's callgrind."""
    return _common.callgrind_instructions(argv, {"PYTHONHASHSEED": "0"})


def count_instructions(mode: Mode, emit_json: bool) -> None:
    """Instructions per request of each session, counted by callgrind (load-independent)."""
    import shutil
    from concurrent.futures import ThreadPoolExecutor

    if shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind on PATH (apt-get install valgrind)")
    low, high = INSTRUCTION_LOOPS[mode.name]
    names = list(middlewares())
    results: dict[str, dict[str, float]] = {}
    with canned_server() as origin, ThreadPoolExecutor(max_workers=2) as pool:
        for label, path in BODIES.items():
            print(f"counting the {label} body ...", file=sys.stderr)
            jobs = {
                (name, n): pool.submit(
                    _callgrind, [sys.executable, __file__, "--child", name, origin + path, str(n)]
                )
                for name in names
                for n in (low, high)
            }
            per = {
                name: (jobs[name, high].result() - jobs[name, low].result()) / (high - low)
                for name in names
            }
            results[label] = per
    if emit_json:
        json.dump(
            {
                "mode": "instructions",
                "loops": [low, high],
                "python": platform.python_version(),
                "aiohttp": aiohttp.__version__,
                "instructions_per_request": results,
            },
            sys.stdout,
            indent=2,
        )
        print()
        return
    print(
        f"aiohttp {aiohttp.__version__}, Python {platform.python_version()}: instructions per "
        f"request (callgrind Ir of {high} requests minus {low}, over {high - low})"
    )
    for label, per in results.items():
        bare, floor = per[BARE], per[FLOOR]
        print(f"\n{label} body")
        header = f"{'session':24s} {'instructions':>13s} {'+ over bare':>12s} {'% of bare':>10s}"
        print(header)
        print("-" * len(header))
        for name, count in per.items():
            print(
                f"{name:24s} {count:13,.0f} {count - bare:+12,.0f} "
                f"{(count - bare) / bare * 100:+9.2f}%"
            )
        ours = per[OURS]
        print(
            f"circuitbreaker-http over the do-nothing middleware: {ours - floor:+,.0f} "
            f"instructions, {(ours - floor) / bare * 100:+.2f} % of a bare request"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds (< 20 s)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count the client's instructions per request under valgrind's callgrind instead "
        "of timing (a figure a busy machine does not move; takes a few minutes)",
    )
    parser.add_argument("--child", nargs=3, metavar=("SESSION", "URL", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        name, url, n = args.child
        asyncio.run(_child(name, url, int(n)))
        return
    mode = MODES["quick" if args.quick else "default"]
    if args.rounds:
        mode = Mode(mode.name, args.rounds, mode.batch, mode.deadline_s)
    if args.instructions:
        count_instructions(mode, args.json)
        return
    run(mode, args.json)


if __name__ == "__main__":
    main()
