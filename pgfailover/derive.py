"""Facts one probe round establishes about nodes, beyond what each probe says (pure).

:func:`~pgfailover.transition.transition` asks these: which cluster the nodes
belong to (``system_identifier``: a DSN that points at another cluster is
refused, never used), whether a standby streams from the current primary
(what read safety and upkeep act on), and how far the primary's WAL is known
to reach (the reference for promotion lag and the data-loss estimate).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pgfailover.errors import ConfigurationError
from pgfailover.guards import hears_upstream
from pgfailover.model import NodeState, Role, Snapshot, evolve

__all__ = [
    "cluster_identifier",
    "follows",
    "primary_position",
    "refuse_foreign",
    "with_following",
    "with_upstreams",
]


def cluster_identifier(prev: Snapshot, nodes: Sequence[NodeState]) -> str | None:
    """The cluster's system identifier: kept once known, else the primary's or the commonest."""
    if prev.system_identifier is not None:
        return prev.system_identifier
    seen = [n for n in nodes if n.up and n.system_identifier]
    if not seen:
        return None
    writable = [n for n in seen if n.role is Role.PRIMARY and not n.read_only]
    if len({n.system_identifier for n in writable}) == 1:
        return writable[0].system_identifier
    ids = [n.system_identifier for n in seen]
    return max(sorted(set(ids), key=str), key=ids.count)


def refuse_foreign(node: NodeState, cluster_id: str | None) -> NodeState:
    """A node whose system identifier is another cluster's is never used."""
    if cluster_id is None or not node.up or node.system_identifier in (None, cluster_id):
        return node
    return evolve(
        node,
        role=Role.UNKNOWN,
        up=False,
        healthy=False,
        promotion_eligible=False,
        error=(
            f"{node.name} belongs to another cluster (system identifier "
            f"{node.system_identifier}, this cluster's is {cluster_id}): not used"
        ),
    )


def with_upstreams(nodes: Sequence[NodeState]) -> list[NodeState]:
    """Each streaming standby's upstream, by name where its sender's address is not a node's.

    The probe maps a standby's sender (``pg_stat_wal_receiver.sender_host``
    and ``sender_port``: what its ``primary_conninfo`` says) to the node
    with that address in the manager's DSNs. Replication often names hosts
    otherwise (an IP where the DSNs have a DNS name, ``localhost``, a
    replication network), and a standby whose upstream is unknown counts as
    hearing the primary: after the primary died, a cascaded standby that
    goes on hearing its relay refused every promotion (``receiver_streaming``)
    for as long as the relay lived. So the sender is also found the way
    synchronous replication names standbys: the one node whose
    ``pg_stat_replication`` shows the standby's name streaming.
    """
    senders: dict[str, list[str]] = {}
    for node in nodes:
        if node.up and node.streaming_names:
            for name in {n.casefold() for n in node.streaming_names}:
                senders.setdefault(name, []).append(node.name)
    out = []
    for node in nodes:
        found = senders.get((node.app_name or "").casefold(), [])
        others = [name for name in found if name != node.name]
        if (
            node.upstream is None
            and node.up
            and node.role is Role.STANDBY
            and node.receiver_streaming
            and len(others) == 1
        ):
            out.append(evolve(node, upstream=others[0]))
        else:
            out.append(node)
    return out


def foreign_nodes(snap: Snapshot) -> list[str]:
    """Why each node from another cluster is refused (what ``open()`` fails with)."""
    return [
        n.error or n.name
        for n in snap.nodes
        if n.system_identifier not in (None, snap.system_identifier)
    ]


def standby_named(snap: Snapshot, standby: int | str) -> str:
    """A node name from a name or an index among the non-primary nodes (API arguments).

    Raises:
        ConfigurationError: no such node, or the index is out of range.
    """
    names = [n.name for n in snap.nodes]
    if isinstance(standby, str):
        if standby not in names:
            raise ConfigurationError(f"unknown node {standby!r} (known: {', '.join(names)})")
        return standby
    others = [name for name in names if name != snap.primary]
    if not 0 <= standby < len(others):
        raise ConfigurationError(
            f"standby index {standby} out of range: {len(others)} standby(s) ({', '.join(others)})"
        )
    return others[standby]


def follows(
    node: NodeState, primary: NodeState | None, by_name: Mapping[str, NodeState]
) -> bool | None:
    """Whether a standby streams from the current primary (directly or through a standby)."""
    if node.role is not Role.STANDBY or not node.up:
        return None
    if primary is None:
        return hears_upstream(node) if node.receiver_visible else None
    if primary.streaming_names is not None and node.app_name in primary.streaming_names:
        return True
    if not node.receiver_visible:
        return None
    if not hears_upstream(node):
        return False
    if node.upstream is None or node.upstream == primary.name:
        return primary.streaming_names is None or node.upstream is None
    upstream = by_name.get(node.upstream)
    return upstream is not None and upstream.role is Role.STANDBY


def with_following(
    node: NodeState,
    prev: NodeState,
    primary: NodeState | None,
    by_name: Mapping[str, NodeState],
    now: float,
) -> NodeState:
    following = follows(node, primary, by_name)
    since = None
    if following is False:
        since = prev.not_following_since if prev.not_following_since is not None else now
    return evolve(node, follows=following, not_following_since=since)


def primary_position(
    prev: Snapshot, by_name: Mapping[str, NodeState], primary: str | None, timeline: int
) -> int | None:
    """The furthest WAL position known to exist on the (last) primary.

    Its own ``pg_current_wal_lsn()`` at the last probe, and the WAL end it
    reported to each standby with its latest message (fresher under load:
    the walsender sends it with every message), so that the data-loss
    estimate of a failover counts what was written after the last probe.
    """
    source = primary or prev.last_primary
    best = prev.last_primary_lsn if source == prev.last_primary else None
    positions = [best or 0]
    if primary is not None and by_name[primary].wal_lsn is not None:
        positions.append(by_name[primary].wal_lsn or 0)
    for node in by_name.values():
        if (
            node.role is Role.STANDBY
            and node.up
            and node.upstream == source
            and node.upstream_end_lsn is not None
            and node.timeline == timeline
        ):
            positions.append(node.upstream_end_lsn)
    found = max(positions)
    return found if found or best is not None else None
