"""The lab's actions, each checked through SQL on a real cluster."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg
import pytest

from pgfailover.errors import LabError
from pgfailover.lab import LocalLab
from pgfailover.lab.proc import processes_in


def wait_until(check: object, timeout: float = 15.0, what: str = "condition") -> None:
    """Poll ``check()`` until true or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except psycopg.Error:
            pass
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def timeline(lab: LocalLab, name: str) -> int:
    return int(lab.run_sql(name, "SELECT timeline_id FROM pg_control_checkpoint()")[0][0])


def test_standbys_replay_what_the_primary_commits(shared_lab: LocalLab) -> None:
    marker = f"m{time.monotonic_ns()}"
    shared_lab.run_sql("node0", "CREATE TABLE IF NOT EXISTS lab_probe (v text)")
    shared_lab.run_sql("node0", "INSERT INTO lab_probe VALUES (%s)", (marker,))
    for standby in ("node1", "node2"):
        wait_until(
            lambda s=standby: shared_lab.run_sql(
                s, "SELECT 1 FROM lab_probe WHERE v = %s", (marker,)
            ),
            what=f"{standby} to replay the insert",
        )
        assert shared_lab.in_recovery(standby) is True
    rows = shared_lab.run_sql(
        "node0", "SELECT application_name, state FROM pg_stat_replication ORDER BY 1"
    )
    assert rows == [("node1", "streaming"), ("node2", "streaming")]
    slots = shared_lab.run_sql(
        "node0", "SELECT slot_name, active FROM pg_replication_slots ORDER BY 1"
    )
    assert slots == [("node1", True), ("node2", True)]
    assert shared_lab.run_sql("node0", "SHOW wal_log_hints") == [("on",)]


def test_status_reports_roles_and_upstreams(shared_lab: LocalLab) -> None:
    by_name = {s.name: s for s in shared_lab.status()}
    assert by_name["node0"].role == "primary"
    assert by_name["node0"].upstream is None
    assert by_name["node1"].role == by_name["node2"].role == "standby"
    assert by_name["node1"].upstream == by_name["node2"].upstream == "node0"
    assert {s.process for s in by_name.values()} == {"running"}
    assert shared_lab.primary() == "node0"


def test_kill_leaves_nothing_of_the_node_running(fresh_lab: LocalLab) -> None:
    datadir = fresh_lab.local_node("node0").datadir
    assert len(processes_in(datadir)) > 3
    fresh_lab.kill("node0")
    assert processes_in(datadir) == []
    assert fresh_lab.process_state("node0") == "stopped"
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(fresh_lab.dsn("node0"), connect_timeout=2)
    # The standbys notice at once: the kernel closed the replication sockets.
    wait_until(
        lambda: (
            not fresh_lab.run_sql(
                "node1", "SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming'"
            )
        ),
        what="node1's WAL receiver to lose node0",
    )


def test_promote_takes_a_standby_out_of_recovery_on_a_new_timeline(fresh_lab: LocalLab) -> None:
    before = timeline(fresh_lab, "node1")
    fresh_lab.kill("node0")
    fresh_lab.promote("node1")
    assert fresh_lab.in_recovery("node1") is False
    tli = fresh_lab.run_sql(
        "node1",
        "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int",
    )[0][0]
    assert tli == before + 1
    fresh_lab.run_sql("node1", "CREATE TABLE after_promotion (id int)")
    with pytest.raises(LabError, match="not a running standby"):
        fresh_lab.promote("node1")


def test_follow_and_rejoin_rebuild_the_cluster_around_a_new_primary(fresh_lab: LocalLab) -> None:
    fresh_lab.run_sql("node0", "CREATE TABLE t (id int)")
    fresh_lab.kill("node0")
    fresh_lab.promote("node1")
    fresh_lab.follow("node2", "node1")
    fresh_lab.rejoin("node0")
    rows = fresh_lab.run_sql(
        "node1",
        "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming' ORDER BY 1",
    )
    assert rows == [("node0",), ("node2",)]
    assert fresh_lab.in_recovery("node0") is True
    fresh_lab.run_sql("node1", "INSERT INTO t VALUES (42)")
    for standby in ("node0", "node2"):
        wait_until(
            lambda s=standby: fresh_lab.run_sql(s, "SELECT 1 FROM t WHERE id = 42"),
            what=f"{standby} to replay from node1",
        )
    upstreams = {s.name: s.upstream for s in fresh_lab.status()}
    assert upstreams == {"node0": "node1", "node1": None, "node2": "node1"}


