"""AsyncFailoverManager on lab clusters: what the sync manager's tests show, awaited.

Each test runs its own event loop (``asyncio.run``). Workloads are tasks
writing unique ids; a ticker task measures how late the loop wakes it (the
loop's lag), which must stay under 50 ms through a failover: nothing the
manager does may block the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

import psycopg
import pytest

from pgfailover import (
    AsyncFailoverManager,
    ClusterState,
    FailoverConfig,
    FailoverEvent,
    ManagerClosed,
    SplitBrainError,
)
from pgfailover.lab import LocalLab
from pgfailover.server import serve

from .helpers import FAST, INSERT_SQL, RESULT_SHAPES, Ledger, expected_rows, prepare

pytestmark = pytest.mark.timeout(180)
T = TypeVar("T")
MAX_LAG = 0.05


@contextlib.asynccontextmanager
async def manager(
    lab: LocalLab, config: FailoverConfig = FAST
) -> AsyncIterator[AsyncFailoverManager]:
    async with AsyncFailoverManager(nodes=lab.manager_nodes(), config=config) as mgr:
        yield mgr


async def until(check: Callable[[], T], timeout: float = 20.0, what: str = "condition") -> T:
    """Poll ``check()`` (without blocking the loop) until it is truthy, else fail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.02)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def _run_delay() -> float:
    """Seconds this thread has waited for a CPU while runnable (Linux schedstat), or 0."""
    try:
        with open(f"/proc/self/task/{threading.get_native_id()}/schedstat") as stat:
            return int(stat.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


class Ticker:
    """A task that sleeps 10 ms at a time and records how late it wakes up.

    What counts is the loop being held (a blocking call or CPU-heavy code on
    it), not the machine being busy: the time the loop's thread waited for a
    CPU while runnable (other processes, a lab being built on 2 CPUs) is
    taken off each lateness. ``raw`` keeps the worst lateness as measured.
    """

    def __init__(self) -> None:
        self.worst = 0.0
        self.raw = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            started, waited = time.monotonic(), _run_delay()
            await asyncio.sleep(0.01)
            late = time.monotonic() - started - 0.01
            self.raw = max(self.raw, late)
            self.worst = max(self.worst, late - (_run_delay() - waited))

    async def __aenter__(self) -> Ticker:
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0.05)
        self.worst = self.raw = 0.0
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class Writers(Ledger):
    """Tasks committing INSERTs with unique ids through the manager."""

    def __init__(self, mgr: AsyncFailoverManager, tasks: int = 8) -> None:
        super().__init__()
        self.mgr = mgr
        self._count = tasks
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = False

    async def _run(self, base: int) -> None:
        i = base
        while not self._stop:
            i += 1
            try:
                self.ok(i, await self.mgr.query(INSERT_SQL, (i,)))
            except Exception as exc:  # noqa: BLE001 - recorded and asserted on
                self.failure(i, exc)

    async def __aenter__(self) -> Writers:
        self._tasks = [
            asyncio.create_task(self._run(k * 10_000_000)) for k in range(1, self._count + 1)
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop = True
        await asyncio.gather(*self._tasks)

    def after(self, moment: float) -> list[tuple[int, int, float]]:
        return [a for a in self.acked if a[2] > moment]


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


def test_auto_mode_promotes_on_a_kill_without_stalling_the_loop(sync_lab: LocalLab) -> None:
    prepare(sync_lab)
    old = sync_lab.node("node0").port

    async def scenario() -> None:
        config = FAST.replace(promotion="auto")
        async with manager(sync_lab, config) as mgr, Ticker() as ticker, Writers(mgr) as load:
            await until(lambda: len(load.acked) > 100, what="writes on node0")
            killed = time.monotonic()
            sync_lab.kill("node0")
            await until(
                lambda: [a for a in load.after(killed) if a[1] != old],
                what="a write on the new primary",
            )
            first = min(t for _, p, t in load.acked if p != old and t > killed) - killed
            new = mgr.snapshot.primary
            assert new in ("node1", "node2")
            count = len(load.acked)
            await until(lambda: len(load.acked) > count + 100, what="writes going on")
            lag, raw = ticker.worst, ticker.raw
        assert not load.failed, load.failed[:3]
        assert len(load.unknown) <= 8  # at most the commits in flight at the kill
        acked = {i for i, _, _ in load.acked}
        present = {r[0] for r in sync_lab.run_sql(new, "SELECT id FROM w")}
        assert acked - present == set()
        event = mgr.history()[-1]
        assert (event.kind, event.from_node, event.to_node, event.outcome) == (
            "failover",
            "node0",
            new,
            "completed",
        )
        assert first < 2.0, f"first write on the new primary {first:.2f}s after the kill"
        assert lag < MAX_LAG, (
            f"the event loop stalled {lag * 1000:.0f} ms during the failover"
            f" ({raw * 1000:.0f} ms with the waits for a CPU)"
        )

    run(scenario())


def test_external_mode_follows_a_promotion_and_promotes_nothing(fresh_lab: LocalLab) -> None:
    prepare(fresh_lab)

    async def scenario() -> None:
        async with manager(fresh_lab) as mgr:
            fresh_lab.stop("node0", "immediate")
            await until(
                lambda: mgr.snapshot.state is ClusterState.FAILOVER_IN_PROGRESS,
                what="the primary seen gone",
            )
            rounds = mgr.snapshot.rounds
            await until(lambda: mgr.snapshot.rounds >= rounds + 10, what="ten more rounds")
            assert all(fresh_lab.in_recovery(n) for n in ("node1", "node2"))
            write = asyncio.create_task(
                mgr.query("INSERT INTO w VALUES (2) RETURNING inet_server_port()")
            )
            await asyncio.sleep(0.3)
            assert not write.done()  # waiting for a primary, without blocking the loop
            fresh_lab.promote("node2")
            promoted = time.monotonic()
            rows = await write
            assert rows[0][0] == fresh_lab.node("node2").port
            assert time.monotonic() - promoted < 1.0
            assert mgr.counters.as_dict()["promotions_total"] == 0
            event = mgr.history()[-1]
            assert (event.to_node, event.promoted_by) == ("node2", None)

    run(scenario())


def test_a_hung_primary_is_failed_over_and_its_tasks_unblocked(fresh_lab: LocalLab) -> None:
    prepare(fresh_lab)

    async def scenario() -> None:
        config = FAST.replace(promotion="auto", failover_wait_timeout=20.0)
        async with manager(fresh_lab, config) as mgr, Ticker() as ticker:
            fresh_lab.pause("node0")
            paused = time.monotonic()
            stuck = asyncio.create_task(
                mgr.query("INSERT INTO w VALUES (7) RETURNING inet_server_port()")
            )
            rows = await asyncio.wait_for(stuck, config.failover_wait_timeout + 5)
            new = mgr.snapshot.primary
            assert new in ("node1", "node2")
            assert rows == [(fresh_lab.node(new).port,)]
            assert time.monotonic() - paused < 15
            assert ticker.worst < MAX_LAG, f"loop stalled {ticker.worst * 1000:.0f} ms"
        fresh_lab.resume("node0")

    run(scenario())


def test_a_restarted_old_primary_receives_no_write(fresh_lab: LocalLab) -> None:
    prepare(fresh_lab)

    async def scenario() -> None:
        config = FAST.replace(promotion="auto", fence_stale_primary=True)
        async with manager(fresh_lab, config) as mgr:
            heard: list[tuple[str | None, bool]] = []
            loop_thread = threading.get_ident()

            @mgr.on_failover
            async def record(event: FailoverEvent) -> None:  # runs on the manager's loop
                heard.append((event.to_node, threading.get_ident() == loop_thread))

            fresh_lab.kill("node0")
            new = await until(
                lambda: mgr.snapshot.primary not in (None, "node0") and mgr.snapshot.primary,
                what="a failover",
            )
            assert isinstance(new, str)
            fresh_lab.start("node0")  # out of recovery, on the old timeline
            await until(lambda: mgr.snapshot.node("node0").role.value == "stale", what="stale")
            for i in range(100, 120):
                rows = await mgr.query(
                    "INSERT INTO w VALUES (%s) RETURNING inet_server_port()", (i,)
                )
                assert rows[0][0] == fresh_lab.node(new).port
            await until(lambda: heard, what="the coroutine callback")
            assert heard[0] == (new, True)
        assert fresh_lab.run_sql("node0", "SELECT count(*) FROM w WHERE id >= 100") == [(0,)]

    run(scenario())


def test_two_primaries_on_one_timeline_refuse_writes(fresh_lab: LocalLab) -> None:
    async def scenario() -> None:
        async with manager(fresh_lab, FAST.replace(failover_wait_timeout=1.0)) as mgr:
            fresh_lab.promote("node1")
            fresh_lab.promote("node2")
            await until(lambda: mgr.snapshot.state is ClusterState.SPLIT_BRAIN, what="split")
            with pytest.raises(SplitBrainError, match="split brain"):
                await mgr.query("SELECT 1")
            with pytest.raises(SplitBrainError):
                async with mgr.get_client():
                    pass
            assert mgr.history()[-1].kind == "split_brain"

    run(scenario())


def test_reads_go_to_standbys_and_read_your_writes_by_lsn(fresh_lab: LocalLab) -> None:
    prepare(fresh_lab)
    primary = fresh_lab.node("node0").port

    async def scenario() -> None:
        async with manager(fresh_lab) as mgr:
            ports = {
                (await mgr.query("SELECT inet_server_port()", readonly=True))[0][0]
                for _ in range(20)
            }
            assert primary not in ports
            assert ports <= {fresh_lab.node(n).port for n in ("node1", "node2")}
            async with mgr.get_client() as conn:
                await conn.execute("INSERT INTO w VALUES (1)")
            position = await mgr.write_position()
            for _ in range(20):  # never a standby that has not replayed the write
                rows = await mgr.query(
                    "SELECT count(*) FROM w WHERE id = 1", readonly=True, min_lsn=position
                )
                assert rows == [(1,)]
            async with mgr.get_client(readonly=True) as conn:
                cur = await conn.execute("SELECT pg_is_in_recovery()")
                assert await cur.fetchone() == (True,)

    run(scenario())


def test_query_returns_what_psycopg_returns_for_every_result_shape(
    shared_lab: LocalLab,
) -> None:
    with psycopg.connect(shared_lab.url) as conn:
        expected = {sql: expected_rows(conn, sql) for sql in RESULT_SHAPES}

    async def scenario() -> None:
        async with manager(shared_lab) as mgr:
            for sql, rows in expected.items():
                assert await mgr.query(sql) == rows, sql
                assert await mgr.query(sql, readonly=True) == rows, sql

    run(scenario())


def test_cancelled_tasks_give_their_connections_back(sync_lab: LocalLab) -> None:
    """Tasks cancelled inside statements and sessions leave nothing checked out; a write
    cancelled while its COMMIT waits for a synchronous standby counts as unknown (it did
    commit on the primary), and is not retried."""
    prepare(sync_lab)

    async def scenario() -> None:
        async with manager(sync_lab) as mgr:
            sleepers: list[asyncio.Task[Any]] = [
                asyncio.create_task(mgr.query("SELECT pg_sleep(30)", readonly=bool(k % 2)))
                for k in range(6)
            ]

            async def session() -> None:
                async with mgr.get_client() as conn:
                    await conn.execute("INSERT INTO w VALUES (-1)")
                    await conn.execute("SELECT pg_sleep(30)")

            sleepers.append(asyncio.create_task(session()))

            def sleeping() -> int:  # the 7 statements running on their servers
                sql = "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)'"
                return sum(sync_lab.run_sql(n, sql)[0][0] for n in ("node0", "node1", "node2"))

            await until(lambda: sleeping() == 7, what="7 statements running")
            for task in sleepers:
                task.cancel()
            results = await asyncio.gather(*sleepers, return_exceptions=True)
            assert all(isinstance(r, asyncio.CancelledError) for r in results), results
            assert all(mgr._pools.in_use(n) == 0 for n in ("node0", "node1", "node2"))
            assert await mgr.query("SELECT count(*) FROM w WHERE id = -1") == [(0,)]
            # COMMIT waits for ANY 1 of the standbys, both frozen: cancel it there.
            for standby in ("node1", "node2"):
                sync_lab.pause(standby)
            try:
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(mgr.query("INSERT INTO w VALUES (-2)"), 1.0)
            finally:
                for standby in ("node1", "node2"):
                    sync_lab.resume(standby)
            assert mgr._pools.in_use("node0") == 0
            counts = mgr.counters.as_dict()["queries"]
            assert any(
                q["node"] == "node0" and q["outcome"] == "unknown" and q["count"] >= 1
                for q in counts
            ), counts
            assert await mgr.query("SELECT count(*) FROM w WHERE id = -2") == [(1,)]
            assert await mgr.query("SELECT 1") == [(1,)]

    run(scenario())


def test_the_status_api_and_metrics_serve_the_async_manager(shared_lab: LocalLab) -> None:
    async def scenario() -> None:
        async with manager(shared_lab) as mgr:
            with serve(mgr) as server:

                def get(path: str) -> bytes:
                    with urllib.request.urlopen(server.url + path, timeout=5) as response:  # noqa: S310
                        data: bytes = response.read()
                        return data

                status = json.loads(await asyncio.to_thread(get, "/failover/status"))
                assert status["current_primary"] == "node0"
                metrics = (await asyncio.to_thread(get, "/metrics")).decode()
                assert 'pgfailover_cluster_state{cluster="default",state="healthy"} 1.0' in metrics
                snap = await mgr.check_health()
                assert snap.primary == "node0"
                assert await mgr.check_primary_health()

    run(scenario())


def test_closing_unblocks_waiting_tasks_within_its_timeout(fresh_lab: LocalLab) -> None:
    async def scenario() -> None:
        mgr = await AsyncFailoverManager(
            nodes=fresh_lab.manager_nodes(), config=FAST.replace(failover_wait_timeout=30.0)
        ).open()
        fresh_lab.kill("node0")
        waiting = asyncio.create_task(mgr.query("SELECT 1"))
        await until(lambda: mgr.snapshot.primary is None, what="the primary seen lost")
        assert not waiting.done()  # waiting for a primary
        started = time.monotonic()
        await mgr.close(timeout=3.0)
        assert time.monotonic() - started < 3.5
        with pytest.raises(psycopg.OperationalError, match="closed"):
            await waiting

    run(scenario())


def test_a_cancelled_close_still_closes_and_a_second_close_waits_for_it(
    shared_lab: LocalLab,
) -> None:
    async def scenario() -> None:
        mgr = await AsyncFailoverManager(nodes=shared_lab.manager_nodes(), config=FAST).open()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(mgr.close(), 0.001)
        await mgr.close()  # waits for the same closing to end
        assert all(mgr.pool(n.name).closed for n in mgr.nodes)
        assert mgr.closed
        with pytest.raises(ManagerClosed):
            await mgr.query("SELECT 1")

    run(scenario())
