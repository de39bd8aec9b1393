"""Fixtures of the aiohttp tests: asyncio only, and a loopback server the test scripts byte by byte.

aiohttp runs on asyncio alone, so ``anyio_backend`` is overridden here (the
repository's ``tests/conftest.py`` runs every anyio test on asyncio and trio).
This directory has no ``__init__.py`` on purpose, as ``tests/httpx`` has none:
a package named ``aiohttp`` on ``sys.path`` would shadow the real aiohttp.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aio_support import ScriptedServer


@pytest.fixture
def anyio_backend() -> str:
    """aiohttp needs asyncio."""
    return "asyncio"


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedServer]:
    """A started :class:`ScriptedServer`, closed after the test."""
    async with ScriptedServer() as server:
        yield server
