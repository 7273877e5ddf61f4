"""Markdown tables from the benchmarks' JSON lines (what the README publishes).

    python benchmarks/report.py bench-results

reads the benchmarks' ``.jsonl`` files from the directory (those present)
and prints one table per benchmark.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report_scale import arbiter_loss_table, scale_patroni_table, scale_table


def _records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise SystemExit(f"{path}:{number}: not a JSON line: {exc}") from exc
    return out


def _spread(stat: dict[str, float] | None, unit: str = "s") -> str:
    if not stat:
        return "n/a"
    if stat["min"] == stat["max"]:
        return f"{stat['median']:g} {unit}".strip()
    return f"{stat['median']:g} ({stat['min']:g}-{stat['max']:g}) {unit}".strip()


def failover_table(records: list[dict[str, Any]]) -> list[str]:
    """Kill/pause to first write, per variant, mode and contender."""
    summary = next((r["summary"] for r in records if "summary" in r), None)
    if summary is None:
        return []
    lines = [
        "| variant | replication | contender | runs | kill to first write "
        "| promotion to first write | failed attempts | lost writes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in summary:
        lines.append(
            f"| {row['variant']} | {row['mode']} | {row['contender']} | {row['runs']} "
            f"| {_spread(row['kill_to_first_write'])} "
            f"| {_spread(row['promotion_to_first_write'])} "
            f"| {_spread(row['failed_attempts'], '')} | {_spread(row['lost'], '')} |"
        )
    return lines


def _recovery(row: dict[str, Any] | None, observe: float | None) -> str:
    """Fault to first write, saying how many runs never got there."""
    if row is None:
        return "n/a"
    runs, recovered = row["runs"], row.get("recovered", row["runs"])
    within = f" within {observe:g} s" if observe else ""
    if not row["fault_to_first_write"]:
        return f"never (0 of {runs} runs{within})"
    text = _spread(row["fault_to_first_write"])
    return text if recovered == runs else f"{text} ({recovered} of {runs} runs{within})"


def _pair(a: dict[str, Any] | None, b: dict[str, Any] | None, metric: str, unit: str) -> str:
    return " / ".join(_spread(r[metric], unit) if r else "n/a" for r in (a, b))


def faults_table(records: list[dict[str, Any]]) -> list[str]:
    """Fault to first write per fault, pgfailover and the baseline side by side."""
    summary = next((r for r in records if "summary" in r), None)
    if summary is None:
        return []
    header = next((r for r in records if "machine" in r), {})
    cpus = header.get("machine", {}).get("cpus")
    measured = f"{header.get('date', 'undated')}, {cpus} CPUs"
    observe = summary.get("observe_s")
    rows = {(row["fault"], row["contender"]): row for row in summary["summary"]}
    faults = list(dict.fromkeys(fault for fault, _ in rows))
    order = ("crash", "hang", "blackhole", "second_crash")
    faults.sort(key=lambda f: order.index(f) if f in order else len(order))
    lines = [
        "| fault | pgfailover: fault to first write | baseline: fault to first write "
        "| promotion started after (pgfailover) | promotion to first write "
        "(pgfailover / baseline) | failed attempts (pgfailover / baseline) "
        "| lost writes (pgfailover / baseline) | runs | measured |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for fault in faults:
        ours, theirs = rows.get((fault, "pgfailover")), rows.get((fault, "baseline"))
        runs = " / ".join(str(r["runs"]) if r else "0" for r in (ours, theirs))
        lines.append(
            f"| {fault} | {_recovery(ours, observe)} | {_recovery(theirs, observe)} "
            f"| {_spread(ours['promotion_delay']) if ours else 'n/a'} "
            f"| {_pair(ours, theirs, 'promotion_to_first_write', 's')} "
            f"| {_pair(ours, theirs, 'failed_attempts', '')} "
            f"| {_pair(ours, theirs, 'lost', '')} | {runs} | {measured} |"
        )
    skipped = [r for r in records if "skipped" in r]
    if skipped:
        lines.append("")
        lines.extend(f"{r['fault']}: not run ({r['skipped']})." for r in skipped)
    return lines


def overhead_table(records: list[dict[str, Any]]) -> list[str]:
    """Throughput and latency per statement, threads and contender."""
    rows = [r for r in records if "contender" in r]
    if not rows:
        return []
    lines = [
        "| statement | threads | contender | ops/s | p50 | p99 | ratio to bare pool "
        "| interleaved ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = f"{r['ratio_to_bare']:.3f}"
        if r["contender"] != "bare" and "ratio_max" in r:
            ratio += f" ({r['ratio_min']:.3f}-{r['ratio_max']:.3f})"
        mixed = r.get("ratio_interleaved")
        lines.append(
            f"| {r['statement']} | {r['threads']} | {r['contender']} | {r['ops_per_s']:.0f} "
            f"| {r['p50_ms']:.3f} ms | {r['p99_ms']:.3f} ms | {ratio} "
            f"| {'n/a' if mixed is None else f'{mixed:.3f}'} |"
        )
    plan = next((r for r in records if "machine" in r and "pairs" in r), None)
    if plan:
        lines.append("")
        lines.append(
            f"Alternating slices: {plan['pairs']} pairs of {plan['slice_s']:g} s per contender"
            f" and thread count, {plan['date']}, {plan['machine']['cpus']} CPUs; interleaved"
            f" ratio from {plan['interleaved_rounds']} rounds (0: not run)"
            + (
                f"; client on CPU {plan['cpu_pinning']['client']}, servers on CPU"
                f" {plan['cpu_pinning']['servers']}."
                if plan.get("cpu_pinning")
                else "; not pinned."
            )
        )
    return lines


def async_overhead_table(records: list[dict[str, Any]]) -> list[str]:
    """Throughput and latency per task count and contender, on one event loop."""
    rows = [r for r in records if "contender" in r]
    if not rows:
        return []
    lines = [
        "| tasks | contender | ops/s | p50 | p99 | ratio to bare AsyncConnectionPool |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = f"{r['ratio_to_bare']:.3f}"
        if r["contender"] != "bare":
            ratio += f" ({r['ratio_min']:.3f}-{r['ratio_max']:.3f})"
        lines.append(
            f"| {r['tasks']} | {r['contender']} | {r['ops_per_s']:.0f} | {r['p50_ms']:.3f} ms "
            f"| {r['p99_ms']:.3f} ms | {ratio} |"
        )
    plan = next((r for r in records if "machine" in r and "pairs" in r), None)
    if plan:
        pinned = plan.get("cpu_pinning")
        lines.append("")
        lines.append(
            f"SELECT 1, alternating slices: {plan['pairs']} pairs of {plan['slice_s']:g} s per"
            f" contender and task count, {plan['date']}, {plan['machine']['cpus']} CPUs"
            + (
                f"; client on CPU {pinned['client']}, servers on CPU {pinned['servers']}."
                if pinned
                else "; not pinned."
            )
        )
    return lines


def probes_table(records: list[dict[str, Any]]) -> list[str]:
    """Cycle durations per size and variant, and the server-side cost."""
    rows = [r for r in records if "cycle" in r]
    if not rows:
        return []
    lines = [
        "| nodes | variant | cycle | first cycle | steady median | steady max |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['nodes']} | {r['variant']} | {r['cycle']} | {r['first_cycle_ms']:g} ms "
            f"| {r['median_ms']:g} ms | {r['max_ms']:g} ms |"
        )
    cost = next((r for r in records if "cost" in r), None)
    if cost:
        tps = [c["transactions_per_s"] for c in cost["cost"].values()]
        cpu = [c["probe_backend_cpu_ms_per_s"] for c in cost["cost"].values()]
        cpu_known = [c for c in cpu if c is not None]
        lines.append("")
        lines.append(
            f"Server-side cost at the default {cost['interval_s']:g} s interval, over "
            f"{cost['seconds']:g} s on {len(tps)} nodes: at most {max(tps):g} transactions/s "
            "per node"
            + (
                (
                    f", probe backend CPU at most {max(cpu_known):g} ms per second."
                    if max(cpu_known) > 0
                    else ", probe backend CPU below the clock-tick resolution (10 ms)."
                )
                if cpu_known
                else "."
            )
        )
    return lines


def switchover_table(records: list[dict[str, Any]]) -> list[str]:
    """One row per switchover run, then the median and max."""
    rows = [r for r in records if "longest_pause_s" in r]
    if not rows:
        return []
    lines = [
        "| run | outcome | longest write pause | switchover call | acked | failed | lost "
        "| old primary acks after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['outcome']} | {r['longest_pause_s']:.3f} s "
            f"| {r['switchover_call_s']:.3f} s | {r['acked']} | {r['failed']} | {r['lost']} "
            f"| {r['old_primary_acks_after']} |"
        )
    pauses = sorted(r["longest_pause_s"] for r in rows if r["longest_pause_s"] is not None)
    if pauses:
        lines.append("")
        lines.append(
            f"Longest write pause: median {statistics.median(pauses):.3f} s, "
            f"max {pauses[-1]:.3f} s over {len(pauses)} runs (target: 1.5 s or less)."
        )
    return lines


def http_flood_table(records: list[dict[str, Any]]) -> list[str]:
    """Kill-to-switch times with and without 500 connections on the HTTP port."""
    rows = [r for r in records if "flooded" in r]
    if not rows:
        return []
    lines = [
        "| pair | HTTP port | kill to detection | kill to writes switched "
        "| threads | descriptors |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        port = f"{r['connections']} connections" if r["flooded"] else "quiet"
        lines.append(
            f"| {r['pair']} | {port} | {r['kill_to_detection_s']:.3f} s "
            f"| {r['kill_to_switch_s']:.3f} s | {r['threads_before']} -> {r['threads_during']} "
            f"| {r['fds_before']} -> {r['fds_during']} |"
        )
    summary = next((r["summary"] for r in records if "summary" in r), None)
    if summary:
        lines.append("")
        lines.append(
            f"Median kill to switch: quiet {summary['quiet_median_s']:.3f} s, flooded "
            f"{summary['flooded_median_s']:.3f} s, difference "
            f"{summary['difference_s'] * 1000:+.0f} ms (target: +100 ms or less)."
        )
    return lines


def reads_table(records: list[dict[str, Any]]) -> list[str]:
    """Read strategies per scenario: throughput, latency, where the reads went."""
    rows = [r for r in records if "contender" in r]
    if not rows:
        return []
    lines = [
        "| scenario | strategy | reads/s | p50 | p99 | ratio to round_robin | share of reads |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        share = ", ".join(f"{n} {v:.0%}" for n, v in r["share"].items())
        lines.append(
            f"| {r['scenario']} | {r['contender']} | {r['ops_per_s']:.0f} | {r['p50_ms']:.3f} ms "
            f"| {r['p99_ms']:.3f} ms | {r['ratio_to_round_robin']:.3f} | {share} |"
        )
    plan = next((r for r in records if "machine" in r), None)
    if plan:
        lines.append("")
        lines.append(
            f"{plan['threads']} client threads; {plan['rounds']} rounds of one"
            f" {plan['slice_s']:g} s slice per strategy, order rotated each round; node2_stalls:"
            f" node2's backends stopped {plan['stall_ms']:g} ms of every {plan['period_ms']:g} ms;"
            f" {plan['date']}, {plan['machine']['cpus']} CPUs shared by client and servers."
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    """Print the tables for the results directory given."""
    args = sys.argv[1:] if argv is None else argv
    directory = Path(args[0] if args else "bench-results")
    if not directory.is_dir():
        raise SystemExit(f"{directory}: no such results directory (run `make bench`)")
    for title, name, table in (
        ("Failover downtime", "failover.jsonl", failover_table),
        ("Fault to first write", "faults.jsonl", faults_table),
        ("Switchover under load", "switchover.jsonl", switchover_table),
        ("Failover with a flooded HTTP port", "http_flood.jsonl", http_flood_table),
        ("Routing overhead", "overhead.jsonl", overhead_table),
        ("Routing overhead under asyncio", "async_overhead.jsonl", async_overhead_table),
        ("Read strategies", "reads.jsonl", reads_table),
        ("Probe cycles", "probes.jsonl", probes_table),
        ("Many managers on one cluster", "scale.jsonl", scale_table),
        ("Many managers on one cluster, CPUs saturated", "scale_saturated.jsonl", scale_table),
        ("Many managers on a Patroni cluster", "scale_patroni.jsonl", scale_patroni_table),
        ("When an arbiter dies", "arbiter_loss.jsonl", arbiter_loss_table),
    ):
        records = _records(directory / name)
        machine = next((r["machine"] for r in records if "machine" in r), None)
        lines = table(records)
        if not lines:
            continue
        print(f"### {title}\n")
        if machine:
            print(
                f"Python {machine['python']}, PostgreSQL {machine['postgresql']}, "
                f"{machine['cpus']} CPUs, {machine['platform']}\n"
            )
        print("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
