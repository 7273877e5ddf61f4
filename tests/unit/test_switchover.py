"""Switchover without PostgreSQL: who may take over (a table), and the steps in order.

The steps run against the recording admin fake and scripted probe rounds
(real probe results through the real transition): hold, drain, fence, wait
for replay, promote, repoint, release; and the undo when the target cannot
catch up.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

import pytest

from pgfailover import FailoverConfig
from pgfailover.errors import PromotionRefused
from pgfailover.model import Snapshot
from pgfailover.probe import ProbeResult
from pgfailover.switchover import choose_switchover
from pgfailover.transition import initial_snapshot

from .helpers import NODES, assert_choice, down, healthy_round, primary, run, standby
from .test_failover_actions import Harness

pytestmark = pytest.mark.timeout(15)

CFG = FailoverConfig()
# After the switchover to node1: node1 primary on timeline 2, node0 fenced
# (read-only, still out of recovery on timeline 1: stale), node2 repointed.
SWITCHED = [
    primary("node0", read_only=True),
    primary("node1", tl=2, lsn=6000),
    standby("node2", tl=2, lsn=6000, upstream="node1"),
]


def snap_of(rounds: list[list[ProbeResult]], nofailover: tuple[str, ...] = ()) -> Snapshot:
    nodes = [dataclasses.replace(n, nofailover=n.name in nofailover) for n in NODES]
    return run(rounds, CFG, start=initial_snapshot(nodes, 1000.0))[0]


HEALTHY = [healthy_round()] * 3
LOST = [down("node0"), standby("node1"), standby("node2")]
Case = tuple[str, list[list[ProbeResult]], str | None, bool, tuple[str, ...], str]
CASES: list[Case] = [
    ("no target: the most advanced streaming standby", HEALTHY, None, False, (), "node1"),
    ("a named target", HEALTHY, "node2", False, (), "node2"),
    ("the primary itself", HEALTHY, "node0", False, (), "target_not_eligible"),
    ("an unknown node", HEALTHY, "node9", False, (), "target_not_eligible"),
    (
        "a standby that does not stream",
        [*HEALTHY, [primary("node0"), standby("node1", upstream=None), standby("node2")]],
        "node1",
        False,
        (),
        "target_not_streaming",
    ),
    (
        "a standby that is down",
        [*HEALTHY, *[[primary("node0"), down("node1"), standby("node2")]] * 3],
        "node1",
        False,
        (),
        "target_not_streaming",
    ),
    ("no primary: that is a failover", [*HEALTHY, *[LOST] * 3], None, False, (), "no_primary"),
    (
        "split brain",
        [[primary("node0"), primary("node1"), standby("node2")]],
        None,
        False,
        (),
        "split_brain",
    ),
    ("a nofailover target", HEALTHY, "node1", False, ("node1",), "nofailover"),
    ("a nofailover target, forced", HEALTHY, "node1", True, ("node1",), "node1"),
    ("no target: nofailover nodes are passed over", HEALTHY, None, False, ("node1",), "node2"),
    ("every standby nofailover", HEALTHY, None, False, ("node1", "node2"), "no_candidate"),
]


@pytest.mark.parametrize(
    ("rounds", "target", "force", "nofailover", "expected"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_choose_switchover(
    rounds: list[list[ProbeResult]],
    target: str | None,
    force: bool,
    nofailover: tuple[str, ...],
    expected: str,
) -> None:
    snap = snap_of(rounds, nofailover)
    assert_choice(choose_switchover(snap, target=target, force=force), expected)


def test_switchover_steps_in_order() -> None:
    h = Harness(CFG, HEALTHY, [healthy_round(), SWITCHED])
    seen_held: list[bool] = []
    original = h.admin.wait_replayed

    def replayed(dsn: str, lsn: int, timeout: float) -> int | None:
        seen_held.append(h.view.held)  # writes are held while the target catches up
        return original(dsn, lsn, timeout)

    h.admin.wait_replayed = replayed  # type: ignore[method-assign]  # spy on one step
    event = h.actions.switchover("node1")
    assert h.admin.calls == [
        ("fence_sessions", "node0"),
        ("wait_replayed", "node1"),
        ("read_link", "node2"),
        ("promote", "node1"),
        ("configure", "node1"),
        ("repoint", "node2"),
    ]
    assert seen_held == [True]
    assert not h.view.held  # released at the end
    assert h.view.snapshot.primary == "node1"
    assert (event.kind, event.from_node, event.to_node) == ("switchover", "node0", "node1")
    stored = h.events.get(event.id)
    assert stored is not None
    assert stored.outcome == "completed"
    assert stored.data_loss_bytes == 0
    text = "\n".join(stored.notes)
    for step in ("new writes held", "fenced", "replayed 0/1388", "repointed", "released"):
        assert step in text, text
    assert h.view.snapshot.node("node0").role.value == "stale"  # needs a rejoin


def test_a_target_that_cannot_catch_up_is_refused_and_the_fence_undone() -> None:
    h = Harness(CFG, HEALTHY, [healthy_round()])
    h.admin.never_catches_up = True
    with pytest.raises(PromotionRefused) as refused:
        h.actions.switchover("node1", timeout=0.2)
    assert refused.value.guard == "catchup_timeout"
    assert h.admin.calls == [
        ("fence_sessions", "node0"),
        ("wait_replayed", "node1"),
        ("unfence", "node0"),
    ]
    assert not h.view.held
    assert h.view.snapshot.primary == "node0"
    (event,) = [e for e in h.events.events() if e.kind == "switchover"]
    assert event.outcome == "refused"
    assert "fence on node0 undone" in "\n".join(event.notes)


def test_a_refused_switchover_changes_nothing() -> None:
    h = Harness(CFG, HEALTHY, [healthy_round()])
    with pytest.raises(PromotionRefused) as refused:
        h.actions.switchover("node0")
    assert refused.value.guard == "target_not_eligible"
    assert h.admin.calls == []
    assert not h.view.held


def test_writes_wait_while_held_and_go_to_the_new_primary() -> None:
    h = Harness(CFG, HEALTHY, [healthy_round(), SWITCHED])
    release = threading.Event()
    h.admin.hold["promote"] = release
    worker = threading.Thread(target=h.actions.switchover, args=("node1",))
    worker.start()
    try:
        assert _wait(lambda: h.view.held)
        waiter_result: list[str] = []
        deadline = time.monotonic() + 5

        def write() -> None:
            waiter_result.append(h.view.wait_for_primary(deadline, 0.01))

        waiter = threading.Thread(target=write)
        waiter.start()
        waiter.join(0.2)
        assert waiter.is_alive(), "a write went ahead while writes were held"
        release.set()
        waiter.join(5)
        assert waiter_result == ["node1"]
    finally:
        release.set()
        worker.join(5)


def _wait(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.005)  # polling a condition another thread sets
    return False


def test_a_failed_promotion_keeps_the_fence_unless_the_target_is_still_a_standby() -> None:
    from pgfailover.errors import PromotionFailed

    for recovering, undone in ((True, True), (False, False)):
        h = Harness(CFG, HEALTHY, [healthy_round()])
        h.admin.fail["promote"] = PromotionFailed("still in recovery 30s after pg_promote()")
        h.admin.target_recovering = recovering
        with pytest.raises(PromotionFailed):
            h.actions.switchover("node1")
        assert (("unfence", "node0") in h.admin.calls) is undone
        assert not h.view.held
        (event,) = [e for e in h.events.events() if e.kind == "switchover"]
        assert event.outcome == "failed"
        assert "fenced (read-only)" in "\n".join(event.notes)  # the steps' notes are kept


def test_an_interrupted_switchover_undoes_the_fence() -> None:
    h = Harness(CFG, HEALTHY, [healthy_round()])
    h.admin.fail["wait_replayed"] = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        h.actions.switchover("node1")
    assert ("unfence", "node0") in h.admin.calls
    assert not h.view.held
