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

__all__ = ["SourceMismatch", "decisions_between", "refusal"]


class SourceMismatch(ValueError):
    """A source's snapshot this manager must not adopt (one line, why)."""


def refusal(prev: Snapshot, new: Snapshot) -> str | None:
    """Why ``new`` must not replace ``prev``, or ``None``.

    - other nodes: the names, and each name's ``host:port``, must be the
      same (a name that means another server here would send writes there;
      default names are positional, so two lists in another order differ);
    - an older cluster: a snapshot whose newest timeline is older than
      what this manager already knows comes from an arbiter that missed a
      promotion (stalled, or behind), and may name the old primary.
    """
    mine = {n.name: n.address for n in prev.nodes}
    theirs = {n.name: n.address for n in new.nodes}
    if mine != theirs:
        shown = ", ".join(f"{k} {v}" for k, v in sorted(theirs.items()))
        own = ", ".join(f"{k} {v}" for k, v in sorted(mine.items()))
        return f"the source's nodes are {shown}; this manager's are {own}"
    if new.max_timeline < prev.max_timeline:
        return (
            f"the source's snapshot is older than this manager's: timeline "
            f"{new.max_timeline} < {prev.max_timeline}"
        )
    return None


def decisions_between(prev: Snapshot, new: Snapshot) -> list[Decision]:
    """What a round taking ``prev`` to ``new`` decided, in ``transition``'s order.

    Both snapshots must have the same node names (see :func:`refusal`).
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
