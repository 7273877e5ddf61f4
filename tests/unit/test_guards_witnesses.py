"""Promotion needs witnesses: tables of who may vouch that the primary is gone.

A standby the manager cannot ask, too few of the quorum's standbys, an orphan
on an older timeline, a first round with no primary ever seen, and a stale
old primary that only a standby's timeline exposes.
"""

from __future__ import annotations

import pytest

from pgfailover.config import FailoverConfig
from pgfailover.guards import Candidate, Refusal, choose_candidate
from pgfailover.model import Promote, Role, Snapshot
from pgfailover.probe import ProbeResult

from .helpers import assert_choice, down, primary, run, standby

CFG = FailoverConfig(promotion="manual", failover_cooldown=0)
QUORUM = "ANY 1 (node1, node2)"


def s(name: str, lsn: int = 1000) -> ProbeResult:
    """A standby whose receiver stopped (the primary is gone for it)."""
    return standby(name, lsn=lsn, upstream=None)


def scenario(before: list[list[ProbeResult]], lost: list[ProbeResult]) -> Snapshot:
    snap, _ = run([*before, lost, lost, lost], CFG, step=1.0)
    return snap


HEALTHY = [primary("node0", sync=QUORUM), standby("node1"), standby("node2")]
NODE2_DOWN_EARLY = [primary("node0", sync=QUORUM), standby("node1"), down("node2")]
ASYNC_NODE2_DOWN_EARLY = [primary("node0"), standby("node1"), down("node2")]

CASES = [
    (
        "a standby lost with the primary cannot vouch: refused",
        scenario(
            [[primary("node0"), standby("node1"), standby("node2")]],
            [down("node0"), s("node1"), down("node2")],
        ),
        False,
        "witness_unreachable",
    ),
    (
        "... unless an operator forces it",
        scenario(
            [[primary("node0"), standby("node1"), standby("node2")]],
            [down("node0"), s("node1"), down("node2")],
        ),
        True,
        "node1",
    ),
    (
        "a standby down long before the primary is no witness",
        scenario([ASYNC_NODE2_DOWN_EARLY] * 4, [down("node0"), s("node1"), down("node2")]),
        False,
        "node1",
    ),
    (
        "quorum sync ANY 1 of 2 with one standby gone: it may hold commits the other lacks",
        scenario([HEALTHY, *[NODE2_DOWN_EARLY] * 4], [down("node0"), s("node1"), down("node2")]),
        False,
        "quorum_incomplete",
    ),
    (
        "quorum sync with every listed standby answering",
        scenario([HEALTHY], [down("node0"), s("node1", 990), s("node2", 1000)]),
        False,
        "node2",
    ),
    (
        "quorum ANY 2 of 2: either one holds every acknowledged commit",
        scenario(
            [[primary("node0", sync="ANY 2 (node1, node2)"), standby("node1"), standby("node2")]]
            + [[primary("node0", sync="ANY 2 (node1, node2)"), standby("node1"), down("node2")]]
            * 4,
            [down("node0"), s("node1"), down("node2")],
        ),
        False,
        "node1",
    ),
]


@pytest.mark.parametrize(
    ("snap", "force", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_promotion_needs_witnesses(snap: Snapshot, force: bool, expected: str) -> None:
    assert snap.primary is None
    refusal = assert_choice(choose_candidate(snap, CFG, now=10_000.0, force=force), expected)
    assert refusal is None or refusal.forceable


def test_an_orphan_on_an_older_timeline_is_never_a_candidate() -> None:
    promoted = [
        down("node0"),
        primary("node1", tl=2, lsn=2000),
        standby("node2", tl=1, lsn=9000, upstream=None),
    ]
    lost = [down("node0"), down("node1"), standby("node2", tl=1, lsn=9000, upstream=None)]
    snap, _ = run(
        [[primary("node0"), standby("node1"), standby("node2")], promoted, lost, lost, lost], CFG
    )
    assert snap.max_timeline == 2
    choice = choose_candidate(snap, CFG, now=10_000.0, force=True)
    assert isinstance(choice, Refusal)
    assert choice.guard == "no_candidate"


def test_a_manager_that_never_saw_a_primary_waits_the_threshold_before_promoting() -> None:
    auto = FailoverConfig(promotion="auto", failover_cooldown=0)
    nothing = [down("node0"), s("node1"), s("node2")]
    snap, decisions = run([nothing], auto)
    assert not any(isinstance(d, Promote) for d in decisions[0])
    assert (snap.promotion_blocked or "").startswith("no_primary_seen")
    snap, decisions = run([nothing] * 3, auto)
    assert any(isinstance(d, Promote) for d in decisions[-1])


def test_a_writable_node_below_a_standbys_timeline_is_stale_not_primary() -> None:
    # The new primary (timeline 2) cannot be reached; its standby can, and the
    # old primary came back writable on timeline 1.
    snap, _ = run(
        [
            [
                primary("node0", tl=1),
                down("node1"),
                standby("node2", tl=2, upstream="node1"),
            ]
        ]
    )
    assert snap.primary is None
    assert snap.node("node0").role is Role.STALE


def test_a_standby_seen_on_the_new_timeline_stays_a_candidate_when_its_receiver_dies() -> None:
    # Two seconds after a failover the new primary crashes: node2's receiver
    # is gone and its probe falls back to its last restartpoint's timeline (1).
    promoted = [
        down("node0"),
        primary("node1", tl=2, lsn=2000),
        standby("node2", tl=2, lsn=2000, upstream="node1"),
    ]
    crashed = [down("node0"), down("node1"), standby("node2", tl=1, lsn=2000, upstream=None)]
    snap, _ = run(
        [
            [primary("node0"), standby("node1"), standby("node2")],
            promoted,
            crashed,
            crashed,
            crashed,
        ],
        CFG,
    )
    assert snap.node("node2").timeline == 2
    choice = choose_candidate(snap, CFG, now=10_000.0)
    assert isinstance(choice, Candidate), choice
    assert choice.node == "node2"
