"""The package surface: exports, a bare import with no extras, a pure core, py.typed."""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

import circuitbreaker_http

PACKAGE = Path(circuitbreaker_http.__file__).parent
CORE = PACKAGE / "_core"

OPTIONAL = (
    "httpx",
    "httpx2",
    "aiohttp",
    "requests",
    "urllib3",
    "redis",
    "prometheus_client",
    "opentelemetry",
    "anyio",
    "trio",
)
FORBIDDEN_IN_CORE = {"time", "threading", "asyncio", "httpx", "requests", "redis"}


def isort_style(name: str) -> tuple[int, list[int | str]]:
    """The order ruff's RUF022 keeps ``__all__`` in (the project's linter enforces it).

    SCREAMING_SNAKE_CASE first, then CamelCase, then anything else; a natural
    sort within each group.
    """
    if len(name) > 1 and name.isupper():
        group = 0
    elif name[:1].isupper():
        group = 1
    else:
        group = 2
    natural: list[int | str] = [
        int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)
    ]
    return group, natural


def test_isort_style_key() -> None:
    names = ["by_host", "__version__", "Verdict", "DEFAULT_X", "BreakerConfig", "A10", "A9"]
    assert sorted(names, key=isort_style) == [
        "A9",  # all upper: a constant; natural sort puts 9 before 10
        "A10",
        "DEFAULT_X",
        "BreakerConfig",
        "Verdict",
        "__version__",
        "by_host",
    ]


def test_all_is_sorted() -> None:
    names = list(circuitbreaker_http.__all__)
    assert names == sorted(names, key=isort_style)
    assert len(names) == len(set(names))


def test_all_names_exist() -> None:
    for name in circuitbreaker_http.__all__:
        assert hasattr(circuitbreaker_http, name), name


def test_every_public_name_is_in_all() -> None:
    public = {
        name
        for name, value in vars(circuitbreaker_http).items()
        if not name.startswith("_")
        # submodules (circuitbreaker_http.testing, .httpx, ...) are imported by path
        and not isinstance(value, types.ModuleType)
        # client names load on first touch and stay out of __all__ (star-imports need no extra)
        and name not in circuitbreaker_http._LAZY
    }
    assert public <= set(circuitbreaker_http.__all__), public - set(circuitbreaker_http.__all__)


def test_contract_names_are_exported() -> None:
    # API.md: every name a user imports from the package itself.
    for name in (
        "BreakerConfig",
        "BreakerSnapshot",
        "CallInfo",
        "CircuitBreaker",
        "CircuitOpenError",
        "CircuitState",
        "StateChange",
        "Verdict",
    ):
        assert name in circuitbreaker_http.__all__, name


def test_exported_objects_belong_to_the_package() -> None:
    for name in circuitbreaker_http.__all__:
        value = getattr(circuitbreaker_http, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            module = value.__module__
            assert module.startswith("circuitbreaker_http"), (name, module)


def test_bare_import_needs_no_optional_dependency() -> None:
    code = textwrap.dedent(
        f"""
        import sys
        for name in {OPTIONAL!r}:
            sys.modules[name] = None  # any import of it raises ImportError
        import circuitbreaker_http
        for name in circuitbreaker_http.__all__:
            getattr(circuitbreaker_http, name)
        from circuitbreaker_http.testing import ManualClock
        clock = ManualClock()
        breaker = circuitbreaker_http.CircuitBreaker("x", clock=clock)
        assert breaker.call(lambda: 42) == 42
        loaded = sorted(n for n in {OPTIONAL!r} if sys.modules.get(n) is not None)
        assert loaded == [], loaded
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=PACKAGE.parent,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_blocking_a_module_really_blocks_it() -> None:
    # The bare-import test relies on this: a None entry makes the import fail.
    code = textwrap.dedent(
        """
        import sys
        sys.modules["httpx"] = None
        try:
            import httpx
        except ImportError:
            print("blocked")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "blocked"


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every absolute import in ``path`` (relative imports excluded)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "__import__"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value.split(".")[0])
    return found


def test_core_imports_no_clock_threads_io_or_clients() -> None:
    files = sorted(CORE.rglob("*.py"))
    assert files, "no core modules found"
    assert {f.name for f in files} >= {"__init__.py", "_machine.py", "_values.py"}
    offenders = {
        str(f.relative_to(PACKAGE)): sorted(imported_modules(f) & FORBIDDEN_IN_CORE)
        for f in files
        if imported_modules(f) & FORBIDDEN_IN_CORE
    }
    assert offenders == {}


def test_the_import_check_catches_forbidden_imports(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os\nimport time\nfrom threading import Lock\nimport asyncio.tasks\n"
        "from . import sibling\nfrom .._x import y\n"
        "def f():\n    import httpx\n    return __import__('redis')\n",
        encoding="utf-8",
    )
    assert imported_modules(sample) & FORBIDDEN_IN_CORE == {
        "time",
        "threading",
        "asyncio",
        "httpx",
        "redis",
    }


def test_py_typed_exists() -> None:
    assert (PACKAGE / "py.typed").is_file()


CLIENT_NAMES = {
    "AsyncCircuitBreakerTransport": "circuitbreaker_http.httpx",
    "CircuitBreakerMiddleware": "circuitbreaker_http.aiohttp",
    "CircuitOpenClientError": "circuitbreaker_http.aiohttp",
    "CircuitBreakerAdapter": "circuitbreaker_http.requests",
    "CircuitBreakerTransport": "circuitbreaker_http.httpx",
    "CircuitOpenRequestsError": "circuitbreaker_http.requests",
    "CircuitOpenTransportError": "circuitbreaker_http.httpx",
}


def test_client_names_load_from_the_top_level_on_first_touch() -> None:
    code = textwrap.dedent(
        f"""
        import sys
        import circuitbreaker_http
        for client in ("httpx", "httpx2", "requests", "aiohttp"):
            assert client not in sys.modules, client
        for name, module in {CLIENT_NAMES!r}.items():
            value = getattr(circuitbreaker_http, name)
            assert value is getattr(sys.modules[module], name), name
            assert name in dir(circuitbreaker_http), name
        from circuitbreaker_http import CircuitBreakerTransport
        import httpx
        assert issubclass(CircuitBreakerTransport, httpx.BaseTransport)
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=PACKAGE.parent
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_a_client_name_without_its_extra_names_the_extra() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["httpx"] = None
        import circuitbreaker_http
        try:
            circuitbreaker_http.CircuitBreakerTransport
        except ImportError as exc:
            print(exc)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=PACKAGE.parent
    )
    assert 'pip install "circuitbreaker-http[httpx]"' in result.stdout, result.stderr


def test_an_unknown_top_level_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="NoSuchThing"):
        circuitbreaker_http.NoSuchThing  # noqa: B018
