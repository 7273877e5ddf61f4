"""The cost of routing: pgfailover against a bare psycopg_pool pool on the same primary.

One 3-node lab cluster (async). For ``SELECT 1`` and a small INSERT, at 1, 4
and 16 client threads, three contenders run the same statement in its own
transaction:

- ``bare``: ``with pool.connection() as conn: conn.execute(...)`` on a
  ``psycopg_pool.ConnectionPool`` to the primary;
- ``query``: ``mgr.query(...)``;
- ``get_client``: ``with mgr.get_client() as conn: conn.execute(...)``.

The contenders are interleaved operation by operation: every client thread
runs bare, query, get_client, bare... in turn (each thread starting at a
different one), so drift on the machine (other load, autovacuum, CPU
frequency) hits all of them alike, at the same moments. Every pool has the
same size (the thread count) and is warm. Per contender: closed-loop
operations per second (threads / mean latency), p50 and p99 latency over
all rounds, and the throughput ratio to ``bare``: per round the inverse
ratio of mean latencies, then the median over ``--rounds`` rounds of
``--slice`` seconds (the target is at least 0.95).

    python benchmarks/overhead.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from psycopg_pool import ConnectionPool

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, machine, percentile

from pgfailover import FailoverConfig, FailoverManager
from pgfailover.lab import LocalLab

STATEMENTS = {
    "select1": ("SELECT 1", False),
    "insert": ("INSERT INTO bench (payload) VALUES (%s)", True),
}
PAYLOAD = "x" * 64

Op = Callable[[], None]


def _ops(kind: str, pool: ConnectionPool, mgr: FailoverManager) -> dict[str, Op]:
    sql, has_params = STATEMENTS[kind]
    params = (PAYLOAD,) if has_params else None

    def bare() -> None:
        with pool.connection() as conn:
            cur = conn.execute(sql, params)
            if cur.description:
                cur.fetchall()

    def query() -> None:
        mgr.query(sql, params)

    def get_client() -> None:
        with mgr.get_client() as conn:
            cur = conn.execute(sql, params)
            if cur.description:
                cur.fetchall()

    return {"bare": bare, "query": query, "get_client": get_client}


def _mixed(ops: dict[str, Op], threads: int, seconds: float) -> dict[str, list[float]]:
    """Every thread runs the contenders in turn for ``seconds``; latencies per contender.

    Thread k starts its cycle at contender k, so at any moment the contenders
    run side by side and share whatever the machine is doing.
    """
    names = list(ops)
    latencies: list[dict[str, list[float]]] = [{n: [] for n in names} for _ in range(threads)]
    start = threading.Barrier(threads + 1)
    stop = threading.Event()

    def loop(index: int, out: dict[str, list[float]]) -> None:
        start.wait()
        clock = time.perf_counter
        turn = index
        while not stop.is_set():
            name = names[turn % len(names)]
            turn += 1
            t = clock()
            ops[name]()
            out[name].append(clock() - t)

    workers = [threading.Thread(target=loop, args=(i, out)) for i, out in enumerate(latencies)]
    for w in workers:
        w.start()
    start.wait()
    stop.wait(seconds)  # the measured slice: a duration, not a synchronisation
    stop.set()
    for w in workers:
        w.join()
    return {n: [x for out in latencies for x in out[n]] for n in names}


def run(
    lab: LocalLab, kind: str, threads: int, rounds: int, seconds: float
) -> list[dict[str, Any]]:
    """Rounds of the three contenders side by side; one record per contender."""
    primary = lab.node("node0")
    pool = ConnectionPool(primary.dsn, min_size=threads, max_size=threads, open=True, name="bare")
    pool.wait(timeout=30)
    nodes = lab.manager_nodes()
    cfg = FailoverConfig(pool_min_size=threads, pool_max_size=threads)
    mgr = FailoverManager(nodes=nodes, config=cfg, name="bench").open()
    try:
        ops = _ops(kind, pool, mgr)
        names = list(ops)
        _mixed(ops, threads, 0.5)  # warm every connection of every pool
        seen: dict[str, list[float]] = {name: [] for name in names}
        means: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(rounds):
            for name, lat in _mixed(ops, threads, seconds).items():
                means[name].append(statistics.fmean(lat))
                seen[name].extend(lat)
    finally:
        mgr.close()
        pool.close()
    out = []
    for name in names:
        lat = sorted(seen[name])
        # Closed-loop throughput is threads / mean latency, so the throughput
        # ratio of a round is the inverse ratio of its mean latencies; the
        # median over rounds is robust to one slow round.
        ratios = [b / c for b, c in zip(means["bare"], means[name], strict=True)]
        out.append(
            {
                "benchmark": "overhead",
                "statement": kind,
                "threads": threads,
                "contender": name,
                "ops": len(lat),
                "ops_per_s": round(threads / statistics.fmean(lat), 1),
                "p50_ms": round(statistics.median(lat) * 1000, 4),
                "p99_ms": round(percentile(lat, 0.99) * 1000, 4),
                "ratio_to_bare": round(statistics.median(ratios), 4),
                "ratio_min": round(min(ratios), 4),
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    """Print one JSON line per statement, thread count and contender, then a summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="1,4,16")
    parser.add_argument("--statements", default="select1,insert")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--slice", type=float, default=2.0, help="seconds per round")
    args = parser.parse_args(argv)
    emit({"benchmark": "overhead", "machine": machine()})
    lab = LocalLab.create(standbys=2)
    records = []
    try:
        lab.run_sql("node0", "CREATE TABLE bench (id bigserial PRIMARY KEY, payload text)")
        for kind in args.statements.split(","):
            for threads in (int(t) for t in args.threads.split(",")):
                for record in run(lab, kind, threads, args.rounds, args.slice):
                    records.append(record)
                    emit(record)
    finally:
        lab.destroy()
    worst = min((r for r in records if r["contender"] != "bare"), key=lambda r: r["ratio_to_bare"])
    emit(
        {
            "benchmark": "overhead",
            "summary": [
                {
                    k: r[k]
                    for k in (
                        "statement",
                        "threads",
                        "contender",
                        "ops_per_s",
                        "p50_ms",
                        "p99_ms",
                        "ratio_to_bare",
                    )
                }
                for r in records
            ],
            "worst_ratio": worst["ratio_to_bare"],
            "target_met": worst["ratio_to_bare"] >= 0.95,
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
