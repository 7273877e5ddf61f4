"""The arbiter's quiet gap: what a follower routes on goes out at once, the rest at most
every ``quiet_gap`` seconds, the newest snapshot then.

No PostgreSQL and no server: a :class:`StreamHub` on an event loop, fed snapshots
from the state machine and variants of them made with :func:`evolve`; the
deferred send is waited for by polling against a deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from pgfailover.model import ClusterState, Role, Snapshot, evolve
from pgfailover.stream import StreamHub
from pgfailover.wire import decode, routing_key

from .helpers import healthy_round, run

BASE, _ = run([healthy_round()] * 3)
BEGUN = evolve(BASE.failover, started_at=1.0)


def with_node(snap: Snapshot, name: str, **changes: Any) -> Snapshot:
    nodes = tuple(evolve(n, **changes) if n.name == name else n for n in snap.nodes)
    return evolve(snap, nodes=nodes)


# (what changed, the changed snapshot, held, whether routing changed)
CASES: list[tuple[str, Snapshot, bool, bool]] = [
    ("nothing", BASE, False, False),
    ("probe times", with_node(BASE, "node1", last_check=9e9, response_time=0.5), False, False),
    ("positions and lag", with_node(BASE, "node1", replay_lsn=10**9, lag_bytes=5), False, False),
    ("failure count and error", with_node(BASE, "node2", consecutive_failures=1), False, False),
    ("an error text", with_node(BASE, "node0", error="timeout"), False, False),
    ("the round number", evolve(BASE, rounds=BASE.rounds + 7), False, False),
    ("writes held", BASE, True, True),
    ("the state", evolve(BASE, state=ClusterState.DEGRADED), False, True),
    ("the primary", evolve(BASE, primary="node1"), False, True),
    ("a role", with_node(BASE, "node2", role=Role.STALE), False, True),
    ("up", with_node(BASE, "node0", up=False), False, True),
    ("healthy", with_node(BASE, "node1", healthy=False), False, True),
    ("a read block", with_node(BASE, "node1", read_block="too far behind"), False, True),
    ("a timeline", with_node(BASE, "node2", timeline=9), False, True),
    ("read only", with_node(BASE, "node0", read_only=True), False, True),
    ("follows", with_node(BASE, "node2", follows=False), False, True),
    ("a split brain", evolve(BASE, split_brain=("node0", "node1")), False, True),
    ("a blocked promotion", evolve(BASE, promotion_blocked="lag"), False, True),
    ("the newest timeline", evolve(BASE, max_timeline=7), False, True),
    ("a failover begun", evolve(BASE, failover=BEGUN), False, True),
    ("a failover done", evolve(BASE, failover=evolve(BASE.failover, count=3)), False, True),
]


@pytest.mark.parametrize(("what", "snap", "held", "routes"), CASES, ids=[c[0] for c in CASES])
def test_routing_key(what: str, snap: Snapshot, held: bool, routes: bool) -> None:
    assert (routing_key(snap, held) != routing_key(BASE, False)) is routes, what


HEARD = "receiver_streaming: node1 heard from node0 {}s ago (proof of loss after 3.0s)"
SILENT = "WAL receiver not streaming from the primary for {}s"

# (what changed, before, after, whether routing changed): a reason's running numbers
# are not news; a reason that starts, ends or changes is.
TICKS: list[tuple[str, Snapshot, Snapshot, bool]] = [
    (
        "a blocked promotion's clock",
        evolve(BASE, promotion_blocked=HEARD.format("1.7")),
        evolve(BASE, promotion_blocked=HEARD.format("1.8")),
        False,
    ),
    (
        "a blocked promotion's reason",
        evolve(BASE, promotion_blocked=HEARD.format("2.9")),
        evolve(BASE, promotion_blocked="quorum_incomplete: 1 of 2 answer"),
        True,
    ),
    (
        "a blocked promotion lifted",
        evolve(BASE, promotion_blocked=HEARD.format("2.9")),
        BASE,
        True,
    ),
    (
        "a read block's clock",
        with_node(BASE, "node1", read_block=SILENT.format("5.3")),
        with_node(BASE, "node1", read_block=SILENT.format("12.0")),
        False,
    ),
    (
        "a read block's byte count",
        with_node(BASE, "node1", read_block="1024 bytes behind (max_read_lag_bytes=100)"),
        with_node(BASE, "node1", read_block="99999 bytes behind (max_read_lag_bytes=100)"),
        False,
    ),
    (
        "a read block's reason",
        with_node(BASE, "node1", read_block=SILENT.format("5.3")),
        with_node(BASE, "node1", read_block="replication lag unknown"),
        True,
    ),
    (
        "a read block lifted",
        with_node(BASE, "node1", read_block=SILENT.format("5.3")),
        BASE,
        True,
    ),
]


@pytest.mark.parametrize(("what", "before", "after", "routes"), TICKS, ids=[c[0] for c in TICKS])
def test_a_reasons_running_numbers_are_not_routing(
    what: str, before: Snapshot, after: Snapshot, routes: bool
) -> None:
    assert (routing_key(after, False) != routing_key(before, False)) is routes, what


class Published:
    """What the hub reads of the arbiter: the newest snapshot, set by hand."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def __call__(self) -> Snapshot:
        return self.snap


