"""The asyncio shell: :class:`AsyncFailoverManager` on psycopg's ``AsyncConnectionPool``."""

from __future__ import annotations

from pgfailover.aio.execution import AsyncSession
from pgfailover.aio.manager import AsyncFailoverManager

__all__ = ["AsyncFailoverManager", "AsyncSession"]
