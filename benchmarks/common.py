"""Shared parts of the benchmarks: JSON output, summaries, machine facts."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["emit", "machine", "percentile", "summarize"]


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
