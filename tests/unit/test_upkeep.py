"""What upkeep decides, as tables: blocked commits, orphans, receivers to tune, and
who wrote the primary's sync list (the manager, by its record, or the operator)."""

from __future__ import annotations

import dataclasses

import pytest

from pgfailover import upkeep as upkeep_module
from pgfailover.config import FailoverConfig
from pgfailover.convergence import (
    commits_blocked,
    orphans,
    receivers_to_tune,
    shared_app_names,
    sync_members,
)
from pgfailover.events import EventLog
from pgfailover.model import NodeState, Snapshot
from pgfailover.probe import ProbeResult
from pgfailover.syncrep import SyncRecord, parse_sync
from pgfailover.upkeep import Upkeep

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


POLICY = "ANY 2 (node1, node2)"
LOWERED = 'ANY 1 ("node2")'


def _record(written: str, policy: str | None = POLICY) -> str:
    return SyncRecord(written, parse_sync(policy)).encode()


@dataclasses.dataclass(frozen=True)
class JudgeCase:
    current: str
    record: str | None
    policy: str | None  # what the judgement says is in force
    managed: bool
    wrote: str | None = None  # this process wrote it (a promotion), with this policy
    seen: str | None = None  # a value this process saw on the primary before


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(
            JudgeCase(LOWERED, _record(LOWERED), POLICY, True),
            id="a restarted manager or a new lease holder: the record says a manager wrote it",
        ),
        pytest.param(
            JudgeCase(LOWERED, None, LOWERED, False),
            id="no record: the operator's list, and its count the policy",
        ),
        pytest.param(
            JudgeCase("ANY 1 (node1)", _record(LOWERED), "ANY 1 (node1)", False),
            id="changed since the record: the operator's",
        ),
        pytest.param(
            JudgeCase("", _record(""), POLICY, True),
            id="lowered to async by a manager: the policy to restore",
        ),
        pytest.param(
            JudgeCase("", None, None, False, seen="ANY 1 (node1)"),
            id="async set by the operator",
        ),
        pytest.param(
            JudgeCase(LOWERED, "garbage", LOWERED, False), id="an unreadable record is none"
        ),
        pytest.param(
            JudgeCase(LOWERED, None, POLICY, True, wrote=LOWERED),
            id="this process wrote it: its memory, with no record (not granted)",
        ),
        pytest.param(
            JudgeCase(LOWERED, _record("ANY 1 (node1)"), POLICY, True, wrote=LOWERED),
            id="this process wrote it: its memory over a stale record",
        ),
        pytest.param(
            JudgeCase("FIRST 1 (node1)", None, "FIRST 1 (node1)", False, wrote=LOWERED),
            id="changed since this process wrote it: the operator's",
        ),
    ],
)
def test_who_wrote_the_sync_list(case: JudgeCase) -> None:
    upkeep = Upkeep(FailoverConfig(), lambda name: name, EventLog(10), lambda: None, "test")
    if case.seen is not None:  # a round saw the operator's value before
        upkeep.judge(
            snap_of([primary("node0", sync=case.seen), standby("node1"), standby("node2")]).node(
                "node0"
            )
        )
    if case.wrote is not None:
        upkeep.promoted("node0", case.wrote, 0.0, parse_sync(POLICY))
    node = snap_of(
        [
            primary("node0", sync=case.current, record=case.record),
            standby("node1"),
            standby("node2"),
        ]
    ).node("node0")
    policy, managed = upkeep.judge(node)
    assert (policy, managed) == (parse_sync(case.policy), case.managed)


def _node0(sync: str, record: str | None = None) -> NodeState:
    return snap_of(
        [
            primary("node0", sync=sync, streaming=("node1", "node2"), record=record),
            standby("node1"),
            standby("node2"),
        ]
    ).node("node0")


def test_a_list_just_written_that_does_not_show_yet_is_not_taken_for_the_operators() -> None:
    """A promotion wrote ``ANY 1 (node1)`` and reloaded, but the next probe still reads
    the list the new primary inherited (each backend takes a reload at its next
    statement): that list must not become the policy, nor be acted on."""
    upkeep = Upkeep(FailoverConfig(), lambda name: name, EventLog(10), lambda: None, "test")
    upkeep.promoted("node0", 'ANY 1 ("node1")', 0.0, parse_sync(POLICY))
    upkeep.run(
        snap_of([primary("node0", sync="FIRST 1 (node9)", streaming=("node1",))]), 0.0, bool
    )
    assert upkeep.judge(_node0('ANY 1 ("node1")')) == (parse_sync(POLICY), True)


def test_what_an_arbiter_remembers_goes_with_the_lease() -> None:
    """Arbiter A lowered node0 to async under policy P, then lost the lease; B acted
    meanwhile. With the lease back, A's memory of its own list is gone: the record on
    the primary (B's, policy Q) decides, and without one the list is the operator's."""
    upkeep = Upkeep(FailoverConfig(), lambda name: name, EventLog(10), lambda: None, "test")
    upkeep.acting(2)  # the lease, at fencing revision 2
    upkeep.promoted("node0", "", 0.0, parse_sync(POLICY))
    upkeep.acting(2)  # the same term: nothing forgotten
    assert upkeep.judge(_node0("")) == (parse_sync(POLICY), True)
    upkeep.acting(5)  # lost and taken again between two looks: another term
    assert upkeep.judge(_node0("")) == (None, False)
    upkeep.promoted("node0", "", 0.0, parse_sync(POLICY))
    upkeep.acting(None)  # lost
    upkeep.acting(7)
    assert upkeep.judge(_node0("")) == (None, False)
    other = "FIRST 1 (node2, node1)"
    assert upkeep.judge(_node0("", _record("", other))) == (parse_sync(other), True)


class _Clock:
    """``time`` as upkeep reads it, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now


def test_a_refused_record_is_tried_again_every_five_minutes(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A role not granted ``pgfailover.sync`` is asked again later (a GRANT given
    meanwhile is noticed), not at every round, and warned about once."""
    clock = _Clock()
    tries: list[str] = []

    def refuse(dsn: str, record: str, timeout: float) -> str | None:
        tries.append(record)
        return 'permission denied to set parameter "pgfailover.sync"' if len(tries) < 3 else None

    monkeypatch.setattr(upkeep_module, "time", clock)
    monkeypatch.setattr(upkeep_module, "set_sync_record", refuse)
    upkeep = Upkeep(FailoverConfig(), lambda name: name, EventLog(10), lambda: None, "test")
    upkeep.promoted("node0", LOWERED, clock.now, parse_sync(POLICY))
    upkeep.judge(_node0(LOWERED))
    lowered = snap_of([primary("node0", sync=LOWERED, streaming=("node2",))])
    for step in (0.0, 1.0, 20.0, 250.0):  # within five minutes of the refusal: one try
        clock.now += step
        upkeep.run(lowered, clock.now, lambda: False)
    assert len(tries) == 1
    assert upkeep.status().record_refused is not None
    clock.now += 30.0  # five minutes since the refusal
    upkeep.run(lowered, clock.now, lambda: False)
    assert len(tries) == 2
    clock.now += 301.0  # granted meanwhile
    upkeep.run(lowered, clock.now, lambda: False)
    assert len(tries) == 3
    assert upkeep.status().record_refused is None
    assert caplog.text.count("cannot keep pgfailover.sync") == 1
