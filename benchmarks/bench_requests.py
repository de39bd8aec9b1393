"""Measure what the requests adapter adds to a request, beside a bare ``HTTPAdapter``.

Every contender is a ``requests.Session`` sending ``GET /`` to a minimal
keep-alive HTTP/1.1 server on loopback (a canned 200 with a short body, one
thread per connection, in a child process so it never competes with the
client for the GIL), so the figure is the whole cost of one request as the
caller sees it: requests, urllib3, http.client, the loopback round trip, and
the adapter under test.

Contenders: the bare ``HTTPAdapter``; ``CircuitBreakerAdapter`` with requests'
default ``max_retries`` (no retries: urllib3's ``Retry`` is never consulted);
both again with ``Retry(total=3, status_forcelist=[502, 503])`` (the adapter
then sets up its per-request retry context); and interlock-cb's requests
adapter when it is importable.

Each figure is a median over many short interleaved rounds taken in one run:
every round sends one batch through every contender, in an order that
rotates from round to round, and each ratio is taken within one round
(contender over the bare adapter with the same ``max_retries``), then the
median of those ratios is reported. Short batches and paired ratios keep a
busy machine's slow moments from landing on one contender only.
``--instructions`` counts instructions per request instead (valgrind's
callgrind, the client process only, the server left out): the same count
whatever else the machine is doing. This is a benchmark that prints, not a
test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import socket
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import _common
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from circuitbreaker_http.requests import CircuitBreakerAdapter

AIM_RATIO = 1.015  # at most 1.5 % added over the bare adapter

RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nhello, world\n"
)


@dataclass(frozen=True)
class Mode:
    """How long to measure."""

    name: str
    rounds: int  # interleaved rounds (at most)
    batch: int  # requests per contender per round
    deadline_s: float  # time cap on the measured rounds


MODES = {
    "default": Mode("default", rounds=400, batch=40, deadline_s=95.0),
    "quick": Mode("quick", rounds=80, batch=25, deadline_s=13.0),
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
            count = buffer.count(b"\r\n\r\n")
            if count:
                buffer = buffer[buffer.rfind(b"\r\n\r\n") + 4 :]
                conn.sendall(RESPONSE * count)


@contextlib.contextmanager
def canned_server() -> Iterator[str]:
    """The canned server of ``_serve_connection`` (see ``_common.canned_server``)."""
    with _common.canned_server(_serve_connection) as origin:
        yield origin + "/"


# -- contenders ---------------------------------------------------------------------------------


def retries() -> Retry:
    return Retry(total=3, status_forcelist=[502, 503])


def interlock_adapter() -> HTTPAdapter:
    from interlock.integrations.requests import CircuitBreakerAdapter as InterlockAdapter

    return InterlockAdapter()  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Contender:
    name: str
    make: Callable[[], HTTPAdapter]
    baseline: str  # the bare contender its ratio is taken against


BARE = "requests HTTPAdapter (bare)"
BARE_RETRY = "requests HTTPAdapter + Retry (bare)"
CONTENDERS = [
    Contender(BARE, HTTPAdapter, BARE),
    Contender("circuitbreaker-http", CircuitBreakerAdapter, BARE),
    Contender(BARE_RETRY, lambda: HTTPAdapter(max_retries=retries()), BARE_RETRY),
    Contender(
        "circuitbreaker-http + Retry",
        lambda: CircuitBreakerAdapter(max_retries=retries()),
        BARE_RETRY,
    ),
    Contender("interlock-cb", interlock_adapter, BARE),
]
OURS = ("circuitbreaker-http", "circuitbreaker-http + Retry")


def batch(session: requests.Session, url: str, n: int) -> float:
    """Send ``n`` requests; µs per request."""
    get = session.get
    gc.disable()
    try:
        start = time.perf_counter_ns()
        for _ in range(n):
            get(url)
        elapsed = time.perf_counter_ns() - start
    finally:
        gc.enable()
    return elapsed / n / 1000.0


def quartiles(values: list[float]) -> dict[str, float]:
    if len(values) == 1:
        return {"median": values[0], "p25": values[0], "p75": values[0]}
    q = statistics.quantiles(values, n=4, method="inclusive")
    return {"median": q[1], "p25": q[0], "p75": q[2]}


def measure(mode: Mode, url: str) -> tuple[dict[str, dict[str, object]], dict[str, str], int]:
    skipped: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        sessions: dict[str, requests.Session] = {}
        for contender in CONTENDERS:
            try:
                adapter = contender.make()
            except ImportError as exc:
                skipped[contender.name] = f"not importable ({exc})"
                continue
            session = requests.Session()
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            sessions[contender.name] = stack.enter_context(session)
        for session in sessions.values():  # warm up: connections, caches, breakers
            for _ in range(100):
                assert session.get(url).status_code == 200
        names = list(sessions)
        times: dict[str, list[float]] = {name: [] for name in names}
        ratios: dict[str, list[float]] = {name: [] for name in names}
        added: dict[str, list[float]] = {name: [] for name in names}
        deadline = time.monotonic() + mode.deadline_s
        rounds = 0
        while rounds < mode.rounds and time.monotonic() < deadline:
            shift = rounds % len(names)
            this = {
                name: batch(sessions[name], url, mode.batch)
                for name in names[shift:] + names[:shift]
            }
            gc.collect()
            for contender in CONTENDERS:
                name = contender.name
                if name in this and contender.baseline in this:
                    times[name].append(this[name])
                    ratios[name].append(this[name] / this[contender.baseline])
                    added[name].append(this[name] - this[contender.baseline])
            rounds += 1
            if rounds % 20 == 0:
                print(f"round {rounds}/{mode.rounds}", file=sys.stderr)
    results: dict[str, dict[str, object]] = {}
    for contender in CONTENDERS:
        name = contender.name
        if times.get(name):
            results[name] = {
                "us_per_request": quartiles(times[name]),
                "us_added": quartiles(added[name]),
                "ratio": quartiles(ratios[name]),
                "baseline": contender.baseline,
            }
    return results, skipped, rounds


def run(mode: Mode, emit_json: bool) -> None:
    with canned_server() as url:
        results, skipped, rounds = measure(mode, url)
    ratio = {name: row["ratio"]["median"] for name, row in results.items()}  # type: ignore[index]
    met = all(ratio[name] <= AIM_RATIO for name in OURS if name in ratio)
    if emit_json:
        json.dump(
            {
                "mode": mode.name,
                "rounds": rounds,
                "batch": mode.batch,
                "python": platform.python_version(),
                "platform": platform.platform(),
                "requests": requests.__version__,
                "aim_ratio": AIM_RATIO,
                "aim_met": met,
                "contenders": results,
                "skipped": skipped,
            },
            sys.stdout,
            indent=2,
        )
        print()
        return
    print(
        f"requests {requests.__version__}, Python {platform.python_version()}, {mode.name} mode: "
        f"{rounds} interleaved rounds of {mode.batch} requests per contender"
    )
    print("GET of a 13-byte body over a loopback keep-alive connection, stream=False\n")
    header = (
        f"{'contender':36s} {'µs/request [p25..p75]':>25s} "
        f"{'+µs [p25..p75]':>22s} {'x bare [p25..p75]':>25s}"
    )
    print(header)
    print("-" * len(header))
    for name, row in results.items():
        t, a, r = row["us_per_request"], row["us_added"], row["ratio"]
        print(
            f"{name:36s} {t['median']:7.1f} [{t['p25']:6.1f}..{t['p75']:6.1f}] "  # type: ignore[index]
            f"{a['median']:+6.1f} [{a['p25']:+6.1f}..{a['p75']:+6.1f}] "  # type: ignore[index]
            f"{r['median']:6.3f}x [{r['p25']:.3f}..{r['p75']:.3f}]"  # type: ignore[index]
        )
    print("\n'+ Retry' rows are measured against the bare adapter with the same Retry.")
    verdicts = ", ".join(
        f"{name} {ratio[name]:.3f}x {'met' if ratio[name] <= AIM_RATIO else 'NOT met'}"
        for name in OURS
        if name in ratio
    )
    print(f"aim: at most {AIM_RATIO:.3f}x the bare adapter: {verdicts}")
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason}")


# -- --instructions: callgrind's count of the client's instructions -----------------------------

# Requests per child run: the figure is the difference of the two runs over their gap,
# so start-up, imports and the warm-up cancel out.
INSTRUCTION_LOOPS = (200, 1200)
INSTRUCTION_WARM = 50


def _child(name: str, url: str, n: int) -> None:
    """One ``--instructions`` subprocess: ``n`` requests through contender ``name``."""
    contender = next(c for c in CONTENDERS if c.name == name)
    with requests.Session() as session:
        session.mount("http://", contender.make())
        get = session.get
        for _ in range(INSTRUCTION_WARM):
            assert get(url).status_code == 200
        gc.disable()
        for _ in range(n):
            get(url)


def count_instructions(jobs: int, emit_json: bool) -> None:
    """Instructions per request of our adapter and its bare baselines, by callgrind."""
    from concurrent.futures import ThreadPoolExecutor

    missing = _common.valgrind_missing()
    if missing:
        raise SystemExit(f"--instructions needs valgrind: {missing}")
    low, high = INSTRUCTION_LOOPS
    names = [BARE, OURS[0], BARE_RETRY, OURS[1]]
    started = time.perf_counter()
    with canned_server() as url, ThreadPoolExecutor(max_workers=jobs) as pool:
        runs = {
            (name, n): pool.submit(
                _common.callgrind_instructions,
                [sys.executable, __file__, "--child", name, url, str(n)],
                {"PYTHONHASHSEED": "0"},
            )
            for name in names
            for n in (low, high)
        }
        per = {
            name: (runs[name, high].result() - runs[name, low].result()) / (high - low)
            for name in names
        }
    baseline = {c.name: c.baseline for c in CONTENDERS}
    added = {name: (per[name] / per[baseline[name]] - 1) * 100 for name in names}
    rows: dict[str, dict[str, object]] = {
        name: {
            "ir_per_request": per[name],
            "baseline": baseline[name],
            "added_pct": added[name],
        }
        for name in names
    }
    if emit_json:
        json.dump(
            {
                "mode": "instructions",
                "loops": [low, high],
                "python": platform.python_version(),
                "requests": requests.__version__,
                "aim_pct": (AIM_RATIO - 1) * 100,
                "contenders": rows,
            },
            sys.stdout,
            indent=2,
        )
        print()
        return
    print(
        f"requests {requests.__version__}, Python {platform.python_version()}: instructions per "
        f"request (callgrind Ir of {high} requests minus {low}, over {high - low}; the client "
        f"process only), {time.perf_counter() - started:.0f} s"
    )
    print("GET of a 13-byte body over a loopback keep-alive connection, stream=False\n")
    for name in names:
        extra = "" if name == baseline[name] else f"  {added[name]:+.2f} % over its bare adapter"
        print(f"{name:36s} {per[name]:>10,.0f} Ir{extra}")
    aim = (AIM_RATIO - 1) * 100
    verdicts = ", ".join(
        f"{name} {added[name]:+.2f} % {'met' if added[name] <= aim else 'NOT met'}" for name in OURS
    )
    print(f"\naim: at most +{(AIM_RATIO - 1) * 100:.1f} % (instructions): {verdicts}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds (< 20 s)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count instructions per request under valgrind's callgrind instead of timing",
    )
    parser.add_argument(
        "--jobs", type=int, default=2, help="--instructions: valgrind runs at once (default 2)"
    )
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        name, url, n = args.child
        _child(name, url, int(n))
        return
    if args.instructions:
        count_instructions(max(1, args.jobs), args.json)
        return
    mode = MODES["quick" if args.quick else "default"]
    if args.rounds:
        mode = Mode(mode.name, args.rounds, mode.batch, mode.deadline_s)
    run(mode, args.json)


if __name__ == "__main__":
    main()
