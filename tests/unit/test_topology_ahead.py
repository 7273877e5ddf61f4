"""A follower of Patroni opens its confirmation connection ahead, to the member
likely to lead next (tables of cases, no cluster): which member that is, what
Patroni's ``failover`` key announces, and when the connection is opened and
let go over a switchover and a failover."""

from __future__ import annotations

from typing import Any

import pytest

from pgfailover.topology.members import (
    PatroniReader,
    announced_candidate,
    from_cluster,
    next_leader,
)
from tests.unit.test_topology_patroni import CFG, HEALTHY, NODES, FakeConfirm, _cluster, _m

PREFIX = "/service/main/"

ANNOUNCED = [
    ("no key", None, None),
    ("cleared", "{}", None),
    ("a switchover to b", '{"leader":"a","member":"b"}', "b"),
    ("a failover to b (no leader named)", '{"member":"b"}', "b"),
    ("scheduled: may be hours away", '{"leader":"a","member":"b","scheduled_at":"x"}', None),
    ("the old leader:member form", "a:b", "b"),
    ("the old form without a member", "a", None),
    ("not an object", "[1, 2]", None),
    ("a member that is not a name", '{"member": 7}', None),
]


@pytest.mark.parametrize(("case", "value", "named"), ANNOUNCED, ids=[a[0] for a in ANNOUNCED])
def test_the_failover_key_names_the_candidate(
    case: str, value: str | None, named: str | None
) -> None:
    keys = {f"{PREFIX}leader": "a"}
    if value is not None:
        keys[f"{PREFIX}failover"] = value
    assert announced_candidate(keys, PREFIX) == named, case


def _members(*raw: dict[str, Any]) -> Any:
    return from_cluster(_cluster(*raw))


LEADER = _m("a", 0, "leader", "running")
NEXT = [
    (
        "a leader runs, nothing announced: nobody",
        [LEADER, _m("b", 1, "replica", "streaming", lsn="0/200")],
        None,
        None,
    ),
    (
        "a leader runs, a switchover to c announced: c",
        [LEADER, _m("b", 1, "replica", "streaming"), _m("c", 2, "replica", "streaming")],
        "c",
        "c",
    ),
    (
        "the announced candidate is stopped: nobody while a leader runs",
        [LEADER, _m("c", 2, "replica", "stopped")],
        "c",
        None,
    ),
    (
        "no leader: the replica furthest ahead",
        [_m("b", 1, "replica", "streaming", lsn="0/100"),
         _m("c", 2, "replica", "streaming", lsn="0/200")],
        None,
        "c",
    ),
    (
        "no leader, equal positions: by name",
        [_m("c", 2, "replica", "streaming", lsn="0/200"),
         _m("b", 1, "replica", "streaming", lsn="0/200")],
        None,
        "b",
    ),
    (
        "no leader, lags only (Patroni before 4.1): the least lag",
        [_m("b", 1, "replica", "streaming", lag=500), _m("c", 2, "replica", "streaming", lag=0)],
        None,
        "c",
    ),
    (
        "no leader, the furthest replica is down: the next one",
        [_m("b", 1, "replica", "streaming", lsn="0/100"),
         _m("c", 2, "replica", "crashed", lsn="0/900")],
        None,
        "b",
    ),
    (
        "no leader, an announced candidate first",
        [_m("b", 1, "replica", "streaming", lsn="0/100"),
         _m("c", 2, "replica", "streaming", lsn="0/900")],
        "b",
        "b",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("case", "raw", "announced", "expected"), NEXT, ids=[n[0] for n in NEXT])
def test_the_member_likely_to_lead_next(
    case: str, raw: list[dict[str, Any]], announced: str | None, expected: str | None
) -> None:
    members = _members(*raw)
    leader = next((m for m in members if m.leader and m.state == "running"), None)
    found = next_leader(members, announced, leader)
    assert (found.name if found else None) == expected, case


def _read(reader: PatroniReader, *raw: dict[str, Any], announced: str | None = None) -> Any:
    return reader.update(_members(*raw), 0.0, 0.001, announced).snapshot.primary


def test_a_switchover_prepares_its_candidate_once_and_confirms_on_that_connection() -> None:
    confirm = FakeConfirm(1, None, 2)  # the first leader; then b promoting, then promoted
    reader = PatroniReader(NODES, CFG, "main", confirm)
    assert _read(reader, *HEALTHY) == "node0"
    assert confirm.prepared == []  # nothing announced: no connection ahead
    assert _read(reader, *HEALTHY, announced="b") == "node0"
    assert _read(reader, *HEALTHY, announced="b") == "node0"
    assert confirm.prepared == ["node1"]  # once, under the node's name
    demoting = [_m("a", 0, "leader", "stopping", None), *HEALTHY[1:]]
    assert _read(reader, *demoting, announced="b") is None
    promoting = [_m("a", 0, "replica", "stopped"), _m("b", 1, "leader", "running", 1),
                 HEALTHY[2]]  # fmt: skip
    closed = confirm.closed
    assert _read(reader, *promoting, announced="b") is None
    assert _read(reader, *promoting, announced="b") == "node1"
    assert confirm.prepared == ["node1"]
    assert confirm.asked[-2:] == ["node1", "node1"]
    assert confirm.closed == closed + 1  # let go once promoted
    assert _read(reader, *promoting) == "node1"
    assert confirm.closed == closed + 1  # nothing more to let go


def test_a_failover_prepares_the_replica_furthest_ahead_and_lets_go_if_none_leads() -> None:
    confirm = FakeConfirm(1)
    reader = PatroniReader(NODES, CFG, "main", confirm)
    assert _read(reader, *HEALTHY) == "node0"
    leaderless = [_m("a", 0, "replica", "stopped"),
                  _m("b", 1, "replica", "streaming", lsn="0/100"),
                  _m("c", 2, "replica", "streaming", lsn="0/300")]  # fmt: skip
    assert _read(reader, *leaderless) is None
    assert _read(reader, *leaderless) is None
    assert confirm.prepared == ["node2"]
    closed = confirm.closed
    assert _read(reader, *HEALTHY) == "node0"  # the old leader came back: let go
    assert confirm.closed == closed + 1
    assert _read(reader, *leaderless) is None  # and once more, when it goes again
    assert confirm.prepared == ["node2", "node2"]


def test_a_leader_other_than_the_prepared_one_is_asked_on_a_connection_of_its_own() -> None:
    confirm = FakeConfirm(1, 2)
    reader = PatroniReader(NODES, CFG, "main", confirm)
    _read(reader, *HEALTHY)
    leaderless = [_m("a", 0, "replica", "stopped"),
                  _m("b", 1, "replica", "streaming", lsn="0/100"),
                  _m("c", 2, "replica", "streaming", lsn="0/300")]  # fmt: skip
    _read(reader, *leaderless)
    assert confirm.prepared == ["node2"]
    b_leads = [leaderless[0], _m("b", 1, "leader", "running", 1), leaderless[2]]
    assert _read(reader, *b_leads) == "node1"
    assert confirm.asked[-1] == "node1"
    assert reader.pending is None
