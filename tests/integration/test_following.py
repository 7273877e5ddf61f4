"""Managers that follow an arbiter (``source=``), against a real cluster and real arbiters.

The arbiter is ``pgfailover serve --stream-port 0`` as a process; the
followers are managers in this process, each with its own workload of
INSERTs with unique ids. What must hold:

- followers route on the arbiter's snapshots and add no probe backend to
  the cluster (``pg_stat_activity``: only the arbiter's probe sessions);
- through a kill -9 of the primary, every follower writes on the promoted
  standby, and every acknowledged write is on the final primary (a quorum
  sync lab: with asynchronous replication the last commits before a kill
  may never reach a standby, as the README says);
- a follower never promotes;
- when the arbiter dies (kill -9) or hangs (SIGSTOP), every follower probes
  the cluster itself within its ``health_check_interval``, and follows the
  arbiter again, closing its probe sessions, once one answers;
- when one of two arbiters dies or hangs, its followers move to the other
  and open no probe session (no fallback storm).

Every process is stopped by its PID in a ``finally``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pgfailover import FailoverManager
from pgfailover.errors import PromotionRefused
from pgfailover.lab import LocalLab
from pgfailover.metrics import register

from .helpers import (
    FAST,
    Workload,
    config_file,
    holds_for,
    port_of,
    prepare,
    serve_process,
    wait_until,
)

pytestmark = pytest.mark.slow

INTERVAL = 1.0  # the followers' health_check_interval: how long a silent source is trusted


def _probe_sessions(lab: LocalLab, node: str) -> int:
    rows = lab.run_sql(
        node,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgfailover-probe'",
    )
    return int(rows[0][0])


@contextlib.contextmanager
def _followers(
    lab: LocalLab, url: str, count: int, interval: float = INTERVAL
) -> Iterator[list[FailoverManager]]:
    config = FAST.replace(source=url, health_check_interval=interval)
    managers: list[FailoverManager] = []
    try:
        for _ in range(count):
            managers.append(FailoverManager(nodes=lab.manager_nodes(), config=config).open())
        yield managers
    finally:
        for mgr in managers:
            mgr.close()


def _modes(managers: list[FailoverManager]) -> list[str]:
    return [(m.source_status() or {}).get("mode", "?") for m in managers]


def _all_acked_present(lab: LocalLab, node: str, loads: list[Workload]) -> None:
    acked = {i for load in loads for i, _, _ in load.acked}
    present = {r[0] for r in lab.run_sql(node, "SELECT id FROM w")}
    missing = acked - present
    assert not missing, f"{len(missing)} acknowledged writes missing on {node}"


def test_followers_write_on_the_arbiters_promotion_and_probe_nothing(
    sync_lab: LocalLab, tmp_path: Path
) -> None:
    prepare(sync_lab)
    config = config_file(sync_lab, tmp_path)
    with (
        serve_process(config, tmp_path / "arbiter.log", "--stream-port", "0") as ready,
        _followers(sync_lab, ready["stream_url"], 4) as managers,
    ):
        assert _modes(managers) == ["following"] * 4
        # Only the arbiter probes: one probe session per node, whatever the followers.
        wait_until(lambda: _probe_sessions(sync_lab, "node0") == 1, what="one probe session")
        old_port = sync_lab.node("node0").port
        loads = [Workload(m, threads=2) for m in managers]
        for load in loads:
            load.__enter__()
        try:
            wait_until(lambda: all(ld.acked_on(old_port) > 10 for ld in loads), what="writes")
            assert _probe_sessions(sync_lab, "node0") == 1
            sync_lab.kill("node0")
            killed = time.monotonic()

            def everyone_moved() -> bool:
                return all(
                    any(p != old_port and t > killed for _, p, t in ld.acked) for ld in loads
                )

            wait_until(everyone_moved, timeout=30, what="every follower writing elsewhere")
        finally:
            for load in loads:
                load.__exit__(None, None, None)
        new = {m.snapshot.primary for m in managers}
        assert len(new) == 1, new
        (primary,) = new
        assert primary in ("node1", "node2")
        _all_acked_present(sync_lab, primary, loads)
        new_port = sync_lab.node(primary).port
        assert port_of(sync_lab, new_port) == primary
        for mgr in managers:
            events = [e for e in mgr.history() if e.kind == "failover"]
            assert events
            assert events[-1].outcome == "completed"
            assert events[-1].to_node == primary
        assert _modes(managers) == ["following"] * 4
        assert _probe_sessions(sync_lab, primary) == 1  # still only the arbiter's
        with pytest.raises(PromotionRefused, match="never promotes") as refused:
            managers[0].perform_failover()
        assert refused.value.guard == "follower"
        scraped = _scrape(managers[0])  # what the dashboard and SourceUnavailable read
        assert scraped["pgfailover_source_following"] == 1
        assert scraped["pgfailover_source_fallbacks_total"] == 0
        assert scraped["pgfailover_source_updates_total"] >= 2


def _scrape(mgr: FailoverManager) -> dict[str, float]:
    registry = CollectorRegistry()
    register(mgr, registry)
    return {
        s.name: s.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for s in family.samples
    }


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait_modes(managers: list[FailoverManager], mode: str, within: float) -> float:
    started = time.monotonic()
    wait_until(lambda: _modes(managers) == [mode] * len(managers), timeout=within, what=mode)
    return time.monotonic() - started


def test_followers_probe_when_the_arbiter_dies_or_hangs_and_follow_it_again(
    fresh_lab: LocalLab, tmp_path: Path
) -> None:
    config = config_file(fresh_lab, tmp_path)
    with serve_process(config, tmp_path / "a.log", "--stream-port", "0") as first:
        url = first["stream_url"]
        port = url.rsplit(":", 1)[1]
        with _followers(fresh_lab, url, 3) as managers:
            assert _modes(managers) == ["following"] * 3
            _signal(first["pid"], signal.SIGKILL)  # dead: its sockets are closed at once
            took = _wait_modes(managers, "probing", within=INTERVAL + 2)
            assert took < INTERVAL + 0.5, took
            statuses: list[dict[str, Any]] = [m.source_status() or {} for m in managers]
            assert all(s["reason"] for s in statuses)
            assert all(s["fallbacks"] == 1 for s in statuses)
            # Probing itself now: each follower has its own probe session.
            wait_until(lambda: _probe_sessions(fresh_lab, "node0") == 3, what="3 probe sessions")
            assert [m.get_metrics()["source_following"] for m in managers] == [0, 0, 0]
            with serve_process(
                config, tmp_path / "b.log", "--stream-port", port
            ) as second:  # the same address: followers come back on their own
                _wait_modes(managers, "following", within=10)
                # Back to following: the followers' probe sessions are closed.
                wait_until(lambda: _probe_sessions(fresh_lab, "node0") == 1, what="1 session")
                _signal(second["pid"], signal.SIGSTOP)  # hung: no FIN, only silence
                try:
                    took = _wait_modes(managers, "probing", within=INTERVAL + 3)
                    assert took < INTERVAL + 0.6, took
                    reasons = [(m.source_status() or {})["reason"] for m in managers]
                    assert all("silent" in r for r in reasons), reasons
                finally:
                    _signal(second["pid"], signal.SIGCONT)
                _wait_modes(managers, "following", within=10)
                assert all(m.snapshot.primary == "node0" for m in managers)
                assert all(m.query("SELECT 1") == [(1,)] for m in managers)


@pytest.mark.parametrize("fault", ["dies", "hangs"])
def test_followers_of_two_arbiters_move_to_the_live_one_without_probing(
    fresh_lab: LocalLab, tmp_path: Path, fault: str
) -> None:
    """One of two arbiters dies (SIGKILL: its streams close) or hangs (SIGSTOP: three
    heartbeats of silence): its followers take the other's stream, and the database
    sees no probe session of theirs (no fallback storm)."""
    config = config_file(fresh_lab, tmp_path)
    options = ("--stream-port", "0", "--promotion", "manual")  # nothing promotes here
    allowance = 2.0  # the followers' health_check_interval: far more than 3 heartbeats
    with (
        serve_process(config, tmp_path / "a.log", *options) as first,
        serve_process(config, tmp_path / "b.log", *options) as second,
        _followers(
            fresh_lab, ",".join((first["stream_url"], second["stream_url"])), 4, allowance
        ) as managers,
    ):
        assert _modes(managers) == ["following"] * 4

        def following(url: str) -> bool:
            return all((m.source_status() or {}).get("following") == url for m in managers)

        assert following(first["stream_url"])  # the first URL first
        wait_until(lambda: _probe_sessions(fresh_lab, "node0") == 2, what="the arbiters' two")
        most = 0

        def moved() -> bool:
            nonlocal most
            most = max(most, _probe_sessions(fresh_lab, "node0"))
            return following(second["stream_url"])

        try:
            _signal(first["pid"], signal.SIGKILL if fault == "dies" else signal.SIGSTOP)
            wait_until(moved, timeout=allowance + 2, what="every follower on the second")
            # Past the allowance too: a follower that was going to probe would have.
            holds_for(
                lambda: (
                    _modes(managers) == ["following"] * 4
                    and _probe_sessions(fresh_lab, "node0") <= 2
                ),
                allowance + 0.5,
                what="following without a probe session",
            )
        finally:
            _signal(first["pid"], signal.SIGCONT)  # a hung one is then stopped by its PID
        assert most <= 2, most  # the arbiters' sessions only (a hung one's stay open)
        statuses = [m.source_status() or {} for m in managers]
        assert [s["fallbacks"] for s in statuses] == [0] * 4
        assert [m.get_metrics()["source_following"] for m in managers] == [1] * 4
