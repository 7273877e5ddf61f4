"""Following Patroni, without a cluster: the setting, its members as probe results,
and the rule for when a new leader takes writes (tables of cases)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from pgfailover.config import FailoverConfig, Node
from pgfailover.errors import ConfigurationError
from pgfailover.model import ClusterState
from pgfailover.topology.members import Member, PatroniReader, from_cluster, from_keys, parse_lsn
from pgfailover.topology.replay import SourceMismatch
from pgfailover.topology.urls import parse_source

NODES = [Node(f"node{i}", f"host=10.0.0.{i + 1} port=5432", priority=i) for i in range(3)]
CFG = FailoverConfig(unhealthy_threshold=2, healthy_threshold=1)

GOOD = [
    ("http://a:1", "arbiter", ("http://a:1",), None),
    ("patroni+http://db1:8008, patroni+https://db2:8008", "patroni",
     ("http://db1:8008", "https://db2:8008"), None),
    ("patroni+http://u:pw@db1:8008", "patroni", ("http://u:pw@db1:8008",), None),
    ("patroni+etcd://e1:2379,patroni+etcd://e2:2379/service/main", "patroni-etcd",
     ("http://e1:2379", "http://e2:2379"), "/service/main/"),
    ("patroni+etcd://e1:2379/ns/main/", "patroni-etcd", ("http://e1:2379",), "/ns/main/"),
    ("patroni+http://db1", "patroni", ("http://db1:8008",), None),  # Patroni's port
    ("patroni+etcd://e1/service/main", "patroni-etcd", ("http://e1:2379",), "/service/main/"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "kind", "urls", "prefix"), GOOD, ids=[g[0] for g in GOOD])
def test_a_source_setting_names_its_kind(
    text: str, kind: str, urls: tuple[str, ...], prefix: str | None
) -> None:
    spec = parse_source(text)
    assert (spec.kind, spec.urls, spec.prefix) == (kind, urls, prefix)


BAD = [
    ("patroni+http://db1:8008,http://arbiter:8009", "not both"),
    ("patroni+http://db1:8008,patroni+etcd://e:2379/service/x", "not both"),
    ("patroni+etcd://e:2379", "where its keys are"),
    ("patroni+etcd://e:2379/service/a,patroni+etcd://f:2379/service/b", "where its keys are"),
    ("patroni+http://db1:8008/cluster", "has no path"),
    ("patroni+ftp://db1:8008", "expected http://host:port"),
    ("patroni+http://u:hunter2@db1:bad", "u:***@db1"),
    ("patroni+http://admin:hun#ter2@db1:8008", "admin:***@db1:8008': cannot read"),
    ("patroni+http://admin:hun/ter2@db1:8008", "admin:***@db1:8008"),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[b[0] for b in BAD])
def test_a_bad_patroni_source_is_refused_in_one_line(text: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)) as info:
        FailoverConfig(source=text)
    assert "hunter2" not in str(info.value)
    assert "hun" not in str(info.value).replace("hunter", "")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("value", "lsn"),
    [("0/3000060", 0x3000060), ("1/0", 1 << 32), (123, 123), ("unknown", None),
     (None, None), (True, None), (-1, None), ("x/y", None)],
)  # fmt: skip
def test_lsns_as_patroni_writes_them(value: object, lsn: int | None) -> None:
    assert parse_lsn(value) == lsn


def _cluster(*members: dict[str, Any]) -> dict[str, Any]:
    return {"members": list(members), "scope": "main"}


def _m(
    name: str, i: int, role: str, state: str, tl: int | None = 1, **extra: Any
) -> dict[str, Any]:
    data = {"name": name, "role": role, "state": state, "host": f"10.0.0.{i + 1}", "port": 5432}
    if tl is not None:
        data["timeline"] = tl
    return {**data, **extra}


def test_cluster_members_become_one_form() -> None:
    members = from_cluster(
        _cluster(
            _m("a", 0, "leader", "running"),
            _m("b", 1, "replica", "streaming", lsn="0/100", lag=16, replay_lsn="0/F0"),
        )
    )
    assert members == [
        Member("a", "10.0.0.1:5432", True, "running", 1),
        Member("b", "10.0.0.2:5432", False, "streaming", 1, lsn=256, replay_lsn=240, lag=16),
    ]


@pytest.mark.parametrize("data", [[], {"members": "x"}, {"members": [{"role": "leader"}]}])
def test_a_document_that_is_not_clusters_is_refused(data: object) -> None:
    with pytest.raises(ValueError, match="Patroni"):
        from_cluster(data)


def test_etcd_keys_become_the_same_form() -> None:
    prefix = "/service/main/"
    keys = {
        f"{prefix}leader": "a",
        f"{prefix}config": "{}",
        f"{prefix}members/a": json.dumps(
            {"conn_url": "postgres://10.0.0.1:5432/postgres", "state": "running",
             "role": "primary", "timeline": 2, "xlog_location": 1000}
        ),
        f"{prefix}members/b": json.dumps(
            {"conn_url": "postgres://10.0.0.2/postgres", "state": "running",
             "replication_state": "streaming", "role": "replica", "timeline": 2,
             "xlog_location": 900}
        ),
        f"{prefix}members/c": "not json",
    }  # fmt: skip
    assert from_keys(keys, prefix) == [
        Member("a", "10.0.0.1:5432", True, "running", 2, lsn=1000),
        Member("b", "10.0.0.2:5432", False, "streaming", 2, lsn=900, lag=100),
    ]


class FakeConfirm:
    """The new leader's answers, one per call (None: still in recovery)."""

    def __init__(self, *answers: int | None) -> None:
        self.answers = list(answers)
        self.asked: list[str] = []
        self.prepared: list[str] = []
        self.closed = 0

    def timeline(self, node: str) -> int | None:
        self.asked.append(node)
        return self.answers.pop(0) if self.answers else None

    def prepare(self, node: str) -> None:
        self.prepared.append(node)

    def done(self) -> None:
        self.closed += 1


