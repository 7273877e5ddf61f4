"""Promotion: which standby to promote (pure), and promoting it (I/O).

:func:`choose_candidate` applies the guards of DESIGN.md in order and
returns the node to promote or the guard that refused, with how to
override it. It is pure: plain snapshot in, plain answer out.

The guards, in order (``force`` skips only those marked *forceable*):

1. ``split_brain``: two primaries already; never forced.
2. ``primary_reachable``: the primary still answers probes (*forceable*: a
   forced switchover fences the old primary first).
3. ``another_primary``: some other node already reports itself primary;
   never forced (it would make a split brain).
4. ``no_candidate`` / ``target_not_eligible``: no healthy standby, or the
   asked-for node is not one.
5. ``receiver_streaming``: a standby still streams from the lost primary,
   which proves the primary alive and us partitioned from it
   (*forceable*); ``receiver_unknown``: the probe user cannot see the WAL
   receiver (grant ``pg_monitor``) (*forceable*).
6. ``not_most_advanced``: the asked-for target holds less WAL than another
   standby (*forceable*).
7. ``lag``: the candidate is more than ``max_promotion_lag_bytes`` behind
   the last position seen on the primary (*forceable*).
8. ``cooldown``: less than ``failover_cooldown`` since the last failover
   (*forceable*).

Candidates are ranked by the WAL they hold (the most of received and
replayed): with quorum sync, an acknowledged commit is flushed on a standby
before it is acknowledged, so the standby holding the most WAL holds every
acknowledged write. Ties go to the lower ``priority``, then the name, so
every manager picks the same node.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql as pgsql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgfailover.config import FailoverConfig
from pgfailover.errors import PgFailoverError
from pgfailover.model import NodeState, Role, Snapshot

__all__ = [
    "FORCEABLE",
    "Candidate",
    "Refusal",
    "StandbyLink",
    "choose_candidate",
    "fence_node",
    "promote_node",
    "rank",
    "read_standby_link",
    "repoint_standby",
    "rewrite_sync_names",
    "set_sync_standby_names",
    "streaming_standbys",
]

FORCEABLE = frozenset(
    {
        "primary_reachable",
        "receiver_streaming",
        "receiver_unknown",
        "not_most_advanced",
        "lag",
        "cooldown",
    }
)


@dataclass(frozen=True)
class Candidate:
    """The standby to promote, and how far behind the last primary it is."""

    node: str
    lag_bytes: int | None
    reason: str


@dataclass(frozen=True)
class Refusal:
    """A guard refused: which one, why, and how to override it."""

    guard: str
    reason: str

    @property
    def forceable(self) -> bool:
        """True when ``force=True`` skips this guard."""
        return self.guard in FORCEABLE

    @property
    def override(self) -> str:
        """A sentence telling an operator how to get past this guard."""
        if self.forceable:
            return "use force=True (pgfailover trigger --force) to skip this guard"
        return "this guard cannot be forced: resolve the cause first"


def rank(node: NodeState) -> tuple[int, int, str]:
    """Sort key: most WAL first, then lower priority, then name."""
    return (-(node.position or 0), node.priority, node.name)


def _eligible(node: NodeState) -> bool:
    return node.up and node.healthy and node.role is Role.STANDBY and node.position is not None


def choose_candidate(
    snap: Snapshot,
    config: FailoverConfig,
    now: float,
    *,
    target: str | None = None,
    force: bool = False,
) -> Candidate | Refusal:
    """The standby to promote now, or the first guard that refuses."""

    def refuse(guard: str, reason: str) -> Refusal | None:
        if force and guard in FORCEABLE:
            return None
        return Refusal(guard, reason)

    if snap.split_brain:
        return Refusal("split_brain", f"split brain between {', '.join(snap.split_brain)}")
    if snap.primary is not None and snap.node(snap.primary).up:
        refusal = refuse("primary_reachable", f"the primary {snap.primary} answers probes")
        if refusal:
            return refusal
    others = [
        n.name for n in snap.nodes if n.up and n.role is Role.PRIMARY and n.name != snap.primary
    ]
    if others:
        return Refusal("another_primary", f"{', '.join(others)} already reports itself primary")
    candidates = sorted((n for n in snap.nodes if _eligible(n)), key=rank)
    if not candidates:
        return Refusal("no_candidate", "no healthy standby to promote")
    best = candidates[0]
    chosen = best
    if target is not None:
        names = {n.name for n in snap.nodes}
        if target not in names:
            return Refusal("target_not_eligible", f"unknown node {target!r}")
        matching = [n for n in candidates if n.name == target]
        if not matching:
            node = snap.node(target)
            why = "is down" if not node.up else f"is {node.role.value}, not a healthy standby"
            return Refusal("target_not_eligible", f"{target} {why}")
        chosen = matching[0]
    lost = snap.last_primary
    for node in snap.nodes:
        if node.name == lost or node.role is not Role.STANDBY or not node.up:
            continue
        if node.receiver_streaming and (node.upstream in (None, lost)):
            refusal = refuse(
                "receiver_streaming",
                f"{node.name} still streams from {node.upstream or 'the primary'}: "
                "the primary is alive and this manager may be partitioned from it",
            )
            if refusal:
                return refusal
    if not chosen.receiver_visible:
        refusal = refuse(
            "receiver_unknown",
            f"cannot see {chosen.name}'s WAL receiver: grant pg_monitor to the probe user",
        )
        if refusal:
            return refusal
    if chosen is not best and (chosen.position or 0) < (best.position or 0):
        refusal = refuse(
            "not_most_advanced",
            f"{chosen.name} holds {(best.position or 0) - (chosen.position or 0)} bytes "
            f"less WAL than {best.name}",
        )
        if refusal:
            return refusal
    reference = max(snap.last_primary_lsn or 0, best.position or 0)
    lag = reference - (chosen.position or 0)
    if lag > config.max_promotion_lag_bytes:
        refusal = refuse(
            "lag",
            f"{chosen.name} is {lag} bytes behind the last primary position "
            f"(max_promotion_lag_bytes={config.max_promotion_lag_bytes})",
        )
        if refusal:
            return refusal
    if (
        snap.last_failover_at is not None
        and now - snap.last_failover_at < config.failover_cooldown
    ):
        refusal = refuse(
            "cooldown",
            f"last failover {now - snap.last_failover_at:.1f}s ago "
            f"(failover_cooldown={config.failover_cooldown:g}s)",
        )
        if refusal:
            return refusal
    why = "asked for" if target else "most advanced healthy standby"
    return Candidate(chosen.name, max(0, lag), f"{chosen.name}: {why}, {max(0, lag)} bytes behind")


# -- I/O: promoting, repointing, fencing ------------------------------------
#
# These run on dedicated admin connections (never pool connections), each
# with a statement timeout. They need a role that may call pg_promote() and
# ALTER SYSTEM (a superuser, or the grants listed in the README).

_SYNC_RE = re.compile(
    r"^\s*(?:(ANY|FIRST)\s+)?(?:(\d+)\s*)?\((.*)\)\s*$", re.IGNORECASE | re.DOTALL
)


def rewrite_sync_names(original: str, survivors: Sequence[str]) -> tuple[str, str | None]:
    """``synchronous_standby_names`` for a new primary followed by ``survivors``.

    Keeps the method (ANY/FIRST) and count of ``original``, capped at the
    number of survivors; with no survivor it returns ``''`` (async). The
    second value is a note to record when durability is lowered. ``'*'``
    (any standby) is kept as it is.
    """
    text = original.strip()
    if not text or text == "*":
        return text, None
    match = _SYNC_RE.match(text)
    if match:
        method = (match.group(1) or "FIRST").upper()
        count = int(match.group(2) or 1)
    else:  # the old list form "a, b": FIRST 1
        method, count = "FIRST", 1
    if not survivors:
        return "", f"no standby left to follow: synchronous replication off (was {original!r})"
    k = min(count, len(survivors))
    names = ", ".join(pgsql.Identifier(s).as_string(None) for s in survivors)
    note = None
    if k < count:
        note = f"only {len(survivors)} standby(s) left: quorum lowered from {count} to {k}"
    return f"{method} {k} ({names})", note


def admin_connection(dsn: str, timeout: float) -> psycopg.Connection[tuple[Any, ...]]:
    """An autocommit connection for one administrative action."""
    ms = max(1, int(timeout * 1000))
    return psycopg.connect(
        dsn,
        autocommit=True,
        connect_timeout=max(1, round(timeout)),
        application_name="pgfailover-admin",
        options=f"-c statement_timeout={ms}",
    )


def promote_node(dsn: str, *, wait_seconds: float = 30.0) -> None:
    """Promote a standby and wait until it has left recovery.

    ``pg_promote(wait => true)`` checks for completion only every 100 ms;
    polling ``pg_is_in_recovery()`` every 5 ms here lets writes resume up to
    a tenth of a second sooner.

    Raises:
        PgFailoverError: the node refused or did not finish promoting in time.
    """
    with admin_connection(dsn, wait_seconds + 5) as conn:
        row = conn.execute("SELECT pg_promote(false)").fetchone()
        if not row or not row[0]:
            raise PgFailoverError("pg_promote() refused to promote")
        deadline = time.monotonic() + wait_seconds
        while conn.execute("SELECT pg_is_in_recovery()").fetchone() != (False,):
            if time.monotonic() >= deadline:
                raise PgFailoverError(f"still in recovery {wait_seconds:g}s after pg_promote()")
            time.sleep(0.005)


def set_sync_standby_names(dsn: str, value: str, timeout: float) -> None:
    """``ALTER SYSTEM SET synchronous_standby_names`` and reload."""
    with admin_connection(dsn, timeout) as conn:
        conn.execute(
            pgsql.SQL("ALTER SYSTEM SET synchronous_standby_names = {}").format(
                pgsql.Literal(value)
            )
        )
        conn.execute("SELECT pg_reload_conf()")


def fence_node(dsn: str, timeout: float) -> None:
    """Soft fence: make every new transaction read-only (survives restarts)."""
    with admin_connection(dsn, timeout) as conn:
        conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        conn.execute("SELECT pg_reload_conf()")


@dataclass(frozen=True)
class StandbyLink:
    """How a standby connects upstream: its conninfo, slot and application name."""

    conninfo: dict[str, str]
    slot: str | None
    application_name: str


def read_standby_link(dsn: str, fallback_name: str, timeout: float) -> StandbyLink:
    """Read a standby's ``primary_conninfo`` and ``primary_slot_name``."""
    with admin_connection(dsn, timeout) as conn:
        row = conn.execute(
            "SELECT current_setting('primary_conninfo'), current_setting('primary_slot_name'),"
            " current_setting('cluster_name')"
        ).fetchone()
    conninfo_text, slot, cluster_name = row if row else ("", "", "")
    params = {k: str(v) for k, v in conninfo_to_dict(conninfo_text or "").items() if v is not None}
    name = params.get("application_name") or cluster_name or fallback_name
    return StandbyLink(params, slot or None, name)


