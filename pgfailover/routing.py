"""Which node serves a request: pure functions over a snapshot.

Writes go to the snapshot's primary unless a query has just found it gone
or read-only (a *suspect*, until the next probe round clears it); there is
no fallback for writes, only waiting. Reads go to a standby that
:func:`read_block` clears, chosen by a read strategy, then to the primary;
with no primary at all, standbys on the newest timeline keep serving reads
(read-only degraded mode). Strategies (:mod:`pgfailover.strategies`,
re-exported here) are pluggable through :class:`ReadStrategy`.

Whether a standby serves reads is decided once per probe round, by
:func:`read_block`, and stored on the node (``NodeState.read_block``):
routing, status and metrics all read that one field. A standby serves reads
only when it is healthy, on the cluster's newest timeline (an orphan left
on an older one, or a node that diverged past the fork, never catches up),
its WAL receiver streams from the primary (after ``RECEIVER_GRACE`` of not
streaming it is cut off), and it is within ``max_read_lag_bytes`` and, while
it is behind, ``max_read_lag_seconds`` of replay age.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Final

from pgfailover.config import FailoverConfig
from pgfailover.errors import SplitBrainError
from pgfailover.model import ClusterState, NodeState, Role, Snapshot
from pgfailover.strategies import (
    STRATEGIES,
    LeastConnections,
    LeastLag,
    LowestLatency,
    PriorityOrder,
    RandomChoice,
    ReadStrategy,
    RoundRobin,
    make_strategy,
)

__all__ = [
    "DIVERGED",
    "RECEIVER_GRACE",
    "STRATEGIES",
    "LeastConnections",
    "LeastLag",
    "LowestLatency",
    "PriorityOrder",
    "RandomChoice",
    "ReadStrategy",
    "RoundRobin",
    "make_strategy",
    "read_block",
    "read_candidates",
    "read_only_reason",
    "read_order",
    "write_target",
]

# How a diverged standby's read block begins: such a node needs a rejoin (pg_rewind).
DIVERGED = "diverged:"


RECEIVER_GRACE: Final = 1.0
"""Seconds a standby may go on serving reads after its WAL receiver stopped streaming."""


def read_block(
    node: NodeState,
    primary: NodeState | None,
    *,
    max_timeline: int,
    fork: tuple[int, int | None],
    now: float,
    config: FailoverConfig,
    previous: str | None = None,
    reference: int | None = None,
) -> str | None:
    """Why ``node`` must not serve reads now, or ``None`` when it may.

    ``fork`` is the newest timeline switch seen and the WAL position it
    forked at (``None`` if unknown): a node on an older timeline that holds
    WAL past it has diverged and needs ``pg_rewind``. With no primary (a
    failover in progress, or this manager cut off from it), a node keeps
    the block it had (``previous``) and is measured against ``reference``,
    the furthest WAL the last primary was known to hold.
    """
    if primary is not None and node.name == primary.name:
        return None
    if node.role is Role.STALE:
        return f"stale old primary on timeline {node.timeline}: needs pg_rewind"
    if not node.up:
        return "down"
    if node.role is not Role.STANDBY:
        return f"not a standby ({node.role.value})"
    if not node.healthy:
        return "not healthy yet"
    if node.noloadbalance:
        return "tagged noloadbalance"
    timeline = node.timeline or 0
    if timeline < max_timeline:
        fork_timeline, fork_lsn = fork
        if fork_lsn is not None and timeline < fork_timeline and (node.position or 0) > fork_lsn:
            return (
                f"{DIVERGED} on timeline {timeline} with WAL past the fork of timeline "
                f"{fork_timeline}; needs pg_rewind"
            )
        return f"orphaned: on timeline {timeline}, the cluster is on {max_timeline}"
    if primary is None:
        # Read-only degraded mode: standbys that were fit keep serving reads;
        # one already cut off stays cut off, however long this lasts.
        if previous is not None and not previous.startswith(("down", "not healthy")):
            return previous
        behind = None if reference is None else reference - (node.replay_lsn or 0)
        if behind is not None and behind > config.max_read_lag_bytes:
            return f"{behind} bytes behind the last primary position"
        return None
    if node.follows is False and node.not_following_since is not None:
        silent = now - node.not_following_since
        if silent >= RECEIVER_GRACE:
            return f"WAL receiver not streaming from the primary for {silent:.1f}s"
    if node.lag_bytes is None:
        return "replication lag unknown"
    if node.lag_bytes > config.max_read_lag_bytes:
        return f"{node.lag_bytes} bytes behind (max_read_lag_bytes={config.max_read_lag_bytes})"
    if (
        node.lag_bytes > 0
        and node.lag_seconds is not None
        and node.lag_seconds > config.max_read_lag_seconds
    ):
        return (
            f"replay {node.lag_seconds:.1f}s behind "
            f"(max_read_lag_seconds={config.max_read_lag_seconds:g})"
        )
    return None


def write_target(snap: Snapshot, suspects: Collection[str] = ()) -> str | None:
    """The node a write goes to now, or ``None`` when it must wait.

    Raises:
        SplitBrainError: two nodes claim to be primary; writes are refused.
    """
    if snap.split_brain:
        raise SplitBrainError(
            f"split brain: {', '.join(snap.split_brain)} are both writable on timeline "
            f"{snap.max_timeline}; writes are refused until one is demoted or fenced"
        )
    if snap.primary is None or snap.primary in suspects:
        return None
    return snap.primary


def read_candidates(
    snap: Snapshot,
    suspects: Collection[str] = (),
    min_lsn: int | None = None,
) -> list[NodeState]:
    """Standbys that may serve a read now (``read_block`` clears them).

    ``min_lsn`` (read-your-writes): only standbys whose last probe showed
    them replayed at least that far, so a read sees a write committed at
    that position. Replay only moves forward, so the probe's answer, however
    old, is a safe lower bound.
    """
    found = []
    for node in snap.nodes:
        if node.name in suspects or node.name == snap.primary:
            continue
        if not node.serves_reads:
            continue
        if min_lsn is not None and (node.replay_lsn is None or node.replay_lsn < min_lsn):
            continue
        found.append(node)
    return found


def read_order(
    snap: Snapshot,
    strategy: ReadStrategy,
    suspects: Collection[str] = (),
    min_lsn: int | None = None,
    *,
    candidates: Sequence[NodeState] | None = None,
) -> list[str]:
    """Nodes to try for a read, in order: fitting standbys, then the primary.

    ``candidates``: :func:`read_candidates` for these arguments, when the
    caller has them already (the executor keeps them per snapshot).
    """
    if candidates is None:
        candidates = read_candidates(snap, suspects, min_lsn)
    names = [n.name for n in strategy.order(candidates)]
    if snap.primary is not None and snap.primary not in suspects and not snap.split_brain:
        names.append(snap.primary)
    return names


HOLDING_GUARDS: Final = frozenset(
    {"no_candidate", "witness_unreachable", "quorum_incomplete", "receiver_unknown", "lag"}
)
"""Guards that hold a promotion back until something changes (a node comes back, an
operator forces it). Others lift by themselves (a standby's silence proof, a cold
start's rounds, a fenced or freshly promoted node that says it is primary): while one
of those holds, writes keep waiting."""


def read_only_reason(snap: Snapshot, promotion: str, paused: bool) -> str | None:
    """Why the cluster is read-only now, or ``None`` while writes may expect a primary.

    Only once the primary is lost (``FAILOVER_IN_PROGRESS``, not while it is
    in doubt) and nothing will promote by itself: ``manual`` promotion,
    maintenance mode in an ``auto`` manager, or one of the
    :data:`HOLDING_GUARDS` (no candidate, a witness or quorum member
    missing...). An orchestrator (``external``) may promote at any moment,
    and other guards lift by themselves: writes wait as before.
    """
    if snap.state is not ClusterState.FAILOVER_IN_PROGRESS or snap.split_brain:
        return None
    if promotion == "manual":
        return "the primary is lost and promotion is manual: waiting for an operator's trigger"
    if promotion != "auto":
        return None
    if paused:
        return "the primary is lost and maintenance mode holds automatic promotion"
    blocked = snap.promotion_blocked
    if blocked is not None and blocked.split(":", 1)[0] in HOLDING_GUARDS:
        return f"the primary is lost and promotion is refused: {blocked}"
    return None
