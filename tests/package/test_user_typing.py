"""Users' code type-checks: ``mypy --strict`` on the examples in ``tests/typing/``.

``tests/typing/`` holds typical user code of every public name, with
``assert_type`` pinning the types users see. The first test fails when any
of it stops passing ``mypy --strict``; the others prove the check can fail,
on snippets with deliberate mistakes that the same run must report.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
USER_CODE = ROOT / "tests" / "typing"

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed"),
    # A cold mypy cache takes several seconds per run on a loaded machine.
    pytest.mark.timeout(600),
]


def mypy(*targets: Path) -> subprocess.CompletedProcess[str]:
    """Run ``mypy --strict`` from the project root, so ``pyproject.toml``'s settings apply.

    mypy keeps its cache in the project's ``.mypy_cache``, as when run by hand,
    so a second run takes a fraction of a second.
    """
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-color-output", *map(str, targets)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=540,
    )


def test_user_code_passes_mypy_strict() -> None:
    files = sorted(USER_CODE.glob("*.py"))
    assert {f.name for f in files} >= {"user_code.py", "user_clients.py"}
    result = mypy(USER_CODE)
    assert result.returncode == 0, f"mypy --strict tests/typing:\n{result.stdout}{result.stderr}"
    assert f"no issues found in {len(files)} source files" in result.stdout, result.stdout


MISTAKES = """
from typing import Any

import requests
from typing_extensions import assert_type

from circuitbreaker_http import BreakerConfig, CircuitBreaker
from circuitbreaker_http.requests import breaker_info

BreakerConfig(failure_statuses=["503"])  # MISTAKE list-item

breaker = CircuitBreaker("x")


@breaker
async def fetch() -> int:
    return 1


async def use() -> None:
    assert_type(await fetch(), str)  # MISTAKE assert-type


def read(response: requests.Response) -> None:
    response.circuit_breaker  # MISTAKE attr-defined
    info = breaker_info(response)
    assert_type(info, dict[str, Any] | None)  # MISTAKE assert-type
    if info is not None:
        info["status"]  # MISTAKE typeddict-item
"""


def test_the_check_fails_on_mistakes(tmp_path: Path) -> None:
    snippet = tmp_path / "mistakes.py"
    snippet.write_text(MISTAKES, encoding="utf-8")
    expected = {
        (number, line.split("# MISTAKE ")[1].strip())
        for number, line in enumerate(snippet.read_text(encoding="utf-8").splitlines(), start=1)
        if "# MISTAKE " in line
    }
    result = mypy(snippet)
    assert result.returncode == 1, result.stdout + result.stderr
    found = set()
    for line in result.stdout.splitlines():
        # mistakes.py:12: error: Some message  [code]
        parts = line.split(":", 3)
        if len(parts) == 4 and parts[2].strip() == "error" and line.endswith("]"):
            found.add((int(parts[1]), line.rsplit("[", 1)[1].rstrip("]")))
    assert found == expected, result.stdout
