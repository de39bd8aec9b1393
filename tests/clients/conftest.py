"""Fixtures of the client behaviour table: ``client`` builds the driver of the client under test.

A row asks for ``client`` and is parametrised over every client with
:func:`clients_support.every_client`; ``client(registry, fallback=...)``
returns a :class:`clients_support.Driver` on the test's ``flaky_server``,
closed after the test. This directory has no ``__init__.py`` on purpose (see
``tests/httpx/conftest.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from clients_support import ClientFactory, Driver, make_driver

from circuitbreaker_http import BreakerRegistry
from circuitbreaker_http.testing._server import FlakyServer


@pytest.fixture
def client(request: pytest.FixtureRequest, flaky_server: FlakyServer) -> Iterator[ClientFactory]:
    """``client(registry, fallback=None)``: the driver of the client this test runs with."""
    name = str(request.param)
    drivers: list[Driver] = []

    def connect(registry: BreakerRegistry, *, fallback: Any = None) -> Driver:
        driver = make_driver(name, flaky_server, registry, fallback)
        drivers.append(driver)
        return driver

    yield connect
    for driver in reversed(drivers):
        driver.close()
