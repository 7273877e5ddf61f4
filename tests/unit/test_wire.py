"""The snapshot on the wire: what goes in comes out equal, and bad messages say why."""

from __future__ import annotations

import json

import pytest

from pgfailover.model import ClusterState, Role, Snapshot
from pgfailover.wire import FORMAT, Update, WireError, decode, encode

from .helpers import down, healthy_round, primary, run, standby

HEALTHY, _ = run([healthy_round()] * 3)
LOST, _ = run([healthy_round(), *[[down("node0"), standby("node1"), standby("node2")]] * 3])
PROMOTED, _ = run(
    [[down("node0"), primary("node1", tl=2), standby("node2", tl=2, upstream="node1")]] * 2,
    start=LOST,
    t0=2000.0,
)
SPLIT, _ = run([healthy_round(), [primary("node0"), primary("node1"), standby("node2")]])

SNAPSHOTS: list[tuple[str, Snapshot]] = [
    ("healthy", HEALTHY),
    ("primary lost, failover clock running", LOST),
    ("promoted onto timeline 2", PROMOTED),
    ("split brain", SPLIT),
]


@pytest.mark.parametrize("snap", [s for _, s in SNAPSHOTS], ids=[i for i, _ in SNAPSHOTS])
def test_a_snapshot_comes_back_equal_field_for_field(snap: Snapshot) -> None:
    update = Update(cluster="app", seq=7, sent_at=1.5e9, snapshot=snap)
    back = decode(encode(update), cluster="app")
    assert back == update
    assert back.snapshot == snap  # every node's every field, the clock, the enums
    assert isinstance(back.snapshot.state, ClusterState)
    assert all(isinstance(n.role, Role) for n in back.snapshot.nodes)
    assert isinstance(back.snapshot.nodes, tuple)


def test_the_cases_cover_what_routing_reads() -> None:
    """The table above is worth its name: roles, timelines, a running clock, a split."""
    assert HEALTHY.primary == "node0"
    assert LOST.state is ClusterState.FAILOVER_IN_PROGRESS
    assert LOST.failover.started_at is not None
    assert PROMOTED.primary == "node1"
    assert PROMOTED.max_timeline == 2
    assert SPLIT.split_brain


def _message(**changes: object) -> bytes:
    body = json.loads(encode(Update(cluster="app", seq=1, sent_at=0.0, snapshot=HEALTHY)))
    body.update(changes)
    return json.dumps(body).encode()


BAD: list[tuple[str, bytes | str, str]] = [
    ("not JSON", b"{nope", "not a snapshot update"),
    ("a JSON list", b"[]", "not a snapshot update"),
    ("a newer format", _message(format=FORMAT + 1), "format 2; this version reads 1"),
    ("a newer format, fields changed", _message(format=2, seq="x"), "format 2; this version"),
    ("a format of the wrong type", _message(format="2"), "format '2'; this version reads 1"),
    ("another cluster", _message(cluster="other"), "cluster 'other', not 'app'"),
    ("a sequence of the wrong type", _message(seq="7"), "seq"),
    ("a negative sequence", _message(seq=-1), "negative sequence"),
    ("no snapshot", _message(snapshot=None), "snapshot"),
    ("an unknown state", _message(snapshot={"nodes": [], "state": "sideways"}), "state"),
]


@pytest.mark.parametrize(("data", "says"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_a_message_this_version_cannot_use_is_refused_in_one_line(
    data: bytes | str, says: str
) -> None:
    with pytest.raises(WireError, match=says) as caught:
        decode(data, cluster="app")
    assert "\n" not in str(caught.value)


def test_fields_a_newer_arbiter_adds_are_ignored() -> None:
    body = json.loads(_message())
    body["snapshot"]["nodes"][0]["added_later"] = 1
    body["added_later"] = {"x": 1}
    back = decode(json.dumps(body), cluster="app")
    assert back.snapshot == HEALTHY
