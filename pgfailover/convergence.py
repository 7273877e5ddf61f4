"""What differs from a converged cluster, read from a snapshot (pure).

:class:`~pgfailover.upkeep.Upkeep` acts on these after every round in
``auto`` mode; status, metrics and ``/failover/health`` show
:func:`commits_blocked`. Nothing here does I/O: each function is a table in
the unit tests.
"""

from __future__ import annotations

from pgfailover.model import Role, Snapshot
from pgfailover.syncrep import parse_sync

__all__ = [
    "commits_blocked",
    "orphans",
    "receivers_to_tune",
    "shared_app_names",
    "sync_members",
]


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
