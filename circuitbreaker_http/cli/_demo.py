"""The built-in demo: ``python -m circuitbreaker_http demo``.

Two embedded upstreams on loopback (``payments`` and ``catalog``) go healthy,
failing, slow and healthy again while an httpx client calls both through one
``CircuitBreakerTransport``.

On a terminal the demo draws a live view, redrawn in place a few times a
second with plain ANSI escape sequences (no curses): a row per upstream with
its state in colour, what its callers got (ok, failed, rejected, stale) and
the time to the next trial, then the latest transitions. The final view stays
on screen and a short summary follows.

When stdout is not a terminal (a pipe, a file, CI), it prints plain lines
instead: state changes as they happen, a line a second tallying what each
host answered, a summary at the end. Tests and CI read those lines, so their
wording stays as it is.
"""

from __future__ import annotations

import os
import sys
import threading
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Protocol, TextIO

from .._clock import monotonic
from .._core import BreakerConfig, BreakerSnapshot, StateChange
from .._errors import CircuitOpenError
from .._fallback import LastKnownGood
from .._registry import BreakerRegistry
from ..testing import FlakyServer

__all__ = ["run_demo"]

_COLORS = {"closed": "32", "open": "1;31", "half_open": "33", "forced_open": "35", "disabled": "36"}
_BOLD = "1"
_DIM = "2"

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

HOSTS = ("payments", "catalog")
"""The demo's upstreams, in the order they are shown."""

REDRAW_INTERVAL = 0.2
"""Seconds between two frames of the live view: smooth enough, cheap on a slow terminal."""

EVENTS_SHOWN = 6
"""Transitions (and phase changes) kept under the table of the live view."""

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


_WHAT = ("ok", "failed", "rejected", "stale")


@dataclass
class _Tally:
    """What the callers got, per host: counted where the client sees it.

    The breaker's own counters cannot tell a rejection answered by
    Last-Known-Good (``stale``) from one that raised, so the workers count.
    """

    lock: threading.Lock = field(default_factory=threading.Lock)
    window: Counter[tuple[str, str]] = field(default_factory=Counter)
    total: Counter[tuple[str, str]] = field(default_factory=Counter)

    def add(self, host: str, what: str) -> None:
        with self.lock:
            self.window[(host, what)] += 1
            self.total[(host, what)] += 1

    def take_window(self) -> Counter[tuple[str, str]]:
        with self.lock:
            window, self.window = self.window, Counter()
            return window

    def totals(self) -> Counter[tuple[str, str]]:
        with self.lock:
            return Counter(self.total)


# --- painting: a line is a list of (text, SGR code or "") segments -----------

Segment = tuple[str, str]
Line = list[Segment]


def paint(line: Line, *, color: bool, width: int) -> str:
    """Join a line's segments, cut to ``width`` visible characters, coloured or not.

    Cutting matters: a line the terminal wraps takes two rows, and the cursor
    would then move up too little to redraw the frame in place.
    """
    parts: list[str] = []
    room = width
    for text, sgr in line:
        if room <= 0:
            break
        text = text[:room]
        room -= len(text)
        parts.append(f"\x1b[{sgr}m{text}\x1b[0m" if color and sgr and text else text)
    return "".join(parts)


def _state_segment(state: str | None, pad: int = 0) -> Segment:
    if state is None:
        return ("-".ljust(pad), _DIM)
    return (state.ljust(pad), _COLORS.get(state, ""))


@dataclass(frozen=True)
class Row:
    """One upstream's line in the live view.

    Attributes:
        host: The upstream's name in the demo.
        state: Its breaker's state value, or ``None`` before its first call.
        counts: What its callers got: ``ok``, ``failed``, ``rejected``, ``stale``.
        retry_after: Seconds until a trial may pass, or ``None`` unless open.
    """

    host: str
    state: str | None
    counts: dict[str, int]
    retry_after: float | None


def _retry_text(row: Row) -> str:
    if row.retry_after is not None:
        return f"{row.retry_after:.1f}s"
    if row.state == "half_open":
        return "trying"
    if row.state == "forced_open":
        return "by hand"
    return "-"


