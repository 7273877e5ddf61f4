"""The state machine as tables of probe rounds and expected outcomes."""

from __future__ import annotations

import pytest

from pgfailover.config import FailoverConfig
from pgfailover.model import ClusterState, Fence, Promote, Role, SwitchPrimary
from pgfailover.probe import ProbeResult
from pgfailover.transition import transition

from .helpers import down, full, healthy_round, kinds, primary, run, standby

S = ClusterState
AUTO = FailoverConfig(promotion="auto", failover_cooldown=0)
LOST = [down("node0"), standby("node1", upstream=None), standby("node2", upstream=None)]
FULL = [full("node0"), standby("node1"), standby("node2")]

# (id, rounds, config, expected state, expected primary)
CASES: list[tuple[str, list[list[ProbeResult]], FailoverConfig, ClusterState, str | None]] = [
    ("all healthy", [healthy_round()], FailoverConfig(), S.HEALTHY, "node0"),
    (
        "primary misses one probe: in doubt",
        [healthy_round(), LOST],
        FailoverConfig(),
        S.DEGRADED,
        "node0",
    ),
    (
        "primary misses two probes: still primary",
        [healthy_round(), LOST, LOST],
        FailoverConfig(),
        S.DEGRADED,
        "node0",
    ),
    (
        "primary misses three probes: lost",
        [healthy_round(), LOST, LOST, LOST],
        FailoverConfig(),
        S.FAILOVER_IN_PROGRESS,
        None,
    ),
    (
        "threshold of one",
        [healthy_round(), LOST],
        FailoverConfig(unhealthy_threshold=1),
        S.FAILOVER_IN_PROGRESS,
        None,
    ),
    (
        "a full primary (no connection slot for the probe) stays primary",
        [healthy_round(), FULL, FULL, FULL, FULL],
        FailoverConfig(),
        S.HEALTHY,
        "node0",
    ),
    (
        "a full primary is not failed over in auto mode",
        [healthy_round(), *[FULL] * 6],
        AUTO,
        S.HEALTHY,
        "node0",
    ),
    (
        "a full standby keeps its role",
        [healthy_round(), *[[primary("node0"), full("node1"), standby("node2")]] * 4],
        FailoverConfig(),
        S.HEALTHY,
        "node0",
    ),
    (
        "a primary that missed a probe and is then full still counts it down",
        [healthy_round(), LOST, FULL, FULL],
        FailoverConfig(),
        S.FAILOVER_IN_PROGRESS,
        None,
    ),
    (
        "a lost primary that is back but full stays lost",
        [healthy_round(), LOST, LOST, LOST, FULL, FULL],
        FailoverConfig(),
        S.FAILOVER_IN_PROGRESS,
        None,
    ),
    (
        "demoted primary is lost at once",
        [healthy_round(), [standby("node0", upstream=None), standby("node1"), standby("node2")]],
        FailoverConfig(),
        S.FAILOVER_IN_PROGRESS,
        None,
    ),
    (
        "external promotion followed at once",
        [
            healthy_round(),
            [down("node0"), primary("node1", tl=2), standby("node2", tl=2, upstream="node1")],
        ],
        FailoverConfig(),
        S.FAILOVER_COMPLETE,
        "node1",
    ),
    (
        "old primary back on old timeline is stale",
        [
            healthy_round(),
            [down("node0"), primary("node1", tl=2), standby("node2", tl=2, upstream="node1")],
            [
                primary("node0", tl=1),
                primary("node1", tl=2),
                standby("node2", tl=2, upstream="node1"),
            ],
        ],
        FailoverConfig(),
        S.FAILOVER_COMPLETE,
        "node1",
    ),
    (
        "two primaries on one timeline",
        [healthy_round(), [primary("node0"), primary("node1"), standby("node2")]],
        FailoverConfig(),
        S.SPLIT_BRAIN,
        None,
    ),
    (
        "a read-only primary takes no writes",
        [[primary("node0", read_only=True), standby("node1"), standby("node2")]],
        FailoverConfig(),
        S.FAILOVER_IN_PROGRESS,
        None,
    ),
    (
        "nothing answers",
        [[down("node0"), down("node1"), down("node2")]],
        FailoverConfig(),
        S.UNKNOWN,
        None,
    ),
    (
        "standby lagging past the read limit",
        [
            [
                primary("node0", lsn=10_000_000),
                standby("node1", lsn=10_000_000),
                standby("node2", lsn=1),
            ]
        ],
        FailoverConfig(max_read_lag_bytes=1_000_000),
        S.DEGRADED,
        "node0",
    ),
    (
        "standby not streaming",
        [[primary("node0"), standby("node1"), standby("node2", upstream=None)]],
        FailoverConfig(),
        S.DEGRADED,
        "node0",
    ),
]