def test_pause_makes_connections_time_out_and_resume_recovers(fresh_lab: LocalLab) -> None:
    fresh_lab.pause("node2")
    assert fresh_lab.process_state("node2") == "paused"
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(fresh_lab.dsn("node2"), connect_timeout=1)
    assert time.monotonic() - started >= 0.9  # a hang, not a refusal
    fresh_lab.resume("node2")
    assert fresh_lab.process_state("node2") == "running"
    assert fresh_lab.run_sql("node2", "SELECT 1") == [(1,)]


def test_quorum_sync_blocks_a_commit_no_standby_acknowledges(sync_lab: LocalLab) -> None:
    names = sync_lab.run_sql("node0", "SHOW synchronous_standby_names")[0][0]
    assert names == "ANY 1 (node1, node2)"
    sync_lab.run_sql("node0", "CREATE TABLE s (id int)")
    sync_lab.stop("node1")
    sync_lab.stop("node2")
    done = threading.Event()

    def commit() -> None:
        with psycopg.connect(sync_lab.dsn("node0"), autocommit=True) as conn:
            conn.execute("SET application_name = 'blocked_writer'")
            conn.execute("INSERT INTO s VALUES (1)")
        done.set()

    writer = threading.Thread(target=commit, daemon=True)
    writer.start()
    wait_until(
        lambda: sync_lab.run_sql(
            "node0",
            "SELECT 1 FROM pg_stat_activity WHERE application_name = 'blocked_writer' "
            "AND wait_event = 'SyncRep'",
        ),
        what="the commit to wait for a synchronous standby",
    )
    assert not done.is_set()
    sync_lab.start("node2")
    assert done.wait(30), "the commit did not complete once a standby acknowledged"
    writer.join(5)


def test_promoted_standby_does_not_hang_commits_on_inherited_sync(sync_lab: LocalLab) -> None:
    sync_lab.kill("node0")
    sync_lab.promote("node1")
    assert sync_lab.run_sql("node1", "SHOW synchronous_standby_names") == [("",)]
    with psycopg.connect(
        sync_lab.dsn("node1"), autocommit=True, options="-c statement_timeout=5s"
    ) as conn:
        conn.execute("CREATE TABLE after (id int)")
    sync_lab.follow("node2", "node1")
    assert sync_lab.run_sql("node1", "SHOW synchronous_standby_names") == [("ANY 1 (node2)",)]


def test_stopped_lab_restarts_and_keeps_its_ports(fresh_lab: LocalLab) -> None:
    ports = [n.port for n in fresh_lab.nodes]
    fresh_lab.stop_all()
    assert [s.process for s in fresh_lab.status()] == ["stopped"] * 3
    reopened = LocalLab.open(fresh_lab.directory)
    reopened.start_all()
    assert [n.port for n in reopened.nodes] == ports
    assert reopened.primary() == "node0"
    reopened.wait_streaming("node1", "node0")


def test_a_taken_port_is_a_clear_error(fresh_lab: LocalLab) -> None:
    fresh_lab.stop("node2")
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", fresh_lab.node("node2").port))
        squatter.listen()
        with pytest.raises(LabError, match=rf"port {fresh_lab.node('node2').port} .* taken"):
            fresh_lab.start("node2")


def test_an_existing_data_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "something").write_text("mine")
    with pytest.raises(LabError, match="exists and is not empty"):
        LocalLab.create(tmp_path)
    assert (tmp_path / "something").read_text() == "mine"


@pytest.mark.slow
def test_cli_scenario_from_the_readme(tmp_path: Path) -> None:
    """lab up --sync, kill node0, promote node1, rejoin node0, status, down."""
    lab_dir = Path(tempfile.gettempdir()) / f"pgfl-cli-{os.getpid()}-{time.monotonic_ns()}"
    env = {**os.environ, "PGFAILOVER_LAB_DIR": str(lab_dir)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pgfailover", "lab", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    try:
        up = run("up", "--standbys", "2", "--sync")
        assert up.returncode == 0, up.stderr
        assert "multi-host URL: postgresql://postgres@127.0.0.1:" in up.stdout
        for args in (("kill", "node0"), ("promote", "node1"), ("rejoin", "node0")):
            result = run(*args)
            assert result.returncode == 0, result.stderr
        status = run("status", "--json")
        nodes = {n["name"]: n for n in json.loads(status.stdout)}
        assert nodes["node0"]["role"] == "standby"
        assert nodes["node0"]["upstream"] == "node1"
        assert nodes["node1"]["role"] == "primary"
        assert nodes["node1"]["timeline"] == 2
        bad = run("kill", "node9")
        assert bad.returncode == 1
        assert "unknown node 'node9'" in bad.stderr
        assert "Traceback" not in bad.stderr
    finally:
        down = run("down")
        assert down.returncode == 0, down.stderr
    assert not lab_dir.exists()
