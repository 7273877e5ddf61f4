"""Several arbiters on one cluster (``pgfailover serve --etcd``): one promotes, none twice.

Real parts: a lab cluster, Debian's etcd on loopback, ``pgfailover serve``
processes. What must hold:

- killing the arbiter that holds the lease (SIGKILL) changes nothing in the
  database, and another arbiter holds the lease within TTL + 1 s;
- with the killed arbiter still dead, a primary crash is failed over by the
  new holder, once: the timeline moves by exactly one per crash, and the
  event carries the lease's fencing revision;
- an arbiter cut off from etcd loses the lease and never promotes, while
  the one that took it over does;
- a pause taken through any arbiter holds every arbiter (it is in etcd),
  through a primary crash and a lease handover, until resumed through any;
- the arbiter that takes the lease over keeps up the synchronous list the
  killed holder wrote (it adds the rejoined old primary back);
- every write a manager acknowledged through it all is on the final primary
  (the crash test runs on a quorum sync lab: with asynchronous replication
  the last commits before a kill may never reach a standby).

Every process is stopped by its PID, every iptables rule removed in a
``finally`` (tagged, so a crashed run's rules are removed by the session).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import time
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pgfailover import FailoverManager
from pgfailover.cli.app import cli
from pgfailover.lab import LocalLab, netfault

from .etcd import SECOND_ADDRESS, etcd_server
from .helpers import (
    FAST,
    Workload,
    config_file,
    get_json,
    holds_for,
    prepare,
    serve_process,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

TTL = 2
KILLS = 20
CRASH_EVERY = 7  # a primary crash after the 7th, 14th... arbiter kill: 2 failovers in 20 kills


def _lease(arbiter: dict[str, Any]) -> dict[str, Any]:
    lease: dict[str, Any] = get_json(arbiter["url"] + "/failover/status", timeout=2)["lease"]
    return lease


def _holds(arbiter: dict[str, Any]) -> bool:
    try:
        return bool(_lease(arbiter)["held"])
    except OSError:
        return False


def _lease_metric(arbiter: dict[str, Any]) -> float:
    """``pgfailover_arbiter_lease_held`` on the arbiter's ``/metrics``."""
    with urllib.request.urlopen(arbiter["url"] + "/metrics", timeout=5) as response:  # noqa: S310
        text = response.read().decode()
    (value,) = re.findall(r"^pgfailover_arbiter_lease_held\{[^}]*\} (\S+)$", text, re.M)
    return float(value)


def _timeline(lab: LocalLab, node: str) -> int:
    """The primary ``node``'s timeline (from its WAL file name: the checkpoint's lags)."""
    sql = "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)"
    return int(lab.run_sql(node, sql)[0][0], 16)


def _writable(lab: LocalLab) -> list[str]:
    """The nodes out of recovery now (exactly one, unless something promoted twice)."""
    out = []
    for node in lab.nodes:
        with contextlib.suppress(Exception):
            if not lab.run_sql(node.name, "SELECT pg_is_in_recovery()")[0][0]:
                out.append(node.name)
    return out


def _start(
    stack: contextlib.ExitStack, lab: LocalLab, tmp: Path, etcd: str, n: int, *more: str
) -> dict[str, Any]:
    """Arbiter ``n``: its own directory, config and history file, as on its own host."""
    home = tmp / f"arbiter{n}"
    home.mkdir()
    config = config_file(lab, home)
    options = ("--etcd", etcd, "--etcd-ttl", str(TTL), "--stream-port", "0", *more)
    ready: dict[str, Any] = stack.enter_context(
        serve_process(config, home / "serve.log", *options)
    )
    return {**ready, "history": home / "history.jsonl"}


