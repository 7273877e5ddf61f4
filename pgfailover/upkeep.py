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
:mod:`pgfailover.convergence`: tables in the unit tests); what
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
    set_sync_record,
    set_sync_standby_names,
)
from pgfailover.config import FailoverConfig
from pgfailover.convergence import orphans, receivers_to_tune, shared_app_names, sync_members
from pgfailover.errors import first_line
from pgfailover.events import EventLog, FailoverEvent
from pgfailover.guards import hang_failover_seconds
from pgfailover.model import NodeState, Role, Snapshot
from pgfailover.syncrep import (
    RECORD_SETTING,
    SyncRecord,
    SyncSpec,
    parse_record,
    parse_sync,
    plan_sync,
    recorded,
)

__all__ = ["SLOW_HANG_FAILOVER", "Upkeep", "UpkeepStatus"]

logger = logging.getLogger(__name__)

RETRY_INTERVAL: Final = 10.0
"""Seconds before the same action is tried again on the same node."""

PENDING_FOR: Final = 5.0
"""Seconds a list this process wrote may take to show in the probes (a reload reaches
each backend at its next statement), beyond two probe timeouts (a round probed before
the write may be published after it); meanwhile the old one is not the operator's."""

RECORD_RETRY: Final = 300.0
"""Seconds before keeping the record is tried again after the role was refused (a
GRANT given meanwhile is then noticed)."""

SLOW_HANG_FAILOVER: Final = 10.0
"""Seconds of hang failover past which the manager warns (status, log, alert)."""


@dataclass
class UpkeepStatus:
    """What upkeep knows, for status: the sync policy and what failed."""

    policy: str | None = None
    unsatisfied_since: float | None = None
    refused: dict[str, str] = field(default_factory=dict)  # node -> why tuning failed
    record_refused: str | None = None  # why the sync record cannot be kept on the primary
    ours: dict[str, str] = field(default_factory=dict)  # primary -> sync names this process wrote


