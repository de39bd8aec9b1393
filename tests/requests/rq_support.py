"""What the requests adapter's tests under ``tests/requests/`` share.

Imported by name (``from rq_support import ...``): pytest puts this folder on
``sys.path`` for the test modules in it, as it does for ``tests/httpx/``.
"""

from __future__ import annotations

from typing import Any

import requests
from requests.adapters import HTTPAdapter

from circuitbreaker_http import BreakerConfig

__all__ = ["COUNT_ONLY", "TRIP1", "extension", "mounted"]

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
