"""The manager's everyday surface on a real cluster."""

from __future__ import annotations

import functools
import io
import json
import threading
import time

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from pgfailover import ClusterState, FailoverManager, ManagerClosed, Node, PromotionRefused
from pgfailover.demo import run_demo
from pgfailover.dispatch import returns_rows
from pgfailover.lab import LocalLab

from .helpers import FAST, RESULT_SHAPES, expected_rows, manager_for, wait_caught_up, wait_until


def test_writes_go_to_the_primary_and_reads_to_standbys(shared_lab: LocalLab) -> None:
    ports = {n.name: n.port for n in shared_lab.nodes}
    with manager_for(shared_lab) as mgr:
        assert mgr.snapshot.primary == "node0"
        assert mgr.query("SELECT inet_server_port()") == [(ports["node0"],)]
        reads = {mgr.query("SELECT inet_server_port()", readonly=True)[0][0] for _ in range(6)}
        assert reads == {ports["node1"], ports["node2"]}
        with mgr.get_client() as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
        with mgr.get_client(readonly=True) as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        with mgr.get_active_pool().connection() as conn:
            assert conn.execute("SELECT inet_server_port()").fetchone() == (ports["node0"],)
        assert mgr.check_primary_health()
        assert mgr.check_standby_health(0)
        assert mgr.check_standby_health("node2")
        metrics = mgr.get_metrics()
        assert metrics["primary_healthy"] == 1
        assert metrics["standby_healthy"] == {"node1": 1, "node2": 1}


def test_query_returns_what_psycopg_returns_for_every_result_shape(
    shared_lab: LocalLab,
) -> None:
    """query() fetches rows exactly when psycopg's cursor describes a result set."""
    with psycopg.connect(shared_lab.url) as conn, manager_for(shared_lab) as mgr:
        for sql in RESULT_SHAPES:
            with conn.transaction():
                cur = conn.execute(sql)
                assert returns_rows(cur) == (cur.description is not None), sql
            expected = expected_rows(conn, sql)
            assert mgr.query(sql) == expected, sql
            assert mgr.query(sql, readonly=True) == expected, sql
        assert expected_rows(conn, "SELECT") == [()]  # a result set with no column
        assert expected_rows(conn, "DO $$ BEGIN END $$") == []  # no result set


def test_many_threads_query_while_the_monitor_runs(shared_lab: LocalLab) -> None:
    with manager_for(shared_lab) as mgr:
        errors: list[BaseException] = []

        def work() -> None:
            try:
                for _ in range(50):
                    assert mgr.query("SELECT 1") == [(1,)]
                    assert mgr.query("SELECT 2", readonly=True) == [(2,)]
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors
        assert mgr.counters.as_dict()["probe_rounds_total"] >= 1


def test_status_is_json_and_never_shows_a_password(shared_lab: LocalLab) -> None:
    shared_lab.run_sql(
        "node0",
        "DO $$BEGIN CREATE ROLE app LOGIN PASSWORD 'hunter2'; "
        "EXCEPTION WHEN duplicate_object THEN NULL; END$$",
    )
    dsn = shared_lab.url.replace("postgres@", "app:hunter2@")
    with FailoverManager.from_dsn(dsn, config=FAST) as mgr:
        status = mgr.get_failover_status()
        text = json.dumps(status) + json.dumps(mgr.get_metrics()) + repr(mgr) + repr(mgr.nodes)
        assert "hunter2" not in text
        assert status["state"] in ("healthy", "degraded")  # app lacks pg_monitor: receivers unseen
        assert status["current_primary"] == f"127.0.0.1:{shared_lab.node('node0').port}"
        assert len(status["standbys"]) == 2
        for node in status["nodes"]:
            assert {
                "healthy",
                "last_check",
                "failure_count",
                "response_time_ms",
                "down_since",
                "promotion_eligible",
                "role",
                "timeline",
                "lag_bytes",
            } <= node.keys()
        assert mgr.query("SELECT current_user") == [("app",)]


