"""The ``circuitbreaker-http`` command: its name, ``--version``, its console script."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import circuitbreaker_http
from circuitbreaker_http.cli import main


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "circuitbreaker_http", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_version() -> None:
    done = run("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"circuitbreaker-http {circuitbreaker_http.__version__}"


def test_run_as_a_module_it_names_itself_circuitbreaker_http() -> None:
    done = run("--help")
    assert done.returncode == 0
    assert done.stdout.startswith("usage: circuitbreaker-http ")
    bad = run("nonsense")
    assert bad.returncode == 2
    assert bad.stderr.startswith("usage: circuitbreaker-http ")
    assert "Traceback" not in bad.stderr


def test_bad_usage_is_exit_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--rate", "0"])
    assert exit_.value.code == 2
    assert "--rate" in capsys.readouterr().err


def test_the_console_script_is_installed_as_circuitbreaker_http() -> None:
    scripts = metadata.entry_points(group="console_scripts")
    (script,) = [s for s in scripts if s.name == "circuitbreaker-http"]
    assert script.value == "circuitbreaker_http.__main__:main"
    assert script.load() is main


def test_the_console_script_runs() -> None:
    path = Path(sys.executable).with_name("circuitbreaker-http")
    if not path.exists():
        pytest.skip(f"no console script beside {sys.executable}")
    done = subprocess.run(
        [str(path), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"circuitbreaker-http {circuitbreaker_http.__version__}"
    usage = subprocess.run([str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert usage.returncode == 2
    assert usage.stderr.startswith("usage: circuitbreaker-http ")
