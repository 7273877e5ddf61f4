"""pgfailover: a PostgreSQL high-availability connection manager.

Writes go to the real primary and reads to healthy standbys, through
crashes, hangs, promotions and returning old primaries.
"""

from __future__ import annotations

from pgfailover.errors import (
    ConfigurationError,
    LabError,
    ManagerClosed,
    NoPrimaryAvailable,
    NoStandbyAvailable,
    PgFailoverError,
    PromotionRefused,
    SplitBrainError,
    WriteOutcomeUnknown,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "ConfigurationError",
    "LabError",
    "ManagerClosed",
    "NoPrimaryAvailable",
    "NoStandbyAvailable",
    "PgFailoverError",
    "PromotionRefused",
    "SplitBrainError",
    "WriteOutcomeUnknown",
    "__version__",
]
