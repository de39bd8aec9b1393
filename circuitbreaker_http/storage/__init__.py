"""Shared breaker state for a fleet: the storage protocol, its sync engine, and memory.

Pass a storage as ``BreakerRegistry(..., storage=...)``: the registry then
runs one syncer that flushes its breakers' new outcomes and reads back the
fleet's state in one round trip per ``sync_interval``, off the request path.
:class:`MemoryStorage` holds the state in this process (tests, simulations of
a fleet with :meth:`MemoryStorage.peer`); ``circuitbreaker_http.redis``
shares it between processes.
"""

from ._engine import SyncEngine
from ._memory import MemoryStorage
from ._protocol import (
    MANUAL_ACTIONS,
    AsyncStorage,
    BreakerReport,
    FleetSettings,
    Storage,
    digest,
)
from ._syncer import Rounds, ThreadSyncer

__all__ = [
    "MANUAL_ACTIONS",
    "AsyncStorage",
    "BreakerReport",
    "FleetSettings",
    "MemoryStorage",
    "Rounds",
    "Storage",
    "SyncEngine",
    "ThreadSyncer",
    "digest",
]
