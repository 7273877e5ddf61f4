"""Evidence the state machine keeps: cluster identity, failure times, the data-loss reference."""

from __future__ import annotations

import pytest

from pgfailover.config import FailoverConfig
from pgfailover.guards import hang_detection_seconds
from pgfailover.model import Role
from pgfailover.probe import ProbeResult

from .helpers import down, healthy_round, kinds, primary, run, standby

A = "7301234567890123456"  # this cluster's system identifier
B = "7309876543210987654"  # another cluster's
LOST = [down("node0"), standby("node1", upstream=None), standby("node2", upstream=None)]


def same_cluster() -> list[ProbeResult]:
    return [
        primary("node0", system_id=A),
        standby("node1", system_id=A),
        standby("node2", system_id=A),
    ]


# Rounds after which node2 answers as a node of another cluster.
FOREIGN_CASES = [
    pytest.param(
        [
            [
                primary("node0", system_id=A),
                standby("node1", system_id=A),
                standby("node2", system_id=B),
            ]
        ],
        id="a standby of another cluster",
    ),
    pytest.param(
        [
            [
                primary("node0", system_id=A),
                standby("node1", system_id=A),
                primary("node2", system_id=B),
            ]
        ],
        id="a writable primary of another cluster: no split brain",
    ),
    pytest.param(
        [
            same_cluster(),
            [
                primary("node0", system_id=A),
                standby("node1", system_id=A),
                primary("node2", system_id=B),
            ],
        ],
        id="a known node comes back as another cluster's primary",
    ),
]


@pytest.mark.parametrize("rounds", FOREIGN_CASES)
def test_a_node_of_another_cluster_is_refused(rounds: list[list[ProbeResult]]) -> None:
    snap, _ = run(rounds)
    foreign = snap.node("node2")
    assert snap.system_identifier == A
    assert not foreign.up
    assert not foreign.healthy
    assert foreign.role is not Role.PRIMARY
    assert foreign.error is not None
    assert "another cluster" in foreign.error
    assert B in foreign.error
    assert A in foreign.error
    assert snap.primary == "node0"
    assert snap.split_brain == ()


def test_a_foreign_primary_is_not_taken_for_ours_when_ours_is_lost() -> None:
    foreign_primary = [
        down("node0"),
        standby("node1", upstream=None),
        primary("node2", system_id=B),
    ]
    snap, decisions = run(
        [same_cluster(), foreign_primary, foreign_primary, foreign_primary],
        FailoverConfig(promotion="manual"),
    )
    assert snap.primary is None
    assert all("SwitchPrimary" not in kinds(d) for d in decisions[1:])
    assert snap.node("node2").role is not Role.PRIMARY


def test_failed_at_is_set_when_a_node_is_lost_and_kept_after_it_recovers() -> None:
    cfg = FailoverConfig(unhealthy_threshold=2, healthy_threshold=2)
    missing = [primary("node0"), standby("node1"), down("node2")]
    snap, decisions = run([healthy_round(), missing], cfg, step=1.0)
    assert snap.node("node2").failed_at is None  # one miss: below the threshold
    snap, decisions = run([missing], cfg, start=snap, t0=1002.0, step=1.0)
    assert "NodeLost" in kinds(decisions[0])
    assert snap.node("node2").failed_at == 1003.0
    snap, decisions = run([healthy_round()] * 3, cfg, start=snap, t0=1003.0, step=1.0)
    assert "NodeRecovered" in kinds(decisions[1])
    assert snap.node("node2").healthy
    assert snap.node("node2").failed_at == 1003.0


def test_failed_at_is_set_on_a_lost_primary() -> None:
    snap, _ = run([healthy_round(), LOST, LOST, LOST], step=1.0)
    assert snap.primary is None
    assert snap.node("node0").failed_at == 1004.0
    assert snap.node("node1").failed_at is None


# id, rounds, expected last_primary_lsn
LSN_CASES = [
    pytest.param(
        [healthy_round(), [primary("node0"), standby("node1", end_lsn=1500), standby("node2")]],
        1500,
        id="the primary's WAL end as a standby heard it counts",
    ),
    pytest.param(
        [
            healthy_round(),
            [
                primary("node0"),
                standby("node1", end_lsn=1500),
                standby("node2", end_lsn=1400),
            ],
        ],
        1500,
        id="the furthest report counts",
    ),
    pytest.param(
        [healthy_round(), [primary("node0", lsn=2000), standby("node1", end_lsn=1500)]],
        2000,
        id="the primary's own probe when it is further",
    ),
    pytest.param(
        [
            healthy_round(),
            [primary("node0"), standby("node1", end_lsn=1500), standby("node2", end_lsn=1500)],
            LOST,
            LOST,
            LOST,
        ],
        1500,
        id="kept after the primary is lost",
    ),
    pytest.param(
        [[primary("node0"), standby("node1", end_lsn=1500), standby("node2", end_lsn=1500)]],
        1500,
        id="counted from the first round",
    ),
    pytest.param(
        [
            healthy_round(),
            [
                down("node0"),
                primary("node1", tl=2),
                standby("node2", tl=2, upstream="node1", end_lsn=1500),
            ],
        ],
        1500,
        id="counted in the round a new primary on a new timeline is first seen",
    ),
]


@pytest.mark.parametrize(("rounds", "expected"), LSN_CASES)
def test_data_loss_reference(rounds: list[list[ProbeResult]], expected: int) -> None:
    snap, _ = run(rounds)
    assert snap.last_primary_lsn == expected


def test_a_standby_on_an_older_timeline_does_not_move_the_reference() -> None:
    promoted = [
        down("node0"),
        primary("node1", tl=2, lsn=1000),
        standby("node2", tl=1, upstream=None),
    ]
    orphan = [
        down("node0"),
        primary("node1", tl=2, lsn=1000),
        standby("node2", tl=1, upstream="node1", end_lsn=9000),
    ]
    snap, _ = run([healthy_round(), promoted, orphan])
    assert snap.last_primary_lsn == 1000


@pytest.mark.parametrize(
    ("timeouts", "expected"),
    [
        pytest.param((4.0, 4.0), 3.0, id="4s timeout: proof after 3s"),
        pytest.param((4.0, 60.0), 31.0, id="the slowest standby decides"),
        pytest.param((4.0, 0.0), None, id="a receiver that never pings proves nothing"),
        pytest.param((4.0, None), None, id="an unknown timeout proves nothing"),
    ],
)
def test_hang_detection_seconds(
    timeouts: tuple[float | None, float | None], expected: float | None
) -> None:
    snap, _ = run(
        [
            [
                primary("node0"),
                standby("node1", receiver_timeout=timeouts[0]),
                standby("node2", receiver_timeout=timeouts[1]),
            ]
        ]
    )
    assert hang_detection_seconds(snap) == expected


def test_hang_detection_ignores_a_standby_that_is_down() -> None:
    snap, _ = run(
        [
            [primary("node0"), standby("node1"), standby("node2", receiver_timeout=0.0)],
            *[[primary("node0"), standby("node1"), down("node2")]] * 3,
        ]
    )
    assert hang_detection_seconds(snap) == 3.0


def test_hang_detection_without_standbys_is_unknown() -> None:
    snap, _ = run([[primary("node0"), down("node1"), down("node2")]])
    assert hang_detection_seconds(snap) is None