_TABLE = "{:<10}{:<12}{:>7}{:>8}{:>10}{:>7}{:>10}"
_HEADER = _TABLE.format("upstream", "state", "ok", "failed", "rejected", "stale", "retry in")


def render_frame(
    *,
    elapsed: float,
    duration: float,
    rate: float,
    phase: str,
    rows: list[Row],
    events: list[Line],
    events_shown: int = EVENTS_SHOWN,
    finished: bool = False,
) -> list[Line]:
    """Build one frame of the live view (pure: no I/O, no clock).

    Args:
        elapsed: Seconds since the demo started.
        duration: The run's planned length in seconds.
        rate: Requests per second per host.
        phase: What the upstreams are doing now.
        rows: One row per upstream.
        events: The latest transitions and phase changes, oldest first.
        events_shown: How many of ``events`` fit under the table.
        finished: Whether this is the final frame.

    Returns:
        The frame's lines, each a list of ``(text, SGR code)`` segments.
    """
    done = min(1.0, elapsed / duration) if duration > 0 else 1.0
    bar = "#" * round(20 * done)
    status = "finished" if finished else f"{rate:g} req/s per host"
    lines: list[Line] = [
        [
            ("circuitbreaker-http demo", _BOLD),
            (f"  {elapsed:5.1f}s of {duration:g}s [{bar:<20}]  {status}", ""),
        ],
        [("phase: ", _DIM), (phase, "")],
        [],
        [(_HEADER, _DIM)],
    ]
    for row in rows:
        counts = [str(row.counts.get(what, 0)) for what in _WHAT]
        rest = _TABLE.format("", "", *counts, _retry_text(row))[22:]
        lines.append([(f"{row.host:<10}", ""), _state_segment(row.state, 12), (rest, "")])
    lines.append([])
    lines.append([("latest transitions", _DIM)])
    shown = events[-events_shown:] if events_shown > 0 else []
    lines.extend(shown or [[("  none yet", _DIM)]])
    return lines


class LiveView:
    """Draws frames on a terminal, each over the previous one.

    Each frame is written at once: the cursor goes up over the previous
    frame (``ESC [ n A``), every line is cleared (``ESC [ 2 K``) and
    rewritten, and whatever an older, longer frame left below is cleared
    (``ESC [ J``). The cursor is hidden while the view is live.

    Args:
        out: The terminal's stream.
        color: Whether to colour (off with ``NO_COLOR``).
    """

    def __init__(self, out: TextIO, *, color: bool) -> None:
        self.out = out
        self.color = color
        self._drawn = 0
        self._hidden = False

    def size(self) -> tuple[int, int]:
        """Return the terminal's ``(columns, lines)``, or ``(80, 24)`` when unknown."""
        try:
            size = os.get_terminal_size(self.out.fileno())
        except (AttributeError, OSError, ValueError):
            return 80, 24
        return size.columns or 80, size.lines or 24

    def draw(self, lines: list[Line]) -> None:
        """Replace the frame on screen with ``lines``."""
        columns, _ = self.size()
        parts: list[str] = []
        if not self._hidden:
            parts.append("\x1b[?25l")
            self._hidden = True
        if self._drawn:
            parts.append(f"\r\x1b[{self._drawn}A")
        for line in lines:
            # One column to spare: some terminals wrap on writing the last one.
            parts.append("\x1b[2K" + paint(line, color=self.color, width=columns - 1) + "\n")
        parts.append("\x1b[J")
        self._drawn = len(lines)
        self.out.write("".join(parts))
        self.out.flush()

    def close(self) -> None:
        """Leave the last frame where it is and show the cursor again."""
        if self._hidden:
            self.out.write("\x1b[?25h")
            self.out.flush()
            self._hidden = False


# --- the two ways of reporting ---------------------------------------------


class _Report(Protocol):
    def intro(self, text: str) -> None: ...
    def phase(self, label: str) -> None: ...
    def change(self, host: str, change: StateChange) -> None: ...
    def due(self) -> float: ...
    def tick(self, now: float) -> None: ...
    def finish(self, now: float) -> None: ...
    def summary(self, text: Line) -> None: ...


