"""The arbiter's stream and a follower, over loopback, with snapshots from the state machine.

No PostgreSQL: the arbiter side is a :class:`ClusterView` published by
hand, served by the real :class:`StreamServer` (uvicorn); the follower side
is the real :class:`Follower` reading it with :class:`ArbiterSource`, over
real :class:`Rounds` (whose probes are never opened). Every wait polls
against a deadline.
"""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from pgfailover.config import Node
from pgfailover.stream import PATH, StreamHub, StreamServer
from pgfailover.topology import follower as follower_module
from pgfailover.topology.arbiter import ArbiterSource
from pgfailover.topology.follower import Follower
from pgfailover.wire import decode

from .followdoubles import HEALTHY, PROMOTED, Arbiter, Owner, follower_of, wait_for
from .helpers import NODES


@pytest.fixture
def arbiter() -> Iterator[tuple[Arbiter, StreamServer]]:
    arb = Arbiter()
    arb.publish(HEALTHY)
    server = StreamServer(arb)  # type: ignore[arg-type]
    try:
        yield arb, server
    finally:
        server.close()


def test_a_follower_gets_the_current_snapshot_then_each_new_one(
    arbiter: tuple[Arbiter, StreamServer],
) -> None:
    arb, server = arbiter
    owner = Owner()
    follower = follower_of(server.url, owner)
    try:
        assert follower.wait_first(5.0)
        assert owner.view.snapshot == HEALTHY
        assert follower.mode == "following"
        assert owner.rounds.following  # the monitor's rounds only confirm now
        arb.publish(PROMOTED)
        wait_for(lambda: owner.view.snapshot.primary == "node1", what="the promotion")
        assert owner.view.snapshot == PROMOTED
        switches = [d for d in owner.acted if type(d).__name__ == "SwitchPrimary"]
        assert [(d.node, d.previous) for d in switches] == [  # type: ignore[union-attr]
            ("node0", None),
            ("node1", "node0"),
        ]
        status = follower.status()
        assert status["following"] == server.url
        assert status["seq"] >= 2
    finally:
        follower.close()


def test_writes_held_on_the_arbiter_are_held_on_the_follower(
    arbiter: tuple[Arbiter, StreamServer],
) -> None:
    arb, server = arbiter
    owner = Owner()
    follower = follower_of(server.url, owner)
    try:
        assert follower.wait_first(5.0)
        assert owner.view.ready_primary == "node0"
        arb.view.hold_writes()
        wait_for(lambda: owner.view.held, what="writes held")
        assert owner.view.ready_primary is None
        arb.view.release_writes()
        wait_for(lambda: not owner.view.held, what="writes released")
        assert owner.view.ready_primary == "node0"
    finally:
        follower.close()


def test_an_arbiter_whose_probing_stalled_goes_silent_and_the_follower_probes() -> None:
    """The hub stops its heartbeats when the arbiter's rounds stop: silence, then fall back."""
    arb = Arbiter(interval=0.05)  # heartbeats only for 2 * 0.05 + 0.05 s after a snapshot
    arb.publish(HEALTHY)
    owner = Owner()
    with StreamServer(arb) as server:  # type: ignore[arg-type]
        follower = follower_of(server.url, owner, silence=0.6)
        try:
            assert follower.wait_first(5.0)
            started = time.monotonic()
            wait_for(lambda: follower.mode == "probing", what="the fall back")
            took = time.monotonic() - started
            assert 0.45 < took < 2.5, took  # not before the silence, and not much after
            assert "silent for 0.6s" in follower.status()["reason"]
            assert owner.probed_again == 1
            assert not owner.rounds.following
            arb.publish(PROMOTED)  # the arbiter probes again: followed again
            wait_for(lambda: follower.mode == "following", what="following again")
            assert owner.view.snapshot.primary == "node1"
        finally:
            follower.close()


