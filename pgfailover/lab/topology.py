"""Replication topology actions shared by every lab backend.

A backend supplies the per-node process actions (start, stop, kill, pause,
resume, rewind); this module builds promotion, repointing, rejoining, quorum
sync upkeep and the status report on top of them, through SQL only.

A backend whose nodes also listen on a second, client-only address sets
:attr:`Topology.client_host`; ``dsn(name, client_address=True)`` and
``manager_nodes(client_address=True)`` then point clients at it, so a
network fault can cut clients off a node without touching replication.
"""

from __future__ import annotations

import abc
import logging
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from psycopg import sql

from pgfailover.config import Node
from pgfailover.errors import LabError
from pgfailover.lab.base import NodeInfo, NodeStatus, StopMode, conninfo, multihost_url
from pgfailover.lab.node import upstream_conninfo

_BARE = re.compile(r"[a-z_][a-z0-9_]*")
"""A standby name that ``synchronous_standby_names`` takes unquoted (others, such as
``db-node2``, are quoted; unquoted, PostgreSQL refuses the setting)."""

__all__ = ["TIMELINE_SQL", "Topology"]

logger = logging.getLogger(__name__)

# The timeline a node is on: a primary's from the WAL file it writes, a
# standby's from its WAL receiver, else from its last restartpoint.
TIMELINE_SQL = """
CASE WHEN pg_is_in_recovery()
     THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver),
                   (SELECT timeline_id FROM pg_control_checkpoint()))
     ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
END
"""

_STATUS_SQL = f"""
SELECT pg_is_in_recovery(),
       {TIMELINE_SQL},
       CASE WHEN pg_is_in_recovery()
            THEN coalesce(pg_last_wal_replay_lsn(), pg_last_wal_receive_lsn())::text
            ELSE pg_current_wal_lsn()::text END,
       (SELECT sender_host FROM pg_stat_wal_receiver WHERE status = 'streaming'),
       (SELECT sender_port FROM pg_stat_wal_receiver WHERE status = 'streaming')
"""


