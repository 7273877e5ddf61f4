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
    "Record",
    "emit",
    "follow_new_primary",
    "machine",
    "most_advanced",
    "percentile",
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
