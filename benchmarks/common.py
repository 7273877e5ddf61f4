"""Shared parts of the benchmarks: JSON output, summaries, machine facts."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pgfailover.lab import LocalLab

__all__ = [
    "Op",
    "Record",
    "Slice",
    "emit",
    "follow_new_primary",
    "machine",
    "most_advanced",
    "percentile",
    "run_slice",
    "slice_figures",
    "summarize",
    "writers",
]


@dataclass
class Record:
    """What the writer threads saw: acknowledged ids and failed attempts."""

    acked: list[tuple[int, int, float]] = field(default_factory=list)  # id, port, time
    failures: list[tuple[float, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def acks_elsewhere(self, ports: set[int], after: float) -> list[tuple[int, int, float]]:
        """Acknowledgements from nodes not in ``ports``, later than ``after``."""
        with self.lock:
            return [a for a in self.acked if a[1] not in ports and a[2] > after]


def writers(
    write: Callable[[int], int], record: Record, stop: threading.Event, threads: int
) -> list[threading.Thread]:
    """Threads committing unique ids through ``write`` (which returns the server's port)."""

    def loop(base: int) -> None:
        i = base
        while not stop.is_set():
            i += 1
            try:
                port = write(i)
            except Exception as exc:  # noqa: BLE001 - every failed attempt is counted
                with record.lock:
                    record.failures.append((time.monotonic(), type(exc).__name__))
                continue
            with record.lock:
                record.acked.append((i, port, time.monotonic()))

    return [
        threading.Thread(target=loop, args=(k * 100_000_000,), name=f"writer-{k}", daemon=True)
        for k in range(threads)
    ]


@dataclass
class Slice:
    """One contender's share of a slice: completed operations and their latencies."""

    ops: int  # completed before the stop moment
    seconds: float  # barrier release to the stop moment
    latencies: list[float]  # every operation, the ones finishing after the stop too

    @property
    def rate(self) -> float:
        """Operations per second."""
        return self.ops / self.seconds


Op = Callable[[], None]


def run_slice(ops: Mapping[str, Op], threads: int, seconds: float) -> dict[str, Slice]:
    """``threads`` threads run ``ops`` in turn (thread k from the k-th) for ``seconds``.

    With one op, that contender runs alone. A thread's exception is raised here.
    """
    names = list(ops)
    done: list[list[tuple[str, float, float]]] = [[] for _ in range(threads)]  # name, end, lat
    errors: list[Exception] = []
    released: list[float] = []
    start = threading.Barrier(threads + 1, action=lambda: released.append(time.perf_counter()))
    stop = threading.Event()

    def loop(turn: int, out: list[tuple[str, float, float]]) -> None:
        start.wait()
        clock = time.perf_counter
        try:
            while not stop.is_set():
                name = names[turn % len(names)]
                turn += 1
                t = clock()
                ops[name]()
                end = clock()
                out.append((name, end, end - t))
        except Exception as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(exc)
            stop.set()

    workers = [threading.Thread(target=loop, args=(i, out)) for i, out in enumerate(done)]
    for w in workers:
        w.start()
    start.wait()
    stop.wait(seconds)  # the measured slice: a duration, not a synchronisation
    stopped = time.perf_counter()
    stop.set()
    for w in workers:
        w.join()
    if errors:
        raise errors[0]
    rows = [row for out in done for row in out]
    return {
        n: Slice(
            ops=sum(1 for name, end, _ in rows if name == n and end <= stopped),
            seconds=stopped - released[0],
            latencies=[lat for name, _, lat in rows if name == n],
        )
        for n in names
    }


def emit(record: Mapping[str, Any]) -> None:
    """Print one JSON object on one line (a run, or the summary)."""
    sys.stdout.write(json.dumps(record, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    from pgfailover.lab import find_binaries

    try:
        pg = find_binaries().version
    except Exception:  # noqa: BLE001 - reported as unknown
        pg = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "postgresql": pg,
    }


def summarize(
    runs: Iterable[Mapping[str, Any]], keys: Sequence[str], metrics: Sequence[str]
) -> list[dict[str, Any]]:
    """Median, min and max of each metric, grouped by the values of ``keys``."""
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[tuple(run.get(k) for k in keys)].append(run)
    out = []
    for group_key, items in sorted(groups.items(), key=lambda kv: [str(v) for v in kv[0]]):
        row: dict[str, Any] = dict(zip(keys, group_key, strict=True))
        row["runs"] = len(items)
        for metric in metrics:
            values = [float(i[metric]) for i in items if i.get(metric) is not None]
            row[metric] = (
                {
                    "median": round(statistics.median(values), 4),
                    "min": round(min(values), 4),
                    "max": round(max(values), 4),
                }
                if values
                else None
            )
        out.append(row)
    return out


def percentile(ordered: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of an ascending sequence, nearest rank."""
    if not ordered:
        raise ValueError("percentile of no values")
    rank = max(0, min(len(ordered) - 1, round(q * len(ordered)) - 1))
    return ordered[rank]


def slice_figures(slices: Sequence[Slice], ratios: Sequence[float]) -> dict[str, Any]:
    """A contender's figures over its timed slices and its pairs' throughput ratios."""
    lat = sorted(x for s in slices for x in s.latencies)
    return {
        "ops": sum(s.ops for s in slices),
        "ops_per_s": round(statistics.median(s.rate for s in slices), 1),
        "p50_ms": round(statistics.median(lat) * 1000, 4),
        "p99_ms": round(percentile(lat, 0.99) * 1000, 4),
        "ratio_to_bare": round(statistics.median(ratios), 4),
        "ratio_min": round(min(ratios), 4),
        "ratio_max": round(max(ratios), 4),
    }


def most_advanced(lab: LocalLab, candidates: Sequence[str]) -> str | None:
    """The standby holding the most WAL (ties: the first named), as an orchestrator picks."""
    import psycopg

    positions = {}
    for name in candidates:
        try:
            positions[name] = (
                lab.run_sql(name, "SELECT (pg_last_wal_receive_lsn() - '0/0')::bigint")[0][0] or 0
            )
        except psycopg.Error:
            continue
    if not positions:
        return None
    return max(positions, key=lambda n: (positions[n], -list(candidates).index(n)))


def follow_new_primary(lab: LocalLab, target: str, candidates: Sequence[str]) -> None:
    """What an orchestrator does after promoting: no inherited sync wait, the rest follow."""
    import contextlib

    lab.run_sql(target, "ALTER SYSTEM SET synchronous_standby_names = ''")
    lab.run_sql(target, "SELECT pg_reload_conf()")
    for other in candidates:
        if other != target:
            with contextlib.suppress(Exception):  # the run measures writes, not repointing
                lab.follow(other, target)
