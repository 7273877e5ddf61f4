"""The asyncio contenders of the benchmarks: writer tasks on an event loop of their own.

``failover.py`` runs its contenders as writer threads; an asyncio contender
is one thread running an event loop with the same number of writer tasks,
recording into the same :class:`~common.Record`, so that the figures of both
come from the same code. Contenders:

- ``async_auto`` / ``async_external``: :class:`pgfailover.AsyncFailoverManager`
  (pgfailover promotes / follows the promoter);
- ``async_baseline``: psycopg_pool's ``AsyncConnectionPool`` on the libpq
  multi-host conninfo with ``target_session_attrs=read-write`` and
  ``check=AsyncConnectionPool.check_connection``, the workload retrying.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable

from common import Record
from psycopg_pool import AsyncConnectionPool

from pgfailover import AsyncFailoverManager, FailoverConfig
from pgfailover.lab import LocalLab

__all__ = ["ASYNC_CONTENDERS", "async_writers"]

ASYNC_CONTENDERS = ("async_auto", "async_external", "async_baseline")

AsyncWrite = Callable[[int], Awaitable[int]]


async def _loop_writers(
    write: AsyncWrite, record: Record, stop: threading.Event, tasks: int
) -> None:
    async def loop(base: int) -> None:
        i = base
        while not stop.is_set():
            i += 1
            try:
                port = await write(i)
            except Exception as exc:  # noqa: BLE001 - every failed attempt is counted
                with record.lock:
                    record.failures.append((time.monotonic(), type(exc).__name__))
                await asyncio.sleep(0)  # a failure without a wait must not starve the loop
                continue
            with record.lock:
                record.acked.append((i, port, time.monotonic()))

    await asyncio.gather(*(loop(k * 100_000_000) for k in range(tasks)))


async def _run(
    lab: LocalLab, contender: str, sql: str, record: Record, stop: threading.Event, *, tasks: int
) -> None:
    if contender == "async_baseline":
        conninfo = lab.url + "?target_session_attrs=read-write&connect_timeout=2"
        pool = AsyncConnectionPool(
            conninfo,
            min_size=tasks,
            max_size=tasks,
            timeout=5,
            check=AsyncConnectionPool.check_connection,
            open=False,
        )
        await pool.open()

        async def pool_write(i: int) -> int:
            async with pool.connection() as conn:
                cur = await conn.execute(sql, (i,))
                row = await cur.fetchone()
                return int(row[0]) if row else -1

        try:
            await _loop_writers(pool_write, record, stop, tasks)
        finally:
            await pool.close(timeout=2)
        return
    cfg = FailoverConfig(
        promotion="auto" if contender == "async_auto" else "external",
        failover_cooldown=0,
        pool_min_size=tasks,
        pool_max_size=tasks,
        failover_wait_timeout=30,
    )
    mgr = await AsyncFailoverManager(nodes=lab.manager_nodes(), config=cfg, name="bench").open()

    async def manager_write(i: int) -> int:
        return int((await mgr.query(sql, (i,)))[0][0])

    try:
        await _loop_writers(manager_write, record, stop, tasks)
    finally:
        await mgr.close(timeout=2)


def async_writers(
    lab: LocalLab, contender: str, sql: str, record: Record, stop: threading.Event, *, tasks: int
) -> list[threading.Thread]:
    """One thread running ``tasks`` writer tasks of ``contender`` until ``stop``; it closes
    its manager or pool before it ends."""

    def main() -> None:
        try:
            asyncio.run(_run(lab, contender, sql, record, stop, tasks=tasks))
        except Exception as exc:  # noqa: BLE001 - reported in the record
            with record.lock:
                record.failures.append((time.monotonic(), f"setup: {type(exc).__name__}"))

    return [threading.Thread(target=main, name=f"{contender}-loop", daemon=True)]
