"""What the requests adapter's tests under ``tests/requests/`` share.

Imported by name (``from rq_support import ...``): pytest puts this folder on
``sys.path`` for the test modules in it, as it does for ``tests/httpx/``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from circuitbreaker_http import BreakerConfig, CircuitBreaker, CircuitState
from circuitbreaker_http.requests import CircuitBreakerAdapter
from circuitbreaker_http.testing import FlakyServer

__all__ = [
    "CLOSED",
    "COUNT_ONLY",
    "FORCED_OPEN",
    "HALF_OPEN",
    "JOIN",
    "OPEN",
    "TRIP1",
    "breaker_of",
    "extension",
    "in_thread",
    "joined",
    "mounted",
]

CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN
FORCED_OPEN = CircuitState.FORCED_OPEN

JOIN = 10.0
"""Seconds: the bound on every thread join in these tests."""

TRIP1 = BreakerConfig(
    consecutive_failures=1, failure_rate=None, open_duration=10.0, max_open_duration=3600.0
)
"""One failure opens the breaker for 10 s: a recorded failure shows in the state alone."""

COUNT_ONLY = BreakerConfig(consecutive_failures=None, failure_rate=None)
"""Nothing trips: the window counts are the whole story."""


def mounted(adapter: HTTPAdapter) -> requests.Session:
    """A session sending everything through ``adapter``."""
    session = requests.Session()
    for prefix in ("http://", "https://"):
        session.mount(prefix, adapter)
    return session


def extension(response: requests.Response) -> dict[str, Any]:
    """``response.circuit_breaker``, the mapping the adapter sets on every response."""
    marks: dict[str, Any] = vars(response)["circuit_breaker"]
    return marks


def breaker_of(adapter: CircuitBreakerAdapter, server: FlakyServer) -> CircuitBreaker:
    """The breaker of ``server``'s origin in ``adapter``'s registry."""
    return adapter.registry.get(server.url)


def in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """Run ``fn`` on a thread; its return value or exception lands in the list."""
    box: list[object] = []

    def run() -> None:
        try:
            box.append(fn())
        except BaseException as exc:  # handed to the test, which asserts on it
            box.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def joined(thread: threading.Thread, box: list[object]) -> object:
    """Wait (bounded) for an :func:`in_thread` thread and return what it left."""
    thread.join(JOIN)
    assert not thread.is_alive(), "the request did not finish"
    assert len(box) == 1
    return box[0]
