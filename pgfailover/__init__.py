"""pgfailover: a PostgreSQL high-availability connection manager.

Writes go to the real primary and reads to healthy standbys, through
crashes, hangs, promotions and returning old primaries:
:class:`FailoverManager` for threads, :class:`AsyncFailoverManager` for asyncio.
"""

from __future__ import annotations

from pgfailover.aio import AsyncFailoverManager
from pgfailover.config import FailoverConfig, Node
from pgfailover.errors import (
    ConfigurationError,
    LabError,
    ManagerClosed,
    NoPrimaryAvailable,
    NoStandbyAvailable,
    PgFailoverError,
    PromotionFailed,
    PromotionRefused,
    ReadOnlyMode,
    SplitBrainError,
    WriteOutcomeUnknown,
)
from pgfailover.events import FailoverEvent
from pgfailover.manager import FailoverManager
from pgfailover.model import ClusterState, Role, Snapshot

__version__ = "0.1.0.dev0"

__all__ = [
    "AsyncFailoverManager",
    "ClusterState",
    "ConfigurationError",
    "FailoverConfig",
    "FailoverEvent",
    "FailoverManager",
    "LabError",
    "ManagerClosed",
    "NoPrimaryAvailable",
    "NoStandbyAvailable",
    "Node",
    "PgFailoverError",
    "PromotionFailed",
    "PromotionRefused",
    "ReadOnlyMode",
    "Role",
    "Snapshot",
    "SplitBrainError",
    "WriteOutcomeUnknown",
    "__version__",
]
