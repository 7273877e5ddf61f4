"""Node tags as tables: nofailover is never promoted, noloadbalance never serves reads."""

from __future__ import annotations

import dataclasses

import pytest

from pgfailover import FailoverConfig
from pgfailover.config import Node
from pgfailover.errors import ConfigurationError
from pgfailover.guards import choose_candidate
from pgfailover.model import Snapshot
from pgfailover.probe import ProbeResult
from pgfailover.routing import PriorityOrder, read_order
from pgfailover.transition import initial_snapshot

from .helpers import NODES, assert_choice, down, healthy_round, run, standby

AUTO = FailoverConfig(promotion="auto")


def tagged(**tags: tuple[str, ...]) -> Snapshot:
    """The initial snapshot with ``nofailover=(...)`` / ``noloadbalance=(...)`` nodes."""
    nodes = [
        dataclasses.replace(
            n,
            nofailover=n.name in tags.get("nofailover", ()),
            noloadbalance=n.name in tags.get("noloadbalance", ()),
        )
        for n in NODES
    ]
    return initial_snapshot(nodes, 1000.0)


def lost(node1: int, node2: int) -> list[ProbeResult]:
    return [
        down("node0"),
        standby("node1", lsn=node1, upstream=None),
        standby("node2", lsn=node2, upstream=None),
    ]


CASES = [
    # id, nofailover, node1 lsn, node2 lsn, target, force, expected node or guard
    ("untagged: the most advanced", (), (900, 950), None, False, "node2"),
    ("the most advanced is nofailover: the other", ("node2",), (900, 950), None, False, "node1"),
    ("both nofailover: no candidate", ("node1", "node2"), (900, 950), None, False, "no_candidate"),
    ("asked for a nofailover node", ("node2",), (900, 950), "node2", False, "nofailover"),
    ("asked for a nofailover node, forced", ("node2",), (900, 950), "node2", True, "node2"),
]


@pytest.mark.parametrize(
    ("nofailover", "lsns", "target", "force", "expected"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_nofailover(
    nofailover: tuple[str, ...],
    lsns: tuple[int, int],
    target: str | None,
    force: bool,
    expected: str,
) -> None:
    start = tagged(nofailover=nofailover)
    snap, _ = run([healthy_round(), *[lost(*lsns)] * 3], AUTO, start=start)
    choice = choose_candidate(snap, AUTO, 1000.5, target=target, force=force)
    refusal = assert_choice(choice, expected)
    if refusal is not None and expected == "no_candidate":
        assert "node1, node2 tagged nofailover" in refusal.reason


def test_auto_mode_never_promotes_a_nofailover_node() -> None:
    start = tagged(nofailover=("node1", "node2"))
    snap, decisions = run([healthy_round(), *[lost(900, 950)] * 5], AUTO, start=start)
    assert not [d for ds in decisions for d in ds if type(d).__name__ == "Promote"]
    assert snap.promotion_blocked is not None
    assert snap.promotion_blocked.startswith("no_candidate")


def test_noloadbalance_never_serves_reads() -> None:
    start = tagged(noloadbalance=("node1",))
    snap, _ = run([healthy_round()] * 3, start=start)
    assert not snap.node("node1").serves_reads
    assert snap.node("node1").read_block == "tagged noloadbalance"
    assert read_order(snap, PriorityOrder()) == ["node2", "node0"]


@pytest.mark.parametrize(
    ("value", "message"),
    [("yes", "nofailover must be true or false, got 'yes'"), (1, "got 1")],
)
def test_tags_must_be_booleans(value: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Node("n1", "host=h", nofailover=value)  # type: ignore[arg-type]


def test_repr_and_tags() -> None:
    node = Node("n1", "host=h password=secret", nofailover=True)
    assert node.tags == ("nofailover",)
    assert "tags=['nofailover']" in repr(node)
    assert "secret" not in repr(node)
