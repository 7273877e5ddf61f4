"""Read strategies as tables: who comes first, over many reads, for given standbys.

Each case gives the standbys (name, lag, priority, smoothed probe time,
busy connections), a strategy with or without weights, and the share of
first places each standby must get over 1,200 reads, or the exact sequence
of first places.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Mapping

import pytest

from pgfailover import ConfigurationError, FailoverConfig
from pgfailover.model import NodeState, Role
from pgfailover.sources import load_env
from pgfailover.strategies import STRATEGIES, ReadStrategy, make_strategy

pytestmark = pytest.mark.timeout(10)

READS = 1200


def node(
    name: str, *, lag: int = 0, priority: int = 100, rt: float | None = 0.001, busy: int = 0
) -> tuple[NodeState, int]:
    state = NodeState(
        name=name,
        address=f"{name}:5432",
        priority=priority,
        role=Role.STANDBY,
        up=True,
        healthy=True,
        lag_bytes=lag,
        response_time_avg=rt,
    )
    return state, busy


Nodes = list[tuple[NodeState, int]]


def build(name: str, nodes: Nodes, weights: Mapping[str, float] | None) -> ReadStrategy:
    busy = {n.name: b for n, b in nodes}
    return make_strategy(name, weights=weights, busy=busy.__getitem__, rng=random.Random(7))  # noqa: S311


def firsts(strategy: ReadStrategy, nodes: Nodes, reads: int = READS) -> list[str]:
    candidates = tuple(n for n, _ in nodes)
    seen = []
    for _ in range(reads):
        order = strategy.order(candidates)
        assert sorted(n.name for n in order) == sorted(n.name for n in candidates)
        seen.append(order[0].name)
    return seen


THREE = [node("a"), node("b"), node("c")]

SHARE_CASES: list[tuple[str, str, Nodes, Mapping[str, float] | None, dict[str, float]]] = [
    ("round robin, equal", "round_robin", THREE, None, {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}),
    ("round robin, 3:1:1", "round_robin", THREE, {"a": 3}, {"a": 0.6, "b": 0.2, "c": 0.2}),
    ("round robin, weight 0", "round_robin", THREE, {"c": 0}, {"a": 0.5, "b": 0.5, "c": 0.0}),
    ("random, 3:1:1", "random", THREE, {"a": 3, "b": 1, "c": 1}, {"a": 0.6, "b": 0.2, "c": 0.2}),
    (
        "least lag: the least lagging, whatever the weights",
        "least_lag",
        [node("a", lag=100), node("b", lag=0), node("c", lag=50)],
        {"a": 10},
        {"b": 1.0},
    ),
    (
        "least lag: equal lag shares by weight",
        "least_lag",
        [node("a"), node("b"), node("c", lag=10)],
        {"a": 3},
        {"a": 0.75, "b": 0.25},
    ),
    (
        "priority: lowest first, equal priority shares",
        "priority",
        [node("a", priority=1), node("b", priority=1), node("c", priority=0)],
        None,
        {"c": 1.0},
    ),
    (
        "priority: equal priority shares evenly",
        "priority",
        [node("a", priority=1), node("b", priority=1), node("c", priority=2)],
        None,
        {"a": 0.5, "b": 0.5},
    ),
    (
        "least connections: the idlest",
        "least_connections",
        [node("a", busy=4), node("b", busy=1), node("c", busy=2)],
        None,
        {"b": 1.0},
    ),
    (
        "least connections per weight: 4 busy of weight 4 beats 2 of weight 1",
        "least_connections",
        [node("a", busy=4), node("b", busy=2), node("c", busy=3)],
        {"a": 4},
        {"a": 1.0},
    ),
    (
        "least connections: all idle share by weight",
        "least_connections",
        THREE,
        {"b": 2},
        {"a": 0.25, "b": 0.5, "c": 0.25},
    ),
    (
        "latency: the fastest",
        "latency",
        [node("a", rt=0.010), node("b", rt=0.002), node("c", rt=0.030)],
        None,
        {"b": 1.0},
    ),
    (
        "latency: within the band counts as equally fast",
        "latency",
        [node("a", rt=0.0020), node("b", rt=0.0022), node("c", rt=0.030)],
        None,
        {"a": 0.5, "b": 0.5},
    ),
    (
        "latency per weight: 25 % slower with weight 3 wins",
        "latency",
        [node("a", rt=0.010), node("b", rt=0.008), node("c", rt=None)],
        {"a": 3},
        {"a": 1.0},
    ),
    (
        "latency: never timed comes last",
        "latency",
        [node("a", rt=None), node("b", rt=0.5)],
        None,
        {"b": 1.0},
    ),
]


@pytest.mark.parametrize(
    ("name", "nodes", "weights", "shares"),
    [c[1:] for c in SHARE_CASES],
    ids=[c[0] for c in SHARE_CASES],
)
def test_shares_of_first_place(
    name: str, nodes: Nodes, weights: Mapping[str, float] | None, shares: dict[str, float]
) -> None:
    counts = Counter(firsts(build(name, nodes, weights), nodes))
    tolerance = 0.05 if name == "random" else 0.002
    for n, _ in nodes:
        assert counts[n.name] / READS == pytest.approx(shares.get(n.name, 0.0), abs=tolerance), (
            n.name
        )


def test_weighted_round_robin_interleaves() -> None:
    """Smooth weighted round robin: 3:1:1 is a a b a c, never a a a b c."""
    seen = firsts(build("round_robin", THREE, {"a": 3}), THREE, reads=10)
    assert seen == ["a", "b", "a", "c", "a"] * 2


def test_plain_round_robin_rotates_by_name() -> None:
    assert firsts(build("round_robin", THREE, None), THREE, reads=6) == ["a", "b", "c"] * 2


def test_a_node_that_leaves_and_comes_back_is_not_owed_a_burst() -> None:
    strategy = build("round_robin", THREE, None)
    two = THREE[:2]
    firsts(strategy, two, reads=50)
    seen = firsts(strategy, THREE, reads=30)
    assert max(Counter(seen).values()) - min(Counter(seen).values()) <= 2


def test_weight_zero_only_when_nothing_else() -> None:
    strategy = build("least_connections", THREE, {"a": 0, "b": 0, "c": 0})
    assert sorted(firsts(strategy, THREE, reads=3)) == ["a", "b", "c"]  # all zero: all share
    rr = build("round_robin", THREE, {"a": 0, "b": 0, "c": 0})
    assert sorted(firsts(rr, THREE, reads=3)) == ["a", "b", "c"]
    alone = build("latency", [node("a")], {"a": 0})
    assert firsts(alone, [node("a")], reads=1) == ["a"]


def test_every_name_builds_and_unknown_names_are_refused() -> None:
    busy: Callable[[str], int] = lambda _name: 0  # noqa: E731
    for name in STRATEGIES:
        assert make_strategy(name, busy=busy).order(()) == []
    with pytest.raises(ValueError, match="unknown read strategy 'fastest'"):
        make_strategy("fastest")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"read_weights": {"node1": -1}}, "read_weights"),
        ({"read_weights": {"bad name!": 1}}, "read_weights"),
        ({"read_weights": {"node1": "x"}}, "read_weights"),
        ({"breaker_failures": -1}, "breaker_failures"),
        ({"breaker_successes": 0}, "breaker_successes"),
        ({"breaker_cooldown": 10, "breaker_max_cooldown": 5}, "breaker_max_cooldown"),
    ],
)
def test_bad_settings_are_one_line(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as caught:
        FailoverConfig.from_mapping(settings)
    assert "\n" not in str(caught.value)


def test_weights_from_the_environment() -> None:
    _, cfg = load_env({"PGFAILOVER_READ_WEIGHTS": "node1=3, node2=0.5"})
    assert cfg.read_weights == {"node1": 3.0, "node2": 0.5}
    with pytest.raises(ConfigurationError, match="node=weight"):
        load_env({"PGFAILOVER_READ_WEIGHTS": "node1:3"})


def test_the_manager_builds_checks_and_reports_strategies() -> None:
    from pgfailover import FailoverManager, Node
    from pgfailover.strategies import LeastConnections, describe

    nodes = [Node(f"node{i}", f"host=127.0.0.1 port={5000 + i}") for i in range(3)]
    with pytest.raises(ConfigurationError, match="read_weights names nodeX, not a node"):
        FailoverManager(nodes=nodes, config=FailoverConfig(read_weights={"nodeX": 2}))
    cfg = FailoverConfig(read_strategy="least_connections", read_weights={"node1": 3})
    mgr = FailoverManager(nodes=nodes, config=cfg)
    try:
        assert isinstance(mgr.read_strategy, LeastConnections)
        assert describe(mgr.read_strategy) == {
            "name": "least_connections",
            "weights": {"node1": 3.0},
        }
        mgr.read_strategy = "latency"
        assert describe(mgr.read_strategy)["name"] == "latency"
        with pytest.raises(ConfigurationError, match="unknown read strategy 'fastest'"):
            mgr.read_strategy = "fastest"
        assert describe(mgr.read_strategy)["name"] == "latency"  # nothing changed
        assert mgr.get_failover_status()["read_strategy"]["weights"] == {"node1": 3.0}
    finally:
        mgr.close(timeout=1)


@pytest.mark.parametrize("name", ["round_robin", "least_lag", "latency"])
def test_without_weights_the_order_is_the_one_weights_of_1_give(name: str) -> None:
    """The even-weights shortcut (no ``read_weights``) against the general path with
    every weight 1 said outright: the same order at every read, while the standbys
    offered change (one leaves, comes back, a third joins) and tie or not."""
    pool = [node("node1"), node("node2", lag=5), node("node3"), node("node4", rt=0.002)]
    rng = random.Random(11)  # noqa: S311 - the offered sets, repeatable
    plain = build(name, pool, None)
    said = build(name, pool, {n.name: 1.0 for n, _ in pool})
    for _ in range(400):
        offered = tuple(n for n, _ in pool if rng.random() < 0.7)
        orders = [[n.name for n in s.order(offered)] for s in (plain, said)]
        assert orders[0] == orders[1], offered
