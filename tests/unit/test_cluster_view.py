"""ClusterView: publishing snapshots, suspects, and waiting for a primary, without PostgreSQL."""

from __future__ import annotations

import threading
import time

import pytest

from pgfailover.cluster import ClusterView
from pgfailover.errors import ManagerClosed, NoPrimaryAvailable, SplitBrainError
from pgfailover.transition import initial_snapshot

from .helpers import NODES, down, healthy_round, primary, run, standby

HEALTHY, _ = run([healthy_round()])
LOST, _ = run([healthy_round(), *[[down("node0"), standby("node1"), standby("node2")]] * 3])
PROMOTED, _ = run(
    [[down("node0"), primary("node1", tl=2), standby("node2", tl=2, upstream="node1")]],
    start=LOST,
    t0=2000.0,
)
SPLIT, _ = run([healthy_round(), [primary("node0"), primary("node1"), standby("node2")]])


def view(snap: object = None) -> ClusterView:
    return ClusterView("app", initial_snapshot(NODES) if snap is None else snap, 1.0)  # type: ignore[arg-type]


def test_a_suspect_is_avoided_until_a_later_probe_finds_it_up() -> None:
    v = view(HEALTHY)
    assert v.suspect("node0") is True
    assert v.suspect("node0") is False  # already suspect: no second log line
    assert v.suspects == frozenset({"node0"})
    v.publish(HEALTHY, probed_since=0.0)  # a round that began before the suspicion
    assert v.suspects == frozenset({"node0"})
    v.publish(HEALTHY, probed_since=time.time() + 1)  # a round begun after it: node0 up
    assert v.suspects == frozenset()


def test_waiting_for_a_primary_returns_when_one_is_published() -> None:
    v = view(LOST)
    threading.Timer(0.1, v.publish, args=(PROMOTED, 0.0)).start()
    assert v.wait_for_primary(time.monotonic() + 5, poll=0.05) == "node1"


@pytest.mark.parametrize(
    ("snap", "error", "match"),
    [
        (LOST, NoPrimaryAvailable, "no writable primary within 1s"),
        (SPLIT, SplitBrainError, "split brain"),
    ],
    ids=["no primary until the deadline", "split brain refuses at once"],
)
def test_waiting_for_a_primary_fails_clearly(snap: object, error: type, match: str) -> None:
    v = view(snap)
    with pytest.raises(error, match=match):
        v.wait_for_primary(time.monotonic() + 0.2, poll=0.05)


def test_close_wakes_a_waiting_writer_with_manager_closed() -> None:
    v = view(LOST)
    outcome: list[BaseException] = []

    def wait() -> None:
        try:
            v.wait_for_primary(time.monotonic() + 30, poll=10.0)
        except BaseException as exc:  # noqa: BLE001 - asserted on
            outcome.append(exc)

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    v.close()
    waiter.join(2)
    assert not waiter.is_alive()
    assert isinstance(outcome[0], ManagerClosed)


def test_a_waiting_caller_probes_between_waits_when_asked_to() -> None:
    v = view(LOST)
    calls: list[float] = []

    def probe() -> None:
        calls.append(time.monotonic())
        if len(calls) == 2:
            v.publish(PROMOTED, 0.0)

    assert v.wait_for_primary(time.monotonic() + 5, poll=0.01, probe=probe) == "node1"
    assert len(calls) == 2
