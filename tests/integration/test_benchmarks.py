"""The benchmarks still run, on a small scale, and report what they claim to.

Timing targets live in the benchmark output, not here; these tests check
that each benchmark runs end to end against the lab, emits well-formed JSON
lines, and that the properties that are not timings hold: no acknowledged
write is lost with quorum sync, and the report renders every table.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(360)]


def _run(script: str, *args: str, out: Path) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out.write_text(proc.stdout)
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def _report(directory: Path) -> str:
    """The tables ``benchmarks/report.py`` renders from ``directory``."""
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "report.py"), str(directory)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout


def _failover(tmp_path: Path) -> None:
    failover = _run(
        "failover.py",
        *("--runs", "1", "--contenders", "auto", "--modes", "sync"),
        *("--variants", "kill", "--observe", "10"),
        out=tmp_path / "failover.jsonl",
    )
    run = next(r for r in failover if r.get("contender") == "auto")
    assert run["kill_to_first_write"] is not None, run  # writes resumed on a new primary
    assert run["lost"] == 0, run
    assert run["old_primary_acks_after_failover"] == 0, run


def _overheads(tmp_path: Path) -> None:
    overhead = _run(
        "overhead.py",
        *("--threads", "2", "--statements", "insert", "--rounds", "1", "--slice", "0.3"),
        out=tmp_path / "overhead.jsonl",
    )
    contenders = {r["contender"]: r for r in overhead if "contender" in r}
    assert set(contenders) == {"bare", "query", "get_client"}
    assert all(r["ops"] > 0 for r in contenders.values())

    async_overhead = _run(
        "async_overhead.py",
        *("--tasks", "4", "--pairs", "1", "--slice", "0.3"),
        out=tmp_path / "async_overhead.jsonl",
    )
    contenders = {r["contender"]: r for r in async_overhead if "contender" in r}
    assert set(contenders) == {"bare", "query", "get_client"}
    assert all(r["ops"] > 0 for r in contenders.values())


def _async_failover(tmp_path: Path) -> None:
    async_failover = _run(
        "failover.py",
        *("--runs", "1", "--contenders", "async_auto,async_baseline", "--modes", "sync"),
        *("--variants", "kill", "--delays", "0", "--observe", "10"),
        out=tmp_path / "async_failover.jsonl",
    )
    for label in ("async_auto", "async_baseline D=0"):
        run = next(r for r in async_failover if r.get("contender") == label)
        assert run["kill_to_first_write"] is not None, run
        assert run["lost"] == 0, run
        assert run["old_primary_acks_after_failover"] == 0, run


def _reads(tmp_path: Path) -> None:
    reads = _run(
        "reads.py",
        *("--threads", "2", "--rounds", "1", "--slice", "0.3"),
        out=tmp_path / "reads.jsonl",
    )
    strategies = {(r["scenario"], r["contender"]): r for r in reads if "contender" in r}
    assert len(strategies) == 2 * 7
    assert all(r["ops"] > 0 for r in strategies.values())
    assert strategies[("equal", "priority")]["share"] == {"node1": 1.0}  # lab priority order
    spread = strategies[("equal", "round_robin")]["share"]
    assert spread == pytest.approx({"node1": 0.5, "node2": 0.5}, abs=0.02)


def _probes(tmp_path: Path) -> None:
    probes = _run(
        "probes.py",
        *("--sizes", "2", "--cycles", "3", "--cost-seconds", "2"),
        out=tmp_path / "probes.jsonl",
    )
    paused = [r for r in probes if r.get("variant") == "paused" and r["cycle"] == "full"]
    assert paused
    assert paused[0]["first_cycle_ms"] >= 0.9 * paused[0]["timeout_ms"]  # the hang was met
    cost = next(r for r in probes if "cost" in r)
    assert set(cost["cost"]) == {"node0", "node1"}


def _switchover(tmp_path: Path) -> None:
    switchover = _run(
        "switchover.py", "--runs", "1", "--observe", "1", out=tmp_path / "switchover.jsonl"
    )
    (done,) = [r for r in switchover if "run" in r]
    assert done["outcome"] == "completed", done
    assert (done["failed"], done["lost"], done["old_primary_acks_after"]) == (0, 0, 0), done
    assert done["longest_pause_s"] is not None


def _http_flood(tmp_path: Path) -> None:
    flood = _run("http_flood.py", "--pairs", "1", out=tmp_path / "http_flood.jsonl")
    runs = [r for r in flood if "flooded" in r]
    assert sorted(r["flooded"] for r in runs) == [False, True]
    assert all(r["kill_to_switch_s"] is not None for r in runs), runs
    assert all(r["threads_during"] == r["threads_before"] for r in runs), runs


def _scale(tmp_path: Path) -> None:
    scale = _run(
        "scale.py",
        *("--sizes", "2", "--runs", "1", "--steady", "1", "--observe", "4"),
        *("--contenders", "arbiter,probing"),
        out=tmp_path / "scale.jsonl",
    )
    by_contender = {r["contender"]: r for r in scale if "run" in r}
    # Run as root (CI), each role had its own CPU cgroup, and none is left behind
    # (scale_patroni.py, the only other benchmark with groups, runs in the same lane).
    header = next(r for r in scale if "pace_s" in r)
    groups = _cpugroups()
    found = groups.hierarchy()  # None unless root, with a cpu controller
    assert header["cpu_groups"] == (None if found is None else found[1]), header
    assert header["in_step"] is False, header  # writers start at their own points of the pace
    left = [] if found is None else list(found[0].glob(groups.PREFIX + "*"))
    assert not left, left
    assert all(r["write_before_s"] is not None for r in by_contender.values())
    assert all(r["all_at_once_s"]["max"] > 0 for r in by_contender.values())
    assert by_contender["arbiter"]["steady_probes_per_s"] == 0  # followers probe nothing
    assert by_contender["arbiter"]["steady_probe_sessions"] == 3  # the arbiter's, one per node
    assert by_contender["probing"]["steady_probe_sessions"] == 3 + 2 * 3
    for run in by_contender.values():
        assert run["never_wrote_on_new"] == 0, run
        assert run["old_primary_acks_after_new"] == 0, run
        # The new primary's log dated its promotion: after the kill, before the switch.
        assert 0 <= run["promotion_to_switch_s"] < run["switch_after_kill_s"], run
        assert run["promotion_to_first_write_s"]["max"] > 0, run
        # The kill ran beside the session counting, and lost writes say who acked them.
        assert 0 < run["kill_took_s"] < 60, run
        assert sum(run["lost_by_port"].values()) == run["lost"], run


def _scale_patroni(tmp_path: Path) -> None:
    patroni = _run(
        "scale_patroni.py",
        *("--sizes", "2", "--runs", "1", "--steady", "1", "--observe", "6"),
        *("--contenders", "patroni-etcd", "--per-process", "1"),
        out=tmp_path / "scale_patroni.jsonl",
    )
    assert next(r for r in patroni if "pace_s" in r)["per_process"] == 1
    (followed,) = [r for r in patroni if "run" in r]
    assert followed["steady_probe_sessions"] == 0  # followers of Patroni keep no session
    assert followed["switch_to_manager_switch_s"] is not None, followed
    assert (followed["never_wrote_on_new"], followed["lost"]) == (0, 0), followed
    assert followed["old_primary_acks_after_new"] == 0, followed


def _warmup(tmp_path: Path) -> None:
    records = _run("warmup.py", "--connections", "4", "--runs", "1", out=tmp_path / "warmup.jsonl")
    runs = {r["variant"]: r for r in records if "run" in r}
    assert set(runs) == {"cold", "warm"}
    assert all((r["written"], r["failed"]) == (4, 0) for r in runs.values()), runs
    assert all(r["p99_s"] is not None for r in runs.values()), runs


def _arbiter_loss(tmp_path: Path) -> None:
    loss = _run(
        "arbiter_loss.py",
        *("--sizes", "4", "--runs", "1", "--observe", "2"),
        "--no-cpu-groups",  # what is checked is not a timing; scale.py checks the groups
        out=tmp_path / "arbiter_loss.jsonl",
    )
    runs = {r["case"]: r for r in loss if "run" in r}
    # Two arbiters, the followed one killed: all on the other, no session of theirs.
    assert runs["two"]["followers_probe_sessions_max"] == 0, runs["two"]
    assert runs["two"]["followers_on_the_other_at_end"] == 4, runs["two"]
    assert runs["two"]["followers_probing_at_end"] == 0, runs["two"]
    # The only arbiter killed: every follower probes, a session per node each.
    assert runs["one"]["followers_probing_at_end"] == 4, runs["one"]
    assert runs["one"]["followers_probe_sessions_max"] == 4 * 3, runs["one"]
    assert runs["one"]["followers_sessions_reached_s"]["p90"] is not None, runs["one"]
    assert all(r["failed_writes"] == 0 for r in runs.values()), runs


# Two lanes of about the same length (one after the other here: 87 and 89 s, and
# warmup.py's 8 s), run side
# by side; the two benchmarks with CPU groups in the same lane (scale.py checks none is
# left), arbiter_loss.py without them.
LANES: tuple[tuple[Callable[[Path], None], ...], ...] = (
    (_scale_patroni, _scale, _failover, _reads, _warmup),
    (_arbiter_loss, _async_failover, _http_flood, _switchover, _probes, _overheads),
)


def _lane(steps: tuple[Callable[[Path], None], ...], tmp_path: Path) -> None:
    for step in steps:
        step(tmp_path)


def test_benchmarks_run_and_report(tmp_path: Path) -> None:
    """Every benchmark on a small scale, in two lanes at once (half the suite's time
    for them): each makes its own lab on free ports, and what is checked here is not a
    timing, so sharing the CPUs changes nothing asserted; then the report's tables."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(LANES)) as pool:
        lanes = [pool.submit(_lane, steps, tmp_path) for steps in LANES]
        for lane in lanes:
            lane.result()  # a lane's failed assertion is raised here

    report = _report(tmp_path)
    for title in (
        "Failover downtime",
        "Switchover under load",
        "Failover with a flooded HTTP port",
        "Routing overhead",
        "Routing overhead under asyncio",
        "Read strategies",
        "Probe cycles",
        "Many managers on one cluster",
        "Many managers on a Patroni cluster",
        "When an arbiter dies",
    ):
        assert f"### {title}" in report
    assert "| kill | sync | auto | 1 |" in report
    assert "| 4 | two | 1 | 0 | n/a | 0 | 4 | 0 |" in report  # arbiter_loss.py's summary


def _cpugroups() -> Any:
    """benchmarks/cpugroups.py, which says where this machine's CPU cgroups are."""
    path = ROOT / "benchmarks" / "cpugroups.py"
    spec = importlib.util.spec_from_file_location("cpugroups", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_faults_benchmark_loses_no_write_and_reports(tmp_path: Path) -> None:
    records = _run(
        "faults.py", *("--runs", "1", "--faults", "crash"), out=tmp_path / "faults.jsonl"
    )
    runs = {r["contender"]: r for r in records if "contender" in r}
    assert set(runs) == {"pgfailover", "baseline"}
    ours = runs["pgfailover"]
    assert ours["fault_to_first_write"] is not None, ours  # writes resumed on a new primary
    assert ours["lost"] == 0, ours
    assert ours["old_primary_acks_after_failover"] == 0, ours
    assert runs["baseline"]["promoter_delays"] == ours["promotion_delays"]  # the same promotion
    summary = next(r["summary"] for r in records if "summary" in r)
    assert {(row["fault"], row["contender"]) for row in summary} == {
        ("crash", "pgfailover"),
        ("crash", "baseline"),
    }

    report = _report(tmp_path)
    assert "### Fault to first write" in report
    assert "| crash |" in report
