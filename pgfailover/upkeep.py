"""Keeping a cluster converged in ``auto`` mode: sync names, orphans, receiver timeout.

A promotion is not one step but a state the cluster must reach: the new
primary's ``synchronous_standby_names`` satisfied by standbys that stream
from it, every standby streaming from it, every node's
``wal_receiver_timeout`` short enough for the failure detection of
:mod:`pgfailover.guards`. Doing that once, in the thread that promoted, is
fragile: a manager that is closed or killed halfway, a standby that
attaches late or never, a node rejoined an hour later. So after every probe
round an ``auto`` manager compares what the probes show with that state and
fixes what differs, whoever caused it. A restarted arbiter repairs what a
killed one left half done.

What it decides is pure (:func:`~pgfailover.syncrep.plan_sync`,
:func:`orphans`, :func:`receivers_to_tune`: tables in the unit tests); what
it does is small, idempotent SQL on admin connections, each action
rate-limited per node so that a node that refuses is not hammered.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import psycopg
from psycopg.conninfo import conninfo_to_dict

from pgfailover.admin import (
    read_standby_link,
    repoint_standby,
    set_receiver_timeout,
    set_sync_standby_names,
)
from pgfailover.config import FailoverConfig
from pgfailover.errors import first_line
from pgfailover.events import EventLog, FailoverEvent
from pgfailover.guards import hang_failover_seconds
from pgfailover.model import NodeState, Role, Snapshot
from pgfailover.syncrep import SyncSpec, parse_sync, plan_sync

__all__ = [
    "Upkeep",
    "UpkeepStatus",
    "commits_blocked",
    "orphans",
    "receivers_to_tune",
    "shared_app_names",
]

logger = logging.getLogger(__name__)

RETRY_INTERVAL: Final = 10.0
"""Seconds before the same action is tried again on the same node."""

SLOW_HANG_FAILOVER: Final = 10.0
"""Seconds of hang failover past which the manager warns (status, log, alert)."""


def commits_blocked(snap: Snapshot) -> bool:
    """The primary's ``synchronous_standby_names`` names too few streaming standbys.

    Every COMMIT on it waits on ``SyncRep`` until a listed standby streams
    (``False`` when unknown: the probe user cannot see replication).
    """
    if snap.primary is None:
        return False
    primary = snap.node(snap.primary)
    spec = parse_sync(primary.sync_standby_names)
    if spec is None or primary.streaming_names is None or not primary.up:
        return False
    return not spec.satisfied(primary.streaming_names)


def orphans(snap: Snapshot, now: float, grace: float) -> list[str]:
    """Standbys that have not streamed from the primary for ``grace`` seconds."""
    if snap.primary is None or snap.split_brain:
        return []
    return [
        n.name
        for n in snap.nodes
        if n.role is Role.STANDBY
        and n.up
        and n.follows is False
        and n.not_following_since is not None
        and now - n.not_following_since >= grace
    ]


def shared_app_names(snap: Snapshot) -> dict[str, list[str]]:
    """Application names that several standbys stream under (name -> nodes).

    ``pg_stat_replication`` and ``synchronous_standby_names`` tell standbys
    apart only by that name (``walreceiver`` when none is set), so two of
    them under one name make sync replication and "who follows" ambiguous.
    """
    seen: dict[str, list[str]] = {}
    for node in snap.nodes:
        if node.role is Role.STANDBY and node.up and node.app_name:
            seen.setdefault(node.app_name.casefold(), []).append(node.name)
    return {name: nodes for name, nodes in seen.items() if len(nodes) > 1}


def sync_members(snap: Snapshot, primary: str) -> set[str]:
    """The names the cluster's standbys stream under, up or down, ``primary`` aside.

    Only nodes last seen as standbys: a primary runs no WAL receiver, so
    the name it reported is a guess (its ``cluster_name``, or libpq's
    ``walreceiver``), and a lost primary's guess must not make another
    client streaming under that name eligible for synchronous replication.
    """
    return {
        n.app_name
        for n in snap.nodes
        if n.role is Role.STANDBY and n.app_name and n.name != primary
    }


def receivers_to_tune(snap: Snapshot, target: float) -> list[str]:
    """Nodes whose ``wal_receiver_timeout`` is off or longer than ``target``."""
    if target <= 0:
        return []
    return [
        n.name
        for n in snap.nodes
        if n.up
        and n.receiver_timeout is not None
        and (n.receiver_timeout <= 0 or n.receiver_timeout > target + 0.0005)
    ]


@dataclass
class UpkeepStatus:
    """What upkeep knows, for status: the sync policy and what failed."""

    policy: str | None = None
    unsatisfied_since: float | None = None
    refused: dict[str, str] = field(default_factory=dict)  # node -> why tuning failed


class Upkeep:
    """Runs the convergence actions after each probe round (``auto`` mode).

    Locks: ``_run_lock`` lets one thread run the actions at a time (another
    thread's round skips them, the next round catches up); ``_lock`` guards
    the small state below and is a leaf (no I/O, no other lock under it).

    Thread safety: :meth:`run`, :meth:`promoted` and :meth:`status` may be
    called from any thread.
    """

    def __init__(
        self,
        config: FailoverConfig,
        dsn_of: Callable[[str], str],
        events: EventLog,
        on_lowered: Callable[[], None],
        cluster: str,
        *,
        replication_dsn_of: Callable[[str], str] | None = None,
    ) -> None:
        self._config = config
        self._dsn_of = dsn_of
        self._replication_dsn_of = replication_dsn_of or dsn_of
        self._events = events
        self._on_lowered = on_lowered
        self._cluster = cluster
        self._run_lock = threading.Lock()
        self._lock = threading.Lock()
        self._policy: SyncSpec | None = None  # guarded by self._lock
        self._written: dict[str, str] = {}  # guarded by self._lock: primary -> value seen/set
        self._ours: dict[str, str] = {}  # guarded by self._lock: primary -> value we chose
        self._unsatisfied: dict[str, float] = {}  # guarded by self._lock: primary -> since
        self._tried: dict[tuple[str, str], float] = {}  # guarded by self._lock
        self._refused: dict[str, str] = {}  # guarded by self._lock
        self._warned_slow = False  # only under _run_lock
        self._warned_names = False  # only under _run_lock

    @property
    def _timeout(self) -> float:
        return max(2.0, self._config.health_check_timeout * 2)

    def learn(self, value: str) -> None:
        """Remember the operator's sync policy from a primary's setting."""
        spec = parse_sync(value)
        if spec is not None and not spec.star:
            with self._lock:
                self._policy = spec

    def promoted(self, node: str, value: str | None, now: float) -> None:
        """A promotion wrote ``value`` on ``node``: the attach clock starts now."""
        with self._lock:
            if value is not None:
                self._written[node] = value
                self._ours[node] = value
            self._unsatisfied[node] = now

    def status(self) -> UpkeepStatus:
        """A copy of what upkeep knows."""
        with self._lock:
            policy = self._policy
            return UpkeepStatus(
                policy=None
                if policy is None
                else f"{policy.method} {policy.count} ({', '.join(policy.names)})",
                unsatisfied_since=min(self._unsatisfied.values(), default=None),
                refused=dict(self._refused),
            )

    def run(self, snap: Snapshot, now: float, closed: Callable[[], bool]) -> None:
        """Compare the snapshot with the converged state and fix what differs."""
        if not self._run_lock.acquire(blocking=False):
            return
        try:
            if self._config.wal_receiver_timeout > 0:
                for name in receivers_to_tune(snap, self._config.wal_receiver_timeout):
                    if not closed():
                        self._tune(name, snap.node(name))
            else:
                self._warn_if_slow(snap)
            shared = shared_app_names(snap)
            if shared and not self._warned_names:
                self._warned_names = True
                logger.warning(
                    "cluster %s: standbys stream under one application_name (%s): set a "
                    "distinct application_name in each primary_conninfo (or cluster_name); "
                    "synchronous replication cannot tell them apart",
                    self._cluster,
                    "; ".join(f"{name}: {', '.join(nodes)}" for name, nodes in shared.items()),
                )
            if snap.primary is None or snap.split_brain:
                return
            primary = snap.node(snap.primary)
            if primary.up and primary.streaming_names is not None and not closed():
                self._sync(snap, primary, now)
            else:
                with self._lock:  # unobserved time never counts as unsatisfied
                    self._unsatisfied.pop(primary.name, None)
            if self._config.repoint_standbys:
                grace = max(self._config.sync_standby_attach_timeout, 1.0)
                for name in orphans(snap, now, grace):
                    if not closed():
                        self._repoint(name, snap.primary)
        finally:
            self._run_lock.release()

    def _warn_if_slow(self, snap: Snapshot) -> None:
        """Say once that the servers' own setting makes hang detection slow."""
        if self._warned_slow or not any(n.role is Role.STANDBY and n.up for n in snap.nodes):
            return
        bound = hang_failover_seconds(snap, self._config)
        if bound is not None and bound <= SLOW_HANG_FAILOVER:
            return
        self._warned_slow = True
        logger.warning(
            "cluster %s: wal_receiver_timeout is left to the servers (wal_receiver_timeout=0): "
            "a hung or black-holed primary is failed over %s",
            self._cluster,
            "never" if bound is None else f"only after up to {bound:g}s",
        )

    def _due(self, action: str, node: str) -> bool:
        now = time.monotonic()
        with self._lock:
            if now - self._tried.get((action, node), -RETRY_INTERVAL) < RETRY_INTERVAL:
                return False
            self._tried[(action, node)] = now
        return True

    # -- wal_receiver_timeout ----------------------------------------------

    def _tune(self, name: str, node: NodeState) -> None:
        if not self._due("tune", name):
            return
        target = self._config.wal_receiver_timeout
        try:
            refused = set_receiver_timeout(self._dsn_of(name), target, self._timeout)
        except psycopg.Error as exc:
            refused = first_line(exc)
        if refused is not None:
            reason = refused
            with self._lock:
                first = name not in self._refused
                self._refused[name] = reason
            if first:
                logger.warning(
                    "node %s: cannot set wal_receiver_timeout to %gs (%s): a hung or "
                    "black-holed primary is proven gone only after %s of silence",
                    name,
                    target,
                    reason,
                    "never"
                    if not node.receiver_timeout
                    else f"{node.receiver_timeout / 2 + 1:g}s",
                )
            return
        with self._lock:
            self._refused.pop(name, None)
        logger.info(
            "node %s: wal_receiver_timeout set to %gs (was %s) for fast failure detection",
            name,
            target,
            "off" if not node.receiver_timeout else f"{node.receiver_timeout:g}s",
        )

    # -- synchronous_standby_names -----------------------------------------

    def _sync(self, snap: Snapshot, primary: NodeState, now: float) -> None:
        current = primary.sync_standby_names or ""
        streaming = primary.streaming_names or ()
        members = sync_members(snap, primary.name)
        with self._lock:
            if current != self._written.get(primary.name, current if not current else None):
                # Someone else set it (the operator, a previous primary's
                # config): that is the policy now; '' means async by choice.
                spec = parse_sync(current)
                self._policy = None if spec is None or spec.star else spec
                self._written[primary.name] = current
            spec = parse_sync(current)
            if spec is None or spec.satisfied(streaming):
                self._unsatisfied.pop(primary.name, None)
                since = now
            else:
                since = self._unsatisfied.setdefault(primary.name, now)
            policy = self._policy
            managed = self._ours.get(primary.name) == current
        plan = plan_sync(
            current,
            streaming,
            members=members,
            policy=policy,
            unsatisfied_for=now - since,
            attach_timeout=self._config.sync_standby_attach_timeout,
            managed=managed,
        )
        if plan.value is None or plan.value == current or not self._due("sync", primary.name):
            return
        try:
            set_sync_standby_names(self._dsn_of(primary.name), plan.value, self._timeout)
        except psycopg.Error as exc:
            logger.error("node %s: cannot set synchronous_standby_names: %s", primary.name, exc)
            return
        with self._lock:
            self._written[primary.name] = plan.value
            self._ours[primary.name] = plan.value
            self._unsatisfied.pop(primary.name, None)
        level = logging.ERROR if plan.lowered else logging.WARNING
        logger.log(level, "cluster %s: primary %s: %s", self._cluster, primary.name, plan.note)
        if plan.lowered:
            self._on_lowered()
        self._note(primary.name, f"synchronous_standby_names on {primary.name}: {plan.note}")

    # -- orphaned standbys -------------------------------------------------

    def _repoint(self, name: str, primary: str) -> None:
        if not self._due("repoint", name):
            return
        dsn = self._dsn_of(name)
        target = self._replication_dsn_of(primary)
        try:
            link = read_standby_link(dsn, name, self._timeout)
            want = conninfo_to_dict(target)
            if all(
                str(link.conninfo.get(k, "")) == str(want.get(k, "") or "")
                for k in ("host", "port")
            ):
                logger.debug("node %s already points at %s; not streaming yet", name, primary)
                return
            repoint_standby(dsn, link, target, self._dsn_of(primary), self._timeout)
        except psycopg.Error as exc:
            logger.error("node %s: repointing to %s failed: %s", name, primary, exc)
            return
        logger.warning("node %s did not stream from %s: repointed to it", name, primary)
        self._note(primary, f"{name} did not stream from {primary}: repointed")

    def _note(self, primary: str, note: str) -> None:
        """Add a note to the incident that made ``primary``, or record one of its own."""
        latest = self._events.latest()
        if (
            latest is not None
            and latest.kind in ("failover", "switchover")
            and latest.to_node == primary
        ):
            self._events.append_notes(latest.id, (note,))
            return
        now = time.time()
        self._events.record(
            FailoverEvent(
                "replication", primary, None, note, now, completed=now, outcome="completed"
            )
        )
