"""A follower's decisions, read off two snapshots, are the ones the round returned.

:func:`decisions_between` stands in for ``transition``'s decisions in a
manager that only receives snapshots; each table case feeds real rounds
through ``transition`` and compares, round by round, what it decided with
what the pair of snapshots says (``Promote`` and ``Fence`` left out:
followers act on nothing).
"""

from __future__ import annotations

import dataclasses

import pytest

from pgfailover.config import FailoverConfig
from pgfailover.model import Decision, Fence, Promote, Snapshot
from pgfailover.probe import ProbeResult
from pgfailover.topology.replay import decisions_between, refusal
from pgfailover.transition import initial_snapshot, transition

from .helpers import NODES, down, healthy_round, primary, standby

HEALTHY = healthy_round()
LOST = [down("node0"), standby("node1"), standby("node2")]
PROMOTED = [down("node0"), primary("node1", tl=2), standby("node2", tl=2, upstream="node1")]
STALE = [primary("node0", tl=1), primary("node1", tl=2), standby("node2", tl=2, upstream="node1")]
REJOINED = [
    standby("node0", tl=2, upstream="node1"),
    primary("node1", tl=2),
    standby("node2", tl=2, upstream="node1"),
]
SPLIT = [primary("node0"), primary("node1"), standby("node2")]
STANDBY_DOWN = [primary("node0"), down("node1"), standby("node2")]

CASES: list[tuple[str, list[list[ProbeResult]], FailoverConfig]] = [
    ("first round finds the primary", [HEALTHY, HEALTHY], FailoverConfig()),
    ("primary lost, then promoted elsewhere", [HEALTHY, *[LOST] * 4, PROMOTED], FailoverConfig()),
    ("promoted before the old one crossed the threshold", [HEALTHY, PROMOTED], FailoverConfig()),
    (
        "old primary back stale, then rejoined",
        [HEALTHY, PROMOTED, *[STALE] * 3, *[REJOINED] * 3],
        FailoverConfig(fence_stale_primary=True),
    ),
    (
        "the same primary back before a promotion",
        [HEALTHY, *[LOST] * 4, HEALTHY],
        FailoverConfig(),
    ),
    ("split brain, then cleared", [HEALTHY, SPLIT, SPLIT, HEALTHY], FailoverConfig()),
    ("a standby lost and back", [HEALTHY, *[STANDBY_DOWN] * 4, *[HEALTHY] * 3], FailoverConfig()),
    (
        "auto mode asks for a promotion (followers never act on it)",
        [HEALTHY, *[LOST] * 4],
        FailoverConfig(promotion="auto", failover_cooldown=0),
    ),
    ("no primary ever seen", [LOST, LOST, LOST], FailoverConfig()),
]


def _followable(decisions: list[Decision]) -> list[Decision]:
    return [d for d in decisions if not isinstance(d, Promote | Fence)]


@pytest.mark.parametrize(("rounds", "config"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_the_decisions_read_off_two_snapshots_are_the_rounds(
    rounds: list[list[ProbeResult]], config: FailoverConfig
) -> None:
    snap = initial_snapshot(NODES, 1000.0)
    seen: list[str] = []
    for i, results in enumerate(rounds):
        new, decisions = transition(snap, {r.node: r for r in results}, 1000.0 + i, config)
        assert decisions_between(snap, new) == _followable(decisions), f"round {i}"
        seen += [type(d).__name__ for d in decisions]
        snap = new
    assert seen, "every case decides something"


def test_the_table_covers_every_decision_a_follower_acts_on() -> None:
    kinds: set[str] = set()
    for _, rounds, config in CASES:
        snap = initial_snapshot(NODES, 1000.0)
        for i, results in enumerate(rounds):
            snap, decisions = transition(snap, {r.node: r for r in results}, 1000.0 + i, config)
            kinds |= {type(d).__name__ for d in _followable(decisions)}
    assert kinds == {
        "StateChanged",
        "NodeLost",
        "NodeRecovered",
        "FailoverStarted",
        "SwitchPrimary",
        "SplitBrainDetected",
    }


def test_a_missed_snapshot_still_reads_as_a_completed_failover() -> None:
    """Coalesced updates: from healthy straight to promoted, the switch is still a failover."""
    cfg = FailoverConfig()
    snap = initial_snapshot(NODES, 1000.0)
    states: list[Snapshot] = []
    for i, results in enumerate([HEALTHY, *[LOST] * 4, PROMOTED]):
        snap, _ = transition(snap, {r.node: r for r in results}, 1000.0 + i, cfg)
        states.append(snap)
    decisions = decisions_between(states[0], states[-1])
    switch = [d for d in decisions if type(d).__name__ == "SwitchPrimary"]
    assert len(switch) == 1
    assert switch[0].node == "node1"  # type: ignore[union-attr]
    assert switch[0].previous == "node0"  # type: ignore[union-attr]


def test_a_snapshot_of_other_nodes_is_refused_by_name_or_address() -> None:
    snap = initial_snapshot(NODES, 1000.0)
    renamed = dataclasses.replace(
        snap, nodes=(*snap.nodes[:2], dataclasses.replace(snap.nodes[2], name="node9"))
    )
    swapped = dataclasses.replace(  # the same names for other servers: writes would go astray
        snap,
        nodes=(
            dataclasses.replace(snap.nodes[0], address=snap.nodes[1].address),
            dataclasses.replace(snap.nodes[1], address=snap.nodes[0].address),
            snap.nodes[2],
        ),
    )
    assert refusal(snap, snap) is None
    for other, shows in ((renamed, "node9"), (swapped, "node0 10.0.0.2:5432")):
        problem = refusal(snap, other)
        assert problem is not None
        assert shows in problem


def test_a_snapshot_older_than_what_the_manager_knows_is_refused() -> None:
    """An arbiter that missed a promotion (stalled, behind) may name the old primary."""
    cfg = FailoverConfig()
    snap = initial_snapshot(NODES, 1000.0)
    before, _ = transition(snap, {r.node: r for r in HEALTHY}, 1001.0, cfg)
    after, _ = transition(before, {r.node: r for r in PROMOTED}, 1002.0, cfg)
    assert after.max_timeline == 2
    problem = refusal(after, before)
    assert problem is not None
    assert "timeline 1 < 2" in problem
    assert refusal(before, after) is None
