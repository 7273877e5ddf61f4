"""The pgfailover error tree.

Every error pgfailover raises derives from :class:`PgFailoverError`. Errors a
caller may treat as connection trouble also derive from
:class:`psycopg.OperationalError`, so code that already catches psycopg errors
keeps working; configuration mistakes also derive from :class:`ValueError`::

    Exception
     ├── PgFailoverError
     │    ├── ConfigurationError (+ ValueError)   bad settings, DSN, TOML, env
     │    ├── LabError                             the replication lab failed
     │    │    └── BinariesNotFound                no PostgreSQL server binaries
     │    ├── PromotionRefused                     a promotion guard said no
     │    ├── PromotionFailed                      pg_promote() failed or timed out
     │    └── (+ psycopg.OperationalError)
     │         ├── NoPrimaryAvailable              no writable primary in time
     │         ├── NoStandbyAvailable              no standby fits a read
     │         ├── SplitBrainError                 two primaries: writes refused
     │         ├── ManagerClosed                   the manager is closed
     │         └── WriteOutcomeUnknown             a write may or may not have
     │                                             committed: never retried
     └── ...

Messages never contain a password: DSNs are masked before they are shown.
"""

from __future__ import annotations

import psycopg

__all__ = [
    "BinariesNotFound",
    "ConfigurationError",
    "LabError",
    "ManagerClosed",
    "NoPrimaryAvailable",
    "NoStandbyAvailable",
    "PgFailoverError",
    "PromotionFailed",
    "PromotionRefused",
    "SplitBrainError",
    "WriteOutcomeUnknown",
    "first_line",
]


def first_line(exc: BaseException) -> str:
    """The first line of an error's message, or its type's name when it has none.

    What logs, events and status show of an error: psycopg's messages go on
    with LINE, DETAIL and HINT lines.
    """
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class PgFailoverError(Exception):
    """Root of every error pgfailover raises."""


class ConfigurationError(PgFailoverError, ValueError):
    """A setting, DSN, config file or environment variable is invalid.

    The message names the field and the offending value (passwords masked).
    """


class LabError(PgFailoverError):
    """The local replication lab could not do what it was asked."""


class BinariesNotFound(LabError):
    """No PostgreSQL server binaries were found on this machine."""


class PromotionRefused(PgFailoverError):
    """A promotion guard refused a failover.

    ``guard`` names the guard so that callers (and the CLI) can say which one
    refused and how to override it.
    """

    def __init__(self, message: str, *, guard: str) -> None:
        super().__init__(message)
        self.guard = guard


class PromotionFailed(PgFailoverError):
    """``pg_promote()`` refused, or the node did not leave recovery in time."""


class NoPrimaryAvailable(PgFailoverError, psycopg.OperationalError):
    """No writable primary was available within ``failover_wait_timeout``."""


class ReadOnlyMode(NoPrimaryAvailable):
    """No primary, and none is coming: the cluster is read-only until an operator acts.

    Raised at once, without waiting ``failover_wait_timeout``: the primary is
    lost and nothing will promote a standby by itself (``manual`` promotion,
    maintenance mode, a guard that refuses until something changes, no
    candidate). ``FailoverManager.writable`` says the same before a write.
    """


class NoStandbyAvailable(PgFailoverError, psycopg.OperationalError):
    """No node can serve a read (no standby and no primary)."""


class SplitBrainError(PgFailoverError, psycopg.OperationalError):
    """Two nodes claim to be primary on one timeline: writes are refused."""


class ManagerClosed(PgFailoverError, psycopg.OperationalError):
    """The manager was used after :meth:`FailoverManager.close`."""


class WriteOutcomeUnknown(PgFailoverError, psycopg.OperationalError):
    """The connection was lost after a write was sent.

    The write may or may not have committed, so it is never retried silently.
    The caller must check (for example by an idempotency key) and decide.
    """
