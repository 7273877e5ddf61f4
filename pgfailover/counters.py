"""Counters the manager keeps for ``get_metrics()`` and the Prometheus exporter.

Counting is on the query path, so it is one lock and a dict update, nothing
more; everything else (gauges, states) is read from the snapshot at scrape
time.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

__all__ = ["Counters"]

# Buckets (seconds) for probe and failover durations.
PROBE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
FAILOVER_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class _Histogram:
    """Bucket counts, a sum and a count (cumulative, Prometheus style)."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for index, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[index] += 1
        self.total += value
        self.count += 1


class Counters:
    """The manager's counters and histograms.

    Locks: ``_lock`` guards every field; a leaf, held for a dict update or
    a copy only (one uncontended acquire per counted query).

    Thread safety: every method may be called from any thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.queries: Counter[tuple[str, str, str]] = Counter()  # guarded by self._lock
        self.health_check_failures: Counter[str] = Counter()  # guarded by self._lock
        self.probe_rounds = 0  # guarded by self._lock
        self.failovers = 0  # guarded by self._lock
        self.recoveries = 0  # guarded by self._lock
        self.promotions = 0  # guarded by self._lock
        self.promotion_failures = 0  # guarded by self._lock
        self.sync_lowered = 0  # guarded by self._lock
        self.probe_durations: dict[str, _Histogram] = {}  # guarded by self._lock
        self.failover_durations = _Histogram(FAILOVER_BUCKETS)  # guarded by self._lock
        # When a statement last succeeded on each node (monotonic): the node was alive
        # then, whatever a probe opening a new session found (Rounds.advance).
        self._served: dict[str, float] = {}  # guarded by self._lock

    def query(self, node: str, route: str, outcome: str) -> None:
        """Count one attempt: route ``write``/``read``..., outcome ``ok``/``retry``/``error``."""
        served = time.monotonic() if outcome == "ok" else None
        with self._lock:
            self.queries[(node, route, outcome)] += 1
            if served is not None:
                self._served[node] = served

    def served_since(self, node: str, since: float) -> bool:
        """Whether a statement succeeded on ``node`` after ``since`` (monotonic)."""
        with self._lock:
            return self._served.get(node, -1.0) > since

    def probe(self, node: str, ok: bool, seconds: float) -> None:
        """Count one probe."""
        with self._lock:
            if not ok:
                self.health_check_failures[node] += 1
            hist = self.probe_durations.get(node)
            if hist is None:
                hist = self.probe_durations[node] = _Histogram(PROBE_BUCKETS)
            hist.observe(seconds)

    def bump(self, name: str) -> None:
        """Add one to a plain counter (``probe_rounds``, ``failovers``...)."""
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def failover_took(self, seconds: float) -> None:
        """Observe one completed failover: from detection to the new primary taking writes."""
        with self._lock:
            self.failover_durations.observe(seconds)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy of every counter."""
        with self._lock:
            return {
                "probe_rounds_total": self.probe_rounds,
                "failovers_total": self.failovers,
                "recoveries_total": self.recoveries,
                "promotions_total": self.promotions,
                "promotion_failures_total": self.promotion_failures,
                "sync_lowered_total": self.sync_lowered,
                "health_check_failures_total": sum(self.health_check_failures.values()),
                "health_check_failures": dict(self.health_check_failures),
                "queries": [
                    {"node": n, "route": r, "outcome": o, "count": c}
                    for (n, r, o), c in sorted(self.queries.items())
                ],
                "failover_duration_seconds": {
                    "count": self.failover_durations.count,
                    "sum": self.failover_durations.total,
                },
            }

    def histograms(
        self,
    ) -> tuple[
        dict[str, tuple[tuple[float, ...], list[int], float, int]],
        tuple[tuple[float, ...], list[int], float, int],
    ]:
        """Copies of the probe (per node) and failover histograms."""
        with self._lock:
            probes = {
                n: (h.buckets, list(h.counts), h.total, h.count)
                for n, h in self.probe_durations.items()
            }
            f = self.failover_durations
            return probes, (f.buckets, list(f.counts), f.total, f.count)