class _Plain:
    """Plain lines with a timestamp: a line per phase, per state change and per second."""

    def __init__(self, out: TextIO, started: float, tally: _Tally) -> None:
        self.out = out
        self.started = started
        self.tally = tally
        self.lock = threading.Lock()
        self.next_tick = started + 1.0

    def line(self, text: str, now: float | None = None) -> None:
        stamp = f"[{(monotonic() if now is None else now) - self.started:5.1f}s]"
        with self.lock:
            self.out.write(f"{stamp} {text}\n")
            self.out.flush()

    def intro(self, text: str) -> None:
        self.line(text)

    def phase(self, label: str) -> None:
        self.line(f"--- {label}")

    def change(self, host: str, change: StateChange) -> None:
        self.line(f"{host:<9} {change.old.value} -> {change.new.value}  ({change.reason})")

    def due(self) -> float:
        return self.next_tick

    def tick(self, now: float) -> None:
        if now < self.next_tick:
            return
        self.next_tick += 1.0
        window = self.tally.take_window()
        parts = []
        for host in HOSTS:
            counts = ", ".join(f"{window[(host, w)]} {w}" for w in _WHAT if window[(host, w)])
            parts.append(f"{host}: {counts or 'idle'}")
        self.line("    " + " | ".join(parts), now)

    def finish(self, now: float) -> None:
        self.line("summary:", now)

    def summary(self, text: Line) -> None:
        self.line("".join(part for part, _ in text))


class _Live:
    """The live view: a frame redrawn in place, the final one left on screen."""

    def __init__(
        self,
        out: TextIO,
        *,
        color: bool,
        started: float,
        duration: float,
        rate: float,
        tally: _Tally,
        registry: BreakerRegistry,
        keys: dict[str, str],
    ) -> None:
        self.out = out
        self.view = LiveView(out, color=color)
        self.started = started
        self.duration = duration
        self.rate = rate
        self.tally = tally
        self.registry = registry
        self.keys = keys  # host -> breaker key
        self.lock = threading.Lock()
        self.events: deque[Line] = deque(maxlen=EVENTS_SHOWN)
        self.current = "starting"
        self.next_frame = started

    def intro(self, text: str) -> None:
        # Printed once above the view; it may wrap, as it is never redrawn.
        self.out.write(text + "\n")
        self.out.flush()

    def phase(self, label: str) -> None:
        with self.lock:
            self.current = label
            self.events.append([(f"  [{monotonic() - self.started:5.1f}s] --- {label}", _DIM)])

    def change(self, host: str, change: StateChange) -> None:
        event: Line = [
            (f"  [{change.at - self.started:5.1f}s] {host:<9} ", ""),
            _state_segment(change.old.value),
            (" -> ", ""),
            _state_segment(change.new.value),
            (f"  ({change.reason})", _DIM),
        ]
        with self.lock:
            self.events.append(event)

    def rows(self) -> list[Row]:
        snapshots: dict[str, BreakerSnapshot] = {s.name: s for s in self.registry.snapshot()}
        totals = self.tally.totals()
        rows = []
        for host in HOSTS:
            snap = snapshots.get(self.keys[host])
            rows.append(
                Row(
                    host=host,
                    state=snap.state.value if snap else None,
                    counts={what: totals[(host, what)] for what in _WHAT},
                    retry_after=snap.retry_after if snap else None,
                )
            )
        return rows

    def frame(self, now: float, *, finished: bool = False) -> list[Line]:
        _, height = self.view.size()
        with self.lock:
            events = list(self.events)
            current = self.current
        # The frame must fit the screen: the cursor cannot move up past its top.
        fixed = 7 + len(HOSTS)
        return render_frame(
            elapsed=now - self.started,
            duration=self.duration,
            rate=self.rate,
            phase=current,
            rows=self.rows(),
            events=events,
            events_shown=max(1, min(EVENTS_SHOWN, height - fixed - 1)),
            finished=finished,
        )

    def due(self) -> float:
        return self.next_frame

    def tick(self, now: float) -> None:
        if now < self.next_frame:
            return
        self.next_frame = now + REDRAW_INTERVAL
        self.view.draw(self.frame(now))

    def finish(self, now: float) -> None:
        try:
            self.view.draw(self.frame(now, finished=True))
        finally:
            self.view.close()
        self.out.write("\n" + paint([("summary", _BOLD)], color=self.view.color, width=80) + "\n")
        self.out.flush()

    def summary(self, text: Line) -> None:
        self.out.write(paint(text, color=self.view.color, width=1000) + "\n")
        self.out.flush()


