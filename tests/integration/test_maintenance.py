"""Maintenance mode on a real cluster: pause holds promotion through a primary kill,
resume fails over; the CLI and the admin API drive it, /metrics shows it.

The kill test runs on a quorum sync lab: the writes just before the kill must
be on a standby, which asynchronous replication does not promise."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from pgfailover import NoPrimaryAvailable
from pgfailover.cli.app import cli
from pgfailover.lab import LocalLab
from pgfailover.server import serve

from .helpers import FAST, manager_for, prepare, wait_until

pytestmark = pytest.mark.timeout(120)

TOKEN = "maintenance-token-0123456789"


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def _metric(url: str, name: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as reply:  # noqa: S310 - loopback
        for line in reply.read().decode().splitlines():
            if line.startswith(f"pgfailover_{name}{{"):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"pgfailover_{name} not exported")


def test_pause_holds_promotion_through_a_primary_kill_and_resume_fails_over(
    sync_lab: LocalLab,
) -> None:
    prepare(sync_lab)
    cfg = FAST.replace(promotion="auto", failover_wait_timeout=2.0)
    with (
        manager_for(sync_lab, cfg) as mgr,
        serve(mgr, token=TOKEN) as server,
    ):
        url = server.url
        code, out = _cli("pause", "--url", url, "--token", TOKEN, "--reason", "kernel upgrade")
        assert code == 0, out
        assert "maintenance mode since" in out
        assert mgr.paused
        assert _metric(url, "maintenance_paused") == 1.0

        acked = [mgr.query("INSERT INTO w VALUES (%s) RETURNING id", (i,))[0][0] for i in range(5)]
        sync_lab.kill("node0")
        with pytest.raises(NoPrimaryAvailable):
            mgr.query("INSERT INTO w VALUES (100)")  # waits failover_wait_timeout, then fails
        wait_until(lambda: _metric(url, "primary_healthy") == 0.0, what="primary_healthy 0")
        snap = mgr.check_health()
        assert snap.primary is None
        assert mgr.counters.as_dict()["promotions_total"] == 0
        status = mgr.get_failover_status()
        assert status["maintenance"]["paused"] is True
        assert _metric(url, "maintenance_paused") == 1.0  # with primary_healthy 0: the alert

        code, out = _cli("resume", "--url", url, "--token", TOKEN)
        assert code == 0, out
        assert "automatic promotion on" in out
        wait_until(lambda: mgr.snapshot.primary in ("node1", "node2"), what="the failover")
        mgr.query("INSERT INTO w VALUES (101)")
        ids = {row[0] for row in mgr.query("SELECT id FROM w")}
        assert set(acked) | {101} <= ids  # every acknowledged write survived
        assert 100 not in ids  # the refused write never landed
        kinds = [(e.kind, e.reason) for e in mgr.history() if e.kind == "maintenance"]
        assert kinds == [("maintenance", "paused: kernel upgrade"), ("maintenance", "resumed")]


def test_pause_without_a_server_url_is_a_usage_error(fresh_lab: LocalLab) -> None:
    code, out = _cli("pause", "--dsn", fresh_lab.url)
    assert code == 3
    assert "pause needs --url" in out


def test_a_restarted_arbiter_stays_paused_and_promotes_nothing_until_resumed(
    sync_lab: LocalLab, tmp_path: Path
) -> None:
    """The pause outlives its process through the history file: the manager that
    replaces it (an arbiter restarted during the work) holds promotion through a
    primary kill, until resumed."""
    prepare(sync_lab)
    cfg = FAST.replace(
        promotion="auto", failover_wait_timeout=2.0, history_file=str(tmp_path / "history")
    )
    with manager_for(sync_lab, cfg) as first:
        assert first.pause("rolling restart")
        acked = [
            first.query("INSERT INTO w VALUES (%s) RETURNING id", (i,))[0][0] for i in range(5)
        ]
    with manager_for(sync_lab, cfg) as mgr:
        assert mgr.paused
        assert mgr.get_failover_status()["maintenance"]["paused"] is True
        sync_lab.kill("node0")
        lost = wait_until(lambda: mgr.check_health().primary is None, what="node0 lost")
        assert lost
        for _ in range(5):  # rounds that would have promoted
            assert mgr.check_health().primary is None
        assert mgr.counters.as_dict()["promotions_total"] == 0
        assert mgr.resume()
        wait_until(lambda: mgr.snapshot.primary in ("node1", "node2"), what="the failover")
        ids = {row[0] for row in mgr.query("SELECT id FROM w")}
        assert set(acked) <= ids  # every acknowledged write survived
    kinds = [e.reason for e in mgr.history() if e.kind == "maintenance"]
    assert kinds == ["paused: rolling restart", "resumed"]
