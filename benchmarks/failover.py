"""Downtime after a primary crash: pgfailover against a libpq multi-host pool.

Each run builds a fresh 3-node lab cluster (async or quorum sync), starts
four writer threads committing small INSERTs with unique ids through the
contender, kills (or SIGSTOPs) the primary at t0, and measures:

- ``kill_to_first_write``: t0 to the first acknowledged write on the new primary;
- ``unavailability``: last acknowledgement from the old primary to the first
  from the new one;
- ``promotion_to_first_write``: when an external promoter is used, the end of
  its ``pg_promote`` to the first write on the new primary;
- ``failed_attempts``: attempts that raised (for pgfailover this includes
  ``WriteOutcomeUnknown`` for COMMITs in flight at the crash);
- ``lost``: acknowledged ids missing on the new primary.

The contenders take turns run by run (one run of each, then the next round),
so that whatever drifts on the machine during the benchmark falls on each.

Contenders: ``auto`` (pgfailover promotes), ``external`` (pgfailover follows a
promoter that runs pg_promote on the most advanced standby D seconds after
t0), and ``baseline`` (psycopg_pool on the multi-host conninfo with
``target_session_attrs=read-write`` and ``check=ConnectionPool.check_connection``,
the same promoter, the workload retrying failed attempts). With
``--contenders`` naming them, the asyncio twins run too (see ``aio.py``):
``async_auto`` and ``async_external`` (AsyncFailoverManager), and
``async_baseline`` (AsyncConnectionPool on the multi-host conninfo), as four
writer tasks on one event loop.

    python benchmarks/failover.py --runs 3
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from psycopg_pool import ConnectionPool

sys.path.insert(0, str(Path(__file__).resolve().parent))
from aio import ASYNC_CONTENDERS, async_writers
from common import (
    Record,
    emit,
    follow_new_primary,
    machine,
    most_advanced,
    summarize,
    writers,
)

from pgfailover import FailoverConfig, FailoverManager
from pgfailover.lab import LocalLab

THREADS = 4
WARMUP = 1.0
INSERT = "INSERT INTO bench (id) VALUES (%s) RETURNING inet_server_port()"


def _promoter(lab: LocalLab, old: str, delay: float, at: float, out: dict[str, float]) -> None:
    """Promote the most advanced standby ``delay`` s after ``at``, then repoint the other."""
    time.sleep(max(0.0, at + delay - time.monotonic()))
    standbys = [n.name for n in lab.nodes if n.name != old]
    target = most_advanced(lab, standbys)
    if target is None:
        return
    out["promote_started"] = time.monotonic()
    lab.run_sql(target, "SELECT pg_promote(true, 60)")
    out["promoted"] = time.monotonic()
    follow_new_primary(lab, target, standbys)


Writer = Callable[[int], int]


def _nothing() -> None:
    return None


def _contender(lab: LocalLab, contender: str) -> tuple[Writer, Callable[[], None]]:
    """The write function and the closer of one contender."""
    if contender == "baseline":
        conninfo = lab.url + "?target_session_attrs=read-write&connect_timeout=2"
        pool = ConnectionPool(
            conninfo,
            min_size=THREADS,
            max_size=THREADS,
            timeout=5,
            check=ConnectionPool.check_connection,
            open=True,
        )

        def pool_write(i: int) -> int:
            with pool.connection() as conn:
                row = conn.execute(INSERT, (i,)).fetchone()
                return int(row[0]) if row else -1

        return pool_write, lambda: pool.close(timeout=2)
    nodes = lab.manager_nodes()
    cfg = FailoverConfig(
        promotion="auto" if contender == "auto" else "external",
        failover_cooldown=0,
        pool_min_size=THREADS,
        pool_max_size=THREADS,
        failover_wait_timeout=30,
    )
    mgr = FailoverManager(nodes=nodes, config=cfg, name="bench").open()

    def manager_write(i: int) -> int:
        return int(mgr.query(INSERT, (i,))[0][0])

    return manager_write, lambda: mgr.close(timeout=2)


def _result(
    lab: LocalLab, record: Record, old_port: int, t0: float, promo: dict[str, float]
) -> dict[str, Any]:
    with record.lock:
        acked = list(record.acked)
        failures = list(record.failures)
    new = [a for a in acked if a[1] != old_port]
    old = [a for a in acked if a[1] == old_port and a[2] <= t0]
    first_new = min((a[2] for a in new), default=None)
    lost = None
    if new:
        new_port = new[0][1]
        name = next(n.name for n in lab.nodes if n.port == new_port)
        present = {r[0] for r in lab.run_sql(name, "SELECT id FROM bench")}
        lost = len({a[0] for a in acked if a[1] == new_port or a[2] <= t0} - present)
    promoted = promo.get("promoted")
    return {
        "kill_to_first_write": None if first_new is None else round(first_new - t0, 4),
        "unavailability": None
        if first_new is None or not old
        else round(first_new - max(a[2] for a in old), 4),
        "promotion_to_first_write": None
        if first_new is None or promoted is None
        else round(first_new - promoted, 4),
        "failed_attempts": len(failures),
        "failure_kinds": sorted({k for _, k in failures}),
        "acked": len(acked),
        "lost": lost,
        # A reply read just after the kill was sent before it; an old-primary
        # acknowledgement after the new primary's first one would be a split brain.
        "old_primary_acks_after_failover": 0
        if first_new is None
        else sum(1 for a in acked if a[1] == old_port and a[2] > first_new),
    }


def run_once(
    contender: str, mode: str, variant: str, delay: float, observe: float
) -> dict[str, Any]:
    """One run on a fresh cluster; returns its JSON record."""
    lab = LocalLab.create(standbys=2, sync=1 if mode == "sync" else 0)
    record = Record()
    stop = threading.Event()
    promo: dict[str, float] = {}
    try:
        lab.run_sql("node0", "CREATE TABLE bench (id bigint PRIMARY KEY)")
        for name in ("node1", "node2"):
            lab.wait_streaming(name, "node0")
        closer: Callable[[], None] = _nothing  # an asyncio contender's loop closes its own
        if contender in ASYNC_CONTENDERS:
            threads = async_writers(lab, contender, INSERT, record, stop, tasks=THREADS)
        else:
            write, closer = _contender(lab, contender)
            threads = writers(write, record, stop, THREADS)
        for t in threads:
            t.start()
        time.sleep(WARMUP)  # a steady workload before the crash
        old_port = lab.node("node0").port
        if variant == "kill":
            lab.kill("node0")
        else:
            lab.pause("node0")
        t0 = time.monotonic()  # every process of node0 is dead (or stopped) now
        promoter = threading.Thread(
            target=_promoter, args=(lab, "node0", delay, t0, promo), daemon=True
        )
        if contender not in ("auto", "async_auto"):
            promoter.start()
        deadline = t0 + observe
        while time.monotonic() < deadline:
            with record.lock:
                moved = sum(1 for a in record.acked if a[1] != old_port)
            if moved >= 200:
                break
            time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join(10)
        if promoter.is_alive():
            promoter.join(30)
        closer()
        label = contender if contender.endswith("auto") else f"{contender} D={delay:g}"
        return {
            "benchmark": "failover",
            "contender": label,
            "mode": mode,
            "variant": variant,
            **_result(lab, record, old_port, t0, promo),
        }
    finally:
        stop.set()
        if variant == "pause":
            with contextlib.suppress(Exception):  # it may be gone already
                lab.resume("node0")
        lab.destroy()


def main(argv: list[str] | None = None) -> int:
    """Run the matrix and print one JSON line per run, then a summary line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--contenders", default="auto,external,baseline")
    parser.add_argument("--modes", default="async,sync")
    parser.add_argument(
        "--delays", default="0,2", help="promoter delays D (s) for external and baseline"
    )
    parser.add_argument("--variants", default="kill,pause")
    parser.add_argument(
        "--observe", type=float, default=15.0, help="seconds to wait for writes after t0"
    )
    args = parser.parse_args(argv)
    runs = []
    emit({"benchmark": "failover", "machine": machine()})
    for variant in args.variants.split(","):
        for mode in args.modes.split(","):
            # Contenders take turns, run by run, so that a drift of the machine
            # (another process, a warm cache) falls on all of them alike.
            for _ in range(args.runs if variant == "kill" else 1):
                for contender in args.contenders.split(","):
                    delays = (
                        [0.0]
                        if contender.endswith("auto")
                        else [float(d) for d in args.delays.split(",")]
                    )
                    if variant == "pause":
                        delays = delays[:1]  # the hung variant: one delay is enough
                    for delay in delays:
                        result = run_once(
                            contender,
                            mode,
                            variant,
                            delay,
                            args.observe + (10 if variant == "pause" else 0),
                        )
                        runs.append(result)
                        emit(result)
    emit(
        {
            "benchmark": "failover",
            "summary": summarize(
                runs,
                ["variant", "mode", "contender"],
                [
                    "kill_to_first_write",
                    "unavailability",
                    "promotion_to_first_write",
                    "failed_attempts",
                    "lost",
                ],
            ),
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
