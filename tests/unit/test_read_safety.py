"""Which standbys may serve reads: tables through the state machine and read_block."""

from __future__ import annotations

import dataclasses

import pytest

from pgfailover.config import FailoverConfig
from pgfailover.model import NodeState, Role, Snapshot
from pgfailover.probe import ProbeResult
from pgfailover.report import node_dict
from pgfailover.routing import RECEIVER_GRACE, read_block, read_candidates

from .helpers import down, healthy_round, primary, run, standby

CFG = FailoverConfig(max_read_lag_bytes=500, max_read_lag_seconds=10.0)

# node0 lost, node1 promoted by an orchestrator onto timeline 2 from LSN 1000
# (its position in the healthy round), node2 left behind on timeline 1.
ORPHANED = [down("node0"), primary("node1", tl=2), standby("node2", tl=1, upstream=None)]
DIVERGED = [
    down("node0"),
    primary("node1", tl=2),
    standby("node2", tl=1, lsn=1200, upstream=None),
]
RECEIVER_STOPPED = [primary("node0"), standby("node1"), standby("node2", upstream=None)]
CRASHED = [down("node0"), standby("node1", upstream=None), standby("node2", upstream=None)]


def rounds_over(seconds: float, step: float, round_: list[ProbeResult]) -> list[list[ProbeResult]]:
    """``round_`` repeated every ``step`` seconds for ``seconds``."""
    return [round_] * round(seconds / step)


# id, rounds, step (seconds between rounds), node, read_block prefix (None: serves reads)
Row = tuple[str, list[list[ProbeResult]], float, str, str | None]
CASES: list[Row] = [
    ("healthy streaming standby serves reads", [healthy_round()], 0.05, "node1", None),
    (
        "orphan on an older timeline after an external promotion",
        [healthy_round(), ORPHANED],
        0.05,
        "node2",
        "orphaned",
    ),
    (
        "diverged node stays diverged in later rounds (the fork is remembered)",
        [healthy_round(), DIVERGED, DIVERGED, DIVERGED],
        0.05,
        "node2",
        "diverged",
    ),
    (
        "node with WAL past the fork on the old timeline diverged",
        [healthy_round(), DIVERGED],
        0.05,
        "node2",
        "diverged",
    ),
    (
        "receiver stopped for less than the grace: still serves",
        [healthy_round(), *rounds_over(RECEIVER_GRACE * 0.6, 0.2, RECEIVER_STOPPED)],
        0.2,
        "node2",
        None,
    ),
    (
        "receiver stopped for longer than the grace: cut off",
        [healthy_round(), *rounds_over(RECEIVER_GRACE * 1.6, 0.2, RECEIVER_STOPPED)],
        0.2,
        "node2",
        "WAL receiver not streaming",
    ),
    (
        "the primary does not list it as streaming: cut off after the grace",
        [
            healthy_round(),
            *rounds_over(
                RECEIVER_GRACE * 2,
                0.2,
                [primary("node0", streaming=("node1",)), standby("node1"), standby("node2")],
            ),
        ],
        0.2,
        "node2",
        "WAL receiver not streaming",
    ),
    (
        "the primary lists it as streaming: follows even with its receiver unseen",
        [
            healthy_round(),
            *rounds_over(
                RECEIVER_GRACE * 2,
                0.2,
                [
                    primary("node0", streaming=("node1", "node2")),
                    standby("node1"),
                    standby("node2", upstream=None),
                ],
            ),
        ],
        0.2,
        "node2",
        None,
    ),
    (
        "lag over max_read_lag_bytes",
        [[primary("node0", lsn=2000), standby("node1", lsn=2000), standby("node2", lsn=1000)]],
        0.05,
        "node2",
        "1000 bytes behind",
    ),
    (
        "lag within max_read_lag_bytes",
        [[primary("node0", lsn=1400), standby("node1", lsn=1400), standby("node2", lsn=1000)]],
        0.05,
        "node2",
        None,
    ),
    (
        "behind, and replay older than max_read_lag_seconds",
        [
            [
                primary("node0", lsn=2000),
                standby("node1"),
                standby("node2", lsn=1999, replay_age=20.0),
            ]
        ],
        0.05,
        "node2",
        "replay 20.0s behind",
    ),
    (
        "caught up: an old replay means an idle primary, not lag",
        [
            [
                primary("node0", lsn=2000),
                standby("node1"),
                standby("node2", lsn=2000, replay_age=20.0),
            ]
        ],
        0.05,
        "node2",
        None,
    ),
    (
        "no primary: a standby on the newest timeline serves reads",
        [healthy_round(), CRASHED, CRASHED, CRASHED],
        0.05,
        "node1",
        None,
    ),
]


