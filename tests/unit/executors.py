"""An executor of either kind (sync or asyncio) over scripted pools, for table tests.

The pools hand out scripted connections (:mod:`tests.unit.fakes`); the view,
the snapshots (real probe results through the real transition), the
breakers and the counters are the real ones.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar, cast

import psycopg

from pgfailover import FailoverConfig
from pgfailover.aio.execution import AsyncExecutor
from pgfailover.aio.pools import AsyncNodePools
from pgfailover.breaker import BreakerPolicy, Breakers
from pgfailover.cluster import ClusterView
from pgfailover.counters import Counters
from pgfailover.execution import Executor
from pgfailover.pools import NodePools
from pgfailover.routing import PriorityOrder, ReadStrategy

from .fakes import AsyncFakePools, FakeConn, FakePools, ScriptedRounds
from .helpers import down, healthy_round, primary, run, standby

CFG = FailoverConfig()
HEALTHY = run([healthy_round()] * 3)[0]
# node0 lost, node1 promoted: what the next probe round shows.
PROMOTED = [down("node0"), primary("node1", tl=2, lsn=2000), standby("node2", tl=2, lsn=2000)]


Kind = Literal["sync", "async"]
KINDS: tuple[Kind, ...] = ("sync", "async")
T = TypeVar("T")


class Harness:
    """An executor of ``kind`` over scripted pools; :meth:`write` and :meth:`read` run a
    statement on it (the asyncio one in an event loop of its own)."""

    def __init__(
        self,
        script: dict[str, list[FakeConn | str]],
        *,
        wait: float = 1.0,
        breaker: BreakerPolicy | None = None,
        kind: Kind = "sync",
        strategy: ReadStrategy | None = None,
    ) -> None:
        self.view = ClusterView("test", HEALTHY, wait)
        self.pools = FakePools(script)
        self.apools = AsyncFakePools(self.pools)  # the same pools, for the asyncio executor
        self.counters = Counters()
        self.rounds = ScriptedRounds(self.view, CFG, [PROMOTED], now=2000.0)
        self.woken = 0
        self.monitor_running = False  # as a manager's monitor thread: rounds are its own
        self.writes: list[str] = []
        options: dict[str, Any] = {
            "wait_timeout": wait,
            "pool_timeout": 0.5,
            "poll": 0.01,
            "wake": self._wake,
            "idle_probe": self._probe,
            "monitoring": lambda: self.monitor_running,
            "on_write": self.writes.append,
            "breakers": Breakers(
                [n.name for n in HEALTHY.nodes],
                breaker or BreakerPolicy(),
                rng=random.Random(1),  # noqa: S311
            ),
        }
        strategy = strategy or PriorityOrder()
        self.executor = Executor(
            self.view, cast(NodePools, self.pools), self.counters, strategy, **options
        )
        self.aexecutor = AsyncExecutor(
            self.view,
            cast(AsyncNodePools, self.apools),
            self.counters,
            strategy,
            **options,
        )
        self.kind = kind

    @property
    def breakers(self) -> Breakers:
        """The breakers both executors share."""
        return self.executor.breakers

    def write(self, sql: str = "INSERT") -> list[tuple[Any, ...]]:
        if self.kind == "sync":
            return self.executor.run_write(sql, None)
        return self.in_loop(self.aexecutor.run_write(sql, None))

    def read(self, sql: str = "SELECT", min_lsn: int | None = None) -> list[tuple[Any, ...]]:
        if self.kind == "sync":
            return self.executor.run_read(sql, None, min_lsn)
        return self.in_loop(self.aexecutor.run_read(sql, None, min_lsn))

    def block(self, readonly: bool, sql: str = "INSERT", fail: Exception | None = None) -> None:
        """A ``get_client()`` block that runs ``sql``, then raises ``fail`` if given."""
        if self.kind == "sync":
            with self.executor.client(readonly) as conn:
                conn.execute(sql)
                if fail is not None:
                    raise fail
            return

        async def block() -> None:
            async with self.aexecutor.client(readonly) as conn:
                await conn.execute(sql)
                if fail is not None:
                    raise fail

        self.in_loop(block())

    def in_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` with the asyncio executor bound to a new event loop."""

        async def bound() -> T:
            self.aexecutor.bind(asyncio.get_running_loop())
            try:
                return await coro
            finally:
                self.aexecutor.unbind()

        return asyncio.run(bound())

    def _wake(self) -> None:
        self.woken += 1

    def _probe(self) -> None:
        """A round from a waiting caller, as the manager's probe_if_idle: only without a
        monitor thread."""
        if not self.monitor_running:
            self.rounds()

    def attempts(self) -> list[str]:
        return [c.node for c in self.pools.out]

    def counted(self) -> list[tuple[str, str, str]]:
        return sorted(k for k, v in self.counters.queries.items() for _ in range(v))


def copy_script(script: dict[str, list[FakeConn | str]]) -> dict[str, list[FakeConn | str]]:
    """A fresh copy of a table's script: its connections record what is done to them."""
    return {
        node: [
            FakeConn(c.node, c.error, c.fail_at, list(c.rows)) if isinstance(c, FakeConn) else c
            for c in items
        ]
        for node, items in script.items()
    }


def conn_error() -> psycopg.OperationalError:
    return psycopg.OperationalError("server closed the connection unexpectedly")
