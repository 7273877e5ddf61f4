"""Small fakes of the manager's collaborators, for tests without PostgreSQL.

They stand in for the pools, a connection's behaviour, the admin SQL and the
probe rounds; the pure parts (transition, guards, routing, the view, the
event log, the counters) are the real ones.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import pq
from psycopg_pool import PoolTimeout

from pgfailover.admin import StandbyLink
from pgfailover.cluster import ClusterView
from pgfailover.config import FailoverConfig
from pgfailover.etcd import EtcdError
from pgfailover.maintenance import SharedPause
from pgfailover.model import Decision
from pgfailover.probe import ProbeResult
from pgfailover.transition import transition

from .helpers import NODES


@dataclass
class FakeResult:
    nfields: int
    status: int


@dataclass
class FakeCursor:
    rows: list[tuple[Any, ...]]

    @property
    def pgresult(self) -> FakeResult:
        if self.rows:
            return FakeResult(len(self.rows[0]), pq.ExecStatus.TUPLES_OK)
        return FakeResult(0, pq.ExecStatus.COMMAND_OK)

    def fetchall(self) -> list[tuple[Any, ...]]:
        if not self.rows:  # as psycopg: no result set, nothing to fetch
            raise psycopg.ProgrammingError("the last operation didn't produce a result")
        return self.rows


@dataclass
class FakePgConn:
    transaction_status: pq.TransactionStatus = pq.TransactionStatus.IDLE


@dataclass
class FakeConn:
    """A connection that fails as told: ``fail_at`` is ``"statement"`` or ``"commit"``."""

    node: str
    error: BaseException | None = None
    fail_at: str = "statement"
    rows: list[tuple[Any, ...]] = field(default_factory=lambda: [(1,)])
    closed: bool = False
    pgconn: FakePgConn = field(default_factory=FakePgConn)
    log: list[str] = field(default_factory=list)
    stall_at: str | None = None  # the asyncio fake waits there until cancelled
    # psycopg's transaction settings: as a pool's connection comes (statements.shortcut)
    autocommit: bool = False
    isolation_level: Any = None
    read_only: bool | None = None
    deferrable: bool | None = None

    def close(self) -> None:
        self.log.append("close")
        self.closed = True

    def execute(self, sql: Any, params: Any = None) -> FakeCursor:
        self.log.append(f"execute {sql}")
        if not self.autocommit:  # else: its own implicit transaction
            self.pgconn.transaction_status = pq.TransactionStatus.INTRANS
        if self.error is not None and self.fail_at == "statement":
            raise self.error
        return FakeCursor(self.rows)

    def commit(self) -> None:
        self.log.append("commit")
        if self.error is not None and self.fail_at == "commit":
            self.pgconn.transaction_status = pq.TransactionStatus.UNKNOWN
            raise self.error
        self.pgconn.transaction_status = pq.TransactionStatus.IDLE

    def rollback(self) -> None:
        self.log.append("rollback")
        self.pgconn.transaction_status = pq.TransactionStatus.IDLE


class FakePools:
    """Hands out scripted connections per node (``"timeout"``: no connection came within
    the wait asked for, which passes first, as in a real pool; ``timed_out`` hears of
    each such wait, with its node)."""

    def __init__(self, script: dict[str, list[FakeConn | str]] | None = None) -> None:
        self.script = script or {}
        self.out: list[FakeConn] = []
        self.returned: list[FakeConn] = []
        self.aborted: list[str] = []
        self.waits: list[tuple[str, float]] = []  # each checkout: node, how long it may wait
        self.timed_out: Callable[[str], object] = lambda node: None

    def checkout(self, node: str, timeout: float) -> FakeConn:
        self.waits.append((node, timeout))
        queue = self.script.get(node)
        item: FakeConn | str = queue.pop(0) if queue else FakeConn(node)
        if item == "timeout":
            time.sleep(timeout)
            self.timed_out(node)
            raise PoolTimeout(f"no connection to {node} in {timeout}s")
        assert isinstance(item, FakeConn)
        self.out.append(item)
        return item

    def checkin(self, node: str, conn: FakeConn) -> None:
        assert conn.node == node
        conn.log.append("checkin")  # after it, the connection is the pool's again
        self.returned.append(conn)

    def abort(self, node: str) -> int:
        self.aborted.append(node)
        return 0

    def saturated(self, node: str) -> bool:
        return False


class AsyncFakeCursor:
    """A :class:`FakeCursor` whose fetch is awaited."""

    def __init__(self, cursor: FakeCursor) -> None:
        self._cursor = cursor

    @property
    def pgresult(self) -> FakeResult:
        return self._cursor.pgresult

    async def fetchall(self) -> list[tuple[Any, ...]]:
        await asyncio.sleep(0)  # a real fetch may suspend: let other tasks run
        return self._cursor.fetchall()


class AsyncFakeConn:
    """A :class:`FakeConn` as an ``AsyncConnection``: the same script, awaited."""

    def __init__(self, conn: FakeConn) -> None:
        self.sync = conn

    @property
    def pgconn(self) -> FakePgConn:
        return self.sync.pgconn

    @property
    def closed(self) -> bool:
        return self.sync.closed

    async def _stall(self, stage: str) -> None:
        await asyncio.sleep(0)
        if self.sync.stall_at == stage:
            self.sync.log.append(f"{stage} stalled")
            await asyncio.Event().wait()  # until cancelled

    async def execute(self, sql: Any, params: Any = None) -> AsyncFakeCursor:
        await self._stall("statement")
        return AsyncFakeCursor(self.sync.execute(sql, params))

    async def commit(self) -> None:
        await self._stall("commit")
        self.sync.commit()

    async def rollback(self) -> None:
        self.sync.rollback()

    @property
    def autocommit(self) -> bool:
        return self.sync.autocommit

    @property
    def isolation_level(self) -> Any:
        return self.sync.isolation_level

    @property
    def read_only(self) -> bool | None:
        return self.sync.read_only

    @property
    def deferrable(self) -> bool | None:
        return self.sync.deferrable

    async def set_autocommit(self, value: bool) -> None:
        self.sync.autocommit = value

    async def close(self) -> None:
        self.sync.close()


class AsyncFakePools:
    """:class:`FakePools` for the asyncio executor (``out`` and ``returned`` hold the
    scripted :class:`FakeConn` objects, as for the sync executor)."""

    def __init__(self, pools: FakePools) -> None:
        self.sync = pools
        self.stall_checkin = False  # wait after giving it back, until cancelled

    async def checkout(self, node: str, timeout: float) -> AsyncFakeConn:
        await asyncio.sleep(0)
        return AsyncFakeConn(self.sync.checkout(node, timeout))

    async def checkin(self, node: str, conn: AsyncFakeConn) -> None:
        self.sync.checkin(node, conn.sync)  # as AsyncNodePools: back even if cancelled
        if self.stall_checkin:
            conn.sync.log.append("checkin stalled")
            await asyncio.Event().wait()

    def saturated(self, node: str) -> bool:
        return self.sync.saturated(node)


class ScriptedRounds:
    """Probe rounds from a script: each call feeds the next results through
    the real transition and publishes the snapshot in ``view``.

    Once the script is used up, the last round repeats.
    """

    def __init__(
        self,
        view: ClusterView,
        config: FailoverConfig,
        rounds: Iterable[Sequence[ProbeResult]],
        *,
        now: float,
        step: float = 0.05,
    ) -> None:
        self.view = view
        self.config = config
        self.rounds = [list(r) for r in rounds]
        self.now = now
        self.step = step
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self) -> list[Decision]:
        with self.lock:
            results = self.rounds[min(self.calls, len(self.rounds) - 1)]
            self.calls += 1
            self.now += self.step
            snap, decisions = transition(
                self.view.snapshot, {r.node: r for r in results}, self.now, self.config
            )
            self.view.publish(snap, time.time())  # probed now: clears older suspects
            return decisions


@dataclass
class FakeAdmin:
    """Records the admin SQL it was asked to run; ``fail`` maps an action to its error."""

    calls: list[tuple[str, str]] = field(default_factory=list)
    fail: dict[str, BaseException] = field(default_factory=dict)
    hold: dict[str, threading.Event] = field(default_factory=dict)  # action waits for it
    final_lsn: int = 5000
    records: dict[str, str] = field(default_factory=dict)  # node -> sync record promoted with
    never_catches_up: bool = False
    target_recovering: bool = True

    @staticmethod
    def _name(dsn: str) -> str:
        return next(n.name for n in NODES if n.dsn == dsn)

    def _do(self, action: str, dsn: str) -> None:
        node = self._name(dsn)
        self.calls.append((action, node))
        if action in self.hold:
            self.hold[action].wait(5)
        if action in self.fail:
            raise self.fail[action]

    def promote(
        self,
        dsn: str,
        before: Callable[[], None] | None = None,
        sync_names: str | None = None,
        timeout: float = 2.0,
        sync_record: str | None = None,
    ) -> str | None:
        if before is not None:
            before()
        self._do("promote", dsn)
        try:  # on the promotion's session: a failure there is an answer, not an error
            self._do("configure" if sync_names is None else f"configure sync {sync_names}", dsn)
        except psycopg.Error as exc:
            return str(exc)
        if sync_record is not None:
            self.records[self._name(dsn)] = sync_record
        return None

    def fence(self, dsn: str, timeout: float) -> None:
        self._do("fence", dsn)

    def fence_sessions(self, dsn: str, timeout: float) -> tuple[int, int]:
        self._do("fence_sessions", dsn)
        return 3, self.final_lsn

    def unfence(self, dsn: str, timeout: float) -> None:
        self._do("unfence", dsn)

    def in_recovery(self, dsn: str, timeout: float) -> bool:
        self._do("in_recovery", dsn)
        return self.target_recovering

    def wait_replayed(self, dsn: str, lsn: int, timeout: float) -> int | None:
        if self.calls[-1:] != [("wait_replayed", self._name(dsn))]:
            self._do("wait_replayed", dsn)  # polled in slices: recorded once per run of them
        if self.never_catches_up:
            time.sleep(min(timeout, 0.02))
            return None
        return lsn

    def read_link(self, dsn: str, fallback_name: str, timeout: float) -> StandbyLink:
        self._do("read_link", dsn)
        return StandbyLink({"host": "10.0.0.1"}, None, fallback_name)

    def repoint(
        self,
        dsn: str,
        link: StandbyLink,
        new_primary_dsn: str,
        timeout: float,
        replication_dsn: str | None = None,
    ) -> None:
        self._do("repoint", dsn)


class GateDouble:
    """An arbiter lease for tests: never held unless a subclass says so, and an
    in-memory shared pause (``shared``: the pause etcd would hold, ``revision`` its
    revision; ``failing``: the error every share raises)."""

    identity = "arbiter-a:1"

    def __init__(self) -> None:
        self.shared: SharedPause | None = None
        self.revision = 1
        self.failing: str | None = None
        self.watcher: Callable[[SharedPause | None, int], None] | None = None

    @property
    def holding(self) -> object | None:
        return None

    def may_promote(self, automatic: bool = False) -> str | None:
        if automatic and self.shared is not None and self.shared.paused:
            return f"maintenance mode is on for the cluster ({self.shared.describe()})"
        return None if self.holding is not None else "not held"

    def fencing_revision(self) -> int | None:
        return None

    def status(self) -> dict[str, Any]:
        return {"held": self.holding is not None}

    def watch_pause(self, watcher: Callable[[SharedPause | None, int], None]) -> None:
        self.watcher = watcher

    def share_pause(self, pause: SharedPause) -> int:
        return self._write(pause)

    def share_resume(self, resume: SharedPause) -> int:
        return self._write(resume)

    def _write(self, pause: SharedPause | None) -> int:
        if self.failing:
            raise EtcdError(self.failing)
        self.revision += 1
        self.shared = pause
        return self.revision

    def look(self) -> None:
        """What the lease thread does every poll: hand the shared pause to the watcher."""
        if self.watcher is not None:
            self.watcher(self.shared, self.revision)