def _read(reader: PatroniReader, *members: dict[str, Any], now: float = 0.0) -> Any:
    return reader.update(from_cluster(_cluster(*members)), now, 0.001).snapshot


HEALTHY = (
    _m("a", 0, "leader", "running"),
    _m("b", 1, "replica", "streaming", lsn="0/100", lag=0),
    _m("c", 2, "replica", "streaming", lsn="0/100", lag=0),
)


def test_the_leader_takes_writes_and_replicas_serve_reads() -> None:
    snap = _read(PatroniReader(NODES, CFG, "main"), *HEALTHY)
    assert (snap.primary, snap.state) == ("node0", ClusterState.HEALTHY)
    assert [n.role.value for n in snap.nodes] == ["primary", "standby", "standby"]


# Each case: rounds after a healthy first read (leader a), and what the reader
# must route to after each; `confirm` is the new leader's answers.
SWITCH = [
    (
        "a new leader on the old timeline waits for its promotion",
        [[_m("a", 0, "replica", "running", 1), _m("b", 1, "leader", "running", 1)]],
        (),
        [None],
    ),
    (
        "a new leader on a newer timeline takes writes",
        [[_m("a", 0, "replica", "stopped", None), _m("b", 1, "leader", "running", 2)]],
        (),
        ["node1"],
    ),
    (
        "the server saying it is out of recovery is enough, before Patroni says so",
        [[_m("a", 0, "replica", "running", 1), _m("b", 1, "leader", "running", 1)]] * 2,
        (None, 2),
        [None, "node1"],
    ),
    (
        "an answer on the old timeline is not a promotion",
        [[_m("a", 0, "replica", "running", 1), _m("b", 1, "leader", "running", 1)]],
        (1,),
        [None],
    ),
    (
        "no leader key: no primary",
        [[_m("a", 0, "replica", "running"), _m("b", 1, "replica", "streaming")]],
        (),
        [None],
    ),
    (
        "a leader stopping takes no write from the first read (Patroni's view, no threshold)",
        [[_m("a", 0, "leader", "stopping", None), _m("b", 1, "replica", "streaming")]],
        (),
        [None],
    ),
    (
        "an old leader Patroni dropped (its Patroni died) takes no write at once",
        [[_m("b", 1, "leader", "running", 2), _m("c", 2, "replica", "streaming", 2)]],
        (2,),  # a replica on the leader's timeline: promoted, or about to? It is asked.
        ["node1"],
    ),
    (
        "the old leader taking its key back is asked too, and takes writes on its timeline",
        [
            [_m("a", 0, "replica", "running", 1), _m("b", 1, "leader", "running", 1)],
            [_m("a", 0, "leader", "running", 1), _m("b", 1, "replica", "streaming")],
            [_m("a", 0, "leader", "running", 1), _m("b", 1, "replica", "streaming")],
        ],
        (None, None, 1),
        [None, None, "node0"],
    ),
    (
        "a leader newer than the last one but not than the others is still asked",
        [
            [
                _m("a", 0, "replica", "running", 2),
                _m("b", 1, "replica", "running", 2),
                _m("c", 2, "leader", "running", 2),
            ]
        ],
        (None,),
        [None],
    ),
]


