"""Probe cost and scaling: how long a probe cycle takes, and what probing costs the servers.

One lab cluster of a primary and seven standbys. For 1, 2, 4 and 8 nodes
(the first N of the cluster):

- ``healthy``: the duration of a full probe cycle (every node gets a fresh
  verdict, as ``check_health()`` does) and of a monitor cycle;
- ``paused``: the same with the last of the N nodes stopped (SIGSTOP, a hung
  server). ``first_cycle`` is the cycle that meets the hang (bounded by the
  probe timeout); the following cycles are the steady state, in which the
  hung node is already known to be failing.

Then the server-side cost: a ``FailoverManager`` on the 8 nodes at the default
interval for ``--cost-seconds``, counting the probe transactions each server
ran (``pg_stat_database.xact_commit``) and the CPU time of the probe backend
(``/proc/PID/stat``) per node.

    python benchmarks/probes.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, machine

from pgfailover import FailoverConfig, FailoverManager, Node
from pgfailover.lab import LocalLab
from pgfailover.monitor import ProbeRound

TIMEOUT = FailoverConfig().health_check_timeout
PATIENCE = 0.1  # what the manager's monitor uses at the default fast interval


def _cycles(nodes: list[Node], cycles: int, patience: float | None) -> list[float]:
    """Durations of consecutive probe cycles (seconds)."""
    rnd = ProbeRound(nodes, TIMEOUT)
    try:
        out = []
        for _ in range(cycles):
            t = time.perf_counter()
            rnd.run(patience=patience)
            out.append(time.perf_counter() - t)
        return out
    finally:
        rnd.close()


def scaling(lab: LocalLab, sizes: list[int], cycles: int) -> list[dict[str, Any]]:
    """Cycle durations for every size, healthy and with one paused node."""
    nodes = lab.manager_nodes()
    records = []
    for size in sizes:
        subset = nodes[:size]
        for variant in ("healthy", "paused"):
            if variant == "paused":
                lab.pause(subset[-1].name)
            try:
                for kind, patience in (("full", None), ("monitor", PATIENCE)):
                    durations = _cycles(subset, cycles, patience)
                    steady = durations[1:]
                    records.append(
                        {
                            "benchmark": "probes",
                            "nodes": size,
                            "variant": variant,
                            "cycle": kind,
                            "first_cycle_ms": round(durations[0] * 1000, 2),
                            "median_ms": round(statistics.median(steady) * 1000, 2),
                            "max_ms": round(max(steady) * 1000, 2),
                            "timeout_ms": TIMEOUT * 1000,
                            "within_timeout_plus_50ms": max(durations) <= TIMEOUT + 0.05,
                        }
                    )
                    emit(records[-1])
            finally:
                if variant == "paused":
                    lab.resume(subset[-1].name)
    return records


def _probe_backend_cpu(lab: LocalLab, name: str) -> tuple[int | None, float]:
    """PID of the probe backend on ``name`` and its CPU seconds so far."""
    rows = lab.run_sql(
        name,
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgfailover-probe'",
    )
    if not rows:
        return None, 0.0
    pid = int(rows[0][0])
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime + stime
    return pid, ticks / os.sysconf("SC_CLK_TCK")


def _commits(lab: LocalLab, name: str) -> int:
    rows = lab.run_sql(
        name, "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
    )
    return int(rows[0][0])


def cost(lab: LocalLab, seconds: float) -> dict[str, Any]:
    """Probe transactions and probe-backend CPU per node at the default interval."""
    nodes = lab.manager_nodes()
    cfg = FailoverConfig(pool_min_size=0, pool_max_size=1)
    with FailoverManager(nodes=nodes, config=cfg, name="bench") as mgr:
        mgr.check_health()
        names = [n.name for n in nodes]
        before = {n: (_commits(lab, n), _probe_backend_cpu(lab, n)) for n in names}
        time.sleep(seconds)  # the measured window: a duration, not a synchronisation
        after = {n: (_commits(lab, n), _probe_backend_cpu(lab, n)) for n in names}
        rounds = mgr.counters.as_dict()["probe_rounds_total"]
    per_node = {}
    for n in names:
        (c0, (pid0, cpu0)), (c1, (pid1, cpu1)) = before[n], after[n]
        # Each reading of the counters is itself one transaction: subtract it.
        per_node[n] = {
            "transactions_per_s": round((c1 - c0 - 1) / seconds, 2),
            "probe_backend_cpu_ms_per_s": round((cpu1 - cpu0) * 1000 / seconds, 3)
            if pid0 is not None and pid0 == pid1
            else None,
        }
    return {
        "benchmark": "probes",
        "cost": per_node,
        "interval_s": cfg.health_check_interval,
        "seconds": seconds,
        "rounds": rounds,
    }


def main(argv: list[str] | None = None) -> int:
    """Print one JSON line per size and variant, the cost record, then a summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,2,4,8")
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--cost-seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    emit({"benchmark": "probes", "machine": machine()})
    lab = LocalLab.create(standbys=max(sizes) - 1)
    try:
        records = scaling(lab, sizes, args.cycles)
        spend = cost(lab, args.cost_seconds)
        emit(spend)
    finally:
        lab.destroy()
    emit(
        {
            "benchmark": "probes",
            "summary": {
                "worst_paused_full_cycle_ms": max(
                    r["first_cycle_ms"] for r in records if r["variant"] == "paused"
                ),
                "target_ms": TIMEOUT * 1000 + 50,
                "target_met": all(r["within_timeout_plus_50ms"] for r in records),
            },
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
