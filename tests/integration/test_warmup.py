"""``pool_warmup`` on lab clusters: every new pool connection runs it, and it changes nothing.

What must hold, sync and asyncio:

- every pool connection of every node (the standbys' included) ran the
  warm-up once it was opened: the table's sequential scans on each node
  (``pg_stat_user_tables``, the server's own count) reach the pool's size;
- a warm-up that writes is rolled back (no row on the primary), one that a
  standby refuses or that names a missing table is logged once per pool,
  and the application's statements run on those connections all the same;
- a warm-up held by a lock (a migration's) gives up after ``connect_timeout``
  and the connection serves.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from pgfailover import AsyncFailoverManager
from pgfailover.lab import LocalLab

from .helpers import FAST, manager_for, prepare, wait_until

pytestmark = pytest.mark.timeout(120)

NODES = ("node0", "node1", "node2")
SIZE = 2  # connections each pool opens at once (pool_min_size)


def _scans(lab: LocalLab) -> dict[str, int]:
    """Sequential scans of ``w`` so far on each node, by the server's statistics."""
    sql = "SELECT coalesce(sum(seq_scan), 0) FROM pg_stat_user_tables WHERE relname = 'w'"
    return {name: int(lab.run_sql(name, sql)[0][0]) for name in NODES}


def _every_connection_warmed(lab: LocalLab, before: dict[str, int]) -> bool:
    return all(n - before[name] >= SIZE for name, n in _scans(lab).items())


def test_every_pool_connection_of_every_node_runs_the_warmup(fresh_lab: LocalLab) -> None:
    prepare(fresh_lab)
    before = _scans(fresh_lab)  # the primary key's build scanned it on node0
    config = FAST.replace(pool_warmup="SELECT count(*) FROM w", pool_min_size=SIZE)
    with manager_for(fresh_lab, config) as mgr:
        wait_until(
            lambda: _every_connection_warmed(fresh_lab, before), what=f"{SIZE} warm-ups a node"
        )
        mgr.query("INSERT INTO w VALUES (1)")
        assert mgr.query("SELECT count(*) FROM w", readonly=True) in ([(0,)], [(1,)])


def test_asyncio_pools_run_the_warmup_too(fresh_lab: LocalLab) -> None:
    prepare(fresh_lab)
    before = _scans(fresh_lab)
    config = FAST.replace(pool_warmup="SELECT count(*) FROM w", pool_min_size=SIZE)

    async def scenario() -> None:
        async with AsyncFailoverManager(nodes=fresh_lab.manager_nodes(), config=config) as mgr:
            deadline = asyncio.get_running_loop().time() + 15
            while not await asyncio.to_thread(_every_connection_warmed, fresh_lab, before):
                assert asyncio.get_running_loop().time() < deadline, _scans(fresh_lab)
                await asyncio.sleep(0.05)
            await mgr.query("INSERT INTO w VALUES (1)")

    asyncio.run(scenario())
    assert fresh_lab.run_sql("node0", "SELECT id FROM w") == [(1,)]


def test_a_warmup_that_writes_or_fails_changes_nothing_and_is_logged_once_a_pool(
    fresh_lab: LocalLab, caplog: pytest.LogCaptureFixture
) -> None:
    prepare(fresh_lab)
    # On the primary the INSERT runs, then the missing table fails the rest: rolled
    # back. On a standby the INSERT itself is refused (read-only).
    warmup = "INSERT INTO w VALUES (-1); SELECT count(*) FROM no_such_table"
    config = FAST.replace(pool_warmup=warmup, pool_min_size=SIZE, pool_max_size=SIZE)
    with (
        caplog.at_level(logging.DEBUG, logger="pgfailover.warmup"),
        manager_for(fresh_lab, config) as mgr,
    ):
        for k in range(10):  # the application's statements, on warmed-up connections
            mgr.query("INSERT INTO w VALUES (%s)", (k,))
            mgr.query("SELECT 1", readonly=True)

        def every_connection_tried() -> bool:
            return sum("pool_warmup failed" in r.getMessage() for r in caplog.records) >= 3 * SIZE

        wait_until(every_connection_tried, what="every connection's warm-up")
    assert fresh_lab.run_sql("node0", "SELECT min(id), count(*) FROM w") == [(0, 10)]
    failures = [r for r in caplog.records if "pool_warmup failed" in r.getMessage()]
    warned = sorted(r.getMessage().split()[1] for r in failures if r.levelno == logging.WARNING)
    assert warned == [f"pgfailover-default-{n}:" for n in NODES], warned  # once a pool
    assert any("no_such_table" in r.getMessage() for r in failures if "node0" in r.getMessage())
    assert any("read-only" in r.getMessage() for r in failures if "node1" in r.getMessage())


def test_a_warmup_held_by_a_lock_gives_up_and_the_connection_serves(
    fresh_lab: LocalLab, caplog: pytest.LogCaptureFixture
) -> None:
    """A migration holds ``w`` (ACCESS EXCLUSIVE, replayed on the standbys too): the
    warm-up waits ``connect_timeout`` at most, and the statements go through."""
    prepare(fresh_lab)
    config = FAST.replace(
        pool_warmup="SELECT 1 FROM w WHERE id = 0", connect_timeout=1.0, pool_timeout=5.0
    )
    with (
        fresh_lab.connect("node0") as migration,
        migration.transaction(),
        caplog.at_level(logging.WARNING, logger="pgfailover.warmup"),
    ):
        migration.execute("LOCK TABLE w IN ACCESS EXCLUSIVE MODE")
        with manager_for(fresh_lab, config) as mgr:
            # Held for the whole block, longer than pool_timeout: without its own
            # limit, the warm-up would keep the pool from handing out a connection.
            assert mgr.query("SELECT 1") == [(1,)]
            assert mgr.query("SELECT 2", readonly=True) == [(2,)]
            wait_until(  # lock_timeout or statement_timeout: both are connect_timeout
                lambda: any("due to" in r.getMessage() for r in caplog.records),
                what="the warm-up's timeout",
            )
