"""DESIGN.md rule 13: layers talk through public surfaces.

No module outside ``_breaker.py`` and ``_core/`` reads a breaker's or the
core's private state, and each client integration reads its client library's
private attributes only inside the one function named for the trick.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import circuitbreaker_http
from circuitbreaker_http._breaker import CircuitBreaker
from circuitbreaker_http._core import BreakerCore

PACKAGE = Path(circuitbreaker_http.__file__).parent

# What an integration must never touch: the breaker's private slots and the
# core's internals (its permits, cycles and trials included).
FORBIDDEN = {
    *(name for name in CircuitBreaker.__slots__ if name.startswith("_") and name != "__weakref__"),
    *(name for name in BreakerCore.__slots__ if name.startswith("_")),
    "fast_permit",
    "trials",
    "cycle",
    "slots_used",
}


def outside_modules() -> list[Path]:
    return [
        path
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "_breaker.py" and "_core" not in path.relative_to(PACKAGE).parts
    ]


def foreign_reads(path: Path) -> list[str]:
    """``obj._name`` reads of FORBIDDEN names where ``obj`` is not ``self``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in FORBIDDEN
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
        ):
            found.append(f"{path.name}:{node.lineno} .{node.attr}")
    return found


@pytest.mark.parametrize("path", outside_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_reads_a_breakers_or_the_cores_private_state(path: Path) -> None:
    assert foreign_reads(path) == []


def test_the_check_catches_a_private_read(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f(breaker):\n    return breaker._core.fast_permit\n")
    assert foreign_reads(bad) == ["bad.py:2 .fast_permit", "bad.py:2 ._core"]