@pytest.mark.parametrize(
    ("case", "rounds", "answers", "primaries"), SWITCH, ids=[s[0] for s in SWITCH]
)
def test_a_new_leader_takes_writes_once_promoted(
    case: str,
    rounds: list[list[dict[str, Any]]],
    answers: tuple[int | None, ...],
    primaries: list[str | None],
) -> None:
    confirm = FakeConfirm(1, *answers)  # the first leader seen is asked too
    reader = PatroniReader(NODES, CFG, "main", confirm)
    assert _read(reader, *HEALTHY).primary == "node0"
    seen = [_read(reader, *r, now=float(i + 1)).primary for i, r in enumerate(rounds)]
    assert seen == primaries, case
    if "node1" in primaries:
        assert confirm.closed >= 1  # the connection let go
        assert reader.pending is None


def test_a_node_without_a_member_is_down_at_once() -> None:
    reader = PatroniReader(NODES, CFG, "main")
    _read(reader, *HEALTHY)
    snap = _read(reader, *HEALTHY[:2], now=1)
    assert not snap.node("node2").healthy
    assert snap.node("node2").error == "not a Patroni member"
    assert snap.state is ClusterState.DEGRADED
    assert _read(reader, *HEALTHY, now=2).node("node2").healthy  # back: at once too


def test_a_manager_starting_during_a_promotion_waits_for_it() -> None:
    confirm = FakeConfirm(None, 2)
    reader = PatroniReader(NODES, CFG, "main", confirm)
    promoting = (_m("a", 0, "replica", "running", 1), _m("b", 1, "leader", "running", 1))
    assert _read(reader, *promoting).primary is None
    assert reader.pending == "b"
    assert _read(reader, *promoting, now=1).primary == "node1"
    assert confirm.asked == ["node1", "node1"]  # the node's name, not Patroni's member's
    assert confirm.closed == 1  # the connection let go once promoted
    assert not reader.pending


def test_a_leader_that_is_none_of_the_nodes_is_refused() -> None:
    reader = PatroniReader(NODES, CFG, "main")
    with pytest.raises(SourceMismatch, match=re.escape("leader x at 10.0.0.8:5432 is none of")):
        _read(reader, _m("x", 7, "leader", "running"), *HEALTHY[1:])
    with pytest.raises(SourceMismatch, match="no members"):
        reader.update([], 0.0, 0.001)


def test_replica_lag_from_a_patroni_without_lsns() -> None:
    """Patroni before 4.1 gives only ``lag``: the positions are made up from it."""
    reader = PatroniReader(NODES, CFG, "main")
    snap = _read(
        reader,
        _m("a", 0, "leader", "running"),
        _m("b", 1, "replica", "streaming", lag=1000),
        _m("c", 2, "replica", "streaming", lag=0),
    )
    assert [n.lag_bytes for n in snap.standbys] == [1000, 0]


def test_a_standby_leader_in_etcd_is_a_standby() -> None:
    prefix = "/service/main/"
    keys = {
        f"{prefix}leader": "a",
        f"{prefix}members/a": json.dumps(
            {"conn_url": "postgres://10.0.0.1:5432/postgres", "state": "running",
             "role": "standby_leader", "timeline": 3}
        ),
    }  # fmt: skip
    (member,) = from_keys(keys, prefix)
    assert not member.leader