def test_arbiter_kills_hand_the_lease_over_and_only_the_holder_fails_over(
    sync_lab: LocalLab, tmp_path: Path
) -> None:
    prepare(sync_lab)
    with etcd_server(tmp_path) as port, contextlib.ExitStack() as stack:
        etcd = f"http://127.0.0.1:{port}"
        arbiters = [_start(stack, sync_lab, tmp_path, etcd, n) for n in (0, 1)]
        started = len(arbiters)
        wait_until(lambda: sum(_holds(a) for a in arbiters) == 1, timeout=TTL + 5, what="a holder")
        mgr = stack.enter_context(
            FailoverManager(nodes=sync_lab.manager_nodes(), config=FAST).open()
        )
        with Workload(mgr, threads=2) as load, ThreadPoolExecutor(1) as starter:
            crashes = 0
            handovers = []
            for kill in range(1, KILLS + 1):
                holder = next(a for a in arbiters if _holds(a))
                other = next(a for a in arbiters if a is not holder)
                primary = sync_lab.primary()
                assert primary is not None
                timeline = _timeline(sync_lab, primary)
                os.kill(holder["pid"], signal.SIGKILL)
                killed = time.monotonic()
                # A replacement starts during the handover, as a restarted host's
                # arbiter would (the killed one stays dead): two arbiters watch
                # every crash, so a double promotion would show, and either may
                # take the lease.
                joining = starter.submit(_start, stack, sync_lab, tmp_path, etcd, started)
                started += 1

                def live(
                    other: dict[str, Any] = other, joining: Future[dict[str, Any]] = joining
                ) -> list[dict[str, Any]]:
                    return [other, joining.result()] if joining.done() else [other]

                new_holder = wait_until(
                    lambda: next((a for a in live() if _holds(a)), None),
                    timeout=TTL + 3,
                    what="handover",
                )
                handovers.append(time.monotonic() - killed)
                assert handovers[-1] <= TTL + 1, handovers
                # Nothing happened to the database.
                assert _writable(sync_lab) == [primary]
                assert _timeline(sync_lab, primary) == timeline
                arbiters = [other, joining.result(timeout=30)]
                if kill % CRASH_EVERY == 0:
                    crashes += 1
                    _crash_and_rejoin(sync_lab, new_holder, primary, timeline)
        final = sync_lab.primary()
        assert final is not None
        acked = {i for i, _, _ in load.acked}
        present = {r[0] for r in sync_lab.run_sql(final, "SELECT id FROM w")}
        assert not acked - present, f"{len(acked - present)} acknowledged writes missing"
        assert crashes == KILLS // CRASH_EVERY
        assert _timeline(sync_lab, final) == 1 + crashes  # one promotion per crash, no more
        assert max(handovers) <= TTL + 1
        ordered = sorted(handovers)
        print(  # the figures the README quotes: pytest -s shows them
            f"handovers over {len(ordered)} kills (TTL {TTL}s): min {ordered[0]:.2f}s, "
            f"median {ordered[len(ordered) // 2]:.2f}s, max {ordered[-1]:.2f}s"
        )


def _crash_and_rejoin(lab: LocalLab, holder: dict[str, Any], primary: str, timeline: int) -> None:
    """Kill the primary while the previous holder is dead: the new holder promotes, once."""
    revision = _lease(holder)["revision"]
    lab.kill(primary)
    new = wait_until(
        lambda: next((n for n in _writable(lab) if n != primary), None),
        timeout=20,
        what="a promotion by the new holder",
    )
    # A second promotion, if one were coming, would be under way within a second.
    holds_for(lambda: _writable(lab) == [new], 1.0, what="one writable node")
    assert _timeline(lab, new) == timeline + 1
    events = get_json(holder["url"] + "/failover/history")["events"]
    done = [e for e in events if e["outcome"] == "completed" and e["to"] == new]
    assert done, events
    assert done[-1]["fencing_revision"] == revision
    assert any("held the lease" in note for note in done[-1]["notes"]), done[-1]["notes"]
    lab.rejoin(primary, new)


