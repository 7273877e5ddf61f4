"""Read strategies side by side: throughput, latency and where the reads went.

One 3-node lab cluster (node0 primary, node1 and node2 standbys), one
manager, ``--threads`` client threads running ``mgr.query(SQL,
readonly=True)`` in a closed loop. The contenders are the read strategies
(``round_robin``, ``random``, ``least_lag``, ``priority``,
``least_connections``, ``latency``, and ``round_robin`` with weights
``node1=3, node2=1``), swapped on the same manager (``mgr.read_strategy``),
so every contender has the same warm pools.

Two scenarios:

- ``equal``: both standbys as the lab makes them;
- ``node2_stalls``: node2's client backends are stopped (``SIGSTOP``) for
  ``--stall-ms`` out of every ``--period-ms``, as a standby whose host is
  overcommitted or whose disk stalls would be; its probes answer late too,
  so its smoothed probe time shows it.

Method, alternating slices: in each of ``--rounds`` rounds every contender
runs one slice of ``--slice`` seconds alone, in an order rotated by one
contender per round so none always follows the same one. A contender's
``ratio_to_round_robin`` is the median over rounds of its throughput divided
by round_robin's in the same round; ``ops_per_s`` the median slice
throughput, p50/p99 over every read of its slices; ``share`` the fraction
of its reads each node served (counted by the manager).

The published numbers come from a machine with 2 CPUs: the client and the
three servers share them (no pinning here: the stalls are the variable).

    python benchmarks/reads.py [--threads 8] [--rounds 5] [--slice 1.5]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import signal
import statistics
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Op, Slice, emit, machine, percentile, run_slice

from pgfailover import FailoverConfig, FailoverManager
from pgfailover.lab import LocalLab
from pgfailover.strategies import ReadStrategy, make_strategy

SQL = "SELECT abalance FROM reads WHERE aid = %s"
ROWS = 10_000
CONTENDERS = (
    "round_robin",
    "random",
    "least_lag",
    "priority",
    "least_connections",
    "latency",
    "round_robin_weighted",
)
WEIGHTS = {"node1": 3.0, "node2": 1.0}


def strategy(name: str, mgr: FailoverManager) -> ReadStrategy:
    """The contender ``name`` for ``mgr`` (built by it: its pools count the busy connections)."""
    if name == "round_robin_weighted":
        return make_strategy("round_robin", weights=WEIGHTS)
    mgr.read_strategy = name
    return mgr.read_strategy


@contextlib.contextmanager
def stalls(lab: LocalLab, node: str, stall: float, period: float) -> Iterator[None]:
    """Stop ``node``'s client backends for ``stall`` seconds out of every ``period``.

    The backends are looked up again every cycle (the pool may reconnect);
    every one stopped is continued when the cycle ends and on exit.
    """
    stop = threading.Event()
    watcher = lab.connect(node)
    own = watcher.info.backend_pid

    def cycle() -> None:
        while not stop.is_set():
            pids = [
                int(row[0])
                for row in watcher.execute(
                    "SELECT pid FROM pg_stat_activity "
                    "WHERE backend_type = 'client backend' AND pid <> %s",
                    (own,),
                ).fetchall()
            ]
            stopped = []
            try:
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGSTOP)
                        stopped.append(pid)
                stop.wait(stall)  # the stall itself: a duration, not a synchronisation
            finally:
                for pid in stopped:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGCONT)
            stop.wait(max(0.0, period - stall))

    thread = threading.Thread(target=cycle, name="stalls", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)
        watcher.close()


def served(mgr: FailoverManager) -> Counter[str]:
    """Reads served so far, by node."""
    out: Counter[str] = Counter()
    for (node, route, outcome), count in dict(mgr.counters.queries).items():
        if outcome == "ok" and route in ("read", "read_primary"):
            out[node] += count
    return out


def run(
    mgr: FailoverManager, scenario: str, threads: int, rounds: int, seconds: float
) -> list[dict[str, Any]]:
    """Every contender, ``rounds`` rotated rounds of one slice each; one record per contender."""
    counter = iter(range(10**12))

    def read() -> None:
        mgr.query(SQL, (next(counter) % ROWS + 1,), readonly=True)

    op: Op = read
    picked = {name: strategy(name, mgr) for name in CONTENDERS}
    slices: dict[str, list[Slice]] = {name: [] for name in CONTENDERS}
    ratios: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    where: dict[str, Counter[str]] = {name: Counter() for name in CONTENDERS}
    mgr.read_strategy = picked["round_robin"]
    run_slice({"warm": op}, threads, min(0.5, seconds))
    for r in range(rounds):
        order = CONTENDERS[r % len(CONTENDERS) :] + CONTENDERS[: r % len(CONTENDERS)]
        rates = {}
        for name in order:
            mgr.read_strategy = picked[name]
            before = served(mgr)
            got = run_slice({name: op}, threads, seconds)[name]
            after = served(mgr)
            for node in after:
                where[name][node] += after[node] - before[node]
            slices[name].append(got)
            rates[name] = got.rate
        for name in CONTENDERS:
            ratios[name].append(rates[name] / rates["round_robin"])
    out = []
    for name in CONTENDERS:
        lat = sorted(x for s in slices[name] for x in s.latencies)
        total = sum(where[name].values()) or 1
        out.append(
            {
                "benchmark": "reads",
                "scenario": scenario,
                "threads": threads,
                "contender": name,
                "method": "alternating_slices",
                "rounds": rounds,
                "slice_s": seconds,
                "ops": sum(s.ops for s in slices[name]),
                "ops_per_s": round(statistics.median(s.rate for s in slices[name]), 1),
                "p50_ms": round(statistics.median(lat) * 1000, 3),
                "p99_ms": round(percentile(lat, 0.99) * 1000, 3),
                "ratio_to_round_robin": round(statistics.median(ratios[name]), 3),
                "share": {n: round(v / total, 3) for n, v in sorted(where[name].items()) if v},
                "cpus": os.cpu_count(),
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    """One JSON line per scenario and contender, after a header line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--slice", type=float, default=1.5, help="seconds per slice")
    parser.add_argument("--stall-ms", type=float, default=20.0)
    parser.add_argument("--period-ms", type=float, default=50.0)
    parser.add_argument("--scenarios", nargs="+", default=["equal", "node2_stalls"])
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.slice <= 0 or args.threads < 1:
        parser.error("--rounds and --threads must be at least 1 and --slice positive")
    if not 0 < args.stall_ms < args.period_ms:
        parser.error("--stall-ms must be positive and shorter than --period-ms")
    if unknown := sorted(set(args.scenarios) - {"equal", "node2_stalls"}):
        parser.error(f"unknown scenario(s) {', '.join(unknown)}")
    lab = LocalLab.create(standbys=2)
    try:
        emit(
            {
                "benchmark": "reads",
                "machine": machine(),
                "date": datetime.date.today().isoformat(),
                "threads": args.threads,
                "rounds": args.rounds,
                "slice_s": args.slice,
                "stall_ms": args.stall_ms,
                "period_ms": args.period_ms,
            }
        )
        lab.run_sql(
            "node0",
            "CREATE TABLE reads AS SELECT g AS aid, 0 AS abalance FROM generate_series(1, %s) g",
            (ROWS,),
        )
        lab.run_sql("node0", "ALTER TABLE reads ADD PRIMARY KEY (aid)")
        cfg = FailoverConfig(pool_min_size=args.threads, pool_max_size=args.threads)
        with FailoverManager(nodes=lab.manager_nodes(), config=cfg, name="reads") as mgr:
            for scenario in args.scenarios:
                stalled = (
                    stalls(lab, "node2", args.stall_ms / 1000, args.period_ms / 1000)
                    if scenario == "node2_stalls"
                    else contextlib.nullcontext()
                )
                with stalled:
                    for record in run(mgr, scenario, args.threads, args.rounds, args.slice):
                        emit(record)
    finally:
        lab.destroy()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
