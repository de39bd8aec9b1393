"""The demo's live view on a terminal, and its plain lines everywhere else."""

from __future__ import annotations

import io
import os
import re
import select
import signal
import subprocess
import sys
import time

import pytest

from circuitbreaker_http import BreakerRegistry
from circuitbreaker_http.cli import _demo
from circuitbreaker_http.cli._demo import Row, paint, render_frame, run_demo, wants_live_view

ESCAPE = re.compile(r"\x1b\[(\??)([0-9;]*)([A-Za-z])")
CURSOR_UP = re.compile(r"\x1b\[\d+A")
SGR = re.compile(r"\x1b\[[0-9;]*m")


class FakeTerminal(io.StringIO):
    """Text written to a terminal: ``isatty()`` says yes, and nothing else changes."""

    def isatty(self) -> bool:
        return True


def screen(text: str) -> list[str]:
    """What a terminal shows after ``text``: just enough of one to follow the demo.

    Handles the sequences the live view writes (carriage return, newline,
    cursor up, erase line, erase below) and drops colours, so a test can check
    that frames replace each other instead of piling up.
    """
    rows: list[list[str]] = [[]]
    row = col = 0
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\x1b":
            match = ESCAPE.match(text, i)
            assert match, f"a broken escape sequence at {i}: {text[i : i + 10]!r}"
            _, arg, command = match.groups()
            i = match.end()
            if command == "A":
                row = max(0, row - int(arg or 1))
            elif command == "K":
                rows[row] = [] if arg == "2" else rows[row][:col]
            elif command == "J":
                del rows[row + 1 :]
                rows[row] = rows[row][:col]
            continue
        if char == "\r":
            col = 0
        elif char == "\n":
            row, col = row + 1, 0  # the terminal's onlcr: "\n" also returns
            while len(rows) <= row:
                rows.append([])
        else:
            line = rows[row]
            line.extend(" " * (col - len(line)))
            if col < len(line):
                line[col] = char
            else:
                line.append(char)
            col += 1
        i += 1
    return ["".join(line).rstrip() for line in rows]


@pytest.fixture
def terminal_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.delenv("NO_COLOR", raising=False)


def test_the_screen_helper_follows_cursor_moves() -> None:
    assert screen("abc\rx\n") == ["xbc", ""]
    assert screen("one\ntwo\n\r\x1b[2A\x1b[2Kthree\n\x1b[2Kfour\n\x1b[J") == [
        "three",
        "four",
        "",
    ]
    assert screen("one\ntwo\nthree\n\r\x1b[3A\x1b[2Kfour\n\x1b[J") == ["four", ""]


@pytest.mark.usefixtures("terminal_env")
def test_a_terminal_gets_the_live_view_redrawn_in_place() -> None:
    out = FakeTerminal()
    assert run_demo(duration=2.0, rate=10.0, out=out) == 0
    text = out.getvalue()

    # Redrawn, not appended: the cursor goes up over the previous frame.
    ups = CURSOR_UP.findall(text)
    assert len(ups) >= 5, "a few frames a second"
    header = _demo._HEADER.strip()
    assert text.count(header) == len(ups) + 1, "one table per frame"
    # Every frame has a row per upstream, the state in colour.
    rows = re.findall(r"\x1b\[2K(payments|catalog) +\x1b\[([0-9;]+)m(\w+) *\x1b\[0m", text)
    assert {host for host, _, _ in rows} == {"payments", "catalog"}
    for _, color, state in rows:
        assert color == _demo._COLORS[state]
    assert "\x1b[32mclosed" in text

    # The final frame stays on screen, once, with the summary under it.
    shown = screen(text)
    assert sum(1 for line in shown if line.startswith("upstream")) == 1
    assert any("finished" in line for line in shown)
    table = shown.index(next(line for line in shown if line.startswith("upstream")))
    assert shown[table + 1].split()[0] == "payments"
    assert shown[table + 2].split()[0] == "catalog"
    assert "latest transitions" in shown
    summary = shown.index("summary")
    assert summary > table
    assert any(line.startswith("  payments") and "ends" in line for line in shown[summary:])
    assert any("answered at once" in line for line in shown[summary:])

    # The cursor is hidden while the view is live, and shown again after it.
    assert text.index("\x1b[?25l") < text.rindex("\x1b[?25h")
    assert text.count("\x1b[?25l") == text.count("\x1b[?25h") == 1


def test_without_a_terminal_there_are_plain_lines_only() -> None:
    out = io.StringIO()
    assert run_demo(duration=2.0, rate=10.0, out=out) == 0
    text = out.getvalue()
    assert "\x1b" not in text
    lines = text.splitlines()
    assert all(re.match(r"\[ *\d+\.\ds\] ", line) for line in lines), lines
    assert any(line.endswith("--- both upstreams healthy") for line in lines)
    assert any(line.endswith("] summary:") for line in lines)
    assert any(re.search(r"\] {3}payments {2}ends \w+$", line) for line in lines)
    assert any(re.search(r"payments: .*\| catalog: ", line) for line in lines)


@pytest.mark.usefixtures("terminal_env")
def test_no_color_keeps_the_live_view_without_colours(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    out = FakeTerminal()
    assert run_demo(duration=2.0, rate=10.0, out=out) == 0
    text = out.getvalue()
    assert CURSOR_UP.search(text)
    assert not SGR.search(text)


def test_a_dumb_terminal_gets_plain_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "dumb")
    assert not wants_live_view(FakeTerminal())
    monkeypatch.setenv("TERM", "xterm")
    assert wants_live_view(FakeTerminal())
    assert not wants_live_view(io.StringIO())


