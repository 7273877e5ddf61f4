"""Switchover on a real quorum-sync cluster under four writer threads: nothing fails,
nothing is lost, nothing lands on the old primary after it; then back again after a
rejoin, and a refusal when the target cannot catch up."""

from __future__ import annotations

import dataclasses
import itertools
import time

import pytest
from click.testing import CliRunner
from psycopg.conninfo import conninfo_to_dict

from pgfailover import FailoverManager, PromotionRefused
from pgfailover.cli.app import cli
from pgfailover.lab import LocalLab
from pgfailover.server import serve

from .helpers import FAST, Workload, manager_for, prepare, wait_until

pytestmark = pytest.mark.timeout(240)

CFG = FAST.replace(promotion="auto", failover_wait_timeout=15.0)


def _port(lab: LocalLab, name: str) -> int:
    return lab.node(name).port


def _longest_pause(acked: list[tuple[int, int, float]]) -> float:
    times = sorted(t for _, _, t in acked)
    return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def _more_writes(load: Workload, count: int) -> None:
    """Wait until ``count`` more writes are acknowledged (writes resumed)."""
    start = len(load.acked)
    wait_until(lambda: len(load.acked) > start + count, what=f"{count} more writes")


def _wait_serving(mgr: FailoverManager, name: str) -> None:
    """Wait until a rejoined node serves reads again."""
    wait_until(lambda: mgr.snapshot.node(name).serves_reads, timeout=30, what=f"{name} rejoined")


def test_switchover_there_and_back_loses_nothing(sync_lab: LocalLab) -> None:
    prepare(sync_lab)
    with manager_for(sync_lab, CFG) as mgr:
        for old, new in (("node0", "node1"), ("node1", "node0")):
            assert mgr.snapshot.primary == old
            with Workload(mgr) as load:
                wait_until(lambda: len(load.acked) > 200, what="writes before the switchover")
                event = mgr.switchover(new)
                _more_writes(load, 200)
            assert event.outcome == "completed", event
            assert (event.kind, event.from_node, event.to_node) == ("switchover", old, new)
            assert load.failed == [], load.failed[:3]
            assert load.unknown == []
            assert mgr.snapshot.primary == new
            switched = next(t for _, p, t in load.acked if p == _port(sync_lab, new))
            late = [i for i, p, t in load.acked if p == _port(sync_lab, old) and t > switched]
            assert late == [], "writes acknowledged by the old primary after the switchover"
            stored = {r[0] for r in mgr.query("SELECT id FROM w")}
            missing = {i for i, _, _ in load.acked} - stored
            assert not missing, f"{len(missing)} acknowledged writes lost"
            assert _longest_pause(load.acked) < 5.0  # the 1.5 s target is the benchmark's
            other = next(n for n in ("node0", "node1", "node2") if n not in (old, new))
            sync_lab.wait_streaming(other, new, timeout=30)
            assert mgr.snapshot.node(old).role.value == "stale"  # fenced, needs a rejoin
            assert mgr.get_failover_status()["nodes"][int(old[-1])]["needs_rejoin"] is True
            sync_lab.rejoin(old, new)
            _wait_serving(mgr, old)


def test_a_target_that_cannot_catch_up_is_refused_and_writes_go_on(fresh_lab: LocalLab) -> None:
    prepare(fresh_lab)
    with manager_for(fresh_lab, CFG) as mgr:
        fresh_lab.run_sql("node1", "SELECT pg_wal_replay_pause()")
        try:
            with Workload(mgr) as load:
                wait_until(lambda: len(load.acked) > 100, what="writes before")
                started = time.monotonic()
                with pytest.raises(PromotionRefused) as refused:
                    mgr.switchover("node1", timeout=1.0)
                assert time.monotonic() - started < 10
                _more_writes(load, 100)
        finally:
            fresh_lab.run_sql("node1", "SELECT pg_wal_replay_resume()")
        assert refused.value.guard == "catchup_timeout"
        assert mgr.snapshot.primary == "node0"
        assert load.failed == []
        stored = {r[0] for r in mgr.query("SELECT id FROM w")}
        assert {i for i, _, _ in load.acked} <= stored
        assert mgr.counters.as_dict()["promotions_total"] == 0


