"""A follower's confirmation probes: which suspects are probed, which are cleared.

While a source is followed the monitor probes only what queries suspect
(:meth:`Rounds.confirm`). The table drives it with scripted probe results
over snapshots from the state machine; the last test shows a confirmation
hanging on a black-holed node does not hold up the source's next snapshot.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Collection

import pytest

from pgfailover.cluster import ClusterView
from pgfailover.config import FailoverConfig
from pgfailover.counters import Counters
from pgfailover.model import Snapshot
from pgfailover.probe import ProbeResult
from pgfailover.rounds import CONFIRM_EVERY, Rounds
from pgfailover.transition import initial_snapshot

from .helpers import NODES, down, full, healthy_round, primary, run, standby

HEALTHY, _ = run([healthy_round()] * 3)
PRIMARY_DOWN, _ = run([[down("node0"), standby("node1"), standby("node2")]], start=HEALTHY)


class ScriptedProbes:
    """Stands in for ProbeRound: answers from a script, records what was asked."""

    def __init__(self, answers: dict[str, ProbeResult], gate: threading.Event | None = None):
        self.answers = answers
        self.asked: list[set[str]] = []
        self.released: list[set[str]] = []
        self.gate = gate

    def run(self, only: Collection[str] | None = None, **_: object) -> dict[str, ProbeResult]:
        assert only is not None  # a follower never probes everything here
        self.asked.append(set(only))
        if self.gate is not None:
            self.gate.wait(5)
        return {n: self.answers[n] for n in only}

    def release(self, names: Collection[str]) -> None:
        self.released.append(set(names))

    def pending(self) -> frozenset[str]:
        return frozenset()

    def close(self) -> None:
        pass


def _wait_asked(probes: ScriptedProbes, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not probes.asked:
        assert time.monotonic() < deadline, "the confirmation never probed"
        time.sleep(0.001)


def _following(snap: Snapshot, probes: ScriptedProbes) -> tuple[Rounds, ClusterView]:
    view = ClusterView("app", initial_snapshot(NODES, 0.0), 1.0)
    rounds = Rounds(NODES, FailoverConfig(), view, Counters(), lambda _d: None)
    rounds._probes = probes  # type: ignore[assignment]
    rounds.adopt(snap, held=False)
    assert probes.released == [{"node0", "node1", "node2"}]  # following: no session kept
    probes.released.clear()
    return rounds, view


FENCED = primary("node0", read_only=True)
PROMOTED, _ = run(
    [[down("node0"), primary("node1", tl=2), standby("node2", tl=2, upstream="node1")]] * 2,
    start=HEALTHY,
)

# (case, source's snapshot, suspects, probe answers, probed, still suspect)
CASES = [
    (
        "a standby that answers is cleared",
        HEALTHY,
        ["node1"],
        [standby("node1")],
        {"node1"},
        set(),
    ),
    (
        "the primary that takes writes is cleared",
        HEALTHY,
        ["node0"],
        [primary("node0")],
        {"node0"},
        set(),
    ),
    ("a fenced primary stays suspect", HEALTHY, ["node0"], [FENCED], {"node0"}, {"node0"}),
    (
        "a primary on an older timeline stays suspect",
        PROMOTED,
        ["node1"],
        [primary("node1", tl=1)],
        {"node1"},
        {"node1"},
    ),
    (
        "a node that fails its probe stays",
        HEALTHY,
        ["node1"],
        [down("node1")],
        {"node1"},
        {"node1"},
    ),
    ("the source saw it fail: not probed", PRIMARY_DOWN, ["node0"], [], set(), {"node0"}),
    (
        "a full primary (no slot for the probe) is alive: cleared, not reported",
        HEALTHY,
        ["node0"],
        [full("node0")],
        {"node0"},
        set(),
    ),
    ("a full standby too", HEALTHY, ["node2"], [full("node2")], {"node2"}, set()),
    (
        "only the suspects are probed",
        HEALTHY,
        ["node1", "node2"],
        [standby("node1"), down("node2")],
        {"node1", "node2"},
        {"node2"},
    ),
]


@pytest.mark.parametrize(
    ("snap", "suspects", "answers", "probed", "left"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_confirmation_probes_and_clears(
    snap: Snapshot,
    suspects: list[str],
    answers: list[ProbeResult],
    probed: set[str],
    left: set[str],
) -> None:
    probes = ScriptedProbes({r.node: r for r in answers})
    rounds, view = _following(snap, probes)
    reported: list[str] = []
    rounds.report_failed = reported.append  # what the follower tells the arbiter
    for name in suspects:
        view.suspect(name)
    time.sleep(0.001)  # the probe begins after the suspicions (wall clock)
    more = rounds.monitor_round()  # following: a round only confirms
    assert probes.asked == ([probed] if probed else [])
    assert reported == [r.node for r in answers if not r.ok and not r.busy]
    assert probes.released == probes.asked  # no probe session kept open
    assert view.suspects == left
    # The monitor comes back soon while a suspect the source reports up remains.
    assert more is bool(left & {n.name for n in snap.nodes if n.up})


def test_a_suspect_is_probed_again_only_after_the_pause() -> None:
    probes = ScriptedProbes({"node1": down("node1")})
    rounds, view = _following(HEALTHY, probes)
    view.suspect("node1")
    rounds.confirm()
    rounds.confirm()
    assert len(probes.asked) == 1
    rounds._confirmed_at["node1"] -= CONFIRM_EVERY  # as if the pause had passed
    probes.answers["node1"] = standby("node1")
    rounds.confirm()
    assert len(probes.asked) == 2
    assert not view.suspects


def test_a_suspicion_raised_during_the_probe_stays() -> None:
    gate = threading.Event()
    probes = ScriptedProbes({"node1": standby("node1")}, gate)
    rounds, view = _following(HEALTHY, probes)
    view.suspect("node1")
    thread = threading.Thread(target=rounds.confirm)
    thread.start()
    _wait_asked(probes)
    view.confirmed(["node1"], time.time())  # another clear, then a new failure
    time.sleep(0.001)
    view.suspect("node1")
    gate.set()
    thread.join(5)
    assert view.suspects == {"node1"}  # the probe began before this suspicion


def test_a_hanging_confirmation_does_not_hold_up_the_next_snapshot() -> None:
    """A black-holed primary's probe hangs; the source's promotion is published meanwhile."""
    gate = threading.Event()
    probes = ScriptedProbes({"node0": down("node0")}, gate)
    rounds, view = _following(HEALTHY, probes)
    view.suspect("node0")
    thread = threading.Thread(target=rounds.confirm)
    thread.start()
    try:
        _wait_asked(probes)
        promoted = dataclasses.replace(PRIMARY_DOWN, primary="node1")
        started = time.monotonic()
        rounds.adopt(promoted, held=False)
        assert time.monotonic() - started < 0.5
        assert view.ready_primary == "node1"
    finally:
        gate.set()
        thread.join(5)
