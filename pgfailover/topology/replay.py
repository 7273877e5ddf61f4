"""The decisions a new snapshot implies, for a manager that did not compute it.

A probe round's :func:`~pgfailover.transition.transition` returns the next
snapshot and the decisions that go with it (state changes, nodes lost and
recovered, a failover started or completed, split brain), which the
manager turns into log lines, failover events, callbacks and counters. A
follower receives only the snapshots; :func:`decisions_between` reads the
same decisions off two consecutive snapshots, so that a follower's log,
history, callbacks and metrics say what a probing manager's would. It never
yields :class:`~pgfailover.model.Promote` or :class:`~pgfailover.model.Fence`:
followers act on nothing.

The unit tests hold it to ``transition``: over tables of real rounds, the
decisions read off each pair of snapshots are the ones the round returned.
"""

from __future__ import annotations

from pgfailover.model import (
    Decision,
    FailoverStarted,
    NodeLost,
    NodeRecovered,
    Snapshot,
    SplitBrainDetected,
    StateChanged,
    SwitchPrimary,
)

__all__ = ["decisions_between", "same_members"]


def same_members(prev: Snapshot, new: Snapshot) -> str | None:
    """Why ``new`` cannot replace ``prev`` (other node names), or ``None``."""
    mine = sorted(n.name for n in prev.nodes)
    theirs = sorted(n.name for n in new.nodes)
    if mine == theirs:
        return None
    return f"the source's nodes are {', '.join(theirs)}; this manager's are {', '.join(mine)}"


def decisions_between(prev: Snapshot, new: Snapshot) -> list[Decision]:
    """What a round taking ``prev`` to ``new`` decided, in ``transition``'s order.

    Both snapshots must have the same node names (see :func:`same_members`).
    """
    decisions: list[Decision] = []
    if new.state is not prev.state:
        decisions.append(StateChanged(prev.state, new.state))
    before = {n.name: n for n in prev.nodes}
    for node in new.nodes:
        old = before[node.name]
        if old.checked and old.healthy and not node.healthy:
            decisions.append(NodeLost(node.name, node.error))
        elif old.checked and not old.healthy and node.healthy:
            decisions.append(NodeRecovered(node.name))
    if new.split_brain and new.split_brain != prev.split_brain:
        decisions.append(SplitBrainDetected(new.split_brain))
    if prev.primary is not None and new.primary is None and not new.split_brain:
        decisions.append(
            FailoverStarted(prev.primary, new.failover.reason or f"{prev.primary} lost")
        )
    if new.primary is not None and new.primary != prev.primary:
        decisions.append(_switch(prev, new, new.primary))
    return decisions


def _switch(prev: Snapshot, new: Snapshot, primary: str) -> SwitchPrimary:
    """The switch to ``primary``, worded as the round that saw it words it."""
    timeline = new.node(primary).timeline
    reason = new.failover.reason or prev.failover.reason
    if prev.last_primary is None:
        why = "first primary seen"
    elif primary == prev.last_primary:
        why = f"{primary} is primary again"
    else:
        why = f"{primary} is out of recovery on timeline {timeline}"
        if reason:
            why += f" after: {reason}"
    return SwitchPrimary(primary, prev.last_primary, timeline, why, lost_lsn=prev.last_primary_lsn)
