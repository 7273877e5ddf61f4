"""Test doubles for following: an arbiter published by hand, a follower's owner.

Shared by the stream and follower tests. The arbiter side is a
:class:`ClusterView` published by hand, for the real :class:`StreamServer`;
the owner is real :class:`Rounds` over a view (their probes never open).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from pgfailover.cluster import ClusterView
from pgfailover.config import FailoverConfig, Node
from pgfailover.counters import Counters
from pgfailover.model import Decision, Snapshot
from pgfailover.rounds import Rounds
from pgfailover.topology.arbiter import ArbiterSource
from pgfailover.topology.follower import Follower
from pgfailover.transition import initial_snapshot

from .helpers import NODES, down, healthy_round, primary, run, standby

HEALTHY, _ = run([healthy_round()] * 3)
PROMOTED, _ = run(
    [[down("node0"), primary("node1", tl=2), standby("node2", tl=2, upstream="node1")]],
    start=HEALTHY,
    t0=2000.0,
)


def wait_for(check: Callable[[], Any], timeout: float = 5.0, what: str = "it") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.005)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


class Arbiter:
    """What the stream server reads of a manager, published by hand."""

    promoting = False

    def __init__(self, name: str = "app", interval: float = 0.2) -> None:
        self.woken = 0
        self.name = name
        self.config = FailoverConfig(health_check_interval=interval, health_check_timeout=interval)
        self.view = ClusterView(name, initial_snapshot(NODES, 0.0), 1.0)

    @property
    def snapshot(self) -> Snapshot:
        return self.view.snapshot

    def writes_held(self) -> bool:
        return self.view.held

    def listen(self, callback: Callable[[], None]) -> Callable[[], None]:
        return self.view.listen(callback)

    def unlisten(self, callback: Callable[[], None]) -> None:
        self.view.unlisten(callback)

    def publish(self, snap: Snapshot) -> None:
        self.view.publish(snap, time.time())

    def probe_soon(self) -> None:
        self.woken += 1


class Owner:
    """The supervisor's side of following: real Rounds over a view, decisions recorded."""

    def __init__(self, nodes: list[Node] = NODES) -> None:
        self.view = ClusterView("app", initial_snapshot(nodes, 0.0), 1.0)
        self.acted: list[Decision] = []
        self.rounds = Rounds(nodes, FailoverConfig(), self.view, Counters(), self.acted.extend)
        self.probed_again = 0

    def adopt(self, snap: Snapshot, held: bool) -> None:
        self.acted.extend(self.rounds.adopt(snap, held))

    def probe_again(self) -> None:
        self.rounds.stop_following()
        self.probed_again += 1


def follower_of(url: str, owner: Owner, *, silence: float = 0.5, cluster: str = "app") -> Follower:
    source = ArbiterSource([url], cluster, connect_timeout=1.0, silence=silence)
    follower = Follower(source, owner, name=cluster)
    follower.start()
    return follower