class Upkeep:
    """Runs the convergence actions after each probe round (``auto`` mode).

    Locks: ``_run_lock`` lets one thread run the actions at a time (another
    thread's round skips them, the next round catches up); ``_lock`` guards
    the small state below and is a leaf (no I/O, no other lock under it).

    Thread safety: :meth:`run`, :meth:`promoted`, :meth:`judge`,
    :meth:`acting` and :meth:`status` may be called from any thread.
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
        self._record_refused: str | None = None  # guarded by self._lock
        self._refused_at = 0.0  # guarded by self._lock: when the record was refused
        self._pending: dict[str, tuple[str, float]] = {}  # guarded by self._lock
        self._term: object = None  # guarded by self._lock: the lease term it last acted in
        self._warned_slow = False  # only under _run_lock
        self._warned_names = False  # only under _run_lock

    @property
    def _timeout(self) -> float:
        return max(2.0, self._config.health_check_timeout * 2)

    def acting(self, term: object) -> None:
        """The term this process acts in now: ``True`` (it needs no lease), the lease's
        fencing revision, or ``None`` (another arbiter holds it). When the term changes
        (the lease gained, lost, or lost and taken again), what it remembered is
        dropped: another arbiter may have acted meanwhile, and the records on the
        primary say what it did."""
        with self._lock:
            if term == self._term:
                return
            self._term = term
            self._policy = None
            for kept in (self._written, self._ours, self._unsatisfied, self._pending):
                kept.clear()

    def judge(self, node: NodeState) -> tuple[SyncSpec | None, bool]:
        """The sync policy in force on (primary) ``node``, and whether a manager wrote
        its ``synchronous_standby_names`` (then upkeep keeps the list up).

        A manager wrote it when the node's :class:`~pgfailover.syncrep.SyncRecord`
        says so (this process, or another before a restart or a lease handover),
        or when this process did and could not keep the record; otherwise the
        operator did, and their setting is the policy.
        """
        current = node.sync_standby_names or ""
        with self._lock:
            record = recorded(current, node.sync_record)
            if record is not None:
                self._policy = record.policy
                self._written[node.name] = self._ours[node.name] = current
                return record.policy, True
            if self._ours.get(node.name) == current:
                return self._policy, True
            if current != self._written.get(node.name, current if not current else None):
                # Someone else set it (the operator, a previous primary's
                # config): that is the policy now; '' means async by choice.
                spec = parse_sync(current)
                self._policy = None if spec is None or spec.star else spec
                self._written[node.name] = current
            return self._policy, False

    def promoted(
        self, node: str, value: str | None, now: float, policy: SyncSpec | None = None
    ) -> None:
        """A promotion left ``value`` on ``node`` (the policy it kept: ``policy``);
        the attach clock starts now."""
        with self._lock:
            if policy is not None:
                self._policy = policy
            if value is not None:
                self._written[node] = value
                self._ours[node] = value
                self._pending[node] = (value, self._pending_until())
            self._unsatisfied[node] = now

    def _pending_until(self) -> float:
        return time.monotonic() + PENDING_FOR + 2 * self._config.health_check_timeout

    def _awaiting(self, node: str, current: str) -> bool:
        """A list this process wrote on ``node`` does not show in the probes yet."""
        with self._lock:
            pending = self._pending.get(node)
            if pending is None:
                return False
            if current != pending[0] and time.monotonic() < pending[1]:
                return True
            del self._pending[node]
            return False

    def status(self) -> UpkeepStatus:
        """A copy of what upkeep knows."""
        with self._lock:
            policy = self._policy
            return UpkeepStatus(
                policy=None if policy is None else policy.shown,
                unsatisfied_since=min(self._unsatisfied.values(), default=None),
                refused=dict(self._refused),
                record_refused=self._record_refused,
                ours=dict(self._ours),
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
        if self._awaiting(primary.name, current):
            return  # the old list still shows: neither the operator's nor to act on
        streaming = primary.streaming_names or ()
        members = sync_members(snap, primary.name)
        policy, managed = self.judge(primary)
        with self._lock:
            spec = parse_sync(current)
            if spec is None or spec.satisfied(streaming):
                self._unsatisfied.pop(primary.name, None)
                since = now
            else:
                since = self._unsatisfied.setdefault(primary.name, now)
        plan = plan_sync(
            current,
            streaming,
            members=members,
            policy=policy,
            unsatisfied_for=now - since,
            attach_timeout=self._config.sync_standby_attach_timeout,
            managed=managed,
        )
        if plan.value is None or plan.value == current:
            if managed:
                self._keep_record(primary, SyncRecord(current, policy))
            return
        if not self._due("sync", primary.name):
            return
        record = SyncRecord(plan.value, policy).encode()
        try:
            refused = set_sync_standby_names(
                self._dsn_of(primary.name), plan.value, self._timeout, record
            )
        except psycopg.Error as exc:
            logger.error("node %s: cannot set synchronous_standby_names: %s", primary.name, exc)
            return
        self._record_kept(primary.name, refused)
        with self._lock:
            self._written[primary.name] = plan.value
            self._ours[primary.name] = plan.value
            self._pending[primary.name] = (plan.value, self._pending_until())
            self._unsatisfied.pop(primary.name, None)
        level = logging.ERROR if plan.lowered else logging.WARNING
        logger.log(level, "cluster %s: primary %s: %s", self._cluster, primary.name, plan.note)
        if plan.lowered:
            self._on_lowered()
        self._note(primary.name, f"synchronous_standby_names on {primary.name}: {plan.note}")

    def _keep_record(self, primary: NodeState, record: SyncRecord) -> None:
        """Write the record a list this process keeps up lacks on the primary (the
        promotion that wrote the list could not, or another version ran before)."""
        if record.policy is None or parse_record(primary.sync_record) == record:
            return
        with self._lock:
            if self._record_refused is not None and (
                time.monotonic() - self._refused_at < RECORD_RETRY
            ):
                return  # not granted (yet): this process's memory is all there is
        if not self._due("record", primary.name):
            return
        try:
            refused = set_sync_record(self._dsn_of(primary.name), record.encode(), self._timeout)
        except psycopg.Error as exc:
            logger.error("node %s: cannot set %s: %s", primary.name, RECORD_SETTING, exc)
            return
        self._record_kept(primary.name, refused)

    def _record_kept(self, primary: str, refused: str | None) -> None:
        """Note whether the record could be kept; say once when it cannot."""
        with self._lock:
            first = refused is not None and self._record_refused is None
            self._record_refused = refused
            self._refused_at = time.monotonic()
        if first:
            logger.warning(
                "node %s: cannot keep %s (%s): which synchronous_standby_names this "
                "manager wrote is known to this process only; after its restart or a "
                "lease handover a rejoined standby is not added back (GRANT ALTER "
                "SYSTEM ON PARAMETER %s to the manager's role)",
                primary,
                RECORD_SETTING,
                refused,
                RECORD_SETTING,
            )

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
