"""The pure core: values, the state table, the sliding window and the engine.

Nothing under this package reads a clock, takes a lock, does I/O or imports an
HTTP client; a test keeps it that way.
"""

from ._machine import (
    BUCKETS,
    DISABLED_PERMIT,
    TRANSITIONS,
    BreakerCore,
    CoreState,
    IllegalTransition,
    MetricsRow,
    bucket_of,
)
from ._values import (
    DEFAULT_FAILURE_STATUSES,
    BreakerConfig,
    BreakerSnapshot,
    CallInfo,
    CallRecorded,
    CallRejected,
    CircuitState,
    Classifier,
    FleetState,
    StateChange,
    SyncView,
    Verdict,
    metrics_row,
)

__all__ = [
    "BUCKETS",
    "DEFAULT_FAILURE_STATUSES",
    "DISABLED_PERMIT",
    "TRANSITIONS",
    "BreakerConfig",
    "BreakerCore",
    "BreakerSnapshot",
    "CallInfo",
    "CallRecorded",
    "CallRejected",
    "CircuitState",
    "Classifier",
    "CoreState",
    "FleetState",
    "IllegalTransition",
    "MetricsRow",
    "StateChange",
    "SyncView",
    "Verdict",
    "bucket_of",
    "metrics_row",
]