def test_a_heartbeat_keeps_a_quiet_but_live_arbiter_followed() -> None:
    arb = Arbiter(interval=5.0)  # no snapshot for a while, but rounds are fresh
    arb.publish(HEALTHY)
    owner = Owner()
    with StreamServer(arb) as server:  # type: ignore[arg-type]
        follower = follower_of(server.url, owner, silence=0.75)
        try:
            assert follower.wait_first(5.0)
            # What is tested is what does not happen: no fall back for 2 s of quiet.
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                assert follower.mode == "following"
                assert owner.probed_again == 0
                time.sleep(0.02)
        finally:
            follower.close()


def test_an_arbiter_that_goes_away_is_noticed_at_once_and_followed_when_back() -> None:
    # Its snapshot stays fresh for 15 s: the follower's next try after the restart
    # may be 2 s away (its backoff), and a stale snapshot is not handed out.
    arb = Arbiter(interval=5.0)
    arb.publish(HEALTHY)
    owner = Owner()
    server = StreamServer(arb)  # type: ignore[arg-type]
    port = server.port
    follower = follower_of(server.url, owner, silence=5.0)
    try:
        assert follower.wait_first(5.0)
        started = time.monotonic()
        server.close()
        wait_for(lambda: follower.mode == "probing", what="the fall back")
        assert time.monotonic() - started < 1.5  # not the 5 s of silence: 1 s of spread at most
        arb.publish(PROMOTED)
        server = StreamServer(arb, port=port)  # type: ignore[arg-type]
        wait_for(lambda: follower.mode == "following", what="following again")
        assert owner.view.snapshot.primary == "node1"
    finally:
        follower.close()
        server.close()


def test_a_follower_moves_to_the_next_arbiter() -> None:
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: connection refused
    arb = Arbiter()
    arb.publish(HEALTHY)
    owner = Owner()
    with StreamServer(arb) as server:  # type: ignore[arg-type]
        refused = f"http://127.0.0.1:{dead.getsockname()[1]}"
        source = ArbiterSource([refused, server.url], "app", connect_timeout=1.0, silence=0.5)
        follower = Follower(source, owner, name="app")
        follower.start()
        try:
            assert follower.wait_first(5.0)
            assert follower.status()["following"] == server.url
            assert follower.status()["fallbacks"] == 0  # the next URL first, no probing
            assert owner.probed_again == 0
        finally:
            follower.close()
            dead.close()


@pytest.mark.parametrize(
    ("cluster", "nodes", "reason"),
    [
        ("other", NODES, "serves cluster 'app', not 'other'"),
        ("app", [*NODES[:2], Node("node9", "host=x")], "the source's nodes are"),
    ],
    ids=["another cluster", "other nodes"],
)
def test_a_source_for_something_else_is_refused_and_the_manager_probes(
    arbiter: tuple[Arbiter, StreamServer], cluster: str, nodes: list[Node], reason: str
) -> None:
    _, server = arbiter
    owner = Owner(nodes)
    before = owner.view.snapshot
    follower = follower_of(server.url, owner, cluster=cluster)
    try:
        assert not follower.wait_first(1.0)
        assert follower.mode == "probing"
        assert reason in follower.status()["reason"]
        assert owner.view.snapshot is before  # nothing adopted
        assert owner.probed_again == 1
    finally:
        follower.close()


def test_closing_a_follower_interrupts_its_read_at_once(
    arbiter: tuple[Arbiter, StreamServer],
) -> None:
    _, server = arbiter
    owner = Owner()
    follower = follower_of(server.url, owner, silence=30.0)
    assert follower.wait_first(5.0)
    started = time.monotonic()
    follower.close(timeout=5.0)
    assert time.monotonic() - started < 1.0
    wait_for(lambda: server.hub.followers == 0, what="the arbiter to see the stream end")


