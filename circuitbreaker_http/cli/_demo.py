"""The built-in demo: ``python -m circuitbreaker_http demo``.

Two embedded upstreams on loopback (``payments`` and ``catalog``) go healthy,
failing, slow and healthy again while an httpx client calls both through one
``CircuitBreakerTransport``. State changes print as they happen; a line a
second tallies what each host answered; a summary closes the run.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TextIO

from .._core import BreakerConfig, StateChange
from .._errors import CircuitOpenError
from .._fallback import LastKnownGood
from .._registry import BreakerRegistry
from ..testing import FlakyServer

__all__ = ["run_demo"]

_COLORS = {"closed": "32", "open": "31", "half_open": "33", "forced_open": "35", "disabled": "36"}

DEMO_CONFIG = BreakerConfig(
    consecutive_failures=5,
    failure_rate=0.5,
    minimum_calls=6,
    window=2.0,
    slow_call_duration=0.2,
    slow_call_rate=0.6,
    open_duration=1.5,
    open_backoff=1.5,
    max_open_duration=4.0,
    half_open_max_calls=1,
    success_threshold=2,
)
"""Short windows and open periods, so a 30-second run shows every state."""


Mode = tuple[str, dict[str, object]]


@dataclass
class _Phase:
    start: float  # fraction of the run
    label: str
    payments: Mode | None = None
    catalog: Mode | None = None

    def apply(self, payments: FlakyServer, catalog: FlakyServer) -> None:
        for server, mode in ((payments, self.payments), (catalog, self.catalog)):
            if mode is not None:
                server.set_mode(mode[0], **mode[1])


def _phases() -> list[_Phase]:
    healthy: Mode = ("healthy", {})
    return [
        _Phase(0.0, "both upstreams healthy", healthy, healthy),
        _Phase(
            0.2,
            "payments fails with 503 and Retry-After: 1",
            payments=("failing", {"status": 503, "retry_after": 1}),
        ),
        _Phase(
            0.45,
            "payments drops connections; catalog turns slow (0.3 s)",
            payments=("reset", {}),
            catalog=("slow", {"delay": 0.3}),
        ),
        _Phase(0.7, "both upstreams recover", healthy, healthy),
    ]


@dataclass
class _Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    window: Counter[tuple[str, str]] = field(default_factory=Counter)
    total: Counter[tuple[str, str]] = field(default_factory=Counter)
    changes: list[StateChange] = field(default_factory=list)

    def add(self, host: str, what: str) -> None:
        with self.lock:
            self.window[(host, what)] += 1
            self.total[(host, what)] += 1

    def take_window(self) -> Counter[tuple[str, str]]:
        with self.lock:
            window, self.window = self.window, Counter()
            return window


class _Printer:
    def __init__(self, out: TextIO, color: bool, started: float) -> None:
        self.out = out
        self.color = color
        self.started = started
        self.lock = threading.Lock()

    def state(self, value: str) -> str:
        if not self.color:
            return value
        return f"\x1b[{_COLORS.get(value, '0')}m{value}\x1b[0m"

    def line(self, text: str) -> None:
        stamp = f"[{time.monotonic() - self.started:5.1f}s]"
        with self.lock:
            self.out.write(f"{stamp} {text}\n")
            self.out.flush()


_WHAT = ("ok", "failed", "rejected", "stale")


def run_demo(duration: float = 30.0, rate: float = 20.0, out: TextIO | None = None) -> int:
    """Run the demo for about ``duration`` seconds at ``rate`` requests/s per host.

    Returns the process exit code (0).
    """
    import httpx

    from ..httpx import CircuitBreakerTransport

    out = out or sys.stdout
    color = out.isatty()
    started = time.monotonic()
    printer = _Printer(out, color, started)
    tally = _Tally()
    names: dict[str, str] = {}

    def on_change(change: StateChange) -> None:
        tally.changes.append(change)
        host = names.get(change.name, change.name)
        printer.line(
            f"{host:<9} {printer.state(change.old.value)} -> {printer.state(change.new.value)}"
            f"  ({change.reason})"
        )

    with FlakyServer() as payments, FlakyServer() as catalog:
        names[f"http://127.0.0.1:{payments.port}"] = "payments"
        names[f"http://127.0.0.1:{catalog.port}"] = "catalog"
        registry = BreakerRegistry(DEMO_CONFIG, on_state_change=on_change)
        transport = CircuitBreakerTransport(
            registry=registry, fallback=LastKnownGood(max_age=120.0)
        )
        printer.line(
            f"demo: payments at {payments.url}, catalog at {catalog.url}; "
            f"{duration:.0f}s at {rate:.0f} req/s per host"
        )
        printer.line(
            "demo: payments POSTs (an open circuit raises); catalog GETs "
            "(an open circuit answers with the last good response, marked stale)"
        )
        deadline = started + duration
        stop = threading.Event()
        interval = 1.0 / rate

        def worker(host: str, method: str, url: str) -> None:
            with httpx.Client(transport=transport, timeout=1.0) as client:
                while not stop.is_set() and time.monotonic() < deadline:
                    try:
                        response = client.request(method, url)
                    except CircuitOpenError:
                        tally.add(host, "rejected")
                    except httpx.HTTPError:
                        tally.add(host, "failed")
                    else:
                        marks = response.extensions.get("circuit_breaker", {})
                        if marks.get("stale"):
                            tally.add(host, "stale")
                        elif response.status_code >= 500:
                            tally.add(host, "failed")
                        else:
                            tally.add(host, "ok")
                    stop.wait(interval)

        threads = [
            threading.Thread(target=worker, args=("payments", "POST", payments.url + "/api/pay")),
            threading.Thread(target=worker, args=("catalog", "GET", catalog.url + "/api/items")),
        ]
        phases = _phases()
        for thread in threads:
            thread.start()
        try:
            next_tick = started + 1.0
            while time.monotonic() < deadline:
                elapsed = (time.monotonic() - started) / duration
                while phases and phases[0].start <= elapsed:
                    phase = phases.pop(0)
                    phase.apply(payments, catalog)
                    printer.line(f"--- {phase.label}")
                stop.wait(max(0.0, min(0.1, next_tick - time.monotonic())))
                if time.monotonic() >= next_tick:
                    next_tick += 1.0
                    window = tally.take_window()
                    parts = []
                    for host in ("payments", "catalog"):
                        counts = ", ".join(
                            f"{window[(host, w)]} {w}" for w in _WHAT if window[(host, w)]
                        )
                        parts.append(f"{host}: {counts or 'idle'}")
                    printer.line("    " + " | ".join(parts))
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=5.0)
            transport.close()

        printer.line("summary:")
        for host in ("payments", "catalog"):
            counts = ", ".join(f"{tally.total[(host, w)]} {w}" for w in _WHAT)
            moves = sum(1 for c in tally.changes if names.get(c.name) == host)
            printer.line(f"  {host:<9} {counts}; {moves} state changes")
        for snap in registry.snapshot():
            printer.line(
                f"  {names.get(snap.name, snap.name):<9} ends {printer.state(snap.state.value)}"
            )
        rejected = sum(
            tally.total[(h, w)] for h in ("payments", "catalog") for w in ("rejected", "stale")
        )
        printer.line(
            f"  {rejected} requests were answered at once instead of waiting on a failing upstream"
        )
    return 0
