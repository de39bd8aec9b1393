"""Helpers every benchmark script shares: interleaving, versions, summaries, callgrind.

The scripts run as ``python benchmarks/bench_*.py``, so this folder is on
``sys.path`` and ``import _common`` finds this module.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import re
import shutil
import socket
import statistics
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping
from itertools import repeat
from typing import Any

__all__ = [
    "Loop",
    "call_loop",
    "call_loop_rejected",
    "callgrind_instructions",
    "rotated",
    "summary",
    "valgrind_missing",
    "version_of",
]

Loop = Callable[[int], None]
"""A tight loop: ``loop(n)`` makes ``n`` calls."""


def call_loop(fn: Callable[[Any], object], arg: object) -> Loop:
    """Loop over ``fn(arg)``, with both bound to locals so only the call is measured."""

    def loop(n: int) -> None:
        f, a = fn, arg
        for _ in repeat(None, n):
            f(a)

    return loop


def call_loop_rejected(
    fn: Callable[[Any], object], arg: object, error: type[BaseException]
) -> Loop:
    """Loop over a rejected ``fn(arg)``, catching ``error``."""

    def loop(n: int) -> None:
        f, a, exc = fn, arg, error
        for _ in repeat(None, n):
            try:  # noqa: SIM105 - contextlib.suppress would cost more than what is measured
                f(a)
            except exc:
                pass

    return loop


def rotated(items: list[str], turn: int) -> list[str]:
    """Return ``items`` rotated left by ``turn``: repeat ``r`` starts with item ``r``."""
    k = turn % len(items)
    return items[k:] + items[:k]


def version_of(dist: str) -> str:
    """Return the installed version of ``dist``, or ``"?"``."""
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def summary(values: list[float]) -> dict[str, float]:
    """Median and quartiles of ``values`` (quartiles are the extremes below 4 values)."""
    if len(values) >= 4:
        q1, _, q3 = statistics.quantiles(values, n=4)
    else:
        q1, q3 = min(values), max(values)
    return {"median": statistics.median(values), "p25": q1, "p75": q3}


_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


def valgrind_missing() -> str | None:
    """Why :func:`callgrind_instructions` cannot run here, or ``None`` when it can."""
    if shutil.which("valgrind") is None:
        return "valgrind is not on PATH (apt-get install valgrind)"
    return None


def callgrind_instructions(argv: list[str], env: Mapping[str, str] | None = None) -> int:
    """The instructions one run of ``argv`` executes, counted by valgrind's callgrind.

    Runs ``valgrind --tool=callgrind --callgrind-out-file=/dev/null *argv`` and
    returns the ``Collected : N`` total (``Ir``) it reports on stderr: every
    instruction of the whole process, start-up included, and unaffected by
    the machine's load. ``env`` is added to this process's environment
    (``PYTHONHASHSEED=0`` makes a Python run repeatable).
    """
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *argv]
    done = subprocess.run(
        command,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )
    found = _COLLECTED.findall(done.stderr)
    if done.returncode != 0 or not found:
        raise RuntimeError(
            f"{' '.join(command)} failed (exit {done.returncode}):\n{done.stderr[-2000:]}"
        )
    return int(found[-1])


def _serve(listener: socket.socket, serve_connection: Callable[[socket.socket], None]) -> None:
    """The server process: answer every connection until the parent kills it."""
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve_connection, args=(conn,), daemon=True).start()


@contextlib.contextmanager
def canned_server(serve_connection: Callable[[socket.socket], None]) -> Iterator[str]:
    """A canned keep-alive server in a child process on a free loopback port.

    ``serve_connection(conn)`` answers one connection; the child runs it on a
    thread per connection, so it never competes with the client for the GIL.
    Yields ``http://127.0.0.1:PORT``.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    port = int(listener.getsockname()[1])
    process = multiprocessing.get_context("fork").Process(
        target=_serve, args=(listener, serve_connection), daemon=True
    )
    process.start()
    listener.close()  # the child holds its own copy
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.join(5)
