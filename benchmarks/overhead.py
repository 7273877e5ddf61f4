"""The cost of routing: pgfailover against a bare psycopg_pool pool on the same node.

One 3-node lab cluster (async replication). For ``SELECT 1`` and a small
INSERT (writes), and a ``SELECT`` of a parameter as a read (``--statements
read``), at 1, 4 and 16 client threads, three contenders run the statement
in its own transaction:

- ``bare``: ``with pool.connection() as conn: conn.execute(...)`` on a
  ``psycopg_pool.ConnectionPool`` to the primary (for the read: to the
  standby ``node1``), psycopg's three round trips;
- ``query``: ``mgr.query(...)`` (``readonly=True`` for the read: one round
  trip, see ``pgfailover.statements``; a write takes psycopg's three);
- ``get_client``: ``with mgr.get_client() as conn: conn.execute(...)``.

Method, alternating slices: each contender is measured alone, the way a user
sees it when swapping a bare pool for the manager. For each statement,
thread count and contender C (``query``, ``get_client``), ``--pairs`` pairs
run: a slice of ``bare`` alone and a slice of C alone, each with every thread
running only that contender in a closed loop for ``--slice`` seconds; bare
goes first in even pairs, C in odd ones, so slow drift (autovacuum, CPU
frequency, other load) favours neither. A slice's throughput is the
operations completed before the stop moment over the time from the barrier
release to that moment: operations in flight at the stop (at most one per
thread, for every contender alike) are left out, never counted for free.
A pair's ratio is throughput(C) / throughput(bare); ``ratio_to_bare`` is the
median over the pairs, with ``ratio_min`` and ``ratio_max``. ``ops_per_s``
is the median slice throughput; p50 and p99 cover every operation of the
contender's timed slices. Pools are sized to the thread count and warm: each
contender first runs one untimed warm-up slice.

``ratio_interleaved`` is the previous method's figure, from a shorter extra
phase (``--rounds`` rounds of ``--slice`` s; ``--no-interleaved`` skips it):
every thread runs bare, query, get_client, bare... in turn, a round's ratio
is the inverse ratio of mean latencies, the median over rounds is reported.
It hides a per-operation cost: each operation waits behind the other
contenders' work, so a cost one of them adds is spread over all three. At
one thread it also measures which backend the scheduler happens to wake
where: two identical bare pools interleaved have shown 0.11 and 0.29 ms.

The published numbers come from a machine with 2 CPUs. The client process
(every contender's threads, the manager's monitor) is pinned to one and the
three PostgreSQL servers (the primary, two standbys replaying the INSERTs'
WAL) to the other (``--no-pin`` leaves placement to the OS): unpinned, the
same contender's throughput jumps between two levels about 1.6x apart from
one slice to the next, depending on where the scheduler puts a client
thread and the backend it waits on. Whatever Python a contender adds per
call is paid on the client's CPU, which the GIL shares among its threads.

    python benchmarks/overhead.py [--threads 1 4 16] [--pairs 7] [--slice 1.5]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from psycopg_pool import ConnectionPool

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Op, Slice, emit, machine, run_slice, slice_figures

from pgfailover import FailoverConfig, FailoverManager
from pgfailover.lab import LocalLab
from pgfailover.lab.proc import children_of

# name: (SQL, whether it takes the payload as a parameter, whether it is a read)
STATEMENTS = {
    "select1": ("SELECT 1", False, False),
    "insert": ("INSERT INTO bench (payload) VALUES (%s)", True, False),
    "read": ("SELECT length(%s)", True, True),
}
PAYLOAD = "x" * 64


def _ops(kind: str, pool: ConnectionPool, mgr: FailoverManager) -> dict[str, Op]:
    sql, has_params, readonly = STATEMENTS[kind]
    params = (PAYLOAD,) if has_params else None

    def bare() -> None:
        with pool.connection() as conn:
            cur = conn.execute(sql, params)
            if cur.description:
                cur.fetchall()

    def query() -> None:
        mgr.query(sql, params, readonly=readonly)

    def get_client() -> None:
        with mgr.get_client(readonly=readonly) as conn:
            cur = conn.execute(sql, params)
            if cur.description:
                cur.fetchall()

    return {"bare": bare, "query": query, "get_client": get_client}


def run(
    lab: LocalLab, kind: str, threads: int, *, pairs: int, seconds: float, rounds: int
) -> list[dict[str, Any]]:
    """Pairs of alternating slices per contender, then interleaved rounds; one record each."""
    node = "node1" if STATEMENTS[kind][2] else "node0"  # a read's bare pool: on a standby
    pool = ConnectionPool(
        lab.node(node).dsn, min_size=threads, max_size=threads, open=True, name="bare"
    )
    pool.wait(timeout=30)
    cfg = FailoverConfig(pool_min_size=threads, pool_max_size=threads)
    mgr = FailoverManager(nodes=lab.manager_nodes(), config=cfg, name="bench").open()
    ops = _ops(kind, pool, mgr)
    slices: dict[str, list[Slice]] = {name: [] for name in ops}
    ratios: dict[str, list[float]] = {"bare": [1.0]}  # each C's list is filled below
    mixed: dict[str, list[float]] = {name: [] for name in ops}
    try:
        for name, op in ops.items():  # warm every connection of every pool, untimed
            run_slice({name: op}, threads, min(0.5, seconds))
        for name in (n for n in ops if n != "bare"):
            ratios[name] = []
            for pair in range(pairs):
                order = ("bare", name) if pair % 2 == 0 else (name, "bare")
                got = {n: run_slice({n: ops[n]}, threads, seconds)[n] for n in order}
                for n, s in got.items():
                    slices[n].append(s)
                ratios[name].append(got[name].rate / got["bare"].rate)
        for _ in range(rounds):
            means = {
                n: statistics.fmean(s.latencies)
                for n, s in run_slice(ops, threads, seconds).items()
            }
            for name, mean in means.items():
                mixed[name].append(means["bare"] / mean)
    finally:
        mgr.close()
        pool.close()
    out = []
    for name in ops:
        out.append(
            {
                "benchmark": "overhead",
                "statement": kind,
                "threads": threads,
                "contender": name,
                "method": "alternating_slices",
                "pairs": pairs,
                "slices": len(slices[name]),
                "slice_s": seconds,
                **slice_figures(slices[name], ratios[name]),
                "ratio_interleaved": (
                    round(statistics.median(mixed[name]), 4) if mixed[name] else None
                ),
                "cpus": os.cpu_count(),  # as in the header's machine()
            }
        )
    return out


def pin(lab: LocalLab) -> dict[str, list[int]] | None:
    """Client threads on the first half of the CPUs, the PostgreSQL servers on the rest.

    Unpinned on the 2-CPU machine, the same contender's throughput jumps
    between two levels about 1.6x apart from one 0.5 s slice to the next
    (where the scheduler happens to put a client thread and the backend it
    waits on), which buries a few-percent difference; pinned, it varies by
    about 2 %. Backends forked later inherit the postmaster's affinity.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    client, servers = cpus[: len(cpus) // 2], cpus[len(cpus) // 2 :]
    for name in ("node0", "node1", "node2"):
        pid = lab.local_node(name).pid()
        if pid is not None:
            os.sched_setaffinity(pid, servers)
            for child in children_of(pid):
                with contextlib.suppress(ProcessLookupError):  # a backend that just ended
                    os.sched_setaffinity(child, servers)
    os.sched_setaffinity(0, client)
    return {"client": client, "servers": servers}