TOKEN = "switchover-token-0123456789"


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_the_command_line_switches_over_through_serve_and_refuses_clearly(
    fresh_lab: LocalLab,
) -> None:
    prepare(fresh_lab)
    with manager_for(fresh_lab, CFG) as mgr, serve(mgr, token=TOKEN) as server:
        base = ("--url", server.url, "--token", TOKEN)
        code, out = _cli("switchover", *base, "--to", "node0", "--yes")
        assert code == 1, out
        assert "guard target_not_eligible" in out
        code, out = _cli("switchover", "--dsn", fresh_lab.url)
        assert code == 3, out  # no terminal and no --yes: never a guess
        assert "pass --yes" in out
        assert mgr.snapshot.primary == "node0"
        code, out = _cli("switchover", *base, "--to", "node2", "--yes", "--json")
        assert code == 0, out
        assert '"to": "node2"' in out
        wait_until(lambda: mgr.snapshot.primary == "node2", what="the switchover")
        mgr.query("INSERT INTO w VALUES (1)")


def test_a_nofailover_standby_is_never_promoted(fresh_lab: LocalLab) -> None:
    prepare(fresh_lab)
    nodes = [
        dataclasses.replace(n, nofailover=n.name == "node1") for n in fresh_lab.manager_nodes()
    ]
    with FailoverManager(nodes=nodes, config=CFG).open() as mgr:
        mgr.query("INSERT INTO w VALUES (1)")
        fresh_lab.run_sql("node2", "SELECT pg_wal_replay_pause()")  # node1 the most advanced
        mgr.query("INSERT INTO w VALUES (2)")
        with pytest.raises(PromotionRefused) as refused:
            mgr.switchover("node1")
        assert refused.value.guard == "nofailover"
        fresh_lab.run_sql("node2", "SELECT pg_wal_replay_resume()")
        fresh_lab.wait_streaming("node2", "node0")
        fresh_lab.kill("node0")
        wait_until(
            lambda: mgr.snapshot.primary not in (None, "node0"), timeout=30, what="failover"
        )
        assert mgr.snapshot.primary == "node2"
        assert mgr.get_failover_status()["nodes"][1]["tags"] == ["nofailover"]


def test_an_idle_primary_right_after_a_wal_segment_switch_switches_over(
    sync_lab: LocalLab,
) -> None:
    """Its insert position sits past the new segment's page header, which no flush reaches.

    A new lab is in exactly that state (``pg_basebackup`` switched segments
    and nothing was written since); the catch-up must wait for the end of the
    last record, not for the header.
    """
    insert, flush = sync_lab.run_sql(
        "node0", "SELECT pg_current_wal_insert_lsn()::text, pg_current_wal_flush_lsn()::text"
    )[0]
    assert insert != flush  # the state under test (0/4000028 against 0/4000000)
    with manager_for(sync_lab, CFG) as mgr:
        event = mgr.switchover("node1", timeout=5)
    assert event.outcome == "completed", event
    assert sync_lab.primary() == "node1"


@pytest.mark.parametrize("replication_address", [True, False], ids=["set", "unset"])
def test_standbys_are_repointed_at_the_replication_address(
    fresh_lab: LocalLab, replication_address: bool
) -> None:
    """The manager reaches the nodes at the lab's client address; replication runs on
    127.0.0.1. With ``replication_address`` set on each node, the standby a switchover
    repoints streams from the new primary's replication address, and cutting the client
    path leaves replication going; unset, it gets the manager's address (the default)."""
    prepare(fresh_lab)
    nodes = fresh_lab.manager_nodes(client_address=True)
    assert fresh_lab.client_host not in (None, "127.0.0.1")
    if replication_address:
        nodes = [
            dataclasses.replace(n, replication_address=f"127.0.0.1:{_port(fresh_lab, n.name)}")
            for n in nodes
        ]
    with FailoverManager(nodes=nodes, config=CFG).open() as mgr:
        mgr.switchover("node1")
        fresh_lab.wait_streaming("node2", "node1")
        ((conninfo,),) = fresh_lab.run_sql("node2", "SHOW primary_conninfo")
        host = conninfo_to_dict(conninfo)["host"]
        assert host == ("127.0.0.1" if replication_address else fresh_lab.client_host), conninfo
        wait_until(lambda: mgr.snapshot.node("node2").upstream == "node1", what="node2's sender")
    if replication_address:
        fresh_lab.partition("node1")  # the client path only
        try:
            fresh_lab.run_sql("node1", "INSERT INTO w VALUES (1)")
            wait_until(
                lambda: fresh_lab.run_sql("node2", "SELECT count(*) FROM w") == [(1,)],
                timeout=10,
                what="node2 to replay a write made after the cut",
            )
        finally:
            fresh_lab.heal("node1")