class Topology(abc.ABC):
    """SQL-level cluster actions over a backend's node processes.

    Thread safety: not thread-safe; drive a lab from one thread at a time.
    """

    sync: int
    # The address clients may use instead of a node's own host; None: none.
    client_host: str | None = None

    # -- what a backend provides ----------------------------------------

    @property
    @abc.abstractmethod
    def nodes(self) -> list[NodeInfo]:
        """Every node, in creation order."""

    @abc.abstractmethod
    def process_state(self, name: str) -> str:
        """``running``, ``paused`` or ``stopped``."""

    @abc.abstractmethod
    def start(self, name: str) -> None:
        """Start a node and wait until it accepts connections."""

    @abc.abstractmethod
    def stop(self, name: str, mode: StopMode = "fast") -> None:
        """Stop a node cleanly."""

    @abc.abstractmethod
    def kill(self, name: str) -> None:
        """SIGKILL every process of a node."""

    @abc.abstractmethod
    def pause(self, name: str) -> None:
        """SIGSTOP every process of a node."""

    @abc.abstractmethod
    def resume(self, name: str) -> None:
        """SIGCONT every process of a node."""

    @abc.abstractmethod
    def _rejoin_node(self, name: str, upstream: str) -> None:
        """Stop ``name``, rewind it from ``upstream``, start it as its standby, wait."""

    def _replication_conninfo(self, upstream: str, name: str) -> str:
        """The ``primary_conninfo`` with which ``name`` streams from ``upstream``."""
        return upstream_conninfo(self.node(upstream), name)

    def _sender_name(self, host: str | None, port: int | None) -> str | None:
        """The node a WAL receiver's ``sender_host:sender_port`` points at."""
        for info in self.nodes:
            if info.port == port:
                return info.name
        return None

    # -- lookups -------------------------------------------------------

    def node(self, name: str) -> NodeInfo:
        """One node by name."""
        for info in self.nodes:
            if info.name == name:
                return info
        known = ", ".join(n.name for n in self.nodes)
        raise LabError(f"unknown node {name!r} (the lab has {known})")

    def dsn(self, name: str, client_address: bool = False) -> str:
        """The conninfo of one node.

        With ``client_address`` it connects through :attr:`client_host`, the
        path :meth:`~pgfailover.lab.local.LocalLab.partition` cuts.
        """
        info = self.node(name)
        if not client_address:
            return info.dsn
        if self.client_host is None:
            raise LabError(
                f"{type(self).__name__} nodes have no client address: "
                "client_address=True needs the local lab"
            )
        return conninfo(self.client_host, info.port)

    def client_dsn(self, name: str) -> str:
        """The conninfo of one node through the client address."""
        return self.dsn(name, client_address=True)

    @property
    def url(self) -> str:
        """A libpq multi-host URL naming every node."""
        return multihost_url(self.nodes)

    def manager_nodes(self, client_address: bool = False) -> list[Node]:
        """The cluster as a manager's nodes: lab names, priority in creation order.

        With ``client_address`` the nodes are reached through the client
        address, so :meth:`~pgfailover.lab.local.LocalLab.partition` can cut
        the manager off a node while replication goes on.
        """
        return [
            Node(n.name, self.dsn(n.name, client_address), priority=i)
            for i, n in enumerate(self.nodes)
        ]

    def connect(self, name: str, *, timeout: float = 3.0) -> psycopg.Connection[tuple[Any, ...]]:
        """An autocommit superuser connection to one node."""
        return psycopg.connect(
            self.dsn(name), autocommit=True, connect_timeout=max(1, round(timeout))
        )

    def run_sql(
        self, name: str, query: str | sql.Composed, params: Sequence[Any] | None = None
    ) -> list[tuple[Any, ...]]:
        """Run one statement on a node and return its rows (if any)."""
        with self.connect(name) as conn, conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall() if cur.description else []

    def in_recovery(self, name: str) -> bool | None:
        """Whether a node is a standby; ``None`` when it does not answer."""
        try:
            return bool(self.run_sql(name, "SELECT pg_is_in_recovery()")[0][0])
        except psycopg.Error:
            return None

    def primary(self) -> str | None:
        """The node out of recovery on the newest timeline, or ``None`` (none, or a tie).

        An old primary left fenced by a switchover (out of recovery on an
        older timeline) is not the primary.
        """
        found: dict[str, int] = {}
        for n in self.nodes:
            if self.process_state(n.name) != "running" or self.in_recovery(n.name) is not False:
                continue
            try:
                found[n.name] = int(
                    self.run_sql(n.name, "SELECT timeline_id FROM pg_control_checkpoint()")[0][0]
                )
            except psycopg.Error:
                continue
        newest = [name for name, tl in found.items() if tl == max(found.values(), default=0)]
        return newest[0] if len(newest) == 1 else None

    # -- waiting -------------------------------------------------------

    @staticmethod
    def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``check`` until it is true, or raise ``LabError`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if check():
                    return
            except psycopg.Error as exc:
                last_error = exc
            time.sleep(0.05)
        detail = f" (last error: {last_error})" if last_error else ""
        raise LabError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")

    def wait_streaming(self, name: str, upstream: str, timeout: float = 30.0) -> None:
        """Wait until ``upstream``'s pg_stat_replication shows ``name`` streaming."""

        def streaming() -> bool:
            rows = self.run_sql(
                upstream,
                "SELECT 1 FROM pg_stat_replication"
                " WHERE application_name = %s AND state = 'streaming'",
                (name,),
            )
            return bool(rows)

        self.wait_for(streaming, timeout, f"{name} to stream from {upstream}")

    # -- topology actions ----------------------------------------------

    def promote(self, name: str) -> None:
        """``pg_promote()`` a standby, wait until it is out of recovery.

        An inherited ``synchronous_standby_names`` would make every commit
        on the new primary hang until a synchronous standby attaches, so
        quorum sync is recomputed from the standbys that stream from it now
        (none, right after promotion: it runs async until others follow).
        """
        if self.in_recovery(name) is not True:
            raise LabError(f"{name} is not a running standby: cannot promote it")
        self.run_sql(name, "SELECT pg_promote(true, 60)")
        self.wait_for(lambda: self.in_recovery(name) is False, 60, f"{name} to leave recovery")
        self._apply_sync(name)
        logger.info("lab: %s promoted", name)

    def follow(self, name: str, upstream: str) -> None:
        """Repoint the running standby ``name`` at ``upstream`` (reload, no restart)."""
        if name == upstream:
            raise LabError(f"{name} cannot follow itself")
        if self.in_recovery(name) is not True:
            raise LabError(f"{name} is not a running standby: use rejoin for an old primary")
        self._ensure_slot(upstream, name)
        with self.connect(name) as conn:
            conn.execute(
                sql.SQL("ALTER SYSTEM SET primary_conninfo = {}").format(
                    sql.Literal(self._replication_conninfo(upstream, name))
                )
            )
            conn.execute(
                sql.SQL("ALTER SYSTEM SET primary_slot_name = {}").format(sql.Literal(name))
            )
            conn.execute("SELECT pg_reload_conf()")
        self.wait_streaming(name, upstream)
        self._apply_sync(upstream)
        logger.info("lab: %s follows %s", name, upstream)

    def rejoin(self, name: str, upstream: str | None = None, *, sync: bool = True) -> None:
        """Bring an old primary back as a standby of ``upstream``.

        Stops it if it runs, rewinds it with pg_rewind from ``upstream`` (the
        current primary by default), starts it as a standby and waits until
        it streams. Then, as the lab's operator, it sets the lab's quorum over
        the standbys on ``upstream``; ``sync=False`` leaves that list alone, as
        ``pgfailover rejoin`` does (a manager in ``auto`` mode keeps it up).
        """
        upstream = upstream or self.primary()
        if upstream is None:
            raise LabError("no single primary to rejoin to: promote one first")
        if upstream == name:
            raise LabError(f"{name} is the primary: nothing to rejoin")
        self._rejoin_node(name, upstream)
        if sync:
            self._apply_sync(upstream)
        logger.info("lab: %s rejoined as a standby of %s", name, upstream)

    def _ensure_slot(self, on: str, slot: str) -> None:
        rows = self.run_sql(on, "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,))
        if not rows:
            self.run_sql(on, "SELECT pg_create_physical_replication_slot(%s, true)", (slot,))

    def _apply_sync(self, primary: str) -> None:
        """Set quorum sync on ``primary`` over the standbys streaming from it."""
        if not self.sync:
            value = ""
        else:
            rows = self.run_sql(
                primary,
                "SELECT application_name FROM pg_stat_replication "
                "WHERE state = 'streaming' ORDER BY application_name",
            )
            names = [r[0] for r in rows]
            k = min(self.sync, len(names))
            if k < self.sync:
                logger.warning(
                    "lab: %s has %d streaming standbys; quorum sync lowered to %d",
                    primary,
                    len(names),
                    k,
                )
            listed = ", ".join(
                n if _BARE.fullmatch(n) else sql.Identifier(n).as_string() for n in names
            )
            value = f"ANY {k} ({listed})" if k else ""
        with self.connect(primary) as conn:
            conn.execute(
                sql.SQL("ALTER SYSTEM SET synchronous_standby_names = {}").format(
                    sql.Literal(value)
                )
            )
            conn.execute("SELECT pg_reload_conf()")

    # -- reporting -----------------------------------------------------

    def faults(self) -> dict[str, str]:
        """The network fault in force on each node that has one (none here)."""
        return {}

    def status(self) -> list[NodeStatus]:
        """Every node's process state, role, timeline, LSN, upstream and fault.

        A black-holed node is not asked (it could only time out).
        """
        sync_states: dict[str, str] = {}
        faults = self.faults()
        result = []
        for info in self.nodes:
            process = self.process_state(info.name)
            if process != "running" or faults.get(info.name) == "blackhole":
                result.append(NodeStatus(info.name, info.port, process))
                continue
            try:
                row = self.run_sql(info.name, _STATUS_SQL)[0]
                recovery, timeline, lsn, sender_host, sender_port = row
                if not recovery:
                    for app, state in self.run_sql(
                        info.name, "SELECT application_name, sync_state FROM pg_stat_replication"
                    ):
                        sync_states[app] = state
            except psycopg.Error:
                result.append(NodeStatus(info.name, info.port, process))
                continue
            result.append(
                NodeStatus(
                    info.name,
                    info.port,
                    process,
                    role="standby" if recovery else "primary",
                    timeline=timeline,
                    upstream=self._sender_name(sender_host, sender_port),
                    lsn=lsn,
                )
            )
        return [
            NodeStatus(
                **{
                    **s.as_dict(),
                    "sync_state": sync_states.get(s.name),
                    "fault": faults.get(s.name),
                }
            )
            for s in result
        ]
