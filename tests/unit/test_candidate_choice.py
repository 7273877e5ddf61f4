"""Which standby to promote, and which guard refuses: a table of cases."""

from __future__ import annotations

import dataclasses

import pytest

from pgfailover.config import FailoverConfig
from pgfailover.guards import FORCEABLE, choose_candidate
from pgfailover.model import Snapshot
from pgfailover.probe import ProbeResult

from .helpers import assert_choice, down, healthy_round, primary, run, standby

CFG = FailoverConfig(promotion="manual", max_promotion_lag_bytes=100, failover_cooldown=60)


def lost_with(*standbys: ProbeResult) -> Snapshot:
    """node0 lost after a healthy start (last seen at LSN 1000)."""
    round_ = [down("node0"), *standbys]
    snap, _ = run([healthy_round(), round_, round_, round_], CFG)
    return snap


def s(name: str, lsn: int = 1000, **kw: object) -> ProbeResult:
    return standby(name, lsn=lsn, upstream=None, **kw)  # type: ignore[arg-type]


CASES = [
    # id, snapshot, target, force, expected node or guard
    ("most WAL wins", lost_with(s("node1", 990), s("node2", 995)), None, False, "node2"),
    (
        "tie goes to lower priority",
        lost_with(s("node1", 995), s("node2", 995)),
        None,
        False,
        "node1",
    ),
    (
        "receive position counts, not just replay",
        lost_with(s("node1", 990, replay=990), s("node2", 999, replay=900)),
        None,
        False,
        "node2",
    ),
    ("asked-for target", lost_with(s("node1", 995), s("node2", 995)), "node2", False, "node2"),
    (
        "target behind the best",
        lost_with(s("node1", 990), s("node2", 999)),
        "node1",
        False,
        "not_most_advanced",
    ),
    (
        "target behind the best, forced",
        lost_with(s("node1", 990), s("node2", 999)),
        "node1",
        True,
        "node1",
    ),
    ("unknown target", lost_with(s("node1"), s("node2")), "node9", True, "target_not_eligible"),
    ("down target", lost_with(s("node1"), down("node2")), "node2", True, "target_not_eligible"),
    ("too far behind", lost_with(s("node1", 500), s("node2", 400)), None, False, "lag"),
    ("too far behind, forced", lost_with(s("node1", 500), s("node2", 400)), None, True, "node1"),
    (
        "still streaming from the primary",
        lost_with(standby("node1", upstream="node0"), s("node2")),
        None,
        False,
        "receiver_streaming",
    ),
    (
        "receiver silent past wal_receiver_timeout/2 + margin: the primary is gone for it too",
        lost_with(standby("node1", upstream="node0", silence=3.1), s("node2")),
        None,
        False,
        "node1",
    ),
    (
        "receiver silent, but within the ping interval: still alive for it",
        lost_with(standby("node1", upstream="node0", silence=2.9), s("node2")),
        None,
        False,
        "receiver_streaming",
    ),
    (
        "default wal_receiver_timeout (60 s): 20 s of silence proves nothing",
        lost_with(standby("node1", upstream="node0", silence=20, receiver_timeout=60), s("node2")),
        None,
        False,
        "receiver_streaming",
    ),
    (
        "default wal_receiver_timeout (60 s): 31.5 s of silence proves it",
        lost_with(
            standby("node1", upstream="node0", silence=31.5, receiver_timeout=60), s("node2")
        ),
        None,
        False,
        "node1",
    ),
    (
        "wal_receiver_timeout off: silence never proves anything",
        lost_with(standby("node1", upstream="node0", silence=600, receiver_timeout=0), s("node2")),
        None,
        False,
        "receiver_streaming",
    ),
    (
        "receiver streams from another node (cascade), not the lost primary",
        lost_with(standby("node1", upstream="node2"), s("node2")),
        None,
        False,
        "node1",
    ),
    (
        "cascade, the relay's address not in the DSNs: found by the name it sends to",
        lost_with(
            dataclasses.replace(standby("node1", upstream="node2"), sender_host="relay.internal"),
            dataclasses.replace(s("node2"), streaming_names=("node1",)),
        ),
        None,
        False,
        "node1",
    ),
    (
        "... and with no node sending to it, it counts as hearing the primary",
        lost_with(
            dataclasses.replace(standby("node1", upstream="node2"), sender_host="relay.internal"),
            s("node2"),
        ),
        None,
        False,
        "receiver_streaming",
    ),
    (
        "still streaming, forced",
        lost_with(standby("node1", upstream="node0"), s("node2")),
        None,
        True,
        "node1",
    ),
    (
        "receiver not visible",
        lost_with(s("node1", visible=False), s("node2", 900, visible=False)),
        None,
        False,
        "receiver_unknown",
    ),
    ("no standby at all", lost_with(down("node1"), down("node2")), None, True, "no_candidate"),
    ("primary still answers", run([healthy_round()], CFG)[0], None, False, "primary_reachable"),
    ("primary still answers, forced", run([healthy_round()], CFG)[0], None, True, "node1"),
    (
        "split brain is never forced",
        run([healthy_round(), [primary("node0"), primary("node1"), standby("node2")]], CFG)[0],
        None,
        True,
        "split_brain",
    ),
]


