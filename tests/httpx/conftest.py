"""Fixtures of the httpx-family tests: every test runs with httpx and with httpx2.

A test asks for ``flavour`` and gets a :class:`~hx_support.Flavour`: ``hx``,
the client module (``httpx`` or ``httpx2``), and ``cb``, the integration
module built for it (``circuitbreaker_http.httpx`` or
``circuitbreaker_http.httpx2``). To run one flavour only, or to expect one to
fail, parametrise ``flavour`` indirectly::

    @pytest.mark.parametrize(
        "flavour",
        ["httpx", pytest.param("httpx2", marks=pytest.mark.xfail(strict=True, reason=...))],
        indirect=True,
    )

A test that cannot run with httpx2 (respx and httpx-retries know httpx only)
takes no ``flavour``, imports httpx itself and carries
``@pytest.mark.httpx_only(reason)``.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator

import pytest
from hx_support import FLAVOURS, Flavour

from circuitbreaker_http.testing._server import FlakyServer


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "httpx_only(reason): runs with httpx only, not httpx2, for the reason given",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        marker = item.get_closest_marker("httpx_only")
        if marker is None:
            continue
        if not marker.args or not str(marker.args[0]).strip():
            raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.httpx_only needs a reason")
        if "flavour" in getattr(item, "fixturenames", ()):
            raise pytest.UsageError(f"{item.nodeid}: an httpx_only test takes no flavour")


@pytest.fixture(params=FLAVOURS)
def flavour(request: pytest.FixtureRequest) -> Flavour:
    """The client module under test and its integration module: ``hx, cb = flavour``."""
    name = str(request.param)
    hx = pytest.importorskip(name)
    return Flavour(hx, importlib.import_module(f"circuitbreaker_http.{name}"))


@pytest.fixture
def second_server() -> Iterator[FlakyServer]:
    """Another started ``FlakyServer``, for the tests that need two origins."""
    with FlakyServer() as server:
        yield server
    assert server.errors == []