async def until(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.005)
    return check()


def quiet_hub(gap: float) -> tuple[Published, StreamHub]:
    """A hub over BASE with a quiet gap of ``gap`` seconds, and what it publishes."""
    published = Published(BASE)
    return published, StreamHub("app", published, lambda: False, fresh_for=5.0, quiet_gap=gap)


def follow(hub: StreamHub) -> Any:
    """On the loop: bind ``hub`` and join it, BASE already received."""
    hub.bind(asyncio.get_running_loop())
    follower = hub.join()
    follower.pending = None
    return follower


def sent(pending: bytes | None) -> Snapshot:
    assert pending is not None
    data = pending.split(b"data: ", 1)[1].split(b"\n", 1)[0]
    return decode(data, "app").snapshot


def test_only_the_routing_change_goes_at_once_and_the_newest_after_the_gap() -> None:
    quiet = with_node(BASE, "node1", last_check=1.0)
    quieter = with_node(BASE, "node1", last_check=2.0)
    moved = evolve(BASE, primary="node1", state=ClusterState.FAILOVER_COMPLETE)
    published = Published(BASE)
    hub = StreamHub("app", published, lambda: False, fresh_for=5.0, quiet_gap=0.3)

    async def scenario() -> dict[str, Any]:
        hub.bind(asyncio.get_running_loop())  # sends BASE
        follower = hub.join()
        seen: dict[str, Any] = {"first": (hub.seq, sent(follower.pending))}
        follower.pending = None
        for snap in (quiet, quieter):  # two rounds within the gap: neither goes now
            published.snap = snap
            hub._update()
        seen["held back"] = (hub.seq, follower.pending)
        seen["after the gap"] = await until(lambda: follower.pending is not None, 2.0)
        seen["newest"] = (hub.seq, sent(follower.pending))
        follower.pending = None
        published.snap = quiet
        hub._update()  # within the new gap, quiet: deferred ...
        published.snap = moved
        hub._update()  # ... and the new primary goes at once, the deferred send dropped
        seen["moved"] = (hub.seq, sent(follower.pending))
        follower.pending = None
        await asyncio.sleep(0.5)  # longer than the gap: nothing else may come
        seen["late"] = (hub.seq, follower.pending)
        return seen

    seen = asyncio.run(scenario())
    assert seen["first"] == (1, BASE)
    assert seen["held back"] == (1, None)
    assert seen["after the gap"]
    assert seen["newest"] == (2, quieter)
    assert seen["moved"] == (3, moved)
    assert seen["late"] == (3, None)


def test_a_quiet_change_after_the_gap_goes_at_once() -> None:
    published, hub = quiet_hub(0.05)

    async def scenario() -> tuple[int, bytes | None]:
        follower = follow(hub)
        await asyncio.sleep(0.1)  # the gap since the last send has passed
        published.snap = with_node(BASE, "node1", last_check=1.0)
        hub._update()
        return hub.seq, follower.pending

    seq, pending = asyncio.run(scenario())
    assert seq == 2
    assert sent(pending) == with_node(BASE, "node1", last_check=1.0)


def test_writes_held_go_at_once_with_the_same_snapshot() -> None:
    held = [False]
    hub = StreamHub("app", Published(BASE), lambda: held[0], fresh_for=5.0, quiet_gap=10.0)

    async def scenario() -> tuple[int, bool]:
        hub.bind(asyncio.get_running_loop())
        follower = hub.join()
        held[0] = True
        hub._update()
        assert follower.pending is not None
        return hub.seq, b'"held":true' in follower.pending

    assert asyncio.run(scenario()) == (2, True)


def test_a_closing_hub_sends_nothing_deferred() -> None:
    published, hub = quiet_hub(0.05)

    async def scenario() -> tuple[int, bytes | None]:
        follower = follow(hub)
        published.snap = with_node(BASE, "node1", last_check=1.0)
        hub._update()  # deferred
        hub.close()
        await asyncio.sleep(0.15)
        return hub.seq, follower.pending

    assert asyncio.run(scenario()) == (1, None)


def test_quiet_rounds_keep_the_heartbeats_going() -> None:
    """A deferred snapshot still counts as the arbiter's probing being alive."""
    published = Published(BASE)
    hub = StreamHub("app", published, lambda: False, fresh_for=0.1, quiet_gap=10.0)

    async def scenario() -> bool:
        hub.bind(asyncio.get_running_loop())
        for k in range(4):  # rounds every 0.05 s, each held back by the long gap
            await asyncio.sleep(0.05)
            published.snap = with_node(BASE, "node1", last_check=float(k))
            hub._update()
        return hub.fresh()

    assert asyncio.run(scenario())
    assert hub.seq == 1
