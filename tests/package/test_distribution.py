"""What the sdist and the wheel hold: every module and ``py.typed``; tests and examples.

The files are compared with the source tree, so a module left out of the
wheel (a build rule, a ``.gitignore`` line, a misplaced file) fails here and
not on a user's machine. ``.ci/package`` points ``CIRCUITBREAKER_HTTP_DIST``
at the files it built and installs; without it the test builds its own
(``python -m build --no-isolation``, a few seconds). Run from an unpacked
sdist against an installed wheel, there is no source tree to compare with,
and the test skips.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

import pytest

import circuitbreaker_http

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "circuitbreaker_http"
NAME = "circuitbreaker_http"
VERSION = circuitbreaker_http.__version__

pytestmark = [
    pytest.mark.skipif(
        not (ROOT / "pyproject.toml").is_file() or not SOURCE.is_dir(),
        reason="not a source checkout (an unpacked sdist run against the installed wheel)",
    ),
    pytest.mark.timeout(600),
]


def files_under(top: Path) -> set[str]:
    """Files below ``top`` as POSIX paths relative to ``ROOT``, without bytecode caches.

    Only what ``.gitignore`` leaves in (hatchling skips the rest): caches.
    """
    found = set()
    for path in top.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            found.add(path.relative_to(ROOT).as_posix())
    return found


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("CIRCUITBREAKER_HTTP_DIST")
    if given:
        return Path(given)
    for needed in ("build", "hatchling"):
        if importlib.util.find_spec(needed) is None:
            pytest.skip(f"{needed} is not installed (it is in the dev extra)")
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert done.returncode == 0, f"python -m build failed:\n{done.stdout}\n{done.stderr}"
    return out


def one(dist: Path, pattern: str) -> Path:
    found = sorted(dist.glob(pattern))
    assert len(found) == 1, f"expected one {pattern} in {dist}, found {found}"
    return found[0]


@pytest.fixture(scope="module")
def wheel_files(dist: Path) -> set[str]:
    with zipfile.ZipFile(one(dist, f"{NAME}-{VERSION}-py3-none-any.whl")) as wheel:
        return set(wheel.namelist())


@pytest.fixture(scope="module")
def sdist_files(dist: Path) -> set[str]:
    with tarfile.open(one(dist, f"{NAME}-{VERSION}.tar.gz")) as sdist:
        names = [member.name for member in sdist.getmembers() if member.isfile()]
    prefix = f"{NAME}-{VERSION}/"
    assert all(name.startswith(prefix) for name in names)
    return {name[len(prefix) :] for name in names}


def test_the_wheel_holds_every_file_of_the_package(wheel_files: set[str]) -> None:
    expected = files_under(SOURCE)
    assert f"{NAME}/py.typed" in expected
    missing = sorted(expected - wheel_files)
    assert not missing, f"left out of the wheel: {missing}"


def test_the_wheel_holds_every_subpackage(wheel_files: set[str]) -> None:
    packages = {
        path.parent.relative_to(ROOT).as_posix()
        for path in SOURCE.rglob("__init__.py")
        if "__pycache__" not in path.parts
    }
    assert {NAME, f"{NAME}/_core", f"{NAME}/cli", f"{NAME}/testing"} <= packages
    for package in sorted(packages):
        assert f"{package}/__init__.py" in wheel_files, package
    assert f"{NAME}/py.typed" in wheel_files


def test_the_wheel_holds_nothing_else(wheel_files: set[str]) -> None:
    dist_info = f"{NAME}-{VERSION}.dist-info/"
    stray = sorted(
        name
        for name in wheel_files
        if not name.startswith((f"{NAME}/", dist_info))
        or PurePosixPath(name).suffix == ".pyc"
        or "__pycache__" in name
    )
    assert not stray, f"not part of the package: {stray}"


def test_the_wheel_installs_the_command(dist: Path) -> None:
    wheel_path = one(dist, f"{NAME}-{VERSION}-py3-none-any.whl")
    with zipfile.ZipFile(wheel_path) as wheel:
        info = f"{NAME}-{VERSION}.dist-info"
        entry_points = wheel.read(f"{info}/entry_points.txt").decode()
        metadata = wheel.read(f"{info}/METADATA").decode()
    assert "[console_scripts]" in entry_points
    assert "circuitbreaker-http = circuitbreaker_http.__main__:main" in entry_points
    assert "Name: circuitbreaker-http\n" in metadata
    assert f"Version: {VERSION}\n" in metadata
    assert "Provides-Extra: dev" in metadata


def test_the_sdist_holds_the_tests_examples_and_docs(sdist_files: set[str]) -> None:
    for top in ("circuitbreaker_http", "tests", "examples"):
        expected = files_under(ROOT / top)
        missing = sorted(expected - sdist_files)
        assert not missing, f"left out of the sdist: {missing}"
    assert "tests/conftest.py" in sdist_files
    assert {"pyproject.toml", "README.md", "CHANGELOG.md"} <= sdist_files
