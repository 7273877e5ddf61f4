"""The small derivations behind API arguments and open(), and ``evolve``, as tables."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from pgfailover.derive import foreign_nodes, standby_named, with_upstreams
from pgfailover.errors import ConfigurationError
from pgfailover.model import NodeState, Snapshot, evolve
from pgfailover.probe import ProbeResult

from .helpers import down, healthy_round, primary, run, standby

HEALTHY = run([healthy_round()] * 3)[0]
NODE1_PRIMARY = run(
    [[down("node0"), primary("node1", tl=2, lsn=2000), standby("node2", tl=2, lsn=2000)]] * 3
)[0]


@pytest.mark.parametrize(
    ("snap", "standby", "expected"),
    [
        pytest.param(HEALTHY, "node2", "node2", id="a name"),
        pytest.param(HEALTHY, 0, "node1", id="index 0: the first non-primary"),
        pytest.param(HEALTHY, 1, "node2", id="index 1"),
        pytest.param(NODE1_PRIMARY, 0, "node0", id="indexes skip the current primary"),
        pytest.param(HEALTHY, 2, "index 2 out of range: 2 standby(s) (node1, node2)", id="range"),
        pytest.param(HEALTHY, -1, "index -1 out of range", id="negative"),
        pytest.param(HEALTHY, "node9", "unknown node 'node9' (known: node0, node1", id="unknown"),
    ],
)
def test_standby_named(snap: object, standby: int | str, expected: str) -> None:

    assert isinstance(snap, Snapshot)
    if expected.startswith("node"):
        assert standby_named(snap, standby) == expected
    else:
        with pytest.raises(
            ConfigurationError, match=expected.replace("(", r"\(").replace(")", r"\)")
        ):
            standby_named(snap, standby)


def test_foreign_nodes_names_the_intruder() -> None:
    mixed = [
        primary("node0", system_id="7000"),
        standby("node1", system_id="7000"),
        standby("node2", system_id="9999"),
    ]
    snap = run([mixed])[0]
    (reason,) = foreign_nodes(snap)
    assert "node2 belongs to another cluster" in reason
    assert foreign_nodes(run([healthy_round()])[0]) == []


EVOLVE = [
    pytest.param(HEALTHY.nodes[1], {"lag_bytes": 7, "promotion_eligible": False}, id="a node"),
    pytest.param(HEALTHY.nodes[0], {}, id="nothing changed"),
    pytest.param(HEALTHY.failover, {"started_at": 1.0, "reason": "gone"}, id="a clock"),
    pytest.param(HEALTHY, {"primary": None, "rounds": 9}, id="a snapshot"),
]


@pytest.mark.parametrize(("obj", "changes"), EVOLVE)
def test_evolve_makes_what_replace_makes_and_leaves_the_original(
    obj: Any, changes: dict[str, Any]
) -> None:
    before = dataclasses.astuple(obj)
    made = evolve(obj, **changes)
    assert made == dataclasses.replace(obj, **changes)
    assert type(made) is type(obj)
    assert dataclasses.astuple(obj) == before  # the original is untouched
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.rounds = 1  # frozen like any instance


def test_evolve_refuses_a_name_that_is_no_field() -> None:
    with pytest.raises(TypeError, match="NodeState has no field lag"):
        evolve(HEALTHY.nodes[0], lag=3)


def _unmapped(result: ProbeResult) -> ProbeResult:
    """A standby whose sender's address is none of the manager's DSNs (a DNS name there)."""
    return dataclasses.replace(result, sender_host="db-relay.internal")


def _sending(result: ProbeResult, *names: str) -> ProbeResult:
    return dataclasses.replace(result, streaming_names=names)


def _upstreams(results: list[ProbeResult]) -> dict[str, str | None]:
    nodes: list[NodeState] = list(run([results])[0].nodes)
    return {n.name: n.upstream for n in with_upstreams(nodes)}


@pytest.mark.parametrize(
    ("results", "expected"),
    [
        pytest.param(
            [_sending(primary("node0"), "node1", "node2"), standby("node1"), standby("node2")],
            {"node0": None, "node1": "node0", "node2": "node0"},
            id="by address, as the probe found it",
        ),
        pytest.param(
            [
                _sending(primary("node0"), "node1"),
                _unmapped(standby("node1")),
                _unmapped(standby("node2")),
            ],
            {"node0": None, "node1": "node0", "node2": None},
            id="by name, where one node sends to it; none sends to node2",
        ),
        pytest.param(
            [
                _sending(primary("node0"), "node1"),
                _sending(standby("node1"), "node2"),
                _unmapped(standby("node2", upstream="node1")),
            ],
            {"node0": None, "node1": "node0", "node2": "node1"},
            id="a cascade",
        ),
        pytest.param(
            [
                _sending(primary("node0"), "NODE2"),
                _sending(standby("node1"), "node2"),
                _unmapped(standby("node2")),
            ],
            {"node0": None, "node1": "node0", "node2": None},
            id="two senders of one name: unknown",
        ),
        pytest.param(
            [
                _sending(primary("node0"), "node1"),
                _unmapped(standby("node1", upstream=None)),
                standby("node2"),
            ],
            {"node0": None, "node1": None, "node2": "node0"},
            id="a standby not streaming has no upstream",
        ),
        pytest.param(
            [down("node0"), _unmapped(standby("node1")), standby("node2", upstream=None)],
            {"node0": None, "node1": None, "node2": None},
            id="a sender that is down says nothing",
        ),
    ],
)
def test_with_upstreams(results: list[ProbeResult], expected: dict[str, str | None]) -> None:
    assert _upstreams(results) == expected
