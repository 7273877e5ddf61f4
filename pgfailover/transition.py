"""The pure transition function of the cluster state machine.

:func:`transition` takes the previous :class:`~pgfailover.model.Snapshot`,
one round of probe results and the time, and returns the next snapshot and
the decisions the manager must apply (switch primary, promote, fence, raise
the alarm). It does no I/O and reads no clock, so every case is a row in a
unit-test table.

States (:class:`~pgfailover.model.ClusterState`):

- ``HEALTHY``: a writable primary, every standby healthy, streaming and
  within the lag limit.
- ``DEGRADED``: a primary, but a standby is down, lagging, not streaming or
  stale, or the primary failed its last probe (in doubt).
- ``FAILOVER_IN_PROGRESS``: no writable primary and at least one healthy
  standby: waiting for a promotion (the manager's own in ``auto`` mode).
- ``FAILOVER_COMPLETE``: a new primary took over within the last
  ``COMPLETE_HOLD_INTERVALS`` health-check intervals.
- ``RECOVERY_IN_PROGRESS``: a node that was unhealthy answers again, or an
  old primary answers as a standby (rejoined), but has not yet passed
  ``healthy_threshold`` probes in a row.
- ``UNKNOWN``: no healthy node at all.
- ``SPLIT_BRAIN``: two writable nodes on the newest timeline: writes refused.

Which node is primary is what the servers say, never the configuration: the
writable node on the newest timeline. A node out of recovery on an older
timeline is ``stale`` (an old primary that came back; it needs pg_rewind)
and never receives writes.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Final

from pgfailover.config import FailoverConfig, Node
from pgfailover.derive import (
    cluster_identifier,
    primary_position,
    refuse_foreign,
    with_following,
    with_upstreams,
)
from pgfailover.dsn import node_address
from pgfailover.guards import Candidate, choose_candidate
from pgfailover.model import (
    ClusterState,
    Decision,
    FailoverClock,
    FailoverStarted,
    Fence,
    NodeLost,
    NodeRecovered,
    NodeState,
    Promote,
    Role,
    Snapshot,
    SplitBrainDetected,
    StateChanged,
    SwitchPrimary,
    evolve,
)
from pgfailover.observe import probed
from pgfailover.probe import ProbeResult
from pgfailover.routing import read_block

__all__ = ["COMPLETE_HOLD_INTERVALS", "initial_snapshot", "transition"]

COMPLETE_HOLD_INTERVALS: Final = 5


def initial_snapshot(nodes: Sequence[Node], now: float = 0.0) -> Snapshot:
    """The snapshot before any probe: every node unknown, no primary."""
    return Snapshot(
        nodes=tuple(
            NodeState(
                n.name,
                node_address(n.dsn),
                n.priority,
                nofailover=n.nofailover,
                noloadbalance=n.noloadbalance,
            )
            for n in nodes
        ),
        changed_at=now,
    )


def _with_lag(
    node: NodeState, primary: NodeState | None, reference: int, cfg: FailoverConfig
) -> NodeState:
    """Lag behind the primary, and promotion eligibility, of one node."""
    if node.role is Role.PRIMARY and primary is not None and node.name == primary.name:
        return evolve(node, lag_bytes=0, lag_seconds=0.0, promotion_eligible=False)
    if node.role is not Role.STANDBY or not node.up:
        return evolve(node, lag_bytes=None, promotion_eligible=False)
    lag_bytes = None
    lag_seconds = node.lag_seconds
    if primary is not None and primary.wal_lsn is not None and node.replay_lsn is not None:
        lag_bytes = max(0, primary.wal_lsn - node.replay_lsn)
        if lag_bytes == 0:
            lag_seconds = 0.0
    position = node.position
    eligible = (
        node.healthy
        and position is not None
        and reference - position <= cfg.max_promotion_lag_bytes
    )
    return evolve(node, lag_bytes=lag_bytes, lag_seconds=lag_seconds, promotion_eligible=eligible)


def _lost_reason(prev: Snapshot, nodes: Mapping[str, NodeState]) -> str:
    name = prev.primary
    if name is None:
        return "no primary"
    node = nodes[name]
    if node.up and node.role is Role.STANDBY:
        return f"primary {name} is in recovery (demoted)"
    if node.up and node.read_only:
        return f"primary {name} is read-only"
    if node.up:
        return f"primary {name} is stale (timeline {node.timeline})"
    return f"primary {name} failed {node.consecutive_failures} checks: {node.error}"


def transition(
    prev: Snapshot,
    results: Mapping[str, ProbeResult],
    now: float,
    cfg: FailoverConfig,
    corroborated: Collection[str] = (),
) -> tuple[Snapshot, list[Decision]]:
    """The next snapshot and the decisions one round of probes leads to.

    ``corroborated``: nodes a query found gone (a connection error) since
    the previous round. A failed probe of such a node counts twice toward
    ``unhealthy_threshold``: the query's failure and the probe's are two
    observations. Counting the query's once, however many callers saw it,
    keeps detection from depending on how many threads or tasks were busy.
    """
    decisions: list[Decision] = []
    by_address = {n.address: n.name for n in prev.nodes}
    updated = [
        probed(n, results.get(n.name), now, cfg, by_address, corroborated=n.name in corroborated)
        for n in prev.nodes
    ]
    cluster_id = cluster_identifier(prev, updated)
    updated = with_upstreams([refuse_foreign(n, cluster_id) for n in updated])
    for index, (old, new) in enumerate(zip(prev.nodes, updated, strict=True)):
        if old.checked and old.healthy and not new.healthy:
            decisions.append(NodeLost(new.name, new.error))
            updated[index] = evolve(new, failed_at=now)
        elif old.checked and not old.healthy and new.healthy:
            decisions.append(NodeRecovered(new.name))

    updated, primary, split, stale, max_timeline = _find_primary(prev, updated)
    by_name = {n.name: n for n in updated}

    if split and split != prev.split_brain:
        decisions.append(SplitBrainDetected(split))
    for name in sorted(stale):
        if cfg.fence_stale_primary and by_name[name].read_only is False:
            decisions.append(
                Fence(
                    name,
                    f"{name} is out of recovery on timeline {by_name[name].timeline}, "
                    f"older than {max_timeline}: stale old primary",
                )
            )

    last_primary = prev.last_primary
    last_primary_lsn = primary_position(prev, by_name, primary, max_timeline)
    if primary is not None:
        last_primary = primary

    clock = _bookkeeping(prev, by_name, primary, split, now=now, decisions=decisions)

    primary_node = by_name[primary] if primary is not None else None
    prev_by_name = {n.name: n for n in prev.nodes}
    updated = [
        with_following(n, prev_by_name[n.name], primary_node, by_name, now) for n in updated
    ]
    fork_timeline, fork_lsn = prev.fork_timeline, prev.fork_lsn
    new_timeline = primary_node.timeline or 0 if primary_node is not None else 0
    if (
        primary_node is not None
        and prev.max_timeline
        and new_timeline > max(prev.max_timeline, prev.fork_timeline)
    ):
        fork_timeline = new_timeline
        fork_lsn = prev_by_name[primary_node.name].position
    reference = max(
        [
            last_primary_lsn or 0,
            *(n.position or 0 for n in updated if n.role is Role.STANDBY and n.up),
        ]
    )
    updated = [_with_lag(n, primary_node, reference, cfg) for n in updated]
    updated = [
        evolve(
            n,
            read_block=read_block(
                n,
                primary_node,
                max_timeline=max_timeline,
                fork=(fork_timeline, fork_lsn),
                now=now,
                config=cfg,
                previous=prev_by_name[n.name].read_block,
                reference=last_primary_lsn,
            ),
        )
        for n in updated
    ]
    by_name = {n.name: n for n in updated}

    state = _cluster_state(
        updated, primary=primary, split=split, completed_at=clock.completed_at, now=now, cfg=cfg
    )
    if primary is not None and state is not ClusterState.FAILOVER_COMPLETE:
        clock = evolve(clock, started_at=None, reason=None)

    snapshot = Snapshot(
        nodes=tuple(updated),
        state=state,
        primary=primary,
        last_primary=last_primary,
        last_primary_lsn=last_primary_lsn,
        max_timeline=max_timeline,
        split_brain=split,
        failover=clock,
        promotion_blocked=None,
        rounds=prev.rounds + 1,
        changed_at=now if state is not prev.state else prev.changed_at,
        system_identifier=cluster_id,
        fork_timeline=fork_timeline,
        fork_lsn=fork_lsn,
    )
    if state is not prev.state:
        decisions.insert(0, StateChanged(prev.state, state))
    if cfg.promotion == "auto" and state is ClusterState.FAILOVER_IN_PROGRESS:
        choice = choose_candidate(snapshot, cfg, now)
        if prev.last_primary is None and snapshot.rounds < cfg.unhealthy_threshold:
            # Never saw a primary (a cold start, a primary restarting): count
            # the same threshold as for a primary that was seen, then decide.
            snapshot = evolve(
                snapshot,
                promotion_blocked=(
                    f"no_primary_seen: no primary in {snapshot.rounds} probe round(s); "
                    f"waiting for {cfg.unhealthy_threshold}"
                ),
            )
        elif isinstance(choice, Candidate):
            decisions.append(Promote(choice.node, last_primary, choice.reason, choice.lag_bytes))
        else:
            snapshot = evolve(snapshot, promotion_blocked=f"{choice.guard}: {choice.reason}")
    return snapshot, decisions


def _bookkeeping(
    prev: Snapshot,
    by_name: Mapping[str, NodeState],
    primary: str | None,
    split: tuple[str, ...],
    *,
    now: float,
    decisions: list[Decision],
) -> FailoverClock:
    """The failover clock after this round (and the decisions it implies)."""
    started, reason = prev.failover.started_at, prev.failover.reason
    count, completed = prev.failover.count, prev.failover.completed_at
    if prev.primary is not None and primary is None and not split:
        started = now
        reason = _lost_reason(prev, by_name)
        decisions.append(FailoverStarted(prev.primary, reason))
    if primary is None or primary == prev.primary:
        return FailoverClock(started, reason, count, completed)
    timeline = by_name[primary].timeline
    if prev.last_primary is None:
        why = "first primary seen"
    elif primary == prev.last_primary:
        why = f"{primary} is primary again"
    else:
        count += 1
        completed = now
        if started is None:
            # Switched before the old primary crossed the unhealthy
            # threshold: the failover began when it first failed a probe.
            old = by_name.get(prev.last_primary)
            started = old.down_since if old is not None and old.down_since is not None else now
        why = f"{primary} is out of recovery on timeline {timeline}"
        if reason:
            why += f" after: {reason}"
    decisions.append(
        SwitchPrimary(primary, prev.last_primary, timeline, why, lost_lsn=prev.last_primary_lsn)
    )
    return FailoverClock(started, reason, count, completed)


def _find_primary(
    prev: Snapshot, updated: list[NodeState]
) -> tuple[list[NodeState], str | None, tuple[str, ...], set[str], int]:
    """The primary (the writable node on the newest timeline), split brain, stale nodes."""
    out_of_recovery = [n for n in updated if n.up and n.role is Role.PRIMARY]
    # A standby streaming on a timeline proves a primary reached it: a
    # writable node below it is an old primary, even if the new one cannot
    # be reached from here.
    streaming = [n for n in updated if n.up and n.role is Role.STANDBY and n.receiver_streaming]
    max_timeline = max(
        [prev.max_timeline, *(n.timeline or 0 for n in (*out_of_recovery, *streaming))]
    )
    newest = [n for n in out_of_recovery if (n.timeline or 0) >= max_timeline]
    writable = [n for n in newest if not n.read_only]
    stale = {n.name for n in out_of_recovery if (n.timeline or 0) < max_timeline}
    updated = [evolve(n, role=Role.STALE) if n.name in stale else n for n in updated]
    split: tuple[str, ...] = ()
    primary: str | None = None
    if len(writable) >= 2:
        split = tuple(sorted(n.name for n in writable))
    elif writable:
        primary = writable[0].name
    elif prev.primary is not None:
        old = next(n for n in updated if n.name == prev.primary)
        # A primary that missed probes stays primary until the threshold;
        # one that answers as a standby, read-only or stale is gone at once.
        if not old.up and old.healthy:
            primary = prev.primary
    return updated, primary, split, stale, max_timeline


def _cluster_state(
    nodes: Sequence[NodeState],
    *,
    primary: str | None,
    split: tuple[str, ...],
    completed_at: float | None,
    now: float,
    cfg: FailoverConfig,
) -> ClusterState:
    if split:
        return ClusterState.SPLIT_BRAIN
    if primary is None:
        any_healthy = any(n.up and n.healthy for n in nodes)
        return ClusterState.FAILOVER_IN_PROGRESS if any_healthy else ClusterState.UNKNOWN
    if (
        completed_at is not None
        and now - completed_at < COMPLETE_HOLD_INTERVALS * cfg.health_check_interval
    ):
        return ClusterState.FAILOVER_COMPLETE
    if any(n.recovering for n in nodes):
        return ClusterState.RECOVERY_IN_PROGRESS
    if _degraded(nodes, primary, cfg):
        return ClusterState.DEGRADED
    return ClusterState.HEALTHY


def _degraded(nodes: Sequence[NodeState], primary: str, cfg: FailoverConfig) -> bool:
    for node in nodes:
        if node.name == primary:
            if not node.up:
                return True
            continue
        if not node.healthy or node.role is not Role.STANDBY:
            return True
        if node.receiver_streaming is False or node.follows is False:
            return True
        if node.lag_bytes is not None and node.lag_bytes > cfg.max_read_lag_bytes:
            return True
    return False
