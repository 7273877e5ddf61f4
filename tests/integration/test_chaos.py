"""Chaos: the faults production has, on lab clusters with PostgreSQL's default settings.

Every test runs a workload of INSERTs with unique ids through the manager
and ends by checking that every acknowledged write is on the final primary
(quorum sync: ANY 1 of the standbys). Faults: a crash (SIGKILL), a hang
(SIGSTOP), a black hole both ways (iptables DROP, no RST), a partition that
cuts only the manager's path to the primary (a second loopback address),
repeated failovers with the old primary rejoined by pg_rewind, a second
crash right after a failover, orphaned and diverged standbys, and SIGTERM
to the arbiter at each step of a failover. Every iptables rule is removed
by the lab (``heal``/``destroy``) and, after a crash, by the session fixture.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import psycopg
import pytest

from pgfailover import FailoverConfig, FailoverManager
from pgfailover.lab import LocalLab

from .helpers import Workload, port_of, prepare, wait_until

pytestmark = pytest.mark.slow

# PostgreSQL's defaults on the servers; the manager's own timing only.
CHAOS = FailoverConfig(
    promotion="auto",
    health_check_interval=0.5,
    fast_interval=0.05,
    health_check_timeout=1.0,
    failover_wait_timeout=15.0,
)


def _commit_within(lab: LocalLab, node: str, seconds: float, value: int) -> bool:
    """True when an INSERT on ``node`` commits within ``seconds`` (no SyncRep hang)."""
    done = threading.Event()

    def insert() -> None:
        try:
            with psycopg.connect(lab.dsn(node), autocommit=True, connect_timeout=2) as conn:
                conn.execute("INSERT INTO w VALUES (%s)", (value,))
            done.set()
        except psycopg.Error:
            pass

    thread = threading.Thread(target=insert, daemon=True)
    thread.start()
    return done.wait(seconds)


def _all_acked_present(lab: LocalLab, node: str, load: Workload) -> None:
    acked = {i for i, _, _ in load.acked}
    present = {r[0] for r in lab.run_sql(node, "SELECT id FROM w")}
    missing = acked - present
    assert not missing, (
        f"{len(missing)} acknowledged writes missing on {node}: {sorted(missing)[:5]}"
    )


def _fail_over_under_load(
    lab: LocalLab, mgr: FailoverManager, fault: Callable[[str], None]
) -> tuple[Workload, str, float]:
    """Run the workload, apply ``fault`` to the primary, wait for writes elsewhere."""
    old = mgr.snapshot.primary
    assert old is not None
    old_port = lab.node(old).port
    with Workload(mgr) as load:
        wait_until(lambda: load.acked_on(old_port) > 30, what=f"writes on {old}")
        fault(old)
        faulted = time.monotonic()
        wait_until(
            lambda: any(p != old_port and t > faulted for _, p, t in load.acked),
            timeout=40,
            what="a write on a new primary",
        )
        first = min(t for _, p, t in load.acked if p != old_port and t > faulted) - faulted
        new_port = next(p for _, p, t in load.acked if p != old_port and t > faulted)
        wait_until(lambda: load.acked_on(new_port) > 30, what="writes going on after the failover")
    return load, port_of(lab, new_port), first


@pytest.fixture
def chaos_lab(sync_lab: LocalLab) -> Iterator[LocalLab]:
    prepare(sync_lab)
    try:
        yield sync_lab
    finally:
        sync_lab.heal()


@pytest.mark.parametrize("fault", ["crash", "hang", "blackhole"])
def test_primary_fault_fails_over_in_seconds_and_keeps_every_acknowledged_write(
    chaos_lab: LocalLab, fault: str
) -> None:
    actions = {"crash": chaos_lab.kill, "hang": chaos_lab.pause, "blackhole": chaos_lab.blackhole}
    with FailoverManager(nodes=chaos_lab.manager_nodes(), config=CHAOS) as mgr:
        wait_until(
            lambda: mgr.get_failover_status()["failure_detection"]["hang_failover_seconds"],
            what="the manager to tune wal_receiver_timeout",
        )
        load, new, first = _fail_over_under_load(chaos_lab, mgr, actions[fault])
        print(f"{fault}: writes resumed {first:.3f}s after the fault on {new}")
        assert not load.failed, load.failed[:3]
        # Not a timing target (benchmarks/faults.py measures those): proof that a
        # hang or a black hole did not wait for PostgreSQL's 60 s receiver timeout.
        assert first < 20, f"writes resumed {first:.1f}s after the {fault}"
        assert mgr.snapshot.primary == new
        _all_acked_present(chaos_lab, new, load)
        event = mgr.history()[-1]
        assert (event.kind, event.from_node, event.to_node, event.outcome) == (
            "failover",
            "node0",
            new,
            "completed",
        )
        assert _commit_within(chaos_lab, new, 2.0, 10**12)


def test_client_only_partition_promotes_nothing_and_heals_to_the_same_primary(
    chaos_lab: LocalLab,
) -> None:
    config = CHAOS.replace(failover_wait_timeout=3.0)
    nodes = chaos_lab.manager_nodes(client_address=True)
    with FailoverManager(nodes=nodes, config=config) as mgr:
        assert mgr.snapshot.primary == "node0"
        port = chaos_lab.node("node0").port
        with Workload(mgr) as load:
            wait_until(lambda: load.acked_on(port) > 30, what="writes on node0")
            chaos_lab.partition("node0")
            cut = time.monotonic()
            wait_until(lambda: mgr.snapshot.primary is None, what="the manager to lose node0")
            # 10 s: three times the 3 s of receiver silence that would prove a real loss.
            while time.monotonic() - cut < 10:
                assert chaos_lab.in_recovery("node1") is True
                assert chaos_lab.in_recovery("node2") is True
                assert mgr.counters.as_dict()["promotions_total"] == 0
                time.sleep(0.5)
            assert "receiver_streaming" in (mgr.snapshot.promotion_blocked or "")
            during = len(load.failed)
            chaos_lab.heal("node0")
            healed = time.monotonic()
            wait_until(
                lambda: any(t > healed for _, p, t in load.acked if p == port),
                timeout=30,
                what="writes on node0 again",
            )
        assert during > 0, "no write failed during the partition"
        assert all("NoPrimaryAvailable" in why for _, why in load.failed), load.failed[:3]
        assert mgr.snapshot.primary == "node0"
        assert chaos_lab.primary() == "node0"
        _all_acked_present(chaos_lab, "node0", load)


def test_second_crash_right_after_a_failover_is_failed_over_at_once(
    chaos_lab: LocalLab,
) -> None:
    config = CHAOS.replace(failover_cooldown=60.0)  # the default: anti-flap must not block
    with FailoverManager(nodes=chaos_lab.manager_nodes(), config=config) as mgr:
        load, first_new, _ = _fail_over_under_load(chaos_lab, mgr, chaos_lab.kill)
        _all_acked_present(chaos_lab, first_new, load)
        failed_over = mgr.history()[-1].completed or 0.0
        # The fault's timing (2 s after the failover), not a synchronisation.
        wait_until(lambda: time.time() - failed_over >= 2.0, what="2 s after the failover")
        load, second_new, took = _fail_over_under_load(chaos_lab, mgr, chaos_lab.kill)
        assert second_new not in ("node0", first_new)
        assert took < 10, f"the second failover waited {took:.1f}s"
        assert not load.failed, load.failed[:3]
        _all_acked_present(chaos_lab, second_new, load)
        assert mgr.counters.as_dict()["promotions_total"] == 2


def test_three_failovers_with_rejoin_never_hang_commits_or_lose_writes(
    chaos_lab: LocalLab,
) -> None:
    with FailoverManager(nodes=chaos_lab.manager_nodes(), config=CHAOS) as mgr:
        for round_ in range(3):
            old = mgr.snapshot.primary
            assert old is not None
            load, new, resumed = _fail_over_under_load(chaos_lab, mgr, chaos_lab.kill)
            assert not load.failed, (round_, load.failed[:3])
            # A crash fails over in a fraction of a second (benchmarks/faults.py);
            # 5 s is the bound, far from it: this catches a stuck round.
            assert resumed < 5, f"round {round_}: writes resumed after {resumed:.1f}s"
            _all_acked_present(chaos_lab, new, load)
            # No COMMIT may wait on SyncRep beyond the attach timeout plus a round.
            limit = CHAOS.sync_standby_attach_timeout + CHAOS.health_check_interval + 2
            assert _commit_within(chaos_lab, new, limit, 10**12 + round_), (
                f"round {round_}: a COMMIT on {new} hangs "
                f"(synchronous_standby_names {mgr.snapshot.node(new).sync_standby_names!r})"
            )
            chaos_lab.rejoin(old, new)

            def follows(name: str = old) -> bool:
                return mgr.snapshot.node(name).follows is True

            wait_until(follows, what=f"{old} to follow {new}")
        assert mgr.counters.as_dict()["promotions_total"] == 3


def test_orphaned_and_diverged_standbys_serve_no_read(fresh_lab: LocalLab) -> None:
    prepare(fresh_lab)
    config = CHAOS.replace(promotion="external")
    with FailoverManager(nodes=fresh_lab.manager_nodes(), config=config) as mgr:
        for i in range(50):
            mgr.query("INSERT INTO w VALUES (%s)", (i,))
        # node1 stops replaying while node2 receives more: node2 will be past the fork.
        fresh_lab.pause("node1")
        for i in range(50, 500):
            mgr.query("INSERT INTO w VALUES (%s)", (i,))
        fresh_lab.kill("node0")
        fresh_lab.resume("node1")
        fresh_lab.promote("node1")  # an orchestrator's promotion; nobody repoints node2
        wait_until(lambda: mgr.snapshot.primary == "node1", what="the manager to follow node1")
        for i in range(1000, 1100):
            mgr.query("INSERT INTO w VALUES (%s)", (i,))
        node2 = fresh_lab.node("node2").port
        for _ in range(200):
            rows = mgr.query(
                "SELECT count(*), inet_server_port() FROM w WHERE id >= 1000", readonly=True
            )
            assert rows[0][1] != node2, "a read was served by the orphaned standby"
            assert rows[0][0] == 100
        block = mgr.snapshot.node("node2").read_block or ""
        assert block.startswith(("diverged", "orphaned")), block
        status = {n["name"]: n for n in mgr.get_failover_status()["nodes"]}
        assert status["node2"]["serves_reads"] is False
        assert status["node2"]["read_block"] == block


def _serve(config: Path, stderr: int | IO[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pgfailover", "serve", "--config", str(config), "--port", "0"],
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        text=True,
    )


def _stop_when(
    proc: subprocess.Popen[str], marker: str, log: Path
) -> tuple[threading.Event, threading.Thread]:
    """SIGTERM ``proc`` as soon as its log shows ``marker``; copy the log to ``log``."""
    sent = threading.Event()

    def watch() -> None:
        assert proc.stderr is not None
        with log.open("a") as out:
            for line in proc.stderr:
                out.write(line)
                if marker in line and not sent.is_set():
                    proc.send_signal(signal.SIGTERM)
                    sent.set()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    return sent, watcher


@pytest.mark.parametrize(
    ("step", "marker"),
    [
        ("detection", "failover started"),
        ("promotion", ": promoting "),
        ("repointing", " promoted in "),
    ],
)
def test_sigterm_to_serve_at_each_step_leaves_commits_working(
    chaos_lab: LocalLab, tmp_path: Path, step: str, marker: str
) -> None:
    lines = []
    for i, node in enumerate(chaos_lab.nodes):
        lines += ["[[nodes]]", f'name = "{node.name}"', f'dsn = "{node.dsn}"', f"priority = {i}"]
    lines += ["[failover]", "health_check_interval = 0.5", "fast_interval = 0.05"]
    config = tmp_path / "pgfailover.toml"
    config.write_text("\n".join(lines) + "\n")
    log = tmp_path / "serve.log"
    proc = _serve(config, subprocess.PIPE)
    sent, watcher = _stop_when(proc, marker, log)
    try:
        wait_until(
            lambda: all(
                chaos_lab.run_sql(n, "SHOW wal_receiver_timeout") == [("4s",)]
                for n in ("node1", "node2")
            ),
            what="serve to tune the standbys' wal_receiver_timeout",
        )
        if step == "detection":
            chaos_lab.pause("node0")  # a hang leaves seconds between detection and promotion
        else:
            chaos_lab.kill("node0")
        wait_until(sent.is_set, timeout=40, what=f"serve to reach the {step} step")
        assert proc.wait(15) == 0, log.read_text()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        watcher.join(10)
        assert proc.stderr is not None
        proc.stderr.close()
    if chaos_lab.primary() is None:
        # Stopped before promoting: a restarted arbiter finishes the failover.
        with (tmp_path / "serve-again.log").open("w") as again_log:
            again = _serve(config, again_log)
        try:
            wait_until(
                lambda: chaos_lab.primary() in ("node1", "node2"),
                timeout=40,
                what="the restarted arbiter to promote",
            )
            primary = chaos_lab.primary()
            assert primary is not None
            assert _commit_within(chaos_lab, primary, 2.0, 10**12), log.read_text()[-2000:]
        finally:
            again.send_signal(signal.SIGTERM)
            again.wait(15)
        return
    primary = chaos_lab.primary()
    assert primary in ("node1", "node2")
    names = chaos_lab.run_sql(primary, "SHOW synchronous_standby_names")[0][0]
    assert _commit_within(chaos_lab, primary, 2.0, 10**12), (
        f"COMMIT on {primary} hangs after SIGTERM at {step} "
        f"(synchronous_standby_names = {names!r})\n{log.read_text()[-2000:]}"
    )
