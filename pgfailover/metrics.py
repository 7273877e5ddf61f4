"""Prometheus metrics: a collector that reads the managers' snapshots at scrape time.

Nothing here runs on the query path. The manager keeps a few counters
(:mod:`pgfailover.counters`) and an immutable snapshot of the cluster; a scrape
turns them into metric families. One :class:`ManagerCollector` can export
several managers, told apart by the ``cluster`` label (the manager's
``name``)::

    from prometheus_client import REGISTRY, start_http_server
    from pgfailover.metrics import register

    register(mgr)                # on the default registry
    start_http_server(9187, addr="127.0.0.1")

Names follow Prometheus conventions: the ``pgfailover_`` prefix, base units
(seconds, bytes), ``_total`` counters. :data:`METRIC_NAMES` lists every
series name the collector can produce (dashboards and alert rules are
checked against it). The managers are held by weak reference: a manager that
is closed or garbage-collected drops out of the next scrape.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from pgfailover.breaker import BreakerPhase
from pgfailover.convergence import commits_blocked
from pgfailover.guards import hang_failover_seconds
from pgfailover.metricnames import FAMILIES as _FAMILIES
from pgfailover.metricnames import METRIC_NAMES
from pgfailover.metricnames import PREFIX as _P
from pgfailover.model import ClusterState, Role, Snapshot
from pgfailover.report import REDUNDANCY_LEVELS, redundancy
from pgfailover.strategies import describe

if TYPE_CHECKING:
    from pgfailover.config import FailoverConfig
    from pgfailover.counters import Counters
    from pgfailover.manager_base import ManagerBase

    AnyManager = ManagerBase[Any, Any]  # FailoverManager or AsyncFailoverManager

__all__ = ["METRIC_NAMES", "ManagerCollector", "register", "unregister"]


class ManagerCollector(Collector):
    """Exports any number of managers; register it on a ``CollectorRegistry``.

    Locks: ``_lock`` guards the set of managers; a leaf (a scrape copies the
    set under it and reads each manager's snapshot and counters after).
    The module's ``_collectors_lock`` guards the collector per registry.

    Thread safety: :meth:`add`, :meth:`remove` and scrapes may run on any
    thread.
    """

    def __init__(self, managers: Iterable[AnyManager] = ()) -> None:
        self._lock = threading.Lock()
        self._managers: dict[str, weakref.ref[AnyManager]] = {}  # guarded by self._lock
        for mgr in managers:
            self.add(mgr)

    def add(self, mgr: AnyManager) -> None:
        """Export ``mgr`` under ``cluster=mgr.name``.

        Raises:
            ValueError: another live manager is exported under the same name.
        """
        with self._lock:
            ref = self._managers.get(mgr.name)
            other = ref() if ref is not None else None
            if other is not None and other is not mgr and not other.closed:
                raise ValueError(
                    f"a manager named {mgr.name!r} is already exported: give each "
                    "manager its own name= to tell them apart by the cluster label"
                )
            self._managers[mgr.name] = weakref.ref(mgr)

    def remove(self, mgr: AnyManager) -> None:
        """Stop exporting ``mgr``."""
        with self._lock:
            ref = self._managers.get(mgr.name)
            if ref is not None and ref() in (mgr, None):
                del self._managers[mgr.name]

    def managers(self) -> list[AnyManager]:
        """The live, open managers exported now."""
        with self._lock:
            live = [(name, ref()) for name, ref in self._managers.items()]
            for name, mgr in live:
                if mgr is None:
                    del self._managers[name]
        return [m for _, m in live if m is not None and not m.closed]

    def describe(self) -> Iterator[Metric]:
        """The families (without samples), so a registry can refuse duplicates."""
        yield from _families().values()

    def collect(self) -> Iterator[Metric]:
        """One scrape: every family, filled from every manager's snapshot."""
        families = _families()
        for mgr in self.managers():
            _fill(families, mgr)
        yield from families.values()


def _families() -> dict[str, Metric]:
    out: dict[str, Metric] = {}
    for short, (kind, text, labels) in _FAMILIES.items():
        names = ["cluster", *labels]
        if kind == "counter":
            out[short] = CounterMetricFamily(_P + short, text, labels=names)
        elif kind == "histogram":
            out[short] = HistogramMetricFamily(_P + short, text, labels=names)
        else:
            out[short] = GaugeMetricFamily(_P + short, text, labels=names)
    return out


def _add(families: dict[str, Metric], short: str, labels: list[str], value: float) -> None:
    """One sample of a gauge or counter family."""
    family = families[short]
    assert isinstance(family, GaugeMetricFamily | CounterMetricFamily)  # noqa: S101 - by table
    family.add_metric(labels, value)


def _fill(families: dict[str, Metric], mgr: AnyManager) -> None:
    """Add one manager's samples."""
    snap = mgr.snapshot
    _fill_snapshot(families, mgr.name, snap, mgr.config)
    _fill_counters(families, mgr.name, snap, mgr.counters)
    _add(families, "maintenance_paused", [mgr.name], int(mgr.paused))
    _add(families, "read_only", [mgr.name], int(not mgr.writable))
    source = mgr.source_status()
    if source is not None:
        _add(families, "source_following", [mgr.name], int(source["mode"] == "following"))
        _add(families, "source_updates", [mgr.name], source["updates"])
        _add(families, "source_fallbacks", [mgr.name], source["fallbacks"])
    lease = mgr.lease_status()
    if lease is not None:
        _add(families, "arbiter_lease_held", [mgr.name], int(bool(lease.get("held"))))
    held = redundancy(snap, mgr.upkeep_status())
    _add(families, "redundancy_copies", [mgr.name], held["copies"])
    for level in REDUNDANCY_LEVELS:
        _add(families, "redundancy_level", [mgr.name, level], int(held["level"] == level))
    if held["sync_quorum_ok"] is not None:
        _add(families, "sync_quorum_ok", [mgr.name], int(held["sync_quorum_ok"]))
    strategy = describe(mgr.read_strategy)
    _add(families, "read_strategy", [mgr.name, strategy["name"]], 1)
    if hasattr(mgr.read_strategy, "name"):  # a built-in: weights are known
        weights = strategy["weights"] or {}
        for member in snap.nodes:
            _add(families, "read_weight", [mgr.name, member.name], weights.get(member.name, 1.0))
    for window, figures in (mgr.availability() or {}).items():
        if figures["ratio"] is not None:
            _add(families, "availability_ratio", [mgr.name, window], figures["ratio"])
        observed = figures["observed_seconds"] or 0.0
        _add(families, "availability_observed_seconds", [mgr.name, window], observed)
    now = time.monotonic()
    for node, breaker in sorted(mgr.breakers.states().items()):
        shown = breaker.shown(now)  # open with its trial due: half-open
        for phase in BreakerPhase:
            is_now = int(shown is phase)
            _add(families, "breaker_state", [mgr.name, node, phase.value], is_now)
        _add(families, "breaker_opens", [mgr.name, node], breaker.opened_total)


def _fill_snapshot(
    families: dict[str, Metric], c: str, snap: Snapshot, config: FailoverConfig
) -> None:
    """The gauges read from one snapshot (cluster ``c``): plain data in, samples out."""
    _add(families, "info", [c, config.promotion], 1)
    for state in ClusterState:
        _add(families, "cluster_state", [c, state.value], int(snap.state is state))
    _add(families, "primary_healthy", [c], int(snap.writable_primary is not None))
    healthy_standbys = 0
    for node in snap.nodes:
        n = node.name
        _add(families, "node_up", [c, n], int(node.up))
        _add(families, "node_healthy", [c, n], int(node.healthy))
        _add(families, "node_is_primary", [c, n], int(n == snap.primary))
        for role in Role:
            _add(families, "node_role", [c, n, role.value], int(node.role is role))
        if node.timeline is not None:
            _add(families, "node_timeline", [c, n], node.timeline)
        if node.last_check is not None:
            _add(families, "node_last_check_timestamp_seconds", [c, n], node.last_check)
        if n == snap.primary:
            continue
        # The snapshot's predicates: routing and the status say the same.
        _add(families, "node_serves_reads", [c, n], int(node.serves_reads))
        ok = int(node.healthy_standby)
        healthy_standbys += ok
        _add(families, "standby_healthy", [c, n], ok)
        if node.lag_bytes is not None:
            _add(families, "replication_lag_bytes", [c, n], node.lag_bytes)
        if node.lag_seconds is not None:
            _add(families, "replication_lag_seconds", [c, n], node.lag_seconds)
    _add(families, "healthy_standbys", [c], healthy_standbys)
    _add(families, "split_brain", [c], int(bool(snap.split_brain)))
    _add(families, "stale_nodes", [c], sum(1 for n in snap.nodes if n.role is Role.STALE))
    in_progress = snap.state is ClusterState.FAILOVER_IN_PROGRESS
    _add(families, "failover_in_progress", [c], int(in_progress))
    _add(families, "promotion_blocked", [c], int(snap.promotion_blocked is not None))
    _add(families, "commits_blocked", [c], int(commits_blocked(snap)))
    # hang_failover_seconds() says None both for "never" (a standby whose
    # receiver never times out) and for "no standby up to prove silence"
    # (the standbys guards.hang_detection_seconds counts): tell them apart.
    if any(n.role is Role.STANDBY and n.up for n in snap.nodes):
        bound = hang_failover_seconds(snap, config)
        _add(families, "hang_failover_seconds", [c], math.inf if bound is None else bound)
    if snap.failover.completed_at is not None:
        _add(families, "last_failover_timestamp_seconds", [c], snap.failover.completed_at)


def _fill_counters(families: dict[str, Metric], c: str, snap: Snapshot, stats: Counters) -> None:
    """The counters and histograms of one manager (cluster ``c``)."""
    counters = stats.as_dict()
    for short in (
        "failovers",
        "recoveries",
        "promotions",
        "promotion_failures",
        "probe_rounds",
        "sync_lowered",
    ):
        _add(families, short, [c], counters[f"{short}_total"])
    failures = counters["health_check_failures"]
    for node in snap.nodes:
        _add(families, "health_check_failures", [c, node.name], failures.get(node.name, 0))
    for q in counters["queries"]:
        _add(families, "queries", [c, q["node"], q["route"], q["outcome"]], q["count"])

    probes, failover = stats.histograms()
    probe_family = families["probe_duration_seconds"]
    failover_family = families["failover_duration_seconds"]
    assert isinstance(probe_family, HistogramMetricFamily)  # noqa: S101 - by table
    assert isinstance(failover_family, HistogramMetricFamily)  # noqa: S101 - by table
    for node_name, (bounds, counts, total, count) in sorted(probes.items()):
        probe_family.add_metric([c, node_name], _buckets(bounds, counts, count), total)
    bounds, counts, total, count = failover
    failover_family.add_metric([c], _buckets(bounds, counts, count), total)


def _buckets(bounds: tuple[float, ...], counts: list[int], count: int) -> list[tuple[str, float]]:
    """Cumulative buckets in the form HistogramMetricFamily wants, ending with +Inf."""
    out = [(repr(float(b)), float(n)) for b, n in zip(bounds, counts, strict=True)]
    out.append(("+Inf", float(count)))
    return out


_collectors: weakref.WeakKeyDictionary[CollectorRegistry, ManagerCollector] = (
    weakref.WeakKeyDictionary()
)
_collectors_lock = threading.Lock()


def register(mgr: AnyManager, registry: CollectorRegistry | None = None) -> ManagerCollector:
    """Export ``mgr`` on ``registry`` (default: prometheus_client's global one).

    Every manager registered on one registry shares one collector, so the
    families appear once with a ``cluster`` label per manager.
    """
    target = REGISTRY if registry is None else registry
    with _collectors_lock:
        collector = _collectors.get(target)
        if collector is None:
            collector = ManagerCollector()
            target.register(collector)
            _collectors[target] = collector
    collector.add(mgr)
    return collector


def unregister(mgr: AnyManager, registry: CollectorRegistry | None = None) -> None:
    """Stop exporting ``mgr`` on ``registry``."""
    target = REGISTRY if registry is None else registry
    with _collectors_lock:
        collector = _collectors.get(target)
    if collector is not None:
        collector.remove(mgr)
