"""Failover on real clusters: auto, external, hung nodes, stale and split primaries."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from pgfailover import ClusterState, FailoverManager, NoPrimaryAvailable, SplitBrainError
from pgfailover.lab import LocalLab

from .helpers import FAST, Workload, manager_for, port_of, prepare, wait_caught_up, wait_until

STANDBYS = ("node1", "node2")


@pytest.fixture
def auto_mgr(sync_lab: LocalLab) -> Iterator[FailoverManager]:
    prepare(sync_lab)
    mgr = manager_for(sync_lab, FAST.replace(promotion="auto"))
    try:
        yield mgr
    finally:
        mgr.close()


@pytest.mark.slow
def test_auto_mode_promotes_on_primary_kill_and_loses_no_acknowledged_write(
    sync_lab: LocalLab, auto_mgr: FailoverManager
) -> None:
    old_port = sync_lab.node("node0").port
    with Workload(auto_mgr) as load:
        wait_until(lambda: load.acked_on(old_port) > 50, what="writes on node0")
        sync_lab.kill("node0")
        killed = time.monotonic()
        wait_until(
            lambda: any(p != old_port and t > killed for _, p, t in load.acked),
            what="a write on a new primary",
        )
        new_port = next(p for _, p, t in load.acked if p != old_port and t > killed)
        wait_until(lambda: load.acked_on(new_port) > 50, what="writes going on after the failover")
    new = port_of(sync_lab, new_port)
    assert auto_mgr.snapshot.primary == new
    assert not load.failed, load.failed[:3]
    assert len(load.unknown) <= 4  # at most the commits in flight at the kill, one per thread
    # The most advanced standby was promoted and the other one follows it.
    other = "node2" if new == "node1" else "node1"
    wait_until(
        lambda: sync_lab.run_sql(
            new,
            "SELECT 1 FROM pg_stat_replication"
            " WHERE application_name = %s AND state = 'streaming'",
            (other,),
        ),
        what=f"{other} to stream from {new}",
    )
    # With quorum sync every acknowledged write is on the new primary.
    acked = {i for i, _, _ in load.acked}
    present = {r[0] for r in sync_lab.run_sql(new, "SELECT id FROM w")}
    assert acked - present == set()
    event = auto_mgr.history()[-1]
    assert (event.kind, event.from_node, event.to_node, event.outcome) == (
        "failover",
        "node0",
        new,
        "completed",
    )
    assert event.promoted_by == "pgfailover"
    assert event.first_write_after is not None
    assert auto_mgr.get_metrics()["promotions_total"] == 1


def test_external_mode_follows_a_promotion_and_promotes_nothing(fresh_lab: LocalLab) -> None:
    prepare(fresh_lab)
    with manager_for(fresh_lab) as mgr:  # promotion="external" is the default
        assert (
            mgr.query("INSERT INTO w VALUES (1) RETURNING inet_server_port()")[0][0]
            == fresh_lab.node("node0").port
        )
        fresh_lab.stop("node0", "immediate")
        wait_until(
            lambda: mgr.snapshot.state is ClusterState.FAILOVER_IN_PROGRESS,
            what="the manager to see the primary gone",
        )
        # The manager must not promote by itself, however many rounds pass.
        rounds = mgr.snapshot.rounds
        wait_until(lambda: mgr.snapshot.rounds >= rounds + 10, what="ten more probe rounds")
        assert all(fresh_lab.in_recovery(n) for n in ("node1", "node2"))
        assert mgr.snapshot.primary is None
        fresh_lab.promote("node2")
        promoted = time.monotonic()
        rows = mgr.query("INSERT INTO w VALUES (2) RETURNING inet_server_port()")
        elapsed = time.monotonic() - promoted
        assert rows[0][0] == fresh_lab.node("node2").port
        assert elapsed < 1.0, f"the write followed the promotion after {elapsed:.3f}s"
        assert mgr.counters.as_dict()["promotions_total"] == 0
        event = mgr.history()[-1]
        assert (event.to_node, event.promoted_by, event.outcome) == ("node2", None, "completed")


@pytest.mark.slow
def test_hung_primary_is_failed_over_and_callers_are_unblocked(fresh_lab: LocalLab) -> None:
    prepare(fresh_lab)
    config = FAST.replace(promotion="auto", failover_wait_timeout=20.0)
    with manager_for(fresh_lab, config) as mgr:
        blocked_result: list[object] = []

        def stuck_writer() -> None:
            try:
                blocked_result.append(
                    mgr.query("INSERT INTO w VALUES (7) RETURNING inet_server_port()")
                )
            except Exception as exc:  # noqa: BLE001
                blocked_result.append(exc)

        # The writer takes a pooled connection to node0 and blocks once node0 hangs.
        fresh_lab.pause("node0")
        paused = time.monotonic()
        writer = threading.Thread(target=stuck_writer, daemon=True)
        writer.start()
        new = wait_until(
            lambda: mgr.snapshot.primary not in (None, "node0") and mgr.snapshot.primary,
            timeout=30,
            what="a new primary after the hang",
        )
        took = time.monotonic() - paused
        writer.join(config.failover_wait_timeout + 5)
        assert not writer.is_alive(), "a caller stayed blocked on the hung primary"
        assert blocked_result, "the blocked writer returned nothing"
        assert not isinstance(blocked_result[0], BaseException), blocked_result
        assert blocked_result[0] == [(fresh_lab.node(new).port,)]
        # Detection (3 probe timeouts) plus the standbys' wal_receiver_timeout (5 s in the lab).
        assert took < 15, f"failover after a hang took {took:.1f}s"
        fresh_lab.resume("node0")


def test_hung_standby_does_not_slow_probes_of_the_others(fresh_lab: LocalLab) -> None:
    with manager_for(fresh_lab) as mgr:
        mgr.stop_health_checks()
        fresh_lab.pause("node2")
        try:
            started = time.monotonic()
            snap = mgr.check_health()
            elapsed = time.monotonic() - started
            assert elapsed < mgr.config.health_check_timeout + 0.5
            assert snap.node("node0").up
            assert snap.node("node1").up
            assert not snap.node("node2").up
            assert (snap.node("node0").response_time or 1) < 0.5
            started = time.monotonic()
            snap = mgr.check_health()  # node2 failed last round: it gets only a short grace
            assert time.monotonic() - started < 0.5
            assert snap.primary == "node0"
        finally:
            fresh_lab.resume("node2")


def test_restarted_old_primary_on_the_old_timeline_receives_no_write(fresh_lab: LocalLab) -> None:
    prepare(fresh_lab)
    with manager_for(fresh_lab, FAST.replace(promotion="auto", fence_stale_primary=True)) as mgr:
        fresh_lab.kill("node0")
        wait_until(lambda: mgr.snapshot.primary in ("node1", "node2"), what="a failover")
        new = mgr.snapshot.primary
        assert new is not None
        fresh_lab.start("node0")  # comes back out of recovery on timeline 1
        wait_until(
            lambda: mgr.snapshot.node("node0").role.value == "stale", what="node0 seen as stale"
        )
        for i in range(100, 120):
            port = mgr.query("INSERT INTO w VALUES (%s) RETURNING inet_server_port()", (i,))[0][0]
            assert port == fresh_lab.node(new).port
        assert fresh_lab.run_sql("node0", "SELECT count(*) FROM w WHERE id >= 100") == [(0,)]
        wait_until(
            lambda: fresh_lab.run_sql("node0", "SHOW default_transaction_read_only") == [("on",)],
            what="node0 soft-fenced",
        )
        assert mgr.get_failover_status()["primary"]["name"] == new
        assert any(n["stale"] for n in mgr.get_failover_status()["standbys"])


def test_demoted_primary_answering_read_only_sends_writes_to_the_real_primary(
    fresh_lab: LocalLab,
) -> None:
    prepare(fresh_lab)
    with manager_for(fresh_lab) as mgr:
        mgr.query("INSERT INTO w VALUES (1)")
        mgr.stop_health_checks()  # routing still believes node0 is primary
        with psycopg.connect(fresh_lab.dsn("node0"), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
            conn.execute("SELECT pg_reload_conf()")
        wait_until(
            lambda: fresh_lab.run_sql("node0", "SHOW default_transaction_read_only") == [("on",)],
            what="node0 read-only",
        )
        fresh_lab.kill("node0")
        fresh_lab.start("node0")  # read-only from now on: every write gets 25006
        fresh_lab.promote("node1")
        assert mgr.snapshot.primary == "node0"
        rows = mgr.query("INSERT INTO w VALUES (2) RETURNING inet_server_port()")
        assert rows == [(fresh_lab.node("node1").port,)]
        assert mgr.snapshot.primary == "node1"


def test_two_primaries_on_one_timeline_refuse_writes(fresh_lab: LocalLab) -> None:
    with manager_for(fresh_lab, FAST.replace(failover_wait_timeout=1.0)) as mgr:
        fresh_lab.promote("node1")
        fresh_lab.promote("node2")  # also timeline 2: nothing tells them apart
        wait_until(lambda: mgr.snapshot.state is ClusterState.SPLIT_BRAIN, what="split brain")
        assert set(mgr.snapshot.split_brain) == {"node1", "node2"}
        with pytest.raises(SplitBrainError, match="split brain"):
            mgr.query("SELECT 1")
        with pytest.raises(SplitBrainError), mgr.get_client():
            pass
        assert mgr.history()[-1].kind == "split_brain"
        assert mgr.get_metrics()["split_brain"] == 1


def test_standby_lost_and_back_goes_degraded_recovering_healthy(fresh_lab: LocalLab) -> None:
    config = FAST.replace(unhealthy_threshold=3, healthy_threshold=3)
    with manager_for(fresh_lab, config) as mgr:
        seen: list[ClusterState] = []
        mgr.on_state_change(lambda old, new, snap: seen.append(new))
        recovered: list[str] = []
        mgr.on_recovery(recovered.append)
        wait_until(lambda: mgr.snapshot.state is ClusterState.HEALTHY, what="healthy")
        fresh_lab.stop("node2")
        wait_until(lambda: not mgr.snapshot.node("node2").healthy, what="node2 unhealthy")
        assert mgr.snapshot.node("node2").consecutive_failures >= 3
        fresh_lab.start("node2")
        wait_until(lambda: mgr.snapshot.state is ClusterState.HEALTHY, what="healthy again")
        assert seen[:3] == [
            ClusterState.DEGRADED,
            ClusterState.RECOVERY_IN_PROGRESS,
            ClusterState.HEALTHY,
        ]
        assert recovered == ["node2"]
        assert mgr.get_metrics()["recoveries_total"] == 1


def test_no_primary_at_all_fails_writes_after_the_wait_and_reads_go_on(
    fresh_lab: LocalLab,
) -> None:
    with manager_for(fresh_lab, FAST.replace(failover_wait_timeout=1.0)) as mgr:
        fresh_lab.kill("node0")
        started = time.monotonic()
        with pytest.raises(NoPrimaryAvailable, match="no writable primary within 1s"):
            mgr.query("SELECT 1")
        assert time.monotonic() - started < 3
        port = mgr.query("SELECT inet_server_port()", readonly=True)[0][0]
        assert port in (fresh_lab.node("node1").port, fresh_lab.node("node2").port)


def test_a_standby_whose_receiver_is_down_shows_the_timeline_it_is_on(fresh_lab: LocalLab) -> None:
    """node2 follows node1 onto timeline 2, then node1 dies: a new manager must not say 1."""
    wait_caught_up(fresh_lab)  # node2 ahead of node1 could not follow it
    fresh_lab.kill("node0")
    fresh_lab.promote("node1")
    fresh_lab.follow("node2", "node1")
    fresh_lab.kill("node1")
    checkpoint = fresh_lab.run_sql("node2", "SELECT timeline_id FROM pg_control_checkpoint()")
    assert checkpoint == [(1,)]  # what PostgreSQL alone says until its next restartpoint
    with manager_for(fresh_lab, FAST.replace(promotion="manual")) as mgr:
        assert mgr.snapshot.node("node2").timeline == 2
        assert mgr.get_failover_status()["nodes"][2]["timeline"] == 2


def test_a_promotion_with_nothing_to_change_reloads_no_configuration(fresh_lab: LocalLab) -> None:
    """Asynchronous replication and no fence: nothing to write on the new primary, so
    no reload, which every pooled session there would pay for at its next statement
    (the write it held through the failover)."""
    prepare(fresh_lab)
    mgr = manager_for(fresh_lab, FAST.replace(promotion="auto"))
    try:
        loaded = {n: fresh_lab.run_sql(n, "SELECT pg_conf_load_time()")[0][0] for n in STANDBYS}
        fresh_lab.kill("node0")
        wait_until(
            lambda: any(e.outcome == "completed" for e in mgr.history()), what="the promotion"
        )
        new = mgr.history()[-1].to_node
        assert new in STANDBYS
        mgr.query("INSERT INTO w VALUES (1)")  # it takes writes: not fenced
        assert fresh_lab.run_sql(new, "SELECT pg_conf_load_time()")[0][0] == loaded[new]
    finally:
        mgr.close()