def test_manual_failover_is_guarded_and_force_switches_over(fresh_lab: LocalLab) -> None:
    with manager_for(fresh_lab, FAST.replace(promotion="manual")) as mgr:
        with pytest.raises(PromotionRefused) as refused:
            mgr.perform_failover("node1")
        assert refused.value.guard == "primary_reachable"
        assert "--force" in str(refused.value)
        assert mgr.history()[-1].outcome == "refused"
        event = mgr.perform_failover("node1", force=True)
        assert (event.kind, event.from_node, event.to_node) == ("switchover", "node0", "node1")
        wait_until(lambda: mgr.snapshot.primary == "node1", what="writes to switch to node1")
        assert mgr.query("SELECT inet_server_port()") == [(fresh_lab.node("node1").port,)]
        assert fresh_lab.run_sql("node0", "SHOW default_transaction_read_only") == [("on",)]
        assert mgr.snapshot.node("node0").role.value == "stale"
        wait_until(
            lambda: fresh_lab.run_sql(
                "node1", "SELECT 1 FROM pg_stat_replication WHERE application_name = 'node2'"
            ),
            what="node2 to follow node1",
        )


def test_manual_failover_after_a_crash_promotes_the_named_standby(fresh_lab: LocalLab) -> None:
    with manager_for(fresh_lab, FAST.replace(promotion="manual")) as mgr:
        wait_caught_up(fresh_lab)  # else node1 may hold more WAL: node2 would be refused
        fresh_lab.kill("node0")
        wait_until(
            lambda: mgr.snapshot.state is ClusterState.FAILOVER_IN_PROGRESS, what="the loss"
        )
        assert mgr.snapshot.primary is None  # manual: nothing happens alone
        event = mgr.perform_failover("node2")
        assert (event.from_node, event.to_node, event.outcome) == ("node0", "node2", "completed")
        assert mgr.query("SELECT inet_server_port()") == [(fresh_lab.node("node2").port,)]


def test_close_returns_on_time_with_a_hung_node(fresh_lab: LocalLab) -> None:
    mgr = manager_for(fresh_lab)
    fresh_lab.pause("node1")
    try:
        mgr.check_health()
        started = time.monotonic()
        mgr.close(timeout=2.0)
        assert time.monotonic() - started < 3.0
        with pytest.raises(ManagerClosed):
            mgr.query("SELECT 1")
        assert isinstance(ManagerClosed("x"), psycopg.OperationalError)
    finally:
        fresh_lab.resume("node1")
    alive = [t.name for t in threading.enumerate() if t.name.startswith("pgfailover-monitor")]
    assert alive == []


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_demo_fails_over_without_losing_a_write() -> None:
    out = io.StringIO()
    report = run_demo(out, seconds_after_kill=2.5)
    text = out.getvalue()
    assert report.new_primary in ("node1", "node2")
    assert report.lost == 0
    assert not report.failed
    assert report.first_write_after_kill is not None
    assert "KILL node0" in text
    assert "acknowledged but lost        0" in text
    # each state change once (the manager's line, timestamped), both times labelled
    assert text.count("healthy -> degraded") == 1, text
    assert text.count("failover_in_progress -> failover_complete") == 1, text
    assert "detection -> promoted" in text
    assert "(what the application saw" in text


def test_a_sql_ascii_database_is_probed_and_used(fresh_lab: LocalLab) -> None:
    """psycopg returns bytes for text from a SQL_ASCII database (an initdb without a
    locale, as in a bare container): the probe must still read its answers."""
    fresh_lab.run_sql(
        "node0",
        "CREATE DATABASE ascii_db ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' "
        "TEMPLATE template0",
    )
    nodes = [
        Node(n.name, make_conninfo(n.dsn, dbname="ascii_db"), priority=n.priority)
        for n in fresh_lab.manager_nodes()
    ]

    def replayed(name: str) -> bool:
        sql = "SELECT count(*) FROM pg_database WHERE datname = 'ascii_db'"
        return bool(fresh_lab.run_sql(name, sql)[0][0] == 1)

    for standby in ("node1", "node2"):  # both: a standby without it is down to the manager
        wait_until(functools.partial(replayed, standby), what=f"the database on {standby}")
    with FailoverManager(nodes=nodes, config=FAST) as mgr:
        assert mgr.snapshot.primary == "node0"
        assert {n.name for n in mgr.snapshot.nodes if n.serves_reads} == {"node1", "node2"}
        assert mgr.snapshot.node("node1").receiver_timeout is not None  # a text setting, read
        assert mgr.query("SELECT 1", readonly=True) == [(1,)]
