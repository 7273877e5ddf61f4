"""FailoverActions without PostgreSQL: promotion, refusals, fencing, callbacks after locks.

The probe rounds are scripted (real probe results through the real
transition, published in a real view); the admin SQL is a recording fake;
the event log, the counters, the incident and the guards are the real ones.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any, cast

import psycopg
import pytest

from pgfailover import FailoverConfig
from pgfailover.admin import Admin
from pgfailover.cluster import ClusterView
from pgfailover.counters import Counters
from pgfailover.errors import ManagerClosed, PromotionFailed, PromotionRefused
from pgfailover.events import EventLog, FailoverEvent
from pgfailover.failover import FailoverActions
from pgfailover.maintenance import SharedPause
from pgfailover.model import Decision, Fence, Promote, Snapshot
from pgfailover.probe import ProbeResult
from pgfailover.syncrep import SyncRecord, parse_record, parse_sync
from pgfailover.upkeep import Upkeep

from .fakes import FakeAdmin, GateDouble, ScriptedRounds
from .helpers import NODES, down, healthy_round, primary, run, standby

pytestmark = pytest.mark.timeout(15)

AUTO = FailoverConfig(promotion="auto")
LOST = [
    down("node0"),
    standby("node1", lsn=900, upstream=None),
    standby("node2", lsn=950, upstream=None),
]
PROMOTED = [
    down("node0"),
    standby("node1", tl=1, lsn=900, upstream=None),
    primary("node2", tl=2, lsn=960),
]
DSN = {n.name: n.dsn for n in NODES}


class QuietUpkeep(Upkeep):
    """Upkeep that records its runs instead of converging anything over the network."""

    def __init__(self, config: FailoverConfig, events: EventLog) -> None:
        super().__init__(config, DSN.__getitem__, events, lambda: None, "test")
        self.runs = 0
        self.closed: Any = None  # the last run's "stop now" callable

    def run(self, snap: Snapshot, now: float, closed: Any) -> None:
        self.runs += 1
        self.closed = closed


class Gate(GateDouble):
    """A scripted arbiter lease: held or not, and the answers of the checks in turn
    (after the shared pause's, for an automatic promotion)."""

    def __init__(self, held: bool, answers: Sequence[str | None] = ()) -> None:
        super().__init__()
        self.held = held
        self.answers = list(answers)
        self.checks = 0

    @property
    def holding(self) -> object | None:
        return object() if self.held else None

    def may_promote(self, automatic: bool = False) -> str | None:
        self.checks += 1
        if automatic and self.shared is not None and self.shared.paused:
            return super().may_promote(automatic)
        return self.answers.pop(0) if self.answers else None

    def fencing_revision(self) -> int | None:
        return 42


class Harness:
    def __init__(
        self,
        config: FailoverConfig,
        history: Sequence[Sequence[ProbeResult]],
        script: Sequence[Sequence[ProbeResult]],
        gate: Gate | None = None,
    ) -> None:
        t0 = time.time() - 5.0
        snap, decisions = run(history, config, t0=t0)
        self.decisions = [d for ds in decisions for d in ds]
        self.view = ClusterView("test", snap, 1.0)
        self.events = EventLog(100)
        self.counters = Counters()
        self.admin = FakeAdmin()
        self.rounds = ScriptedRounds(self.view, config, script, now=t0 + 0.05 * len(history))
        self.aborted: list[str] = []
        self.woken = 0
        self.callbacks: list[tuple[str, tuple[object, ...], bool]] = []
        self.upkeep = QuietUpkeep(config, self.events)
        self.actions = FailoverActions(
            view=self.view,
            config=config,
            events=self.events,
            counters=self.counters,
            dsn=DSN.__getitem__,
            reprobe=self.rounds,
            abort=self.aborted.append,
            busy=lambda node: 0,
            wake=self._wake,
            emit=self._emit,
            admin=cast(Admin, self.admin),
            upkeep=self.upkeep,
            gate=gate,
        )

    def _wake(self) -> None:
        self.woken += 1

    def _emit(self, kind: str, *args: object) -> None:
        # Callbacks must run with no lock held: a callback may call the manager.
        self.callbacks.append((kind, args, self.actions.promoting))

    def failover_events(self) -> list[FailoverEvent]:
        return [cast(FailoverEvent, a[0]) for k, a, _ in self.callbacks if k == "failover"]


def test_auto_promotion_end_to_end() -> None:
    h = Harness(AUTO, [healthy_round(), LOST, LOST, LOST], [LOST, PROMOTED])
    assert any(isinstance(d, Promote) for d in h.decisions)
    h.actions.after_round(h.decisions)
    assert h.admin.calls == [
        ("read_link", "node1"),
        ("promote", "node2"),
        ("configure", "node2"),
        ("repoint", "node1"),
    ]
    assert h.view.snapshot.primary == "node2"
    (event,) = h.failover_events()
    assert (event.outcome, event.from_node, event.to_node) == ("completed", "node0", "node2")
    assert all(not locked for _, _, locked in h.callbacks), "a callback ran under the lock"
    stored = h.events.get(event.id)
    assert stored is not None
    assert "node1 repointed to node2" in stored.notes
    assert stored.promoted_by == "pgfailover"
    counts = h.counters.as_dict()
    assert (counts["promotions_total"], counts["failovers_total"]) == (1, 1)
    # observed although nothing was written through this manager (an arbiter)
    assert counts["failover_duration_seconds"]["count"] == 1
    assert "node0" in h.aborted  # statements stuck on the lost primary were unblocked
    assert h.woken >= 1
    assert h.upkeep.runs == 1  # after the promotion, not during it


def test_a_primary_back_at_the_re_probe_calls_the_promotion_off() -> None:
    h = Harness(AUTO, [healthy_round(), LOST, LOST, LOST], [healthy_round()])
    h.actions.after_round(h.decisions)
    assert ("promote", "node2") not in h.admin.calls
    assert h.view.snapshot.primary == "node0"
    assert h.counters.as_dict()["promotions_total"] == 0
    (event,) = h.events.events()
    assert (event.outcome, event.to_node) == ("completed", "node0")
    assert "nothing was promoted" in event.notes[-1]


def test_a_failed_promotion_is_recorded_and_paused() -> None:
    h = Harness(AUTO, [healthy_round(), LOST, LOST, LOST], [LOST])
    h.admin.fail["promote"] = PromotionFailed("pg_promote() refused to promote")
    h.actions.after_round(h.decisions)
    (event,) = h.failover_events()
    assert event.outcome == "failed"
    assert "pg_promote failed: pg_promote() refused" in event.notes[-1]
    assert h.counters.as_dict()["promotion_failures_total"] == 1
    calls = h.rounds.calls
    h.actions.after_round([Promote("node2", "node0", "again", 0)])
    assert h.rounds.calls == calls, "a promotion was retried before the pause ended"
    assert h.admin.calls.count(("promote", "node2")) == 1


def test_a_new_primary_that_cannot_be_configured_still_takes_writes_and_says_so() -> None:
    """The promotion succeeded; configuring it on the same session did not: the
    failover completes (the node is a primary) and its event names the failure."""
    h = Harness(AUTO, [healthy_round(), LOST, LOST, LOST], [LOST, PROMOTED])
    h.admin.fail["configure"] = psycopg.OperationalError("statement timeout")
    h.actions.after_round(h.decisions)
    assert h.view.snapshot.primary == "node2"
    (event,) = h.failover_events()
    assert event.outcome == "completed"
    stored = h.events.get(event.id)
    assert stored is not None
    assert "could not configure node2 as the new primary: statement timeout" in stored.notes
    assert h.counters.as_dict()["promotion_failures_total"] == 0


def test_applying_decisions_never_promotes() -> None:
    """Only a round's top level promotes: applying a Promote inside one returns it."""
    h = Harness(AUTO, [healthy_round()], [healthy_round()])
    decision = Promote("node1", "node0", "most advanced", 0)
    assert h.actions.apply([decision]) == decision
    assert h.admin.calls == []
    assert h.rounds.calls == 0


def test_a_manual_trigger_refused_by_a_guard_is_recorded_and_raised() -> None:
    h = Harness(FailoverConfig(), [healthy_round()] * 3, [healthy_round()])
    with pytest.raises(PromotionRefused) as refused:
        h.actions.manual_failover("node1", force=False)
    assert refused.value.guard
    assert f"refused by guard {refused.value.guard}" in str(refused.value)
    (event,) = h.failover_events()
    assert event.outcome == "refused"
    assert h.admin.calls == []
    assert not h.actions.promoting


def test_a_forced_manual_trigger_fences_the_live_primary_first() -> None:
    after = [
        primary("node0", read_only=True),
        primary("node1", tl=2, lsn=1000),
        standby("node2", upstream=None),
    ]
    h = Harness(FailoverConfig(), [healthy_round()] * 3, [healthy_round(), after])
    event = h.actions.manual_failover("node1", force=True)
    assert h.admin.calls[:2] == [("fence", "node0"), ("read_link", "node2")]
    assert ("promote", "node1") in h.admin.calls
    assert event.kind == "switchover"
    assert event.to_node == "node1"
    assert "old primary node0 soft-fenced before promotion" in event.notes


def test_a_second_trigger_while_one_promotes_is_refused_as_busy() -> None:
    after = [down("node0"), primary("node2", tl=2, lsn=960), standby("node1", upstream=None)]
    h = Harness(AUTO, [healthy_round(), LOST, LOST, LOST], [LOST, after])
    release = threading.Event()
    h.admin.hold["promote"] = release
    first = threading.Thread(target=h.actions.after_round, args=(h.decisions,))
    first.start()
    try:
        deadline = time.monotonic() + 5
        while not h.actions.promoting and time.monotonic() < deadline:
            time.sleep(0.005)
        assert h.actions.promoting
        with pytest.raises(PromotionRefused) as refused:
            h.actions.manual_failover(None, force=True, timeout=0.05)
        assert refused.value.guard == "busy"
        assert not h.actions.wait_repointed(0.01)
    finally:
        release.set()
        first.join(5)
    assert h.actions.wait_repointed(1.0)
    assert h.admin.calls.count(("promote", "node2")) == 1


def test_a_closed_manager_refuses_a_manual_trigger() -> None:
    h = Harness(FailoverConfig(), [healthy_round()] * 3, [healthy_round()])
    h.view.close()
    with pytest.raises(ManagerClosed):
        h.actions.manual_failover("node1", force=True)
    assert h.admin.calls == []


def test_fencing_is_not_repeated_within_the_retry_window() -> None:
    h = Harness(FailoverConfig(), [healthy_round()], [healthy_round()])
    decisions: list[Decision] = [Fence("node1", "stale old primary")] * 2
    h.actions.apply(decisions)
    assert h.admin.calls == [("fence", "node1")]
    (event,) = h.events.events()
    assert (event.kind, event.from_node, event.outcome) == ("fence", "node1", "completed")


def test_maintenance_mode_holds_automatic_promotion_until_resumed() -> None:
    h = Harness(AUTO, [healthy_round(), LOST, LOST, LOST], [LOST, PROMOTED])
    assert h.actions.maintenance.pause("kernel upgrade")
    assert not h.actions.maintenance.pause()  # already paused
    h.actions.after_round(h.decisions)
    assert h.admin.calls == []
    assert h.rounds.calls == 0
    assert h.upkeep.runs == 0  # no convergence either while paused
    assert h.actions.maintenance.paused_since is not None
    assert h.actions.maintenance.resume()
    assert not h.actions.maintenance.resume()
    h.actions.after_round([Promote("node2", "node0", "still lost", 0)])
    assert ("promote", "node2") in h.admin.calls
    kinds = [(e.kind, e.reason) for e in h.events.events() if e.kind == "maintenance"]
    assert kinds == [("maintenance", "paused: kernel upgrade"), ("maintenance", "resumed")]


def test_a_manual_trigger_still_promotes_in_maintenance_mode() -> None:
    h = Harness(AUTO, [healthy_round(), LOST, LOST, LOST], [LOST, PROMOTED])
    h.actions.maintenance.pause()
    event = h.actions.manual_failover(None, force=False)
    assert event.to_node == "node2"
    assert ("promote", "node2") in h.admin.calls


def test_under_a_lease_the_event_carries_the_fencing_revision_checked_before_and_after() -> None:
    gate = Gate(held=True)
    h = Harness(AUTO, [healthy_round(), LOST, LOST, LOST], [LOST, PROMOTED], gate=gate)
    h.actions.after_round(h.decisions)
    assert ("promote", "node2") in h.admin.calls
    assert gate.checks == 2  # right before pg_promote, and right after
    (event,) = h.failover_events()
    stored = h.events.get(event.id)
    assert stored is not None
    assert stored.fencing_revision == 42
    assert any("held the lease (fencing revision 42)" in n for n in stored.notes)
    assert h.upkeep.runs == 1  # the holder keeps the cluster converged
    assert h.upkeep.closed() is False
    gate.held = False  # the lease lost while upkeep runs: it stops before its next action
    assert h.upkeep.closed() is True


def test_a_promotion_right_after_the_lease_was_taken_is_remembered() -> None:
    """The round looked before this arbiter took the lease; a trigger promotes right
    after it did. What the promotion told upkeep (the list it wrote) survives the next
    round, which sees the lease for the first time: the promotion's term is the same."""
    gate = Gate(held=True)
    h = Harness(AUTO, [healthy_round(), LOST, LOST, LOST], [LOST, PROMOTED], gate=gate)
    h.upkeep.acting(None)  # the round's look, before the lease was taken
    h.actions.manual_failover(None, force=False)
    assert h.upkeep.status().ours == {"node2": ""}
    h.actions.after_round([])
    assert h.upkeep.status().ours == {"node2": ""}


def test_a_failover_does_not_make_a_lowered_sync_list_permanent() -> None:
    """node0's list was lowered to async by a manager (its record says so, with the
    policy kept): the new primary gets the policy over its survivors, not async, and
    the record goes with it. Without the record the lowered list is the policy."""
    record = SyncRecord("", parse_sync("ANY 1 (node1, node2)")).encode()
    lowered = [primary("node0", sync="", record=record), standby("node1"), standby("node2")]
    h = Harness(AUTO, [lowered, LOST, LOST, LOST], [LOST, PROMOTED])
    h.actions.after_round(h.decisions)
    assert ('configure sync ANY 1 ("node1")', "node2") in h.admin.calls, h.admin.calls
    kept = parse_record(h.admin.records["node2"])
    assert kept == SyncRecord('ANY 1 ("node1")', parse_sync("ANY 1 (node1, node2)"))

    operators = [primary("node0", sync=""), standby("node1"), standby("node2")]
    h = Harness(AUTO, [operators, LOST, LOST, LOST], [LOST, PROMOTED])
    h.actions.after_round(h.decisions)
    assert ("configure", "node2") in h.admin.calls  # async, as the operator left it
    assert not h.admin.records


def test_an_arbiter_without_the_lease_promotes_nothing_and_refuses_a_trigger() -> None:
    gate = Gate(held=False, answers=["another arbiter holds it"])
    h = Harness(AUTO, [healthy_round(), LOST, LOST, LOST], [LOST, PROMOTED], gate=gate)
    h.actions.after_round(h.decisions)
    assert not [c for c in h.admin.calls if c[0] == "promote"]
    with pytest.raises(PromotionRefused, match="another arbiter holds it") as refused:
        h.actions.manual_failover(None, force=False)
    assert refused.value.guard == "lease"
    assert not [c for c in h.admin.calls if c[0] == "promote"]
    assert h.upkeep.runs == 0  # nor changes sync names, repoints or tunes anything


def test_a_lease_lost_at_the_last_check_calls_pg_promote_off() -> None:
    """Connected to the target, the check fails: pg_promote is never sent, the event fails."""
    gate = Gate(held=True, answers=["the lease was lost"])
    h = Harness(AUTO, [healthy_round(), LOST, LOST, LOST], [LOST, PROMOTED], gate=gate)
    h.actions.after_round(h.decisions)
    assert not [c for c in h.admin.calls if c[0] == "promote"]
    (event,) = h.failover_events()
    assert event.outcome == "failed"
    assert any("not promoted: the lease was lost" in n for n in event.notes)
    assert h.counters.as_dict()["promotion_failures_total"] == 1


def test_a_pause_made_elsewhere_stops_an_automatic_promotion_at_the_last_check() -> None:
    """The holder has not looked since another arbiter paused the cluster: the etcd read
    right before pg_promote sees the pause, and only an operator's trigger promotes."""
    gate = Gate(held=True)
    h = Harness(AUTO, [healthy_round(), LOST, LOST, LOST], [LOST, LOST, PROMOTED], gate=gate)
    gate.shared = SharedPause(time.time(), "network change", "arbiter-b:2")
    h.actions.after_round(h.decisions)
    assert not [c for c in h.admin.calls if c[0] == "promote"]
    (event,) = h.failover_events()
    assert any("maintenance mode is on for the cluster" in n for n in event.notes), event
    event = h.actions.manual_failover(None, force=False)
    assert event.to_node == "node2"


def test_a_pause_in_etcd_is_adopted_and_a_resume_elsewhere_ends_it() -> None:
    gate = Gate(held=True)
    h = Harness(AUTO, [healthy_round(), LOST, LOST, LOST], [LOST, PROMOTED], gate=gate)
    gate.shared = SharedPause(time.time(), "network change", "arbiter-b:2")
    gate.look()
    assert h.actions.maintenance.paused_since == gate.shared.since
    h.actions.after_round(h.decisions)
    assert gate.checks == 0  # held by the pause before any promotion began
    gate.shared = SharedPause(time.time(), "resumed", "arbiter-b:2", paused=False)
    gate.look()
    assert h.actions.maintenance.paused_since is None
    assert h.woken >= 1  # the monitor looks again at once
