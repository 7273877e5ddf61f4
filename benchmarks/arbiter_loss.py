"""An arbiter dies under hundreds of followers: the probe sessions the database sees.

For each size (200 managers by default) and each case, a run builds scale.py's
lab (a fresh 3-node cluster, ``max_connections`` raised to 1500, or
``--max-connections``), starts the
arbiters (``pgfailover serve --promotion manual --stream-port 0``: the
database stays healthy and nothing promotes), and spreads the followers over
scale.py's worker processes, each writing every ``--pace`` seconds. Once
every follower follows the first arbiter, that arbiter is killed (SIGKILL)
and the probe sessions opened after the kill on the three nodes
(``pg_stat_activity``, application ``pgfailover-probe``, ``backend_start``
after the kill: the followers', not the arbiters') are counted, over a
session per node opened before the kill (a new one per count would wait
behind the followers' own, and opened before the followers, so that a
server they fill still answers it), every 10 ms for ``--observe`` seconds.
Cases:

- ``two``: the followers' source names two arbiters; the one they follow dies;
- ``one``: the only arbiter dies.

Measured: the most probe sessions the followers held; when they reached
10, 50 and 90 % of that most after the kill (how spread out the followers'
fallbacks were); how many followers probed and how many followed the other
arbiter at the end; the probes the followers ran in the window; the
client sessions on each node before the kill; and their failed writes, by
reason (exception type and first line). Each role in its own CPU cgroup,
as scale.py does.

    python benchmarks/arbiter_loss.py --sizes 200 --runs 3
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, machine
from cpugroups import CpuGroups, descendants, sweep
from scale import PROBE_SESSIONS, Arbiter, _lab, _specs, _until
from scalerun import Workers, add_cpu_groups, cpu_groups_kind

from pgfailover.lab import LocalLab

CASES = ("two", "one")
EVERY = ["node0", "node1", "node2"]
CLIENT_SESSIONS = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
OPENED_AFTER = (
    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgfailover-probe'"
    " AND backend_start > to_timestamp({:.6f})"
)


def _following(workers: Workers) -> dict[str, int]:
    """How many followers follow each URL (or probe), over every worker."""
    out: dict[str, int] = {}
    for answer in workers.ask("count"):
        for what, count in answer["following"].items():
            out[what] = out.get(what, 0) + count
    return out


def _ramp(series: list[tuple[float, int]], most: int) -> dict[str, float | None]:
    """Seconds from the kill until the followers' sessions first reached 10, 50, 90 %
    of their most (``None`` for all when they opened none)."""
    out: dict[str, float | None] = {}
    for share in (10, 50, 90):
        reached = [t for t, n in series if most and n >= most * share / 100]
        out[f"p{share}"] = round(reached[0], 3) if reached else None
    return out


def _count(conns: list[psycopg.Connection[Any]], query: str) -> int | None:
    """The sessions ``query`` counts over every node (``None``: a node did not answer)."""
    total = 0
    try:
        for conn in conns:
            row = conn.execute(query).fetchone()
            total += int(row[0]) if row else 0
    except psycopg.Error:
        return None
    return total


def run_one(size: int, case: str, run: int, args: argparse.Namespace) -> dict[str, Any]:
    """One run: the followers on the first arbiter, which is killed; the run's record."""
    lab: LocalLab = _lab(max_connections=args.max_connections)
    counting = contextlib.ExitStack()
    # Opened first, one per node: a server the followers fill still answers them.
    conns = [
        counting.enter_context(psycopg.connect(lab.dsn(name), autocommit=True)) for name in EVERY
    ]
    homes = [Path(tempfile.mkdtemp(prefix="pgfl-loss-")) for _ in range(2 if case == "two" else 1)]
    arbiters = [Arbiter(lab, home, promotion="manual") for home in homes]
    source = ",".join(a.stream_url for a in arbiters)
    workers = Workers(_specs(lab, size, "arbiter", source, args.pace))
    groups = CpuGroups(args.cpu_groups)
    try:
        groups.put("db", [p for n in lab.nodes for p in descendants(lab.pid(n.name) or 0)])
        groups.put("arbiter", [a.proc.pid for a in arbiters])
        groups.put("apps", [proc.pid for proc in workers.procs])
        workers.ask(None)
        first = arbiters[0].stream_url
        _until(lambda: _following(workers).get(first) == size, timeout=60)
        workers.ask("write")
        before = _count(conns, PROBE_SESSIONS)
        sessions = [_count([conn], CLIENT_SESSIONS) for conn in conns]
        p0 = workers.probes()
        series: list[tuple[float, int]] = []
        missed = 0
        with counting:
            query = OPENED_AFTER.format(time.time())
            os.kill(arbiters[0].proc.pid, signal.SIGKILL)
            killed = time.monotonic()
            while time.monotonic() - killed < args.observe:
                counted = _count(conns, query)
                if counted is None:
                    missed += 1
                else:
                    series.append((time.monotonic() - killed, counted))
                time.sleep(0.01)  # the sampling rate, not a synchronisation
        p1 = workers.probes()
        end = _following(workers)
        results = workers.ask("stop")
        most = max((n for _, n in series), default=0)
        return {
            "size": size,
            "case": case,
            "run": run,
            "probe_sessions_before": before,
            "client_sessions_before": sessions,  # per node, of max_connections
            "followers_probe_sessions_max": most,
            "followers_sessions_reached_s": _ramp(series, most),
            "samples": len(series),
            "samples_missed": missed,
            "followers_probing_at_end": end.get("probing", 0),
            "followers_on_the_other_at_end": end.get(arbiters[-1].stream_url, 0)
            if case == "two"
            else 0,
            "follower_probes_in_window": sum(p1.values()) - sum(p0.values()),
            "failed_writes": sum(sum(r["failures"]) for r in results),
            "failed_writes_by_reason": _reasons(r.get("reasons", {}) for r in results),
        }
    finally:
        counting.close()
        workers.kill()
        for arbiter in arbiters:
            with contextlib.suppress(Exception):
                arbiter.stop()
        lab.destroy()
        groups.close()  # last: a process left in a group keeps it from being removed
        for home in homes:
            shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="200")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pace", type=float, default=1.0, help="seconds between writes")
    parser.add_argument("--observe", type=float, default=3.0, help="seconds after the kill")
    parser.add_argument(
        "--max-connections",
        type=int,
        default=1500,
        help="every node's max_connections: the default has room for every follower's probe "
        "sessions; 300 at 200 followers (their pools' 200 sessions a node, and 100 more) "
        "refuses most of them, as a database sized for its applications would",
    )
    add_cpu_groups(parser)
    args = parser.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    if set(cases) - set(CASES):
        raise SystemExit(f"unknown case(s): {', '.join(sorted(set(cases) - set(CASES)))}")
    sweep()  # groups a killed run left behind
    emit({"benchmark": "arbiter_loss", "machine": machine(), "pace_s": args.pace,
          "observe_s": args.observe, "max_connections": args.max_connections,
          "cpu_groups": cpu_groups_kind(args)})  # fmt: skip
    runs = []
    for size in (int(s) for s in args.sizes.split(",")):
        for run in range(args.runs):
            for case in cases if run % 2 == 0 else cases[::-1]:
                record = run_one(size, case, run, args)
                emit(record)
                runs.append(record)
    for size in sorted({r["size"] for r in runs}):
        for case in cases:
            mine = [r for r in runs if r["size"] == size and r["case"] == case]
            emit(
                {
                    "summary": True,
                    "size": size,
                    "case": case,
                    "runs": len(mine),
                    "followers_probe_sessions_max": statistics.median(
                        r["followers_probe_sessions_max"] for r in mine
                    ),
                    "followers_probing_at_end": statistics.median(
                        r["followers_probing_at_end"] for r in mine
                    ),
                    "followers_on_the_other_at_end": statistics.median(
                        r["followers_on_the_other_at_end"] for r in mine
                    ),
                    "followers_sessions_reached_s": {
                        share: _median_or_none(
                            r["followers_sessions_reached_s"][share] for r in mine
                        )
                        for share in ("p10", "p50", "p90")
                    },
                    "samples_min": min(r["samples"] for r in mine),
                    "failed_writes": statistics.median(r["failed_writes"] for r in mine),
                    "failed_writes_by_reason": _reasons(
                        r["failed_writes_by_reason"] for r in mine
                    ),
                }
            )


def _reasons(counts: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """Failed writes by reason (exception type and first line), summed, most first."""
    total: Counter[str] = Counter()
    for count in counts:
        total.update(count)
    return dict(total.most_common())


def _median_or_none(values: Iterable[float | None]) -> float | None:
    """The median of the runs that had a value (``None`` when none had)."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