def repoint_standby(
    standby_dsn: str,
    link: StandbyLink,
    new_primary_dsn: str,
    new_primary_admin_dsn: str,
    timeout: float,
) -> None:
    """Point a running standby at a new primary: ``ALTER SYSTEM`` + reload.

    The standby keeps its user, password, SSL and application name; only
    the address changes to the new primary's. Its replication slot, if it
    uses one, is created on the new primary first.
    """
    target = conninfo_to_dict(new_primary_dsn)
    params = dict(link.conninfo)
    for key in ("host", "hostaddr", "port"):
        params.pop(key, None)
        if target.get(key):
            params[key] = str(target[key])
    params.setdefault("application_name", link.application_name)
    if link.slot:
        with admin_connection(new_primary_admin_dsn, timeout) as conn:
            conn.execute(
                "SELECT pg_create_physical_replication_slot(%s, true) WHERE NOT EXISTS"
                " (SELECT 1 FROM pg_replication_slots WHERE slot_name = %s)",
                (link.slot, link.slot),
            )
    with admin_connection(standby_dsn, timeout) as conn:
        conn.execute(
            pgsql.SQL("ALTER SYSTEM SET primary_conninfo = {}").format(
                pgsql.Literal(make_conninfo("", **params))
            )
        )
        conn.execute("SELECT pg_reload_conf()")


def streaming_standbys(dsn: str, timeout: float) -> set[str]:
    """Application names streaming from a primary right now."""
    with admin_connection(dsn, timeout) as conn:
        rows = conn.execute(
            "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'"
        ).fetchall()
    return {r[0] for r in rows}