def wants_live_view(out: TextIO) -> bool:
    """Whether ``out`` gets the live view: a terminal that can move its cursor."""
    try:
        terminal = out.isatty()
    except (AttributeError, ValueError):
        return False
    return terminal and os.environ.get("TERM") != "dumb"


def run_demo(duration: float = 30.0, rate: float = 20.0, out: TextIO | None = None) -> int:
    """Run the demo for about ``duration`` seconds at ``rate`` requests/s per host.

    Args:
        duration: Seconds to run.
        rate: Requests per second per host.
        out: Where to write (standard output by default). A terminal gets
            the live view (coloured unless ``NO_COLOR`` is set); anything
            else, or ``TERM=dumb``, gets plain lines.

    Returns:
        The process exit status: 0, or 130 when interrupted (Ctrl-C), after
        the summary of what ran.
    """
    import httpx

    from ..httpx import CircuitBreakerTransport

    out = out or sys.stdout
    started = monotonic()
    tally = _Tally()
    interrupted = False

    with FlakyServer() as payments, FlakyServer() as catalog:
        keys = {
            "payments": f"http://127.0.0.1:{payments.port}",
            "catalog": f"http://127.0.0.1:{catalog.port}",
        }
        names = {key: host for host, key in keys.items()}
        registry = BreakerRegistry(DEMO_CONFIG)
        report: _Report
        if wants_live_view(out):
            report = _Live(
                out,
                color="NO_COLOR" not in os.environ,
                started=started,
                duration=duration,
                rate=rate,
                tally=tally,
                registry=registry,
                keys=keys,
            )
        else:
            report = _Plain(out, started, tally)

        def on_change(change: StateChange) -> None:
            host = names.get(change.name, change.name)
            tally.add(host, "moves")
            report.change(host, change)

        registry.subscribe(on_change, StateChange)
        transport = CircuitBreakerTransport(
            registry=registry, fallback=LastKnownGood(max_age=120.0)
        )
        report.intro(
            f"demo: payments at {payments.url}, catalog at {catalog.url}; "
            f"{duration:.0f}s at {rate:.0f} req/s per host"
        )
        report.intro(
            "demo: payments POSTs (an open circuit raises); catalog GETs "
            "(an open circuit answers with the last good response, marked stale)"
        )
        deadline = started + duration
        stop = threading.Event()
        interval = 1.0 / rate

        def worker(host: str, method: str, url: str) -> None:
            with httpx.Client(transport=transport, timeout=1.0) as client:
                while not stop.is_set() and monotonic() < deadline:
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
            while monotonic() < deadline:
                elapsed = (monotonic() - started) / duration
                while phases and phases[0].start <= elapsed:
                    phase = phases.pop(0)
                    phase.apply(payments, catalog)
                    report.phase(phase.label)
                stop.wait(max(0.0, min(0.1, report.due() - monotonic())))
                report.tick(monotonic())
        except KeyboardInterrupt:
            interrupted = True
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=5.0)
            transport.close()
            report.finish(monotonic())

        totals = tally.totals()
        ends = {names.get(s.name, s.name): s.state.value for s in registry.snapshot()}
        live = isinstance(report, _Live)
        for host in HOSTS:
            counts = ", ".join(f"{totals[(host, w)]} {w}" for w in _WHAT)
            moves = totals[(host, "moves")]
            line: Line = [(f"  {host:<9} {counts}; {moves} state changes", "")]
            if live:
                line += [("; ends ", ""), _state_segment(ends.get(host))]
            report.summary(line)
        if not live:
            # The plain lines CI reads: one "ends" line per breaker.
            for host, state in ends.items():
                report.summary([(f"  {host:<9} ends {state}", "")])
        rejected = sum(totals[(h, w)] for h in HOSTS for w in ("rejected", "stale"))
        report.summary(
            [
                (
                    f"  {rejected} requests were answered at once"
                    " instead of waiting on a failing upstream",
                    "",
                )
            ]
        )
    return 130 if interrupted else 0
