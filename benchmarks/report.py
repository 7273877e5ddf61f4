"""Markdown tables from the benchmarks' JSON lines (what the README publishes).

    python benchmarks/report.py bench-results

reads ``failover.jsonl``, ``overhead.jsonl`` and ``probes.jsonl`` from the
directory (those present) and prints one table per benchmark.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


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


def overhead_table(records: list[dict[str, Any]]) -> list[str]:
    """Throughput and latency per statement, threads and contender."""
    rows = [r for r in records if "contender" in r]
    if not rows:
        return []
    lines = [
        "| statement | threads | contender | ops/s | p50 | p99 | ratio to bare pool |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['statement']} | {r['threads']} | {r['contender']} | {r['ops_per_s']:.0f} "
            f"| {r['p50_ms']:.3f} ms | {r['p99_ms']:.3f} ms | {r['ratio_to_bare']:.3f} |"
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


def main(argv: list[str] | None = None) -> int:
    """Print the tables for the results directory given."""
    args = sys.argv[1:] if argv is None else argv
    directory = Path(args[0] if args else "bench-results")
    if not directory.is_dir():
        raise SystemExit(f"{directory}: no such results directory (run `make bench`)")
    for title, name, table in (
        ("Failover downtime", "failover.jsonl", failover_table),
        ("Routing overhead", "overhead.jsonl", overhead_table),
        ("Probe cycles", "probes.jsonl", probes_table),
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
