"""Rejoin's refusals on real data directories: root, not a data directory, an
unreachable primary, a primary of another cluster; nothing is changed by any.

The happy path (stop, pg_rewind, standby, streaming) runs in the switchover
and lab tests, through the lab's rejoin, which is the same code."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from pgfailover.cli.app import cli
from pgfailover.lab import LocalLab, free_port
from pgfailover.rejoin import RejoinError, rejoin

pytestmark = pytest.mark.timeout(60)


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
