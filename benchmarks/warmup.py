"""What ``pool_warmup`` saves: a promoted standby's first writes on cold and warm connections.

Each run builds scale.py's lab (a fresh 3-node cluster, ``max_connections``
raised, table ``bench``), opens ``--connections`` connections to the standby
``node1`` as a manager's pools hold them, and, for ``warm``, runs the
warm-up on each (the same hook the pools use, ``pool_warmup``). Then the
primary is killed (SIGKILL), ``node1`` promoted (``pg_promote``, waited
for), and every connection's thread is let go at once to write one row:
each write's time from the release to its acknowledgement is measured.
This is the moment of a failover at which the waiting writes of hundreds of
processes reach the new primary, without the detection and the routing
around it. The variants take turns run by run (``cold`` first in even
runs), a fresh cluster each.

    python benchmarks/warmup.py --connections 200 --runs 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, machine, percentile
from scale import _lab

from pgfailover.warmup import warm_configure

VARIANTS = ("cold", "warm")
INSERT = "INSERT INTO bench (id) VALUES (%s)"


def run_one(variant: str, run: int, args: argparse.Namespace) -> dict[str, Any]:
    """One run: the connections opened on node1, node1 promoted, every write at once."""
    lab = _lab()
    conns: list[psycopg.Connection[Any]] = []
    try:
        warm = warm_configure(args.warmup, "bench", None, timeout=10.0)
        for _ in range(args.connections):
            conn = psycopg.connect(lab.dsn("node1"), autocommit=True)
            conns.append(conn)
            if variant == "warm":
                warm(conn)
        lab.kill("node0")
        lab.promote("node1")
        gate = threading.Barrier(len(conns) + 1)
        took: list[float] = []
        failed: list[str] = []

        def write(k: int, conn: psycopg.Connection[Any]) -> None:
            gate.wait()
            started = time.perf_counter()
            try:
                conn.execute(INSERT, (run * 1_000_000 + k,))
                took.append(time.perf_counter() - started)
            except psycopg.Error as exc:
                failed.append(str(exc).splitlines()[0])

        threads = [threading.Thread(target=write, args=(k, c)) for k, c in enumerate(conns)]
        for thread in threads:
            thread.start()
        gate.wait()  # every writer is at the gate: let them go
        for thread in threads:
            thread.join(60)
        ordered = sorted(took)
        return {
            "variant": variant,
            "run": run,
            "connections": len(conns),
            "written": len(ordered),
            "failed": len(failed),
            "errors": sorted(set(failed))[:3],
            "p50_s": round(percentile(ordered, 0.5), 4) if ordered else None,
            "p99_s": round(percentile(ordered, 0.99), 4) if ordered else None,
            "max_s": round(ordered[-1], 4) if ordered else None,
        }
    finally:
        for conn in conns:
            conn.close()
        lab.destroy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--runs", type=int, default=10, help="runs of each variant")
    parser.add_argument("--warmup", default="SELECT 1 FROM bench WHERE id = 0", metavar="SQL")
    args = parser.parse_args()
    emit({"benchmark": "warmup", "machine": machine(), "connections": args.connections,
          "warmup": args.warmup})  # fmt: skip
    runs = []
    for run in range(args.runs):
        for variant in VARIANTS if run % 2 == 0 else VARIANTS[::-1]:
            record = run_one(variant, run, args)
            emit(record)
            runs.append(record)
    for variant in VARIANTS:
        mine = [r for r in runs if r["variant"] == variant and r["p99_s"] is not None]
        emit(
            {
                "summary": True,
                "variant": variant,
                "runs": len(mine),
                **{
                    f"{q}_median_s": round(statistics.median(r[f"{q}_s"] for r in mine), 4)
                    for q in ("p50", "p99", "max")
                    if mine
                },
                "failed": sum(r["failed"] for r in runs if r["variant"] == variant),
            }
        )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
