"""Redundancy level and whether synchronous replication holds: a table of cases."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from pgfailover.probe import ProbeResult
from pgfailover.report import redundancy
from pgfailover.syncrep import SyncRecord, parse_sync
from pgfailover.upkeep import UpkeepStatus

from .helpers import down, primary, run, standby

BOTH = ("node1", "node2")
QUORUM = "ANY 1 (node1, node2)"


def _kept(written: str, policy: str) -> str:
    """The manager's record of ``written`` on the primary (``pgfailover.sync``)."""
    return SyncRecord(written, parse_sync(policy)).encode()


CASES: list[tuple[str, Sequence[ProbeResult], str | None, tuple[str, int, bool | None]]] = [
    # (why, one round of probes, the policy this process keeps (with a list it wrote, but
    # for a "!": a list it did not write), (level, copies, quorum ok))
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
        "lowered to async by auto mode (its record on the primary)",
        [
            primary("node0", sync="", streaming=(), record=_kept("", QUORUM)),
            down("node1"),
            down("node2"),
        ],
        None,
        ("single", 1, False),
    ),
    (
        "lowered from 2 to 1 (its record on the primary)",
        [
            primary(
                "node0",
                sync="ANY 1 (node1)",
                streaming=("node1",),
                record=_kept("ANY 1 (node1)", "ANY 2 (node1, node2)"),
            ),
            standby("node1"),
            down("node2"),
        ],
        None,
        ("dual", 2, False),
    ),
    (
        "lowered from 2 to 1 by this process (the record refused)",
        [
            primary("node0", sync="ANY 1 (node1)", streaming=("node1",)),
            standby("node1"),
            down("node2"),
        ],
        "ANY 2 (node1, node2)",
        ("dual", 2, False),
    ),
    (
        "the operator's list, whatever this process remembers",
        [
            primary("node0", sync="ANY 1 (node1)", streaming=("node1",)),
            standby("node1"),
            down("node2"),
        ],
        "FIRST 2 (node1, node2)!",  # remembered, but the list is not this process's
        ("dual", 2, True),
    ),
]


@pytest.mark.parametrize(
    ("probes", "policy", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_redundancy(
    probes: Sequence[ProbeResult], policy: str | None, expected: tuple[str, int, bool | None]
) -> None:
    snap, _ = run([probes] * 4)  # thresholds counted: a node down is unhealthy
    ours = {}
    if policy is not None and not policy.endswith("!"):  # this process wrote the list
        ours = {"node0": snap.node("node0").sync_standby_names or ""}
    held = redundancy(snap, UpkeepStatus(policy=policy and policy.rstrip("!"), ours=ours))
    assert (held["level"], held["copies"], held["sync_quorum_ok"]) == expected