def test_many_followers_each_get_every_change() -> None:
    # Rounds fresh for 15 s: starting 40 followers on a busy machine may take longer
    # than the 0.6 s after which a 0.2 s arbiter's snapshot is stale to a newcomer.
    # And 5 s of allowed silence, not 0.5: on a busy machine (CI's side runs) two
    # heartbeats to 40 streams can be late, and a follower that gave up and came back
    # is not what this test is about (the silence tests are).
    arb = Arbiter(interval=5.0)
    arb.publish(HEALTHY)
    owners = [Owner() for _ in range(40)]
    with StreamServer(arb) as server:  # type: ignore[arg-type]
        followers = [follower_of(server.url, o, silence=5.0) for o in owners]
        try:
            assert all(f.wait_first(10.0) for f in followers)
            assert server.hub.followers == 40
            arb.publish(PROMOTED)
            wait_for(
                lambda: all(o.view.snapshot.primary == "node1" for o in owners),
                what="every follower",
            )
        finally:
            for f in followers:
                f.close()


def _get(url: str, method: str = "GET") -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, method=method)  # noqa: S310 - loopback
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_the_stream_port_serves_only_the_stream(arbiter: tuple[Arbiter, StreamServer]) -> None:
    _, server = arbiter
    assert _get(server.url + "/failover/status") == (
        404,
        {"error": "no such endpoint: /failover/status"},
    )
    status, body = _get(server.url + PATH, method="POST")
    assert status == 405
    assert "only GET" in body["error"]


