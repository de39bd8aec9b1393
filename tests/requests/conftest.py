"""Fixtures of the requests adapter's tests."""

from __future__ import annotations

import socket

import pytest

from circuitbreaker_http.testing import FlakyServer


@pytest.fixture
def srv(flaky_server: FlakyServer) -> FlakyServer:
    """The loopback upstream (``flaky_server``, under a short name)."""
    return flaky_server


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on: connecting is refused at once."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    sock.close()
    return port
