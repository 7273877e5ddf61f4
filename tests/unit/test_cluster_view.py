"""ClusterView: publishing snapshots, suspects, and waiting for a primary, without PostgreSQL."""

from __future__ import annotations

import threading
import time

import pytest

from pgfailover.cluster import ClusterView
from pgfailover.config import FailoverConfig
from pgfailover.counters import Counters
from pgfailover.errors import ManagerClosed, NoPrimaryAvailable, SplitBrainError
from pgfailover.probe import ProbeResult
from pgfailover.rounds import Rounds
from pgfailover.transition import initial_snapshot

from .helpers import NODES, down, healthy_round, primary, run, standby

HEALTHY, _ = run([healthy_round()])
LOST, _ = run([healthy_round(), *[[down("node0"), standby("node1"), standby("node2")]] * 3])
PROMOTED, _ = run(
    [[down("node0"), primary("node1", tl=2), standby("node2", tl=2, upstream="node1")]],
    start=LOST,
    t0=2000.0,
)
SPLIT, _ = run([healthy_round(), [primary("node0"), primary("node1"), standby("node2")]])


def view(snap: object = None) -> ClusterView:
    return ClusterView("app", initial_snapshot(NODES) if snap is None else snap, 1.0)  # type: ignore[arg-type]


def test_a_suspect_is_avoided_until_a_later_probe_finds_it_up() -> None:
    v = view(HEALTHY)
    assert v.suspect("node0") is True
    assert v.suspect("node0") is False  # already suspect: no second log line
    assert v.suspects == frozenset({"node0"})
    v.publish(HEALTHY, probed_since=0.0)  # a round that began before the suspicion
    assert v.suspects == frozenset({"node0"})
    v.publish(HEALTHY, probed_since=time.time() + 1)  # a round begun after it: node0 up
    assert v.suspects == frozenset()


def test_waiting_for_a_primary_returns_when_one_is_published() -> None:
    v = view(LOST)
    threading.Timer(0.1, v.publish, args=(PROMOTED, 0.0)).start()
    assert v.wait_for_primary(time.monotonic() + 5, poll=0.05) == "node1"


@pytest.mark.parametrize(
    ("snap", "error", "match"),
    [
        (LOST, NoPrimaryAvailable, "no writable primary within 1s"),
        (SPLIT, SplitBrainError, "split brain"),
    ],
    ids=["no primary until the deadline", "split brain refuses at once"],
)
def test_waiting_for_a_primary_fails_clearly(snap: object, error: type, match: str) -> None:
    v = view(snap)
    with pytest.raises(error, match=match):
        v.wait_for_primary(time.monotonic() + 0.2, poll=0.05)


def test_close_wakes_a_waiting_writer_with_manager_closed() -> None:
    v = view(LOST)
    outcome: list[BaseException] = []

    def wait() -> None:
        try:
            v.wait_for_primary(time.monotonic() + 30, poll=10.0)
        except BaseException as exc:  # noqa: BLE001 - asserted on
            outcome.append(exc)

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    v.close()
    waiter.join(2)
    assert not waiter.is_alive()
    assert isinstance(outcome[0], ManagerClosed)


def test_a_waiting_caller_probes_between_waits_when_asked_to() -> None:
    v = view(LOST)
    calls: list[float] = []

    def probe() -> None:
        calls.append(time.monotonic())
        if len(calls) == 2:
            v.publish(PROMOTED, 0.0)

    assert v.wait_for_primary(time.monotonic() + 5, poll=0.01, probe=probe) == "node1"
    assert len(calls) == 2


def _past(moment: float) -> float:
    """The first reading of the clock later than ``moment`` (a few microseconds)."""
    while (now := time.time()) <= moment:
        pass
    return now


