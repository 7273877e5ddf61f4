"""The manager's lifecycle around failures: close() with work in flight, a failed
open(), callbacks that call back into the manager, a node of another cluster."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from pgfailover import ConfigurationError, FailoverManager, ManagerClosed
from pgfailover.config import Node
from pgfailover.errors import WriteOutcomeUnknown
from pgfailover.events import FailoverEvent
from pgfailover.lab import LocalLab

from .helpers import FAST, manager_for, prepare, wait_until


def _pgfailover_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("pgfailover")}


def _run_in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []

    def body() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # noqa: BLE001 - the outcome is asserted on
            out.append(exc)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, out


@pytest.fixture
def paused_primary(fresh_lab: LocalLab) -> Iterator[LocalLab]:
    prepare(fresh_lab)
    try:
        yield fresh_lab
    finally:
        if fresh_lab.process_state("node0") == "paused":
            fresh_lab.resume("node0")


def test_close_unblocks_a_writer_stuck_on_a_hung_primary(paused_primary: LocalLab) -> None:
    # external mode: nothing will promote, so only close() can free the writer.
    mgr = manager_for(
        paused_primary, FAST.replace(failover_wait_timeout=60.0, pool_min_size=1, pool_max_size=1)
    )
    mgr.query("INSERT INTO w VALUES (1)")
    mgr.stop_health_checks()  # routing keeps believing node0 is the primary
    paused_primary.pause("node0")
    writer, outcome = _run_in_thread(lambda: mgr.query("INSERT INTO w VALUES (2)"))
    wait_until(
        lambda: mgr.pool("node0").get_stats().get("pool_available") == 0,
        what="the writer to hold node0's only pooled connection",
    )
    assert writer.is_alive(), f"the writer did not block on the hung primary: {outcome}"
    started = time.monotonic()
    mgr.close(timeout=2.0)
    writer.join(1.0)
    assert not writer.is_alive(), "the writer was still blocked 1 s after close() returned"
    assert time.monotonic() - started < 3.5
    assert isinstance(outcome[0], ManagerClosed | WriteOutcomeUnknown), outcome


def test_callers_waiting_for_a_pooled_connection_get_manager_closed(
    shared_lab: LocalLab,
) -> None:
    mgr = FailoverManager(
        nodes=shared_lab.manager_nodes(),
        config=FAST.replace(pool_min_size=1, pool_max_size=1, pool_timeout=30.0),
    ).open()
    hold = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with mgr.get_client():
            hold.set()
            release.wait(10)

    holding = threading.Thread(target=holder, daemon=True)
    holding.start()
    assert hold.wait(10)
    waiters = [_run_in_thread(lambda: mgr.query("SELECT 1", readonly=False)) for _ in range(5)]
    wait_until(
        lambda: mgr.pool("node0").get_stats().get("requests_waiting") == 5,
        what="five callers queued on the pool",
    )
    assert all(t.is_alive() for t, _ in waiters)
    mgr.close(timeout=2.0)
    release.set()
    holding.join(5)
    for thread, outcome in waiters:
        thread.join(3)
        assert not thread.is_alive()
        assert isinstance(outcome[0], ManagerClosed), outcome


def test_a_node_of_another_cluster_is_refused_and_a_failed_open_leaves_no_thread(
    shared_lab: LocalLab, fresh_lab: LocalLab
) -> None:
    before = _pgfailover_threads()
    nodes = [*shared_lab.manager_nodes()[:2], Node("intruder", fresh_lab.dsn("node1"))]
    mgr = FailoverManager(nodes=nodes, config=FAST)
    with pytest.raises(ConfigurationError, match="intruder belongs to another cluster"):
        mgr.open()
    assert mgr.closed

    def settled() -> bool:
        return _pgfailover_threads() <= before

    wait_until(settled, timeout=10, what="every thread of the failed open() to end")


def test_callbacks_run_with_no_lock_held_and_may_call_the_manager(fresh_lab: LocalLab) -> None:
    prepare(fresh_lab)
    with manager_for(fresh_lab, FAST.replace(promotion="auto")) as mgr:
        seen: list[tuple[str, bool, str | None]] = []
        actions = mgr._sup.actions

        def on_failover(event: FailoverEvent) -> None:
            locked = actions.promoting
            snap = mgr.check_health()  # re-enters the manager: must not deadlock
            seen.append((event.outcome, locked, snap.primary))

        mgr.on_failover(on_failover)
        fresh_lab.kill("node0")
        wait_until(lambda: seen, timeout=30, what="the failover callback")
        outcome, locked, primary = seen[0]
        assert outcome == "completed"
        assert not locked, "the callback ran under the promotion lock"
        assert primary in ("node1", "node2")
        # The monitor is alive after the callback re-entered the manager.
        rounds = mgr.snapshot.rounds
        wait_until(lambda: mgr.snapshot.rounds > rounds + 3, what="more monitor rounds")


def test_auto_mode_says_loudly_what_failover_time_the_servers_settings_give(
    fresh_lab: LocalLab, caplog: pytest.LogCaptureFixture
) -> None:
    # wal_receiver_timeout=0: the manager must leave the servers' 60 s default alone.
    config = FAST.replace(promotion="auto", wal_receiver_timeout=0)
    with caplog.at_level("WARNING", logger="pgfailover"), manager_for(fresh_lab, config) as mgr:
        wait_until(
            lambda: mgr.get_failover_status()["failure_detection"]["warning"],
            what="a warning in status",
        )
        detection = mgr.get_failover_status()["failure_detection"]
        assert detection["hang_failover_seconds"] == 31.0  # 60 s / 2 + 1 s of margin
        assert "31s" in detection["warning"]
        assert mgr.get_metrics()["hang_failover_seconds"] == 31.0
        assert fresh_lab.run_sql("node1", "SHOW wal_receiver_timeout") == [("1min",)]
    assert any("left to the servers" in r.getMessage() for r in caplog.records)
