"""One promotion, step by step: fence, ``pg_promote``, sync names, re-probe, repoint.

Soft-fencing a stale old primary (``default_transaction_read_only``) is
here too: the same admin SQL, recorded the same way.

:class:`Promoter` runs the SQL side of a promotion that
:class:`~pgfailover.failover.FailoverActions` has decided on (under its
promotion lock), and writes each step into the incident's event, so an
operator reads in ``history`` what was done and what could not be.

Order matters on PostgreSQL 15: reloading a standby's config just before
``pg_promote`` was seen to stall the promotion by
``wal_retrieve_retry_interval`` (5 s). So the candidate is promoted first,
untouched; only then, on the session that promoted (a new one would be a
backend started when the new primary's CPU is most wanted), is its
``synchronous_standby_names`` rewritten for the standbys that will follow
it (the old primary's policy over the survivors, worked out beforehand),
and a fence lifted, if there is anything to change; writes switch (a
re-probe publishes the new primary), and the other standbys are repointed,
all in the same call, so that ``close()`` (which waits for it) never leaves
half a promotion behind.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg

from pgfailover.admin import Admin, StandbyLink
from pgfailover.config import FailoverConfig
from pgfailover.counters import Counters
from pgfailover.errors import PgFailoverError, PromotionFailed
from pgfailover.events import EventLog, FailoverEvent
from pgfailover.incident import Incident
from pgfailover.maintenance import SharedPause, SharedPauses
from pgfailover.model import Role, Snapshot
from pgfailover.syncrep import SyncRecord, SyncSpec, format_sync, rewrite_sync_names
from pgfailover.upkeep import Upkeep

__all__ = ["Promoter", "PromotionCalledOff", "PromotionGate"]

logger = logging.getLogger(__name__)


_FENCE_RETRY = 10.0


@dataclass(frozen=True)
class _SyncPlan:
    """The new primary's sync policy, worked out before the promotion: the session
    that promotes sets it (:func:`~pgfailover.admin.promote_node`).

    ``original``: the old primary's ``synchronous_standby_names``; ``current``:
    the target's; ``change``: what to write there (``None``: it is so already);
    ``note``: durability lowered (fewer survivors than the policy asks);
    ``policy``: the operator's, which the new list follows; ``record``: the
    :class:`~pgfailover.syncrep.SyncRecord` to keep with ``change``.
    """

    original: str
    current: str
    change: str | None
    note: str | None
    policy: SyncSpec | None = None
    record: str | None = None

    @classmethod
    def make(cls, snap: Snapshot, target: str, survivors: list[str], upkeep: Upkeep) -> _SyncPlan:
        """The plan for promoting ``target`` with ``survivors`` (application names)
        following it: the old primary's policy as last seen, else the target's.

        Where a manager had lowered the old primary's list (a standby was
        missing), the new one follows the policy the manager kept, not the
        lowered count: a lowering is never made permanent by a failover.
        """
        source = snap.node(target)
        if snap.last_primary is not None:
            lost = snap.node(snap.last_primary)
            if lost.sync_standby_names is not None:
                source = lost
        original = source.sync_standby_names or ""
        policy, managed = upkeep.judge(source)
        base = original
        if managed and policy is not None:
            base = format_sync(policy.method, policy.count, policy.names)
        new_sync, note = rewrite_sync_names(base, survivors)
        current = snap.node(target).sync_standby_names or ""
        change = new_sync if new_sync != current else None
        record = None
        if change is not None and policy is not None:
            record = SyncRecord(change, policy).encode()
        return cls(original, current, change, note, policy, record)


class PromotionCalledOff(PromotionFailed):
    """The promotion gate refused at the last moment: ``pg_promote`` was not sent."""


class PromotionGate(SharedPauses, Protocol):
    """Whether this process may promote now (the arbiter lease, :mod:`pgfailover.lease`),
    and where the cluster's maintenance pause is shared (:mod:`pgfailover.maintenance`)."""

    identity: str

    @property
    def holding(self) -> object | None:
        """Truthy while this process holds the right to promote, by its own clock."""
        ...

    def may_promote(self, automatic: bool = False) -> str | None:
        """``None`` when it may promote now (checked at the source), else why not; an
        ``automatic`` promotion also needs the cluster not paused."""
        ...

    def watch_pause(self, watcher: Callable[[SharedPause | None, int], None]) -> None:
        """Hand each read of the shared pause (and its revision) to ``watcher``."""
        ...

    def fencing_revision(self) -> int | None:
        """The fencing token :meth:`may_promote` last confirmed."""
        ...

    def status(self) -> dict[str, Any]:
        """What status shows under ``lease``."""
        ...


