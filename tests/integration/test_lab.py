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
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from pgfailover.cli.app import cli
from pgfailover.errors import LabError
from pgfailover.lab import LocalLab, netfault
from pgfailover.lab.proc import processes_in

from .helpers import prepare


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
    # Both standbys replayed the last write before the kill: node2 is not ahead of
    # node1 (then it could not follow node1 on its new timeline; that is no lab bug).
    prepare(fresh_lab)
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
    fresh_lab.run_sql("node1", "INSERT INTO w VALUES (42)")
    for standby in ("node0", "node2"):
        wait_until(
            lambda s=standby: fresh_lab.run_sql(s, "SELECT 1 FROM w WHERE id = 42"),
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


# -- the client address and network faults -----------------------------------


def test_nodes_answer_on_the_client_address_too(shared_lab: LocalLab) -> None:
    for name in ("node0", "node1"):
        with psycopg.connect(shared_lab.client_dsn(name), connect_timeout=2) as conn:
            row = conn.execute("SELECT host(inet_server_addr()), pg_is_in_recovery()").fetchone()
        assert row == ("127.0.0.2", name != "node0")
    assert {n.dsn.split()[0] for n in shared_lab.manager_nodes(client_address=True)} == {
        "host=127.0.0.2"
    }


def test_failure_detection_runs_on_postgres_defaults(shared_lab: LocalLab) -> None:
    names = ["wal_receiver_status_interval", "wal_receiver_timeout", "wal_sender_timeout"]
    for node in ("node0", "node1"):
        rows = shared_lab.run_sql(
            node,
            "SELECT name, setting, source FROM pg_settings WHERE name = ANY(%s) ORDER BY 1",
            (names,),
        )
        assert rows == [
            ("wal_receiver_status_interval", "10", "default"),
            ("wal_receiver_timeout", "60000", "default"),
            ("wal_sender_timeout", "60000", "default"),
        ]


@pytest.fixture
def _netfaults_usable() -> None:
    """Skip without root; under ``make test`` (which installs iptables) fail if missing."""
    if os.geteuid() != 0:
        pytest.skip("network faults need root")
    reason = netfault.unavailable_reason()
    if reason:
        if os.environ.get("PGFAILOVER_REQUIRE_TOOLS"):
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture
def fault_lab(_netfaults_usable: None, fresh_lab: LocalLab) -> Iterator[LocalLab]:
    """A fresh lab whose network faults are healed however the test ends."""
    try:
        yield fresh_lab
    finally:
        fresh_lab.heal()


def lab_rules(lab: LocalLab) -> list[netfault.TaggedRule]:
    """This lab's rules, as ``iptables -S`` lists them."""
    listing = subprocess.run(
        ["iptables", "-w", "10", "-S"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    return netfault.tagged_rules(listing, f"{netfault.TAG_PREFIX}:{lab.net.lab}:")


def connect_fails_slowly(dsn: str) -> None:
    """A new connection hangs until its timeout: no refusal, no reset."""
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=1)
    assert time.monotonic() - started >= 0.9, "refused at once: not a black hole"


def test_blackhole_silences_new_and_open_connections_until_healed(fault_lab: LocalLab) -> None:
    with psycopg.connect(fault_lab.dsn("node0"), autocommit=True) as conn:
        fault_lab.blackhole("node0")
        assert fault_lab.faults() == {"node0": "blackhole"}
        assert len(lab_rules(fault_lab)) == 2
        connect_fails_slowly(fault_lab.dsn("node0"))
        connect_fails_slowly(fault_lab.client_dsn("node0"))
        assert fault_lab.process_state("node0") == "running"

        outcome: list[object] = []
        done = threading.Event()

        def query() -> None:
            try:
                outcome.append(conn.execute("SELECT 42").fetchone())
            except psycopg.Error as exc:
                outcome.append(exc)
            done.set()

        threading.Thread(target=query, daemon=True).start()
        assert not done.wait(1.0), f"the open connection answered: {outcome}"
        by_name = {s.name: s for s in fault_lab.status()}
        assert (by_name["node0"].fault, by_name["node0"].role) == ("blackhole", None)
        assert (by_name["node1"].fault, by_name["node1"].role) == (None, "standby")

        fault_lab.heal("node0")
        assert fault_lab.faults() == {}
        assert lab_rules(fault_lab) == []
        assert done.wait(15), "the open connection's query never finished after heal"
        # TCP retransmits what was dropped: the connection survives a short black hole.
        assert outcome == [(42,)]
    assert fault_lab.run_sql("node0", "SELECT 1") == [(1,)]
    with psycopg.connect(fault_lab.client_dsn("node0"), connect_timeout=2) as again:
        assert again.execute("SELECT 1").fetchone() == (1,)


def test_partition_cuts_clients_off_while_replication_streams(fault_lab: LocalLab) -> None:
    fault_lab.run_sql("node0", "CREATE TABLE across_partition (v int)")
    fault_lab.blackhole("node0")
    fault_lab.partition("node0")  # replaces the black hole
    assert fault_lab.faults() == {"node0": "partition"}
    assert len(lab_rules(fault_lab)) == 2

    connect_fails_slowly(fault_lab.client_dsn("node0"))
    assert fault_lab.run_sql("node0", "SELECT 1") == [(1,)]  # over 127.0.0.1
    with psycopg.connect(fault_lab.client_dsn("node1"), connect_timeout=2) as other:
        assert other.execute("SELECT 1").fetchone() == (1,)

    # Streaming is proven by new WAL arriving, not by pg_stat_replication
    # alone (with the default timeouts a cut sender stays listed for a minute).
    fault_lab.run_sql("node0", "INSERT INTO across_partition VALUES (7)")
    for standby in ("node1", "node2"):
        wait_until(
            lambda s=standby: fault_lab.run_sql(s, "SELECT 1 FROM across_partition WHERE v = 7"),
            what=f"{standby} to replay node0's insert through the partition",
        )
    rows = fault_lab.run_sql(
        "node0", "SELECT application_name, state FROM pg_stat_replication ORDER BY 1"
    )
    assert rows == [("node1", "streaming"), ("node2", "streaming")]
    assert {s.name: s.fault for s in fault_lab.status()} == {
        "node0": "partition",
        "node1": None,
        "node2": None,
    }

    fault_lab.heal("node0")
    with psycopg.connect(fault_lab.client_dsn("node0"), connect_timeout=2) as conn:
        assert conn.execute("SELECT count(*) FROM across_partition").fetchone() == (1,)


def test_cli_backlog_hangs_new_connections_while_open_ones_go_on(fault_lab: LocalLab) -> None:
    runner = CliRunner()
    directory = str(fault_lab.directory)
    with psycopg.connect(fault_lab.dsn("node1"), autocommit=True) as conn:
        done = runner.invoke(cli, ["lab", "backlog", "node1", "--dir", directory])
        assert done.exit_code == 0, done.output
        assert "node1 refusing new connections silently" in done.output
        assert fault_lab.faults() == {"node1": "backlog"}
        assert len(lab_rules(fault_lab)) == 1  # new connections' SYNs, one rule
        connect_fails_slowly(fault_lab.dsn("node1"))
        assert conn.execute("SELECT 42").fetchone() == (42,)  # the open one goes on
        healed = runner.invoke(cli, ["lab", "heal", "node1", "--dir", directory])
        assert healed.exit_code == 0, healed.output
        assert lab_rules(fault_lab) == []
    with psycopg.connect(fault_lab.dsn("node1"), connect_timeout=2) as again:
        assert again.execute("SELECT 1").fetchone() == (1,)


def test_cli_faults_show_in_status_and_destroy_removes_them(fault_lab: LocalLab) -> None:
    runner = CliRunner()
    directory = str(fault_lab.directory)
    done = runner.invoke(cli, ["lab", "blackhole", "node1", "--dir", directory])
    assert done.exit_code == 0, done.output
    fault_lab.partition("node2")
    status = runner.invoke(cli, ["lab", "status", "--json", "--dir", directory])
    assert {n["name"]: n["fault"] for n in json.loads(status.output)} == {
        "node0": None,
        "node1": "blackhole",
        "node2": "partition",
    }
    bad = runner.invoke(cli, ["lab", "partition", "node9", "--dir", directory])
    assert (bad.exit_code, bad.output.strip().count("\n")) == (1, 0)
    assert "unknown node 'node9'" in bad.output

    healed = runner.invoke(cli, ["lab", "heal", "node1", "--dir", directory])
    assert healed.exit_code == 0, healed.output
    assert fault_lab.faults() == {"node2": "partition"}
    fault_lab.blackhole("node1")
    tags = {r.tag for r in lab_rules(fault_lab)}
    assert len(tags) == 2

    fault_lab.destroy()
    listing = subprocess.run(
        ["iptables", "-S"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    assert not [tag for tag in tags if tag in listing]
    assert f"{netfault.TAG_PREFIX}:{fault_lab.net.lab}:" not in listing
    fault_lab.heal()  # idempotent, even once the lab is gone