def test_suspicions_are_reported_in_the_window_they_began_in_once() -> None:
    v = view(HEALTHY)
    before = time.time()
    assert v.suspect("node0")
    assert not v.suspect("node0")  # already suspect: its time is not renewed
    middle = _past(time.time())  # after node0's suspicion, before node1's
    v.suspect("node1")
    after = _past(time.time())
    assert v.lost_between(0.0, before) == frozenset()
    assert v.lost_between(before, middle) == {"node0"}
    assert v.lost_between(middle, after) == {"node1"}
    assert v.lost_between(after, after + 60) == frozenset()  # no later window again
    assert v.suspect("node2", lost=False)  # read-only, or no free pooled connection
    assert v.lost_between(0.0, time.time() + 1) == {"node0", "node1"}  # not evidence


def test_a_round_clears_only_the_suspects_it_has_a_probe_result_for() -> None:
    v = view(HEALTHY)
    v.suspect("node0")
    v.suspect("node1")
    v.publish(HEALTHY, probed_since=time.time() + 1, probed={"node1", "node2"})
    assert v.suspects == {"node0"}  # its probe was still out: still suspect


class _Probes:
    """Probe rounds from a script (what ProbeRound.run returns)."""

    def __init__(self, rounds: list[list[ProbeResult]]) -> None:
        self.rounds = rounds

    def run(self, *args: object, **kwargs: object) -> dict[str, ProbeResult]:
        return {r.node: r for r in self.rounds.pop(0)}


def test_a_rounds_query_evidence_counts_once_in_the_round_after_it() -> None:
    """Rounds pass the transition the nodes queries found gone since the previous round
    began: node0's suspicion counts once (with a failed probe), not again in later
    rounds while it stays suspect."""
    lost = [down("node0"), standby("node1"), standby("node2")]
    v = view()
    rounds = Rounds(NODES, FailoverConfig(), v, Counters(), act=lambda decisions: None)
    rounds._probes = _Probes([healthy_round(), lost, lost, lost])  # type: ignore[assignment]
    rounds.advance()
    assert v.snapshot.primary == "node0"
    v.suspect("node0")  # a query found node0 gone
    failures = []
    for _ in range(3):
        rounds.advance()
        failures.append(v.snapshot.node("node0").consecutive_failures)
    assert failures == [2, 3, 4]
    assert "node0" in v.suspects  # still suspect: counted once all the same


def test_a_query_evidence_waits_for_the_round_that_probes_the_node() -> None:
    """node0's probe is still out in the first round after the query lost it (no
    result: a hung server): the evidence counts in the round that has its result."""
    lost = [down("node0"), standby("node1"), standby("node2")]
    v = view()
    rounds = Rounds(NODES, FailoverConfig(), v, Counters(), act=lambda decisions: None)
    rounds._probes = _Probes(  # type: ignore[assignment]
        [healthy_round(), [standby("node1"), standby("node2")], lost]
    )
    rounds.advance()
    v.suspect("node0")
    rounds.advance()
    assert v.snapshot.node("node0").consecutive_failures == 0
    assert "node0" in v.suspects  # not probed: writes still avoid it
    rounds.advance()
    assert v.snapshot.node("node0").consecutive_failures == 2


def test_the_ready_primary_follows_every_change_that_makes_writes_wait() -> None:
    v = view(HEALTHY)
    assert v.ready_primary == "node0"
    v.suspect("node0")
    assert v.ready_primary is None  # a query found it gone
    v.publish(HEALTHY, probed_since=time.time() + 1)  # probed up since: cleared
    assert v.ready_primary == "node0"
    v.hold_writes()
    assert v.ready_primary is None  # a switchover holds writes
    v.release_writes()
    assert v.ready_primary == "node0"
    v.publish(SPLIT, probed_since=time.time())
    assert v.ready_primary is None  # two primaries: waiting says SplitBrainError
    with pytest.raises(SplitBrainError):
        v.primary_now(time.monotonic() + 1)
    v.publish(LOST, probed_since=time.time())
    assert v.ready_primary is None  # no primary
    v.publish(PROMOTED, probed_since=time.time())
    assert v.ready_primary == "node1"
    v.close()
    assert v.ready_primary is None