def test_an_arbiter_cut_off_from_etcd_loses_the_lease_and_never_promotes(
    fresh_lab: LocalLab, tmp_path: Path
) -> None:
    prepare(fresh_lab)
    with etcd_server(tmp_path) as port, contextlib.ExitStack() as stack:
        cut = _start(stack, fresh_lab, tmp_path, f"http://{SECOND_ADDRESS}:{port}", 0)
        wait_until(lambda: _holds(cut), timeout=TTL + 5, what="the first arbiter to hold")
        other = _start(stack, fresh_lab, tmp_path, f"http://127.0.0.1:{port}", 1)
        faults = netfault.NetFaults(netfault.lab_id(tmp_path), client_host=SECOND_ADDRESS)
        try:
            faults.apply("etcd", port, "partition")  # only the first arbiter's path to etcd
            cut_at = time.monotonic()
            wait_until(lambda: _holds(other), timeout=TTL + 5, what="the other to take over")
            assert time.monotonic() - cut_at <= TTL + 1.5
            assert not _holds(cut)  # its own clock ran out first
            assert (_lease_metric(cut), _lease_metric(other)) == (0.0, 1.0)  # what pages
            wait_until(lambda: _lease(cut)["error"], timeout=5, what="the cut arbiter's error")
            timeline = _timeline(fresh_lab, "node0")
            fresh_lab.kill("node0")
            new = wait_until(
                lambda: next((n for n in _writable(fresh_lab) if n != "node0"), None),
                timeout=20,
                what="a promotion",
            )
            # The cut-off arbiter probes too: it has its rounds in this second.
            holds_for(lambda: _writable(fresh_lab) == [new], 1.0, what="one writable node")
            assert _timeline(fresh_lab, new) == timeline + 1
            mine = get_json(cut["url"] + "/failover/history")["events"]
            assert not [e for e in mine if e["promoted_by"] == "pgfailover"], mine
            theirs = get_json(other["url"] + "/failover/history")["events"]
            assert [e["to"] for e in theirs if e["outcome"] == "completed"] == [new]
        finally:
            faults.heal()


TOKEN = "arbiters-token-0123456789"


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def _status(arbiter: dict[str, Any]) -> dict[str, Any]:
    status: dict[str, Any] = get_json(arbiter["url"] + "/failover/status", timeout=2)
    return status


def test_a_pause_through_one_arbiter_holds_them_all_until_resumed_through_another(
    fresh_lab: LocalLab, tmp_path: Path
) -> None:
    """The operator's pause reaches the arbiter that does not hold the lease (a load
    balancer's pick): the holder promotes nothing when the primary dies, nor does the
    other once it has taken the lease from the killed holder; a resume through it fails
    over, once."""
    prepare(fresh_lab)
    with etcd_server(tmp_path) as port, contextlib.ExitStack() as stack:
        etcd = f"http://127.0.0.1:{port}"
        arbiters = [_start(stack, fresh_lab, tmp_path, etcd, n, "--token", TOKEN) for n in (0, 1)]
        wait_until(lambda: sum(_holds(a) for a in arbiters) == 1, timeout=TTL + 5, what="a holder")
        holder = next(a for a in arbiters if _holds(a))
        other = next(a for a in arbiters if a is not holder)
        code, out = _cli(
            "pause", "--url", other["admin_url"], "--token", TOKEN, "--reason", "network change"
        )
        assert code == 0, out
        assert "every arbiter's, in etcd" in out
        wait_until(
            lambda: _status(holder)["maintenance"]["paused"], timeout=2, what="the holder paused"
        )
        assert _status(holder)["maintenance"]["reason"] == "network change"
        assert _status(holder)["lease"]["maintenance"]["by"] == other["lease"]["identity"]
        timeline = _timeline(fresh_lab, "node0")
        fresh_lab.kill("node0")
        wait_until(
            lambda: "maintenance" in str(_status(holder)["read_only_reason"]),
            timeout=10,
            what="the holder read-only for the pause",
        )
        holds_for(lambda: _writable(fresh_lab) == [], 1.0, what="no promotion while paused")
        os.kill(holder["pid"], signal.SIGKILL)
        wait_until(functools.partial(_holds, other), timeout=TTL + 3, what="handover")
        assert _status(other)["maintenance"]["paused"] is True
        holds_for(lambda: _writable(fresh_lab) == [], 1.0, what="still no promotion")
        code, out = _cli("resume", "--url", other["admin_url"], "--token", TOKEN)
        assert code == 0, out
        new = wait_until(
            lambda: next(iter(_writable(fresh_lab)), None), timeout=20, what="the failover"
        )
        holds_for(lambda: _writable(fresh_lab) == [new], 1.0, what="one writable node")
        assert _timeline(fresh_lab, new) == timeline + 1
        assert _status(other)["lease"]["maintenance"]["paused"] is False  # resumed in etcd
        # Each arbiter's history says where its pause came from.
        ours = [e["reason"] for e in get_json(other["url"] + "/failover/history")["events"]]
        assert "paused: network change" in ours
        assert "resumed" in ours
        held = holder["history"].read_text()
        assert "paused: network change (by " in held
        assert "shared in etcd" in held