def main(argv: list[str] | None = None) -> int:
    """Print one JSON line per statement, thread count and contender, then a summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", nargs="+", default=["1", "4", "16"], help="1 4 16 or 1,4,16")
    parser.add_argument("--statements", nargs="+", default=["select1", "insert"])
    parser.add_argument("--pairs", type=int, default=7, help="bare/contender slice pairs")
    parser.add_argument("--slice", type=float, default=1.5, help="seconds per slice")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--no-interleaved", action="store_true", help="skip ratio_interleaved")
    parser.add_argument("--no-pin", action="store_true", help="leave CPU placement to the OS")
    args = parser.parse_args(argv)
    statements = [s for value in args.statements for s in value.split(",") if s]
    thread_counts = [int(t) for value in args.threads for t in value.split(",") if t]
    if unknown := sorted(set(statements) - set(STATEMENTS)):
        parser.error(f"unknown statement(s) {', '.join(unknown)} (known: {', '.join(STATEMENTS)})")
    if args.pairs < 1 or args.slice <= 0:
        parser.error("--pairs must be at least 1 and --slice positive")
    rounds = 0 if args.no_interleaved else args.rounds
    today = datetime.date.today().isoformat()
    plan: dict[str, Any] = {
        "pairs": args.pairs,
        "slice_s": args.slice,
        "interleaved_rounds": rounds,
    }
    lab = LocalLab.create(standbys=2)
    records = []
    try:
        plan["cpu_pinning"] = None if args.no_pin else pin(lab)
        emit({"benchmark": "overhead", "machine": machine(), "date": today, **plan})
        lab.run_sql("node0", "CREATE TABLE bench (id bigserial PRIMARY KEY, payload text)")
        for kind in statements:
            for threads in thread_counts:
                measured = run(
                    lab, kind, threads, pairs=args.pairs, seconds=args.slice, rounds=rounds
                )
                for record in measured:
                    records.append(record)
                    emit(record)
    finally:
        lab.destroy()
    keys = "statement threads contender ops_per_s p50_ms p99_ms ratio_to_bare ratio_min"
    keys += " ratio_max ratio_interleaved"
    worst = min((r for r in records if r["contender"] != "bare"), key=lambda r: r["ratio_to_bare"])
    emit(
        {
            "benchmark": "overhead",
            "method": "alternating_slices",
            "summary": [{k: r[k] for k in keys.split()} for r in records],
            "worst_ratio": worst["ratio_to_bare"],
            "target_met": worst["ratio_to_bare"] >= 0.95,
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
