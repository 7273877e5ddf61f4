"""The cost of routing: pgfailover against a bare psycopg_pool pool on the same primary.

One 3-node lab cluster (async). For ``SELECT 1`` and a small INSERT, at 1, 4
and 16 client threads, three contenders run the same statement in its own
transaction:

- ``bare``: ``with pool.connection() as conn: conn.execute(...)`` on a
  ``psycopg_pool.ConnectionPool`` to the primary;
- ``query``: ``mgr.query(...)``;
- ``get_client``: ``with mgr.get_client() as conn: conn.execute(...)``.

The contenders are interleaved: each round runs every contender for
``--slice`` seconds, in an order that rotates from round to round, so drift
on the machine (other load, autovacuum, CPU frequency) hits all of them
alike. Every pool has the same size (the thread count) and is warm. Per
contender: the median of the rounds' operations per second, p50 and p99
latency over all rounds, and the throughput ratio to ``bare``: the median
of the rounds' ratios (the target is at least 0.95).

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


def _slice(op: Op, threads: int, seconds: float) -> list[float]:
    """Run ``op`` on ``threads`` threads for ``seconds``; every latency, in seconds."""
    latencies: list[list[float]] = [[] for _ in range(threads)]
    start = threading.Barrier(threads + 1)
    stop = threading.Event()

    def loop(out: list[float]) -> None:
        start.wait()
        clock = time.perf_counter
        while not stop.is_set():
            t = clock()
            op()
            out.append(clock() - t)

    workers = [threading.Thread(target=loop, args=(out,)) for out in latencies]
    for w in workers:
        w.start()
    start.wait()
    stop.wait(seconds)  # the measured slice: a duration, not a synchronisation
    stop.set()
    for w in workers:
        w.join()
    return [x for out in latencies for x in out]


def run(
    lab: LocalLab, kind: str, threads: int, rounds: int, seconds: float
) -> list[dict[str, Any]]:
    """Interleaved rounds of the three contenders; one record per contender."""
    primary = lab.node("node0")
    pool = ConnectionPool(primary.dsn, min_size=threads, max_size=threads, open=True, name="bare")
    pool.wait(timeout=30)
    nodes = lab.manager_nodes()
    cfg = FailoverConfig(pool_min_size=threads, pool_max_size=threads)
    mgr = FailoverManager(nodes=nodes, config=cfg, name="bench").open()
    try:
        ops = _ops(kind, pool, mgr)
        names = list(ops)
        for name in names:  # warm every connection of every pool
            _slice(ops[name], threads, 0.3)
        seen: dict[str, list[float]] = {name: [] for name in names}
        rates: dict[str, list[float]] = {name: [] for name in names}
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                t = time.perf_counter()
                lat = _slice(ops[name], threads, seconds)
                rates[name].append(len(lat) / (time.perf_counter() - t))
                seen[name].extend(lat)
    finally:
        mgr.close()
        pool.close()
    out = []
    for name in names:
        lat = sorted(seen[name])
        # The ratio of each round (the contenders ran back to back), then the
        # median: robust to a slow second on a shared machine.
        ratio = statistics.median(c / b for c, b in zip(rates[name], rates["bare"], strict=True))
        rate = statistics.median(rates[name])
        out.append(
            {
                "benchmark": "overhead",
                "statement": kind,
                "threads": threads,
                "contender": name,
                "ops": len(lat),
                "ops_per_s": round(rate, 1),
                "p50_ms": round(statistics.median(lat) * 1000, 4),
                "p99_ms": round(percentile(lat, 0.99) * 1000, 4),
                "ratio_to_bare": round(ratio, 4),
                "ratio_min": round(
                    min(c / b for c, b in zip(rates[name], rates["bare"], strict=True)), 4
                ),
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    """Print one JSON line per statement, thread count and contender, then a summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="1,4,16")
    parser.add_argument("--statements", default="select1,insert")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--slice", type=float, default=1.0, help="seconds per contender per round")
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