@pytest.mark.parametrize(
    ("snap", "target", "force", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_candidate_choice(snap: Snapshot, target: str | None, force: bool, expected: str) -> None:
    refusal = assert_choice(
        choose_candidate(snap, CFG, now=10_000.0, target=target, force=force), expected
    )
    if refusal is not None:
        assert refusal.forceable == (expected in FORCEABLE)
        assert ("force=True" in refusal.override) == refusal.forceable


def _second_loss(node0_back: bool, node0_lsn: int = 2000, node2_lsn: int = 2000) -> Snapshot:
    """node0 lost, node1 promoted; then node1 lost, with node0 (rejoined) and node2 left."""
    promoted = [
        down("node0"),
        primary("node1", tl=2, lsn=2000),
        standby("node2", tl=2, lsn=2000, upstream="node1"),
    ]
    lost0 = [down("node0"), standby("node1"), standby("node2")]
    snap, _ = run([healthy_round(), lost0, lost0, lost0, promoted], ANTIFLAP)
    rejoined = standby("node0", tl=2, lsn=2000, upstream="node1")
    back = [rejoined if node0_back else down("node0"), primary("node1", tl=2, lsn=2000)]
    snap, _ = run(
        [[*back, standby("node2", tl=2, lsn=2000, upstream="node1")]] * 2,
        ANTIFLAP,
        start=snap,
        t0=1000.3,
    )
    lost1 = [
        standby("node0", tl=2, lsn=node0_lsn, upstream=None) if node0_back else down("node0"),
        down("node1"),
        standby("node2", tl=2, lsn=node2_lsn, upstream=None),
    ]
    snap, _ = run([lost1] * 3, ANTIFLAP, start=snap, t0=1000.5)
    return snap


ANTIFLAP = FailoverConfig(promotion="manual", failover_cooldown=60)

# id, snapshot, seconds after the last failover, target, expected node or guard
ANTIFLAP_CASES = [
    (
        "second crash 2 s after a failover: the steady standby is promoted at once",
        _second_loss(node0_back=False),
        2.0,
        None,
        "node2",
    ),
    (
        "a node that just failed is passed over for a steady one with as much WAL",
        _second_loss(node0_back=True),
        2.0,
        None,
        "node2",
    ),
    (
        "... even when it sorts first by priority",
        _second_loss(node0_back=True, node0_lsn=2000, node2_lsn=2000),
        5.0,
        None,
        "node2",
    ),
    (
        "a node that just failed but alone holds the most WAL: promoted, not lost",
        _second_loss(node0_back=True, node0_lsn=2050, node2_lsn=2000),
        2.0,
        None,
        "node0",
    ),
    (
        "after the cooldown it is an ordinary candidate again (priority wins the tie)",
        _second_loss(node0_back=True),
        120.0,
        None,
        "node0",
    ),
    (
        "an operator asking for a node that just failed is refused",
        _second_loss(node0_back=True),
        2.0,
        "node0",
        "cooldown",
    ),
]


@pytest.mark.parametrize(
    ("snap", "after", "target", "expected"),
    [c[1:] for c in ANTIFLAP_CASES],
    ids=[c[0] for c in ANTIFLAP_CASES],
)
def test_anti_flap_never_leaves_the_cluster_without_a_primary(
    snap: Snapshot, after: float, target: str | None, expected: str
) -> None:
    assert snap.primary is None
    now = (snap.failover.completed_at or 0.0) + after
    assert_choice(choose_candidate(snap, ANTIFLAP, now=now, target=target), expected)
