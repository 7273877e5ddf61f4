"""Routing as tables: where writes and reads go for a given snapshot."""

from __future__ import annotations

import random

import pytest

from pgfailover import FailoverConfig, SplitBrainError
from pgfailover.model import Snapshot
from pgfailover.probe import ProbeResult
from pgfailover.routing import (
    LeastLag,
    PriorityOrder,
    RandomChoice,
    RoundRobin,
    read_order,
    write_target,
)

from .helpers import down, healthy_round, primary, run, standby

CFG = FailoverConfig(max_read_lag_bytes=100)


def snap_of(*results: ProbeResult) -> Snapshot:
    return run([list(results)], CFG)[0]


HEALTHY = snap_of(*healthy_round())
LAGGING = snap_of(
    primary("node0", lsn=10_000), standby("node1", lsn=10_000), standby("node2", lsn=10)
)
NO_PRIMARY = run(
    [healthy_round(), *[[down("node0"), standby("node1"), standby("node2")]] * 3], CFG
)[0]
STANDBY_DOWN = run(
    [healthy_round(), *[[primary("node0"), standby("node1"), down("node2")]] * 3], CFG
)[0]

WRITE_CASES = [
    ("healthy", HEALTHY, (), "node0"),
    ("primary suspected by a failed query", HEALTHY, ("node0",), None),
    ("no primary", NO_PRIMARY, (), None),
]


@pytest.mark.parametrize(
    ("snap", "suspects", "expected"), [c[1:] for c in WRITE_CASES], ids=[c[0] for c in WRITE_CASES]
)
def test_write_target(snap: Snapshot, suspects: tuple[str, ...], expected: str | None) -> None:
    assert write_target(snap, suspects) == expected


def test_writes_are_refused_in_split_brain() -> None:
    split = snap_of(primary("node0"), primary("node1"), standby("node2"))
    with pytest.raises(SplitBrainError, match="node0, node1"):
        write_target(split)
    assert read_order(split, PriorityOrder()) == ["node2"]


READ_CASES = [
    ("standbys first, primary last", HEALTHY, (), ["node1", "node2", "node0"]),
    ("a lagging standby is skipped", LAGGING, (), ["node1", "node0"]),
    ("a suspect standby is skipped", HEALTHY, ("node1",), ["node2", "node0"]),
    ("a down standby is skipped", STANDBY_DOWN, (), ["node1", "node0"]),
    ("no primary: standbys serve reads", NO_PRIMARY, (), ["node1", "node2"]),
]


@pytest.mark.parametrize(
    ("snap", "suspects", "expected"), [c[1:] for c in READ_CASES], ids=[c[0] for c in READ_CASES]
)
def test_read_order(snap: Snapshot, suspects: tuple[str, ...], expected: list[str]) -> None:
    assert read_order(snap, PriorityOrder(), suspects) == expected


def test_round_robin_spreads_reads() -> None:
    rr = RoundRobin()
    firsts = [read_order(HEALTHY, rr)[0] for _ in range(4)]
    assert firsts == ["node1", "node2", "node1", "node2"]


def test_least_lag_prefers_the_freshest_standby() -> None:
    snap = snap_of(primary("node0", lsn=100), standby("node1", lsn=50), standby("node2", lsn=90))
    assert read_order(snap, LeastLag()) == ["node2", "node1", "node0"]


def test_random_choice_is_repeatable_with_a_seed() -> None:
    def firsts(seed: int) -> list[str]:
        strategy = RandomChoice(random.Random(seed))  # noqa: S311 - load spreading
        return [read_order(HEALTHY, strategy)[0] for _ in range(5)]

    assert firsts(7) == firsts(7)
    assert set(firsts(1) + firsts(2) + firsts(3)) == {"node1", "node2"}


REPLAYED = snap_of(
    primary("node0", lsn=5000),
    standby("node1", lsn=5000, replay=5000),
    standby("node2", lsn=5000, replay=4990),
)
READ_YOUR_WRITES_CASES = [
    ("no token: every fitting standby", REPLAYED, None, ["node1", "node2", "node0"]),
    ("token both replayed", REPLAYED, 4000, ["node1", "node2", "node0"]),
    ("token only node1 replayed", REPLAYED, 5000, ["node1", "node0"]),
    ("token beyond every standby: the primary", REPLAYED, 6000, ["node0"]),
]


@pytest.mark.parametrize(
    ("snap", "min_lsn", "expected"),
    [c[1:] for c in READ_YOUR_WRITES_CASES],
    ids=[c[0] for c in READ_YOUR_WRITES_CASES],
)
def test_read_your_writes_order(snap: Snapshot, min_lsn: int | None, expected: list[str]) -> None:
    assert read_order(snap, PriorityOrder(), min_lsn=min_lsn) == expected
