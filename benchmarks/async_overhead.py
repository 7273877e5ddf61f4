"""The cost of routing under asyncio: AsyncFailoverManager against a bare AsyncConnectionPool.

The asyncio twin of ``overhead.py``, with the same method: one 3-node lab
cluster; for ``SELECT 1`` at 1, 16 and 64 concurrent tasks, three contenders
run the statement in its own transaction on one event loop:

- ``bare``: ``async with pool.connection() as conn: await conn.execute(...)`` on
  a ``psycopg_pool.AsyncConnectionPool`` to the primary;
- ``query``: ``await mgr.query(...)``;
- ``get_client``: ``async with mgr.get_client() as conn: await conn.execute(...)``.

Alternating slices: for each contender C, ``--pairs`` pairs of a slice of
``bare`` alone and a slice of C alone (bare first in even pairs), every task
running only that contender in a closed loop for ``--slice`` seconds. A
slice's throughput counts the operations completed before the stop moment.
A pair's ratio is throughput(C) / throughput(bare); ``ratio_to_bare`` is the
median over the pairs. Pools are sized to the task count and warmed by an
untimed slice. The client process (the loop, the manager's monitor thread)
is pinned to one CPU and the servers to the other, as in ``overhead.py``.

    python benchmarks/async_overhead.py [--tasks 1 16 64] [--pairs 7] [--slice 1.5]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from psycopg_pool import AsyncConnectionPool

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Slice, emit, machine, slice_figures
from overhead import pin

from pgfailover import AsyncFailoverManager, FailoverConfig
from pgfailover.lab import LocalLab

SQL = "SELECT 1"
AsyncOp = Callable[[], Awaitable[None]]


def _ops(pool: AsyncConnectionPool[Any], mgr: AsyncFailoverManager) -> dict[str, AsyncOp]:
    async def bare() -> None:
        async with pool.connection() as conn:
            cur = await conn.execute(SQL)
            await cur.fetchall()

    async def query() -> None:
        await mgr.query(SQL)

    async def get_client() -> None:
        async with mgr.get_client() as conn:
            cur = await conn.execute(SQL)
            await cur.fetchall()

    return {"bare": bare, "query": query, "get_client": get_client}


async def run_slice(op: AsyncOp, tasks: int, seconds: float) -> Slice:
    """``tasks`` tasks run ``op`` in a closed loop for ``seconds``."""
    stop = False
    ends: list[tuple[float, float]] = []  # (end, latency)

    async def loop() -> None:
        clock = time.perf_counter
        while not stop:
            t = clock()
            await op()
            end = clock()
            ends.append((end, end - t))

    workers = [asyncio.create_task(loop()) for _ in range(tasks)]
    released = time.perf_counter()
    await asyncio.sleep(seconds)
    stopped = time.perf_counter()
    stop = True
    await asyncio.gather(*workers)
    return Slice(
        ops=sum(1 for end, _ in ends if end <= stopped),
        seconds=stopped - released,
        latencies=[lat for _, lat in ends],
    )


async def run(lab: LocalLab, tasks: int, *, pairs: int, seconds: float) -> list[dict[str, Any]]:
    """Pairs of alternating slices per contender; one record each."""
    pool = AsyncConnectionPool(
        lab.node("node0").dsn, min_size=tasks, max_size=tasks, open=False, name="bare"
    )
    await pool.open(wait=True, timeout=30)
    cfg = FailoverConfig(pool_min_size=tasks, pool_max_size=tasks)
    mgr = await AsyncFailoverManager(nodes=lab.manager_nodes(), config=cfg, name="bench").open()
    await mgr.pool("node0").wait(timeout=30)
    ops = _ops(pool, mgr)
    slices: dict[str, list[Slice]] = {name: [] for name in ops}
    ratios: dict[str, list[float]] = {"bare": [1.0]}
    try:
        for op in ops.values():  # warm every connection of every pool, untimed
            await run_slice(op, tasks, min(0.5, seconds))
        for name in (n for n in ops if n != "bare"):
            ratios[name] = []
            for pair in range(pairs):
                order = ("bare", name) if pair % 2 == 0 else (name, "bare")
                got = {n: await run_slice(ops[n], tasks, seconds) for n in order}
                for n, s in got.items():
                    slices[n].append(s)
                ratios[name].append(got[name].rate / got["bare"].rate)
    finally:
        await mgr.close()
        await pool.close()
    out = []
    for name in ops:
        out.append(
            {
                "benchmark": "async_overhead",
                "statement": "select1",
                "tasks": tasks,
                "contender": name,
                "method": "alternating_slices",
                "pairs": pairs,
                "slice_s": seconds,
                **slice_figures(slices[name], ratios[name]),
                "cpus": os.cpu_count(),
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    """Print one JSON line per task count and contender, then a summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["1", "16", "64"], help="1 16 64 or 1,16,64")
    parser.add_argument("--pairs", type=int, default=7, help="bare/contender slice pairs")
    parser.add_argument("--slice", type=float, default=1.5, help="seconds per slice")
    parser.add_argument("--no-pin", action="store_true", help="leave CPU placement to the OS")
    args = parser.parse_args(argv)
    counts = [int(t) for value in args.tasks for t in value.split(",") if t]
    if args.pairs < 1 or args.slice <= 0 or not counts or min(counts) < 1:
        parser.error("--pairs and --tasks must be at least 1, --slice positive")
    lab = LocalLab.create(standbys=2)
    records = []
    try:
        placement = None if args.no_pin else pin(lab)
        emit(
            {
                "benchmark": "async_overhead",
                "machine": machine(),
                "date": datetime.date.today().isoformat(),
                "pairs": args.pairs,
                "slice_s": args.slice,
                "cpu_pinning": placement,
            }
        )
        for tasks in counts:
            for record in asyncio.run(run(lab, tasks, pairs=args.pairs, seconds=args.slice)):
                records.append(record)
                emit(record)
    finally:
        lab.destroy()
    keys: tuple[str, ...] = ("tasks", "contender", "ops_per_s", "p50_ms", "p99_ms")
    keys += ("ratio_to_bare", "ratio_min", "ratio_max")
    worst = min((r for r in records if r["contender"] != "bare"), key=lambda r: r["ratio_to_bare"])
    emit(
        {
            "benchmark": "async_overhead",
            "method": "alternating_slices",
            "summary": [{k: r[k] for k in keys} for r in records],
            "worst_ratio": worst["ratio_to_bare"],
            "target_met": worst["ratio_to_bare"] >= 0.95,
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
