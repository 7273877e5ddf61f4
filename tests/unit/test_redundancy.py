"""Redundancy level and whether synchronous replication holds: a table of cases."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from pgfailover.probe import ProbeResult
from pgfailover.report import redundancy
from pgfailover.upkeep import UpkeepStatus

from .helpers import down, primary, run, standby

BOTH = ("node1", "node2")
QUORUM = "ANY 1 (node1, node2)"

CASES: list[tuple[str, Sequence[ProbeResult], str | None, tuple[str, int, bool | None]]] = [
    # (why, one round of probes, auto mode's configured policy, (level, copies, quorum ok))
    (
        "two streaming standbys, async",
        [primary("node0"), standby("node1"), standby("node2")],
        None,
        ("multi", 3, None),
    ),
    (
        "one standby down",
        [primary("node0"), standby("node1"), down("node2")],
        None,
        ("dual", 2, None),
    ),
    (
        "a standby whose receiver is down",
        [primary("node0"), standby("node1"), standby("node2", upstream=None)],
        None,
        ("dual", 2, None),
    ),
    (
        "the primary alone",
        [primary("node0"), down("node1"), down("node2")],
        None,
        ("single", 1, None),
    ),
    ("no primary", [down("node0"), standby("node1"), standby("node2")], None, ("none", 0, None)),
    (
        "quorum holds",
        [primary("node0", sync=QUORUM, streaming=BOTH), standby("node1"), standby("node2")],
        QUORUM,
        ("multi", 3, True),
    ),
    (
        "quorum holds with one of two",
        [primary("node0", sync=QUORUM, streaming=("node1",)), standby("node1"), down("node2")],
        QUORUM,
        ("dual", 2, True),
    ),
    (
        "commits wait: nobody listed streams",
        [
            primary("node0", sync="ANY 1 (node2)", streaming=("node1",)),
            standby("node1"),
            down("node2"),
        ],
        None,
        ("dual", 2, False),
    ),
    (
        "lowered to async by auto mode",
        [primary("node0", sync="", streaming=()), down("node1"), down("node2")],
        QUORUM,
        ("single", 1, False),
    ),
    (
        "lowered from 2 to 1",
        [
            primary("node0", sync="ANY 1 (node1)", streaming=("node1",)),
            standby("node1"),
            down("node2"),
        ],
        "ANY 2 (node1, node2)",
        ("dual", 2, False),
    ),
]


@pytest.mark.parametrize(
    ("probes", "policy", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_redundancy(
    probes: Sequence[ProbeResult], policy: str | None, expected: tuple[str, int, bool | None]
) -> None:
    snap, _ = run([probes] * 4)  # thresholds counted: a node down is unhealthy
    held = redundancy(snap, UpkeepStatus(policy=policy))
    assert (held["level"], held["copies"], held["sync_quorum_ok"]) == expected
