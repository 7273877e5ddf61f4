"""What upkeep decides, as tables: blocked commits, orphans, receivers to tune."""

from __future__ import annotations

import dataclasses

import pytest

from pgfailover.model import Snapshot
from pgfailover.probe import ProbeResult
from pgfailover.upkeep import (
    commits_blocked,
    orphans,
    receivers_to_tune,
    shared_app_names,
    sync_members,
)

from .helpers import down, healthy_round, primary, run, standby


def snap_of(*rounds: list[ProbeResult], step: float = 0.05) -> Snapshot:
    return run(list(rounds), step=step)[0]


def with_primary(sync: str, streaming: tuple[str, ...] | None) -> Snapshot:
    return snap_of(
        [primary("node0", sync=sync, streaming=streaming), standby("node1"), standby("node2")]
    )


@pytest.mark.parametrize(
    ("snap", "expected"),
    [
        pytest.param(
            with_primary("ANY 1 (node1)", ("node2",)), True, id="the only listed standby is absent"
        ),
        pytest.param(
            with_primary("ANY 1 (node1)", ("node1",)), False, id="the listed standby streams"
        ),
        pytest.param(
            with_primary("FIRST 2 (node1, node2)", ("node1",)), True, id="two needed, one streams"
        ),
        pytest.param(with_primary("", ("node2",)), False, id="async never blocks"),
        pytest.param(with_primary("ANY 1 (node1)", None), False, id="streaming unknown"),
        pytest.param(
            snap_of(
                [
                    primary("node0", sync="ANY 1 (node1)", streaming=()),
                    standby("node1"),
                    standby("node2"),
                ],
                *[[down("node0"), standby("node1"), standby("node2")]] * 3,
            ),
            False,
            id="no primary",
        ),
    ],
)
def test_commits_blocked(snap: Snapshot, expected: bool) -> None:
    assert commits_blocked(snap) is expected


STOPPED = [primary("node0"), standby("node1"), standby("node2", upstream=None)]
LOST = [down("node0"), standby("node1", upstream=None), standby("node2", upstream=None)]
GRACE = 5.0


@pytest.mark.parametrize(
    ("snap", "expected"),
    [
        pytest.param(snap_of(healthy_round()), [], id="everyone follows"),
        pytest.param(
            snap_of(healthy_round(), *[STOPPED] * 7, step=1.0),
            ["node2"],
            id="not following for longer than the grace",
        ),
        pytest.param(
            snap_of(healthy_round(), *[STOPPED] * 3, step=1.0),
            [],
            id="not following for less than the grace",
        ),
        pytest.param(
            snap_of(healthy_round(), *[LOST] * 10, step=1.0), [], id="nothing without a primary"
        ),
        pytest.param(
            snap_of(
                healthy_round(),
                *[[primary("node0"), primary("node1"), standby("node2", upstream=None)]] * 7,
                step=1.0,
            ),
            [],
            id="nothing in split brain",
        ),
    ],
)
def test_orphans(snap: Snapshot, expected: list[str]) -> None:
    now = snap.nodes[0].last_check or 0.0
    assert orphans(snap, now, GRACE) == expected


@pytest.mark.parametrize(
    ("timeout", "target", "expected"),
    [
        pytest.param(60.0, 4.0, ["node2"], id="longer than the target"),
        pytest.param(4.0, 4.0, [], id="at the target"),
        pytest.param(2.0, 4.0, [], id="shorter than the target"),
        pytest.param(0.0, 4.0, ["node2"], id="off"),
        pytest.param(None, 4.0, [], id="unknown"),
        pytest.param(60.0, 0.0, [], id="target 0: leave the servers alone"),
    ],
)
def test_receivers_to_tune(timeout: float | None, target: float, expected: list[str]) -> None:
    # node0 and node1 run with 4s (the helpers' default).
    snap = snap_of(
        [primary("node0"), standby("node1"), standby("node2", receiver_timeout=timeout)]
    )
    assert receivers_to_tune(snap, target) == expected


def test_a_node_that_is_down_is_not_tuned() -> None:
    snap = snap_of(
        [primary("node0"), standby("node1"), standby("node2", receiver_timeout=60.0)],
        [primary("node0"), standby("node1"), down("node2")],
    )
    assert receivers_to_tune(snap, 4.0) == []


def test_standbys_sharing_an_application_name_are_named() -> None:
    base = healthy_round()
    same = [
        base[0],
        *(
            dataclasses.replace(r, app_name="walreceiver")  # libpq's default
            for r in base[1:]
        ),
    ]
    snap, _ = run([same])
    assert shared_app_names(snap) == {"walreceiver": ["node1", "node2"]}
    distinct, _ = run([base])
    assert shared_app_names(distinct) == {}


def _named(result: ProbeResult, app_name: str) -> ProbeResult:
    return dataclasses.replace(result, app_name=app_name)


@pytest.mark.parametrize(
    ("rounds", "new_primary", "expected"),
    [
        pytest.param(
            [
                [
                    _named(primary("node0"), "main"),
                    _named(standby("node1"), "node1"),
                    _named(standby("node2"), "node2"),
                ]
            ],
            "node0",
            {"node1", "node2"},
            id="the standbys, not the primary's cluster_name",
        ),
        pytest.param(
            [
                [
                    _named(primary("node0"), "main"),
                    _named(standby("node1"), "node1"),
                    _named(standby("node2"), "node2"),
                ],
                [
                    down("node0"),
                    _named(primary("node1", tl=2), "main"),
                    _named(standby("node2", tl=2, upstream="node1"), "node2"),
                ],
            ],
            "node1",
            {"node2"},
            id="a lost primary's guessed name is no member",
        ),
        pytest.param(
            [
                [
                    _named(primary("node0"), "main"),
                    _named(standby("node1"), "node1"),
                    _named(standby("node2"), "node2"),
                ],
                [
                    _named(primary("node0"), "main"),
                    _named(standby("node1"), "node1"),
                    down("node2"),
                ],
            ],
            "node0",
            {"node1", "node2"},
            id="a standby that is down stays a member",
        ),
    ],
)
def test_sync_members(
    rounds: list[list[ProbeResult]], new_primary: str, expected: set[str]
) -> None:
    assert sync_members(snap_of(*rounds), new_primary) == expected