def test_members_that_are_not_this_managers_nodes_are_refused() -> None:
    reader = PatroniReader(NODES, CFG, "main")
    other = _m("x", 7, "leader", "running")
    with pytest.raises(SourceMismatch, match="connect_address must match"):
        _read(reader, other)


def test_the_snapshots_carry_a_growing_sequence_and_the_cluster() -> None:
    reader = PatroniReader(NODES, CFG, "main")
    first = reader.update(from_cluster(_cluster(*HEALTHY)), 1.0, 0.001)
    second = reader.update(from_cluster(_cluster(*HEALTHY)), 2.0, 0.001)
    assert (first.cluster, first.seq, second.seq, second.sent_at) == ("main", 1, 2, 2.0)


@pytest.mark.parametrize(
    "source",
    [
        "patroni+http://u:hunter2@db1:8008,patroni+https://v:hunter2@db2:8008",
        "patroni+http://db1:8008,patroni+http://u:hunter2@db2:8008",
        "patroni+etcd://pgfailover:hunter2@e1:2379,patroni+etcd://pgfailover:hunter2@e2/service/a",
    ],
)
def test_patroni_passwords_never_show(source: str) -> None:
    from pgfailover.topology.build import build_source

    config = FailoverConfig(source=source)
    built = build_source(config, NODES, "main")
    try:
        assert "hunter2" not in built.shown
        assert built.shown.count("***") == source.count("hunter2")
        assert "hunter2" not in repr(config)
    finally:
        built.close()


def test_each_setting_builds_its_source() -> None:
    from pgfailover.topology.arbiter import ArbiterSource
    from pgfailover.topology.build import build_source
    from pgfailover.topology.patroni import PatroniEtcdSource, PatroniRestSource

    for source, kind in [
        ("http://a:8009", ArbiterSource),
        ("patroni+http://db1:8008", PatroniRestSource),
        ("patroni+etcd://e:2379/service/main", PatroniEtcdSource),
    ]:
        built = build_source(FailoverConfig(source=source), NODES, "main")
        try:
            assert isinstance(built, kind)
            assert len(built.urls) == 1
        finally:
            built.close()


def test_a_new_leader_that_hangs_delays_the_source_only_briefly() -> None:
    """A server that accepts and never answers (a hung new leader): each check gives
    up after about ``wait`` + slack, and no second check starts while one hangs."""
    import socket
    import threading
    import time

    from pgfailover.topology.confirm import SLACK, Confirmer

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    port = listener.getsockname()[1]
    confirmer = Confirmer(
        {"node1": f"host=127.0.0.1 port={port}"}, timeout=2.0, wait=0.05, pause=time.sleep
    )
    try:
        for _ in range(3):
            started = time.monotonic()
            assert confirmer.timeline("node1") is None
            assert time.monotonic() - started < 0.05 + SLACK + 0.2
        assert len(accepted) == 1  # one check in flight; no second connection meanwhile
        confirmer.done()
    finally:
        stop.set()
        acceptor.join(2)
        for conn in accepted:
            conn.close()
        listener.close()


def test_serve_follows_patroni_but_never_another_arbiter() -> None:
    from pgfailover.cli.common import UsageProblem
    from pgfailover.cli.serve import _arbiter_config
    from pgfailover.config import ServerSettings

    server = ServerSettings()  # promotion "auto" by default
    patroni = FailoverConfig(source="patroni+etcd://e:2379/service/main")
    kept = _arbiter_config(patroni, server, None)
    assert (kept.source, kept.promotion) == (patroni.source, "external")
    arbiter = _arbiter_config(FailoverConfig(source="http://other:8009"), server, None)
    assert (arbiter.source, arbiter.promotion) == (None, "auto")
    # The managers' config shared with the arbiter: their TLS files go with the source.
    shared = FailoverConfig(source="https://other:8009", source_ca_file="/etc/ssl/site-ca.pem")
    arbiter = _arbiter_config(shared, server, None)
    assert (arbiter.source, arbiter.source_ca_file) == (None, None)
    with pytest.raises(UsageProblem, match="Patroni promotes"):
        _arbiter_config(patroni, server, "auto")