@pytest.mark.parametrize(
    ("rounds", "step", "node", "block"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_read_safety_through_the_state_machine(
    rounds: list[list[ProbeResult]], step: float, node: str, block: str | None
) -> None:
    snap, _ = run(rounds, CFG, step=step)
    got = snap.node(node).read_block
    candidates = [n.name for n in read_candidates(snap)]
    if block is None:
        assert got is None
        assert node in candidates
    else:
        assert got is not None
        assert got.startswith(block)
        assert node not in candidates


def test_standbys_keep_serving_reads_while_a_failover_waits_for_a_primary() -> None:
    # The primary crashed: the standbys' receivers stopped with it, and the
    # failover waits (for an orchestrator, or a guard) for three seconds.
    snap, _ = run([healthy_round(), *rounds_over(3.0, 0.05, CRASHED)], CFG)
    assert snap.primary is None
    assert snap.node("node1").timeline == snap.max_timeline
    assert sorted(n.name for n in read_candidates(snap)) == ["node1", "node2"]


def test_orphan_is_no_read_candidate_but_the_followers_are() -> None:
    round_ = [down("node0"), primary("node1", tl=2), standby("node2", tl=1, upstream=None)]
    snap: Snapshot = run([healthy_round(), round_], CFG)[0]
    assert snap.primary == "node1"
    assert [n.name for n in read_candidates(snap)] == []
    snap = run(
        [[down("node0"), primary("node1", tl=2), standby("node2", tl=2, upstream="node1")]],
        CFG,
        start=snap,
    )[0]
    assert [n.name for n in read_candidates(snap)] == ["node2"]


# read_block on plain node states: the rules that need no history.
PRIMARY = NodeState(
    "node0", "10.0.0.1", 0, role=Role.PRIMARY, up=True, healthy=True, checked=True, timeline=1
)
STANDBY = NodeState(
    "node1",
    "10.0.0.2",
    1,
    role=Role.STANDBY,
    up=True,
    healthy=True,
    checked=True,
    timeline=1,
    receive_lsn=1000,
    replay_lsn=1000,
    lag_bytes=0,
    lag_seconds=0.0,
    follows=True,
)
NOW = 2000.0


def with_(**changes: object) -> NodeState:
    return dataclasses.replace(STANDBY, **changes)  # type: ignore[arg-type]


# id, node, primary, max_timeline, fork, expected prefix (None: serves reads)
BlockRow = tuple[str, NodeState, NodeState | None, int, tuple[int, int | None], str | None]
BLOCK_CASES: list[BlockRow] = [
    ("the primary itself", PRIMARY, PRIMARY, 1, (0, None), None),
    ("a healthy follower", STANDBY, PRIMARY, 1, (0, None), None),
    ("down", with_(up=False), PRIMARY, 1, (0, None), "down"),
    ("not yet healthy", with_(healthy=False), PRIMARY, 1, (0, None), "not healthy yet"),
    ("stale old primary", with_(role=Role.STALE), PRIMARY, 2, (2, 1000), "stale old primary"),
    ("older timeline, fork unknown", STANDBY, PRIMARY, 2, (2, None), "orphaned"),
    ("older timeline, at the fork", STANDBY, PRIMARY, 2, (2, 1000), "orphaned"),
    (
        "older timeline, past the fork",
        with_(receive_lsn=1001),
        PRIMARY,
        2,
        (2, 1000),
        "diverged",
    ),
    (
        "receiver stopped just under the grace",
        with_(follows=False, not_following_since=NOW - RECEIVER_GRACE + 0.01),
        PRIMARY,
        1,
        (0, None),
        None,
    ),
    (
        "receiver stopped for the grace",
        with_(follows=False, not_following_since=NOW - RECEIVER_GRACE),
        PRIMARY,
        1,
        (0, None),
        "WAL receiver not streaming",
    ),
    ("lag unknown", with_(lag_bytes=None), PRIMARY, 1, (0, None), "replication lag unknown"),
    ("lag at the byte limit", with_(lag_bytes=500), PRIMARY, 1, (0, None), None),
    ("lag over the byte limit", with_(lag_bytes=501), PRIMARY, 1, (0, None), "501 bytes behind"),
    (
        "behind and replay too old",
        with_(lag_bytes=1, lag_seconds=10.5),
        PRIMARY,
        1,
        (0, None),
        "replay 10.5s behind",
    ),
    (
        "behind, replay recent enough",
        with_(lag_bytes=1, lag_seconds=10.0),
        PRIMARY,
        1,
        (0, None),
        None,
    ),
    ("caught up, replay old", with_(lag_bytes=0, lag_seconds=99.0), PRIMARY, 1, (0, None), None),
    ("no primary, newest timeline", with_(lag_bytes=None), None, 1, (0, None), None),
    ("no primary, older timeline", with_(lag_bytes=None), None, 2, (2, None), "orphaned"),
]


@pytest.mark.parametrize(
    ("node", "primary_node", "max_timeline", "fork", "block"),
    [c[1:] for c in BLOCK_CASES],
    ids=[c[0] for c in BLOCK_CASES],
)
def test_read_block(
    node: NodeState,
    primary_node: NodeState | None,
    max_timeline: int,
    fork: tuple[int, int | None],
    block: str | None,
) -> None:
    got = read_block(node, primary_node, max_timeline=max_timeline, fork=fork, now=NOW, config=CFG)
    if block is None:
        assert got is None
    else:
        assert got is not None
        assert got.startswith(block)


@pytest.mark.parametrize(
    ("round_", "expected"),
    [
        pytest.param(DIVERGED, True, id="diverged: needs pg_rewind"),
        pytest.param(ORPHANED, False, id="orphaned: only needs repointing"),
        pytest.param(healthy_round(), False, id="streaming"),
    ],
)
def test_a_diverged_standby_shows_as_needing_a_rejoin(
    round_: list[ProbeResult], expected: bool
) -> None:
    """An operator finds it where the stale old primary shows: ``needs_rejoin``."""
    snap, _ = run([healthy_round(), round_], CFG)
    assert node_dict(snap.node("node2"), snap.primary)["needs_rejoin"] is expected