def test_the_stream_starts_with_hello_and_the_snapshot(
    arbiter: tuple[Arbiter, StreamServer],
) -> None:
    _, server = arbiter
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(f"GET {PATH} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while data.count(b"\n\n") < 3:  # headers, hello, the snapshot
            chunk = sock.recv(65536)
            assert chunk, data  # the server must not end the stream
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"text/event-stream" in head
    assert b"event: hello" in body
    snapshot_event = body.split(b"event: snapshot\ndata: ", 1)[1].split(b"\n", 1)[0]
    assert decode(snapshot_event, "app").snapshot == HEALTHY


def test_a_slow_follower_costs_the_arbiter_one_pending_snapshot() -> None:
    """Coalescing: the hub keeps only the newest encoded update for each follower."""
    arb = Arbiter()
    arb.publish(HEALTHY)
    hub = StreamHub("app", lambda: arb.snapshot, lambda: False, fresh_for=1.0)

    async def scenario() -> tuple[int, bytes | None]:
        hub.bind(asyncio.get_running_loop())
        slow = hub.join()
        for snap in (PROMOTED, HEALTHY, PROMOTED):
            arb.publish(snap)
            hub._update()  # what changed() schedules on the loop
        return hub.seq, slow.pending

    seq, pending = asyncio.run(scenario())
    assert seq == 4
    assert pending is not None
    assert pending.startswith(b"id: 4\n")


def test_nothing_is_streamed_before_the_arbiter_probed() -> None:
    arb = Arbiter()  # its initial snapshot: no round yet
    hub = StreamHub("app", lambda: arb.snapshot, lambda: False, fresh_for=1.0)

    async def scenario() -> bytes | None:
        hub.bind(asyncio.get_running_loop())
        return hub.join().pending

    assert asyncio.run(scenario()) is None
    assert hub.seq == 0


def test_a_follower_thread_ends_with_a_dropped_manager(
    arbiter: tuple[Arbiter, StreamServer],
) -> None:
    _, server = arbiter
    owner = Owner()
    follower = follower_of(server.url, owner, silence=0.3)
    assert follower.wait_first(5.0)
    thread = next(t for t in threading.enumerate() if t.name == "pgfailover-follower-app")
    del owner
    gc.collect()
    # Nothing more comes (the snapshot is unchanged): after the silence the loop
    # finds its owner gone and ends, instead of reconnecting for ever.
    wait_for(lambda: not thread.is_alive(), timeout=5.0, what="the thread to end")
    follower.close()


def test_writes_held_by_the_source_are_released_when_it_goes_away() -> None:
    arb = Arbiter()
    arb.publish(HEALTHY)
    owner = Owner()
    server = StreamServer(arb)  # type: ignore[arg-type]
    follower = follower_of(server.url, owner, silence=5.0)
    try:
        assert follower.wait_first(5.0)
        arb.view.hold_writes()  # a switchover on the arbiter...
        wait_for(lambda: owner.view.held, what="writes held")
        server.close()  # ...and the arbiter dies in the middle of it
        wait_for(lambda: follower.mode == "probing", what="the fall back")
        assert not owner.view.held  # its own probing decides now
    finally:
        follower.close()
        server.close()


def test_a_stalled_arbiter_gives_a_new_follower_nothing() -> None:
    """Its last snapshot may name a primary that is gone: only a fresh one is handed out."""
    arb = Arbiter()
    arb.publish(HEALTHY)
    hub = StreamHub("app", lambda: arb.snapshot, lambda: False, fresh_for=0.05)

    async def scenario() -> tuple[bytes | None, bytes | None]:
        hub.bind(asyncio.get_running_loop())
        fresh = hub.join().pending
        await asyncio.sleep(0.1)  # the arbiter publishes nothing for longer than fresh_for
        return fresh, hub.join().pending

    fresh, stale = asyncio.run(scenario())
    assert fresh is not None
    assert stale is None


def test_an_older_snapshot_makes_the_follower_probe() -> None:
    """An arbiter behind a promotion the follower already saw is not followed back."""
    arb = Arbiter()
    arb.publish(HEALTHY)
    owner = Owner()
    owner.rounds.adopt(PROMOTED, held=False)  # what the manager already knows
    owner.rounds.stop_following()
    with StreamServer(arb) as server:  # type: ignore[arg-type]
        follower = follower_of(server.url, owner)
        try:
            assert not follower.wait_first(1.0)
            assert "older than this manager's" in follower.status()["reason"]
            assert owner.view.snapshot.primary == "node1"
        finally:
            follower.close()


def _post(url: str, body: bytes) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=body, method="POST")  # noqa: S310 - loopback
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b'{"node": "node0"}', 202, "probing"),
        (b'{"node": "node9"}', 404, "unknown node 'node9'"),
        (b"[1]", 400, "send {"),
        (b"{nope", 400, "send {"),
        (b'{"node": "' + b"x" * 2000 + b'"}', 413, "larger than 1024 bytes"),
    ],
    ids=["known node", "unknown node", "not an object", "not JSON", "too large"],
)
def test_a_follower_report_hurries_the_arbiter_and_nothing_else(
    arbiter: tuple[Arbiter, StreamServer], body: bytes, status: int, says: str
) -> None:
    arb, server = arbiter
    before = arb.view.snapshot
    code, answer = _post(server.url + "/failover/suspect", body)
    assert code == status
    assert says in json.dumps(answer)
    assert arb.woken == (1 if status == 202 else 0)
    assert arb.view.snapshot is before  # a report is no evidence: nothing else changes
    assert _get(server.url + "/failover/suspect")[0] == 405


def test_a_follower_reports_what_its_confirmation_found_gone(
    arbiter: tuple[Arbiter, StreamServer],
) -> None:
    arb, server = arbiter
    owner = Owner()
    follower = follower_of(server.url, owner)
    try:
        assert follower.wait_first(5.0)
        follower.report("node0")
        assert arb.woken == 1
        assert server.hub.reports == 1
        # Its next confirmations within REPORT_EVERY do not report node0 again (200
        # followers confirming four times a second would bury the arbiter); another
        # node is reported at once.
        follower.report("node0")
        follower.report("node1")
        assert server.hub.reports == 2
        assert arb.woken == 2
        # Later, a node still found gone is reported again.
        follower._reported["node0"] -= follower_module.REPORT_EVERY
        follower.report("node0")
        assert server.hub.reports == 3
    finally:
        follower.close()
