"""Read-only mode: when no primary is coming, writes fail at once (a table of cases).

:func:`pgfailover.routing.read_only_reason` decides; :class:`ClusterView`
raises ``ReadOnlyMode`` from a write's wait instead of waiting
``failover_wait_timeout``.
"""

from __future__ import annotations

import threading
import time

import pytest

from pgfailover import NoPrimaryAvailable, ReadOnlyMode
from pgfailover.cluster import ClusterView
from pgfailover.model import ClusterState, NodeState, Snapshot
from pgfailover.routing import read_only_reason

NODES = (NodeState("node0", "a:1", 0), NodeState("node1", "a:2", 1))
LOST = Snapshot(NODES, ClusterState.FAILOVER_IN_PROGRESS, last_primary="node0")

CASES = [
    # (why, snapshot, promotion, paused, read-only because ... / None)
    ("manual mode after the primary is lost", LOST, "manual", False, "promotion is manual"),
    ("auto mode, a promotion is coming", LOST, "auto", False, None),
    ("auto mode in maintenance", LOST, "auto", True, "maintenance mode"),
    ("an orchestrator may promote", LOST, "external", False, None),
    ("external ignores a pause it cannot have", LOST, "external", True, None),
    (
        "auto, no candidate",
        Snapshot(NODES, LOST.state, promotion_blocked="no_candidate: no healthy standby"),
        "auto",
        False,
        "promotion is refused: no_candidate",
    ),
    (
        "auto, a standby still hears the primary: lifts by itself",
        Snapshot(NODES, LOST.state, promotion_blocked="receiver_streaming: node1 hears it"),
        "auto",
        False,
        None,
    ),
    (
        "auto, a fenced primary says it is one (a switchover): lifts by itself",
        Snapshot(NODES, LOST.state, promotion_blocked="another_primary: node0 reports it"),
        "auto",
        False,
        None,
    ),
    (
        "auto, a quorum member missing",
        Snapshot(NODES, LOST.state, promotion_blocked="quorum_incomplete: 1 of 2 answer"),
        "auto",
        False,
        "quorum_incomplete",
    ),
    (
        "auto, a cold start counting rounds",
        Snapshot(NODES, LOST.state, promotion_blocked="no_primary_seen: 1 round"),
        "auto",
        False,
        None,
    ),
    (
        "manual, primary only in doubt: writes wait",
        Snapshot(NODES, ClusterState.DEGRADED, "node0"),
        "manual",
        False,
        None,
    ),
    ("manual, healthy", Snapshot(NODES, ClusterState.HEALTHY, "node0"), "manual", False, None),
    (
        "split brain raises its own error",
        Snapshot(NODES, LOST.state, split_brain=("node0", "node1")),
        "manual",
        False,
        None,
    ),
]


@pytest.mark.parametrize(
    ("snap", "promotion", "paused", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_read_only_reason(
    snap: Snapshot, promotion: str, paused: bool, expected: str | None
) -> None:
    reason = read_only_reason(snap, promotion, paused)
    if expected is None:
        assert reason is None
    else:
        assert reason is not None
        assert expected in reason


def test_a_write_fails_at_once_in_read_only_mode_and_waits_otherwise() -> None:
    view = ClusterView("c", LOST, 15.0, read_only=lambda s: read_only_reason(s, "manual", False))
    started = time.monotonic()
    with pytest.raises(ReadOnlyMode, match="read-only: the primary is lost") as caught:
        view.wait_for_primary(started + 15.0, poll=0.05)
    assert time.monotonic() - started < 0.05
    assert isinstance(caught.value, NoPrimaryAvailable)  # existing handlers keep working
    assert view.read_only_reason() is not None

    waiting = ClusterView("c", LOST, 0.2, read_only=lambda s: read_only_reason(s, "auto", False))
    with pytest.raises(NoPrimaryAvailable) as timed_out:
        waiting.wait_for_primary(time.monotonic() + 0.2, poll=0.05)
    assert not isinstance(timed_out.value, ReadOnlyMode)  # a promotion is coming: it waited


def test_a_write_waiting_on_a_primary_in_doubt_fails_when_it_is_declared_lost() -> None:
    doubt = Snapshot(NODES, ClusterState.DEGRADED, last_primary="node0")
    view = ClusterView("c", doubt, 15.0, read_only=lambda s: read_only_reason(s, "manual", False))
    timer = threading.Timer(0.1, view.publish, args=(LOST, time.time()))
    started = time.monotonic()  # before the timer starts: its 0.1 s counts from after this
    timer.start()
    try:
        with pytest.raises(ReadOnlyMode):
            view.wait_for_primary(started + 15.0, poll=5.0)  # woken by the publish, not the poll
        assert 0.09 <= time.monotonic() - started < 1.0  # it waited; 0.01 s for timer rounding
    finally:
        timer.cancel()
