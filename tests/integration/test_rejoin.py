"""``pgfailover rejoin`` on real data directories.

End to end as an operator runs it (the data directory's owner, after a
switchover left the old primary fenced and running): the command stops it,
makes it a standby of the new primary and starts it; the manager sees it
recover and puts it back into the synchronous standbys, also when the
manager that wrote the list was restarted in between (it reads the record
it kept on the primary, ``pgfailover.sync``). Then the refusals:
root, not a data directory, an unreachable primary, a primary of another
cluster; nothing is changed by any.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from pgfailover import ClusterState, FailoverManager
from pgfailover.cli.app import cli
from pgfailover.lab import LocalLab, free_port
from pgfailover.rejoin import RejoinError, rejoin
from pgfailover.syncrep import SyncRecord, parse_record, parse_sync

from .helpers import FAST, as_lab_user_cli, manager_for, prepare, wait_until

pytestmark = pytest.mark.timeout(60)


def _sync_names(lab: LocalLab, node: str) -> str:
    return str(lab.run_sql(node, "SHOW synchronous_standby_names")[0][0])


def _needs_rejoin(mgr: FailoverManager, node: str) -> bool:
    return any(n["name"] == node and n["needs_rejoin"] for n in mgr.get_failover_status()["nodes"])


def _record(lab: LocalLab, node: str) -> SyncRecord | None:
    return parse_record(lab.run_sql(node, "SELECT current_setting('pgfailover.sync', true)")[0][0])


@pytest.mark.timeout(180)
@pytest.mark.parametrize("restarted", [False, True], ids=["same manager", "manager restarted"])
def test_the_command_brings_the_old_primary_back_as_a_synchronous_standby(
    sync_lab: LocalLab, restarted: bool
) -> None:
    prepare(sync_lab)
    states: list[ClusterState] = []
    config = FAST.replace(promotion="auto")
    with contextlib.ExitStack() as stack:
        mgr = stack.enter_context(manager_for(sync_lab, config))
        mgr.switchover("node1")
        assert mgr.snapshot.primary == "node1"
        wait_until(lambda: _needs_rejoin(mgr, "node0"), what="node0 marked needs_rejoin")
        assert sync_lab.process_state("node0") == "running"  # fenced, still up
        wait_until(lambda: "node0" not in _sync_names(sync_lab, "node1"), what="sync names")
        written = _sync_names(sync_lab, "node1")
        # The list the switchover wrote, and the operator's policy, kept on the primary.
        assert _record(sync_lab, "node1") == SyncRecord(
            written, parse_sync("ANY 1 (node1, node2)")
        )
        mgr.query("INSERT INTO w VALUES (1)")
        if restarted:  # a new process: nothing of the first one's memory
            mgr.close()
            mgr = stack.enter_context(manager_for(sync_lab, config))
            wait_until(lambda: _needs_rejoin(mgr, "node0"), what="node0 still needs_rejoin")
        sync = mgr.get_failover_status()["synchronous_replication"]
        assert (sync["written_by_manager"], sync["policy"]) == (True, "ANY 1 (node1, node2)")
        mgr.on_state_change(lambda old, new, snap: states.append(new))
        del states[:]

        datadir = sync_lab.local_node("node0").datadir
        with as_lab_user_cli(sync_lab) as pgfailover:
            result = pgfailover(
                "rejoin", "node0", "--pgdata", str(datadir), "--primary", sync_lab.dsn("node1")
            )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "rejoin node0: server stopped" in result.stdout, result.stdout
        # The primary's timeline as of the checkpoint the rejoin asks for (the switchover's).
        assert ": timeline 2, system " in result.stdout, result.stdout
        assert "rejoin node0: node0 streams from the primary" in result.stdout, result.stdout

        def healthy_again() -> bool:
            snap = mgr.snapshot
            return snap.state is ClusterState.HEALTHY and snap.node("node0").serves_reads

        wait_until(healthy_again, timeout=30, what="node0 serving reads, cluster healthy")
        assert ClusterState.RECOVERY_IN_PROGRESS in states, states
        assert states.index(ClusterState.RECOVERY_IN_PROGRESS) < len(states) - 1
        assert states[-1] is ClusterState.HEALTHY
        assert not _needs_rejoin(mgr, "node0")
        sync_lab.wait_streaming("node0", "node1")
        wait_until(
            lambda: "node0" in _sync_names(sync_lab, "node1"),
            timeout=30,
            what="node0 back in synchronous_standby_names",
        )
        record = _record(sync_lab, "node1")
        assert record is not None
        assert record.written == _sync_names(sync_lab, "node1")
        mgr.query("INSERT INTO w VALUES (2)")
        wait_until(
            lambda: sync_lab.run_sql("node0", "SELECT count(*) FROM w")[0][0] == 2,
            what="node0 to replay the writes made since",
        )


def _attempt(
    lab: LocalLab,
    node: str,
    primary_dsn: str,
    datadir: Path | None = None,
    name: str | None = None,
) -> None:
    target = datadir or lab.local_node(node).datadir
    stopped: list[bool] = []
    rejoin(
        target,
        primary_dsn,
        name=name or node,
        bindir=lab.bins.bindir,
        run=lambda argv: lab.run_as.run(argv).stdout,
        stop=lambda: stopped.append(True),
        start=None,
    )
    assert not stopped, "the server was stopped although the rejoin was refused"


def test_rejoin_refuses_and_changes_nothing(
    fresh_lab: LocalLab, shared_lab: LocalLab, tmp_path: Path
) -> None:
    before = fresh_lab.status()
    with pytest.raises(RejoinError, match="not a PostgreSQL data directory"):
        _attempt(fresh_lab, "node1", fresh_lab.dsn("node0"), datadir=tmp_path)
    closed = f"host=127.0.0.1 port={free_port()} user=postgres connect_timeout=2"
    with pytest.raises(RejoinError, match="cannot reach the primary"):
        _attempt(fresh_lab, "node1", closed)
    with pytest.raises(RejoinError, match="is in recovery: give the DSN of the current primary"):
        _attempt(fresh_lab, "node1", fresh_lab.dsn("node2"))
    with pytest.raises(RejoinError, match="belongs to another cluster"):
        _attempt(fresh_lab, "node1", shared_lab.dsn("node0"))
    with pytest.raises(RejoinError, match="cannot name its replication slot"):
        _attempt(fresh_lab, "node1", fresh_lab.dsn("node0"), name="Node-1")
    with pytest.raises(RejoinError, match="the primary's own data directory"):
        _attempt(fresh_lab, "node0", fresh_lab.dsn("node0"))
    assert [s.role for s in fresh_lab.status()] == [s.role for s in before]
    fresh_lab.wait_streaming("node1", "node0")


@pytest.mark.skipif(os.geteuid() != 0, reason="checks the refusal to run as root")
def test_the_command_refuses_root(fresh_lab: LocalLab) -> None:
    datadir = fresh_lab.local_node("node1").datadir
    result = CliRunner().invoke(
        cli, ["rejoin", "node1", "--pgdata", str(datadir), "--primary", fresh_lab.dsn("node0")]
    )
    assert result.exit_code == 3, result.output
    assert "not as root" in result.output