@pytest.mark.parametrize(
    ("rounds", "config", "state", "expected_primary"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_state_and_primary(
    rounds: list[list[ProbeResult]],
    config: FailoverConfig,
    state: ClusterState,
    expected_primary: str | None,
) -> None:
    snap, _ = run(rounds, config)
    assert snap.state is state
    assert snap.primary == expected_primary


def test_first_round_discovers_the_primary_without_counting_a_failover() -> None:
    snap, decisions = run([healthy_round()])
    assert kinds(decisions[0]) == ["StateChanged", "SwitchPrimary"]
    assert snap.failover.count == 0
    assert {n.name: n.role for n in snap.nodes} == {
        "node0": Role.PRIMARY,
        "node1": Role.STANDBY,
        "node2": Role.STANDBY,
    }
    assert snap.node("node1").upstream == "node0"
    assert snap.node("node1").lag_bytes == 0


def test_configured_primary_is_only_a_hint() -> None:
    snap, _ = run(
        [
            [
                standby("node0", upstream="node1"),
                primary("node1"),
                standby("node2", upstream="node1"),
            ]
        ]
    )
    assert snap.primary == "node1"


def test_losing_the_primary_starts_a_failover_once() -> None:
    snap, decisions = run([healthy_round(), LOST, LOST, LOST, LOST])
    flat = [k for d in decisions for k in kinds(d)]
    assert flat.count("FailoverStarted") == 1
    assert flat.count("NodeLost") == 1
    assert snap.failover.reason is not None
    assert "node0 failed 3 checks" in snap.failover.reason
    assert snap.failover.started_at is not None


def test_external_promotion_counts_one_failover_and_dates_it_from_the_first_miss() -> None:
    promoted = [down("node0"), primary("node1", tl=2), standby("node2", tl=2, upstream="node1")]
    snap, decisions = run([healthy_round(), LOST, promoted], step=1.0)
    switch = [d for d in decisions[2] if isinstance(d, SwitchPrimary)]
    assert switch == [SwitchPrimary("node1", "node0", 2, switch[0].reason, lost_lsn=1000)]
    assert snap.failover.count == 1
    assert snap.failover.started_at == 1002.0  # the round node0 first failed
    assert snap.failover.completed_at == 1003.0


def test_failover_complete_gives_way_to_healthy_after_the_hold() -> None:
    promoted = [down("node0"), primary("node1", tl=2), standby("node2", tl=2, upstream="node1")]
    cfg = FailoverConfig(health_check_interval=1.0)
    snap, _ = run([healthy_round(), promoted], cfg, step=1.0)
    assert snap.state is S.FAILOVER_COMPLETE
    gone = [down("node0"), primary("node1", tl=2), standby("node2", tl=2, upstream="node1")]
    snap, _ = run([gone] * 5, cfg, start=snap, t0=1002.0, step=1.0)
    assert snap.state is S.DEGRADED  # node0 is still down
    assert snap.failover.started_at is None


def test_stale_old_primary_is_fenced_when_asked_and_never_primary() -> None:
    promoted = [down("node0"), primary("node1", tl=2), standby("node2", tl=2, upstream="node1")]
    back = [
        primary("node0", tl=1, lsn=5000),
        primary("node1", tl=2),
        standby("node2", tl=2, upstream="node1"),
    ]
    snap, decisions = run(
        [healthy_round(), promoted, back], FailoverConfig(fence_stale_primary=True)
    )
    assert snap.node("node0").role is Role.STALE
    assert snap.primary == "node1"
    assert [d.node for d in decisions[2] if isinstance(d, Fence)] == ["node0"]
    fenced = [
        primary("node0", tl=1, read_only=True),
        primary("node1", tl=2),
        standby("node2", tl=2, upstream="node1"),
    ]
    _, later = run([fenced], FailoverConfig(fence_stale_primary=True), start=snap)
    assert not [d for d in later[0] if isinstance(d, Fence)]


def test_a_rejoined_old_primary_recovers_before_it_is_healthy_however_fast() -> None:
    promoted = [down("node0"), primary("node1", tl=2), standby("node2", tl=2, upstream="node1")]
    stale = [
        primary("node0", tl=1),
        primary("node1", tl=2),
        standby("node2", tl=2, upstream="node1"),
    ]
    rejoined = [
        standby("node0", tl=2, upstream="node1"),
        primary("node1", tl=2),
        standby("node2", tl=2, upstream="node1"),
    ]
    cfg = FailoverConfig(healthy_threshold=2)
    snap, _ = run([healthy_round(), promoted, *[stale] * 8], cfg, step=1.0)
    assert snap.node("node0").role is Role.STALE
    assert snap.state is S.DEGRADED
    snap, _ = run([rejoined], cfg, start=snap, t0=1100.0)  # restarted between two probes
    assert snap.node("node0").role is Role.STANDBY
    assert not snap.node("node0").healthy
    assert snap.state is S.RECOVERY_IN_PROGRESS
    snap, _ = run([rejoined], cfg, start=snap, t0=1101.0)
    assert snap.node("node0").healthy
    assert snap.state is S.HEALTHY


def test_stale_node_stays_stale_while_the_new_primary_is_unreachable() -> None:
    promoted = [down("node0"), primary("node1", tl=2), standby("node2", tl=2, upstream="node1")]
    only_old = [primary("node0", tl=1), down("node1"), standby("node2", tl=2, upstream=None)]
    snap, _ = run([healthy_round(), promoted, only_old, only_old, only_old])
    assert snap.primary is None
    assert snap.node("node0").role is Role.STALE


def test_split_brain_is_reported_once_and_clears() -> None:
    split = [primary("node0"), primary("node1"), standby("node2")]
    snap, decisions = run([healthy_round(), split, split])
    assert snap.split_brain == ("node0", "node1")
    assert [k for d in decisions for k in kinds(d)].count("SplitBrainDetected") == 1
    snap, _ = run([healthy_round()], start=snap)
    assert snap.state is not S.SPLIT_BRAIN
    assert snap.primary == "node0"


def test_standby_lost_and_back_respects_both_thresholds() -> None:
    cfg = FailoverConfig(unhealthy_threshold=3, healthy_threshold=2)
    missing = [primary("node0"), standby("node1"), down("node2")]
    snap, decisions = run([healthy_round(), missing, missing], cfg)
    assert snap.state is S.HEALTHY  # two misses: below the threshold, no flap
    assert snap.node("node2").healthy
    snap, decisions = run([missing], cfg, start=snap)
    assert snap.state is S.DEGRADED
    assert not snap.node("node2").healthy
    assert kinds(decisions[0]) == ["StateChanged", "NodeLost"]
    snap, decisions = run([healthy_round()], cfg, start=snap)
    assert snap.state is S.RECOVERY_IN_PROGRESS
    assert snap.node("node2").recovering
    snap, decisions = run([healthy_round()], cfg, start=snap)
    assert snap.state is S.HEALTHY
    assert "NodeRecovered" in kinds(decisions[0])


def test_auto_mode_promotes_the_most_advanced_standby() -> None:
    lost = [
        down("node0"),
        standby("node1", lsn=900, upstream=None),
        standby("node2", lsn=950, upstream=None),
    ]
    _, decisions = run([healthy_round(), lost, lost, lost], AUTO)
    promotes = [d for d in decisions[-1] if isinstance(d, Promote)]
    assert [(p.node, p.previous) for p in promotes] == [("node2", "node0")]
    assert promotes[0].lag_bytes == 50  # behind the last position seen on node0


@pytest.mark.parametrize(
    ("lost", "guard"),
    [
        pytest.param(
            [down("node0"), standby("node1"), standby("node2", upstream=None)],
            "receiver_streaming",
            id="a standby still streams from the primary",
        ),
        pytest.param(
            [
                down("node0"),
                standby("node1", upstream=None, visible=False),
                standby("node2", upstream=None, visible=False),
            ],
            "receiver_unknown",
            id="receiver not visible to the probe user",
        ),
        pytest.param(
            [
                down("node0"),
                standby("node1", lsn=10, upstream=None),
                standby("node2", lsn=10, upstream=None),
            ],
            "lag",
            id="every standby far behind",
        ),
    ],
)
def test_auto_mode_guards_block_promotion(lost: list[ProbeResult], guard: str) -> None:
    snap, decisions = run(
        [healthy_round(), lost, lost, lost], AUTO.replace(max_promotion_lag_bytes=100)
    )
    assert not [d for d in decisions[-1] if isinstance(d, Promote)]
    assert snap.promotion_blocked is not None
    assert snap.promotion_blocked.startswith(guard)


@pytest.mark.parametrize("mode", ["external", "manual"])
def test_only_auto_mode_promotes(mode: str) -> None:
    _, decisions = run([healthy_round(), LOST, LOST, LOST], FailoverConfig(promotion=mode))  # type: ignore[arg-type]
    assert not [d for ds in decisions for d in ds if isinstance(d, Promote)]


# A query's connection error since the previous round, then a failed probe: two
# failed checks. (id, rounds as (probe results, nodes a query found gone), state)
CORROBORATED: list[tuple[str, list[tuple[list[ProbeResult], set[str]]], ClusterState]] = [
    (
        "a query's error and two failed probes: lost",
        [(LOST, {"node0"}), (LOST, set())],
        S.FAILOVER_IN_PROGRESS,
    ),
    ("two failed probes alone: still in doubt", [(LOST, set()), (LOST, set())], S.DEGRADED),
    (
        "a query's error but the probe passes: nothing",
        [(healthy_round(), {"node0"})] * 3,
        S.HEALTHY,
    ),
    (
        "a query's error on a standby: not the primary's",
        [(LOST, {"node1"}), (LOST, set())],
        S.DEGRADED,
    ),
]


@pytest.mark.parametrize(
    ("rounds", "expected"),
    [c[1:] for c in CORROBORATED],
    ids=[c[0] for c in CORROBORATED],
)
def test_a_query_error_corroborated_by_a_failed_probe_is_one_more_failed_check(
    rounds: list[tuple[list[ProbeResult], set[str]]], expected: ClusterState
) -> None:
    snap, _ = run([healthy_round()])
    now = 2000.0
    for results, seen in rounds:
        now += 0.05
        snap, _ = transition(snap, {r.node: r for r in results}, now, FailoverConfig(), seen)
    assert snap.state is expected
    if expected is S.FAILOVER_IN_PROGRESS:
        assert "node0 failed 3 checks" in (snap.failover.reason or "")
