"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from circuitbreaker_http.testing._server import FlakyServer


@pytest.fixture
def flaky_server() -> Iterator[FlakyServer]:
    """A started ``FlakyServer`` on 127.0.0.1, fresh for each test, closed after it.

    Teardown also checks the server left no threads behind and hit no bug.
    """
    with FlakyServer() as server:
        yield server
    assert server.threads() == [], f"FlakyServer threads leaked: {server.threads()}"
    assert server.errors == [], f"FlakyServer raised while serving: {server.errors!r}"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run every ``@pytest.mark.anyio`` test on both asyncio and trio (a module may override)."""
    return str(request.param)