def test_every_state_has_its_colour_and_its_time_to_retry() -> None:
    states = ["closed", "open", "half_open", "forced_open", "disabled", None]
    retries = [None, 1.25, None, None, None, None]
    counts = {"ok": 3, "failed": 2, "rejected": 1, "stale": 4}
    rows = [
        Row(f"host{i}", state, counts, retry)
        for i, (state, retry) in enumerate(zip(states, retries, strict=True))
    ]
    frame = render_frame(
        elapsed=3.0, duration=6.0, rate=20.0, phase="both healthy", rows=rows, events=[]
    )
    text = [paint(line, color=True, width=200) for line in frame]
    plain = [paint(line, color=False, width=200) for line in frame]
    for state in states[:-1]:
        assert state is not None
        line = next(line for line in text if f"m{state} " in line)
        assert f"\x1b[{_demo._COLORS[state]}m{state}" in line
    assert not any(SGR.search(line) for line in plain)
    by_host = {line.split()[0]: line.split() for line in plain if line.startswith("host")}
    assert by_host["host1"][1:] == ["open", "3", "2", "1", "4", "1.2s"]
    assert by_host["host2"][-1] == "trying"
    assert by_host["host3"][-2:] == ["by", "hand"]
    assert by_host["host0"][-1] == "-"
    assert by_host["host5"][1] == "-", "no call yet: no state"
    assert "  none yet" in plain
    assert any("3.0s of 6s [##########          ]" in line for line in plain)
    # Columns line up under the header whatever the colours.
    header = next(line for line in plain if line.startswith("upstream"))
    assert len({len(line) for line in plain if line.startswith("host")} | {len(header)}) == 1


def test_only_the_latest_events_are_shown() -> None:
    events = [[(f"  event {i}", "")] for i in range(10)]
    frame = render_frame(
        elapsed=1.0, duration=2.0, rate=1.0, phase="x", rows=[], events=events, events_shown=3
    )
    plain = [paint(line, color=False, width=80) for line in frame]
    assert plain[-3:] == ["  event 7", "  event 8", "  event 9"]


def test_lines_are_cut_to_the_terminal_width() -> None:
    line = [("a" * 10, "31"), ("b" * 10, ""), ("c" * 10, "1")]
    assert paint(line, color=False, width=15) == "a" * 10 + "b" * 5
    coloured = paint(line, color=True, width=15)
    assert SGR.sub("", coloured) == "a" * 10 + "b" * 5
    assert coloured.startswith("\x1b[31m") and "c" not in coloured


def test_the_frame_fits_a_short_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_demo.LiveView, "size", lambda self: (60, 14))
    out = FakeTerminal()
    live = _demo._Live(
        out,
        color=False,
        started=0.0,
        duration=10.0,
        rate=1.0,
        tally=_demo._Tally(),
        registry=BreakerRegistry(),
        keys={"payments": "http://a", "catalog": "http://b"},
    )
    for i in range(10):
        live.phase(f"phase {i}")
    frame = live.frame(5.0)
    assert len(frame) < 14
    assert all(len(paint(line, color=False, width=59)) <= 59 for line in frame)


# --- the real command under a pseudo-terminal ---------------------------------

needs_pty = pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")


def run_on_a_pty(
    *args: str, interrupt_after: float | None = None, limit: float = 60.0
) -> tuple[int, str]:
    """Run ``python -m circuitbreaker_http ARGS`` with a pseudo-terminal as stdout.

    Returns its exit status and everything it wrote; kills it after ``limit`` seconds.
    ``interrupt_after`` counts from its first output (the demo is running by
    then), not from the start: imports take long on a loaded machine.
    """
    import pty

    parent, child = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "100"}
    env.pop("NO_COLOR", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "circuitbreaker_http", *args],
        stdin=subprocess.DEVNULL,
        stdout=child,
        stderr=subprocess.PIPE,
        env=env,
    )
    os.close(child)
    chunks: list[bytes] = []
    started = time.monotonic()
    first_output: float | None = None
    try:
        while time.monotonic() - started < limit:
            if (
                interrupt_after is not None
                and first_output is not None
                and time.monotonic() - first_output > interrupt_after
            ):
                process.send_signal(signal.SIGINT)
                interrupt_after = None
            ready, _, _ = select.select([parent], [], [], 0.2)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                data = os.read(parent, 65536)
            except OSError:  # EIO: the child closed its side
                break
            if not data:
                break
            if first_output is None:
                first_output = time.monotonic()
            chunks.append(data)
        status = process.wait(timeout=max(1.0, limit - (time.monotonic() - started)))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(parent)
        assert process.stderr is not None
        errors = process.stderr.read().decode()
        process.stderr.close()
    assert "Traceback" not in errors, errors
    return status, b"".join(chunks).decode("utf-8", "replace")


@needs_pty
def test_the_command_draws_the_live_view_on_a_real_terminal() -> None:
    status, text = run_on_a_pty("demo", "--duration", "3", "--rate", "10")
    assert status == 0
    assert CURSOR_UP.search(text)
    assert "\x1b[32mclosed" in text
    shown = screen(text)
    assert sum(1 for line in shown if line.startswith("upstream")) == 1
    assert "summary" in shown


@needs_pty
def test_ctrl_c_stops_the_demo_with_its_summary() -> None:
    status, text = run_on_a_pty("demo", "--duration", "60", interrupt_after=2.0, limit=30.0)
    assert status == 130
    shown = screen(text)
    assert "summary" in shown
    assert text.rstrip().count("\x1b[?25h") == 1, "the cursor is shown again"
