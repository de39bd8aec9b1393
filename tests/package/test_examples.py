"""The examples and the demo run as they are, against loopback, and end by themselves."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def run(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_there_are_examples() -> None:
    names = {path.name for path in EXAMPLES}
    assert {"core_breaker.py", "httpx_sync.py", "httpx_async.py"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs_as_it_is(path: Path) -> None:
    done = run(str(path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip(), "an example shows what it does"
    assert "Traceback" not in done.stderr


def test_core_example_trips_and_recovers() -> None:
    done = run(str(ROOT / "examples" / "core_breaker.py"))
    assert "closed -> open" in done.stdout
    assert "half_open -> closed" in done.stdout


def test_demo_runs_short_without_a_terminal() -> None:
    done = run("-m", "circuitbreaker_http", "demo", "--duration", "3", "--rate", "10")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any("summary:" in line for line in lines)
    assert any("payments" in line and "ends" in line for line in lines)
    # Not a TTY: plain lines, no ANSI colour codes.
    assert "\x1b[" not in done.stdout


def test_demo_rejects_a_bad_duration() -> None:
    done = run("-m", "circuitbreaker_http", "demo", "--duration", "0")
    assert done.returncode == 2
    assert "--duration" in done.stderr