class Promoter:
    """Runs promotions and fences for one cluster.

    Locks: ``_lock`` guards the fence times; a leaf (the fence's SQL runs
    after it is released).

    Thread safety: :meth:`promote` must not run twice at once (the caller's
    promotion lock sees to it); :meth:`fence` may be called from any thread.
    """

    def __init__(
        self,
        *,
        cluster: str,
        config: FailoverConfig,
        admin: Admin,
        events: EventLog,
        counters: Counters,
        incident: Incident,
        upkeep: Upkeep,
        dsn: Callable[[str], str],
        gate: PromotionGate | None = None,
        replication_dsn: Callable[[str], str] | None = None,
    ) -> None:
        self._gate = gate
        self._replication_dsn = replication_dsn or dsn
        self._cluster = cluster
        self._config = config
        self._admin = admin
        self._events = events
        self._counters = counters
        self._incident = incident
        self._upkeep = upkeep
        self._dsn = dsn
        self._lock = threading.Lock()
        self._fenced_at: dict[str, float] = {}  # guarded by self._lock

    @property
    def _timeout(self) -> float:
        return max(2.0, self._config.health_check_timeout * 2)

    def promote(
        self,
        snap: Snapshot,
        event: FailoverEvent,
        target: str,
        *,
        fence: str | None,
        settle: Callable[[], None],
        failed: Callable[[FailoverEvent], None],
        automatic: bool = False,
    ) -> FailoverEvent:
        """Promote ``target`` (fencing ``fence`` first), switch writes, repoint the standbys.

        ``event`` is the incident's open event, already naming the target;
        ``automatic``: no operator asked for it (the gate refuses it while the
        cluster is paused).
        ``settle`` re-probes and applies the result (writes switch there);
        ``failed`` hears of the event when ``pg_promote`` fails, before the
        error is raised.

        Raises:
            PromotionFailed, psycopg.Error: the promotion itself failed.
        """
        timeout = self._timeout
        notes: list[str] = []
        if fence is not None:
            try:
                self._admin.fence(self._dsn(fence), timeout)
                notes.append(f"old primary {fence} soft-fenced before promotion")
            except psycopg.Error as exc:
                notes.append(f"could not fence old primary {fence}: {exc}")
        survivors = self._survivor_links(snap, target, notes)
        fencing: list[int | None] = [None]

        def last_check() -> None:  # connected, right before pg_promote
            fencing[0] = self._check_gate(automatic)

        names = [link.application_name for _, link in survivors]
        sync = _SyncPlan.make(snap, target, names, self._upkeep)
        logger.warning("cluster %s: promoting %s (%s)", self._cluster, target, event.reason)
        started = time.monotonic()
        try:
            unconfigured = self._admin.promote(
                self._dsn(target),
                before=None if self._gate is None else last_check,
                sync_names=sync.change,
                sync_record=sync.record,
                timeout=timeout,
            )
        except (PgFailoverError, psycopg.Error) as exc:
            self._counters.bump("promotion_failures")
            why = str(exc) if isinstance(exc, PromotionCalledOff) else f"pg_promote failed: {exc}"
            done = self._incident.fail(event.id, (*notes, why))
            if done is not None:
                failed(done)
            raise
        self._counters.bump("promotions")
        logger.warning("node %s promoted in %.3fs", target, time.monotonic() - started)
        if self._gate is not None:
            after = self._gate.may_promote()
            notes.append(
                f"arbiter {self._gate.identity} held the lease (fencing revision {fencing[0]}) "
                + (
                    "before and after pg_promote"
                    if after is None
                    else f"before pg_promote; after: {after}"
                )
            )
            self._events.update(event.id, fencing_revision=fencing[0])
        self._synced(sync, target, unconfigured, notes)
        if notes:
            self._events.append_notes(event.id, tuple(notes))
        settle()  # probe now, so that writes switch without waiting for the interval
        if survivors and self._config.repoint_standbys:
            self._repoint(target, survivors, event.id)
        return self._events.get(event.id) or event

    def _check_gate(self, automatic: bool) -> int | None:
        """Connected to the target, right before ``pg_promote``: the gate's fencing
        revision, or :class:`PromotionCalledOff`."""
        assert self._gate is not None  # noqa: S101 - only called with a gate
        why = self._gate.may_promote(automatic)
        if why is not None:
            raise PromotionCalledOff(f"not promoted: {why}")
        return self._gate.fencing_revision()

    def _synced(
        self, sync: _SyncPlan, target: str, unconfigured: str | None, notes: list[str]
    ) -> None:
        """Record what the promotion's session did to the new primary's sync policy
        (``unconfigured``: why it could not)."""
        if sync.note:
            notes.append(sync.note)
            self._counters.bump("sync_lowered")
        written = None
        if unconfigured is not None:
            notes.append(f"could not configure {target} as the new primary: {unconfigured}")
        elif sync.change is not None:
            notes.append(f"synchronous_standby_names on {target}: {sync.change!r}")
            written = sync.change
        self._upkeep.promoted(
            target, sync.current if written is None else written, time.time(), sync.policy
        )

    def _survivor_links(
        self, snap: Snapshot, target: str, notes: list[str]
    ) -> list[tuple[str, StandbyLink]]:
        """The standbys that should follow ``target``, and how they connect now."""
        links = []
        for node in snap.nodes:
            if node.name == target or node.role is not Role.STANDBY or not node.up:
                continue
            try:
                link = self._admin.read_link(self._dsn(node.name), node.name, self._timeout)
            except psycopg.Error as exc:
                notes.append(f"cannot read {node.name}'s primary_conninfo: {exc}")
                continue
            links.append((node.name, link))
        return links

    def _repoint(
        self, target: str, survivors: list[tuple[str, StandbyLink]], event_id: str
    ) -> None:
        """Point the surviving standbys at the new primary (``ALTER SYSTEM`` + reload)."""
        new_dsn = self._dsn(target)
        notes: list[str] = []
        for name, link in survivors:
            try:
                self._admin.repoint(
                    self._dsn(name), link, new_dsn, self._timeout, self._replication_dsn(target)
                )
                notes.append(f"{name} repointed to {target}")
            except psycopg.Error as exc:
                notes.append(f"could not repoint {name}: {exc}")
                logger.error("node %s: repointing to %s failed: %s", name, target, exc)
        self._events.append_notes(event_id, tuple(notes))

    def fence(self, node: str, reason: str) -> None:
        """Soft-fence a stale old primary; at most once per ``_FENCE_RETRY`` seconds per node."""
        now = time.monotonic()
        with self._lock:
            if now - self._fenced_at.get(node, -_FENCE_RETRY) < _FENCE_RETRY:
                return
            self._fenced_at[node] = now
        try:
            self._admin.fence(self._dsn(node), self._config.health_check_timeout * 2)
        except psycopg.Error as exc:
            logger.error("node %s: soft fence failed: %s", node, exc)
            return
        logger.warning(
            "node %s soft-fenced (default_transaction_read_only = on): %s", node, reason
        )
        done = time.time()
        self._events.record(
            FailoverEvent("fence", node, None, reason, done, completed=done, outcome="completed")
        )
