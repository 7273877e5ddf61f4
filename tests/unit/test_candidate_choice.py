"""Which standby to promote, and which guard refuses: a table of cases."""

from __future__ import annotations

import pytest

from pgfailover.config import FailoverConfig
from pgfailover.model import Snapshot
from pgfailover.probe import ProbeResult
from pgfailover.promotion import FORCEABLE, Candidate, Refusal, choose_candidate

from .helpers import down, healthy_round, primary, run, standby

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
    choice = choose_candidate(snap, CFG, now=10_000.0, target=target, force=force)
    if expected.startswith("node"):
        assert isinstance(choice, Candidate), choice
        assert choice.node == expected
    else:
        assert isinstance(choice, Refusal), choice
        assert choice.guard == expected
        assert choice.forceable == (expected in FORCEABLE)
        assert ("force=True" in choice.override) == choice.forceable


def test_cooldown_refuses_a_second_failover_too_soon() -> None:
    promoted = [down("node0"), primary("node1", tl=2), standby("node2", tl=2, upstream="node1")]
    snap, _ = run([healthy_round(), promoted], CFG)
    lost_again = [down("node0"), down("node1"), standby("node2", tl=2, upstream=None)]
    snap, _ = run([lost_again] * 3, CFG, start=snap, t0=1000.1)
    soon = choose_candidate(snap, CFG, now=snap.last_failover_at + 5)  # type: ignore[operator]
    assert isinstance(soon, Refusal)
    assert soon.guard == "cooldown"
    later = choose_candidate(snap, CFG, now=snap.last_failover_at + 61)  # type: ignore[operator]
    assert isinstance(later, Candidate)
    assert later.node == "node2"