def _sync_names(lab: LocalLab, node: str) -> str:
    return str(lab.run_sql(node, "SHOW synchronous_standby_names")[0][0])


def test_the_next_holder_keeps_up_the_sync_list_the_killed_one_wrote(
    sync_lab: LocalLab, tmp_path: Path
) -> None:
    """The holder fails a primary crash over and writes the new primary's list for the
    standby left; it is killed; the old primary is rejoined. The arbiter that took the
    lease adds it back to the list (it reads what the killed one wrote from the
    primary's record): nothing of the kind was known beyond the killed process before.
    Every acknowledged write is on the new primary."""
    prepare(sync_lab)
    with etcd_server(tmp_path) as port, contextlib.ExitStack() as stack:
        etcd = f"http://127.0.0.1:{port}"
        arbiters = [_start(stack, sync_lab, tmp_path, etcd, n) for n in (0, 1)]
        wait_until(lambda: sum(_holds(a) for a in arbiters) == 1, timeout=TTL + 5, what="a holder")
        holder = next(a for a in arbiters if _holds(a))
        other = next(a for a in arbiters if a is not holder)
        mgr = stack.enter_context(
            FailoverManager(nodes=sync_lab.manager_nodes(), config=FAST).open()
        )
        with Workload(mgr, threads=2) as load:
            sync_lab.kill("node0")
            new = wait_until(
                lambda: next((n for n in _writable(sync_lab) if n != "node0"), None),
                timeout=20,
                what="a promotion by the holder",
            )
            left = "node2" if new == "node1" else "node1"
            wait_until(
                lambda: _sync_names(sync_lab, new) == f'ANY 1 ("{left}")',
                what="the new primary's list, for the standby left",
            )
            os.kill(holder["pid"], signal.SIGKILL)
            wait_until(functools.partial(_holds, other), timeout=TTL + 3, what="handover")
            sync_lab.rejoin("node0", new, sync=False)  # as `pgfailover rejoin`: the list untouched
            wait_until(
                lambda: _sync_names(sync_lab, new) == f'ANY 1 ("{left}", "node0")',
                timeout=30,
                what="node0 back in the list, by the arbiter that took the lease",
            )
            sync = _status(other)["synchronous_replication"]
            assert (sync["written_by_manager"], sync["policy"]) == (True, "ANY 1 (node1, node2)")
        acked = {i for i, _, _ in load.acked}
        present = {r[0] for r in sync_lab.run_sql(new, "SELECT id FROM w")}
        assert acked, "no write was acknowledged"
        assert not acked - present, f"{len(acked - present)} acknowledged writes missing"
