"""The names, types and help texts of every series :mod:`pgfailover.metrics` exports.

A table apart from the collector, so that the dashboard's and the alert
rules' checks (and anything else that needs the names) read it without the
collector's code.
"""

from __future__ import annotations

__all__ = ["FAMILIES", "METRIC_NAMES", "PREFIX"]

PREFIX = "pgfailover_"

# name (without _total for counters) -> (type, help, labels beyond "cluster")
FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "info": ("gauge", "Always 1; the manager's promotion mode as a label.", ("promotion",)),
    "cluster_state": ("gauge", "1 for the cluster's current state, 0 for the others.", ("state",)),
    "primary_healthy": ("gauge", "1 when a primary that takes writes answered.", ()),
    "maintenance_paused": (
        "gauge",
        "1 in maintenance mode: no automatic promotion (pgfailover pause / resume).",
        (),
    ),
    "source_following": (
        "gauge",
        "1 while the manager routes on its source's snapshots (source=), 0 while the source is "
        "silent or unusable and it probes the cluster itself. Absent without a source.",
        (),
    ),
    "source_updates": ("counter", "Snapshots the manager took from its source.", ()),
    "source_fallbacks": (
        "counter",
        "Times the source went silent or unusable and the manager probed the cluster itself.",
        (),
    ),
    "arbiter_lease_held": (
        "gauge",
        "1 while this arbiter holds the cluster's lease in etcd and so may promote, 0 while "
        "it does not (pgfailover serve --etcd; absent without it).",
        (),
    ),
    "redundancy_copies": (
        "gauge",
        "Copies that can take over: the writable primary and its healthy streaming standbys.",
        (),
    ),
    "redundancy_level": (
        "gauge",
        "1 for the redundancy level (none, single, dual, multi), 0 for the others.",
        ("level",),
    ),
    "sync_quorum_ok": (
        "gauge",
        "1 while the configured synchronous replication holds, 0 while commits wait or are "
        "acknowledged by fewer standbys (absent without synchronous replication).",
        (),
    ),
    "read_only": (
        "gauge",
        "1 in read-only mode: the primary is lost and no promotion is coming.",
        (),
    ),
    "standby_healthy": ("gauge", "1 per standby that is up and healthy.", ("node",)),
    "healthy_standbys": ("gauge", "How many standbys are up and healthy.", ()),
    "node_up": ("gauge", "1 when the node answered its last probe.", ("node",)),
    "node_healthy": ("gauge", "1 when the node is healthy (thresholds counted).", ("node",)),
    "node_role": ("gauge", "1 for the node's current role, 0 for the others.", ("node", "role")),
    "node_is_primary": ("gauge", "1 for the node writes go to.", ("node",)),
    "node_timeline": ("gauge", "The node's timeline ID.", ("node",)),
    "node_last_check_timestamp_seconds": ("gauge", "When the node was last probed.", ("node",)),
    "node_serves_reads": (
        "gauge",
        "1 per standby that may serve reads now, 0 for one that must not (status: read_block).",
        ("node",),
    ),
    "availability_ratio": (
        "gauge",
        "Fraction of the observed time the cluster took writes, over the window (1h, 24h, "
        "7d; kept in the history file across restarts). Absent before anything was observed.",
        ("window",),
    ),
    "availability_observed_seconds": (
        "gauge",
        "Seconds of the window this manager (or an earlier run on the same history file) "
        "observed the cluster.",
        ("window",),
    ),
    "read_strategy": (
        "gauge",
        "Always 1; the read strategy as a label (a custom one by its class name).",
        ("strategy",),
    ),
    "read_weight": (
        "gauge",
        "Each node's read weight (read_weights; 1 when not set; absent for a custom strategy).",
        ("node",),
    ),
    "breaker_state": (
        "gauge",
        "1 for the state of the node's read circuit breaker (closed, open, half_open), "
        "0 for the others.",
        ("node", "state"),
    ),
    "breaker_opens": (
        "counter",
        "Times the node's read circuit breaker opened (reads failing while probes pass).",
        ("node",),
    ),
    "replication_lag_bytes": (
        "gauge",
        "WAL bytes the standby has yet to replay, compared with the primary.",
        ("node",),
    ),
    "replication_lag_seconds": (
        "gauge",
        "Seconds since the last transaction the standby replayed was committed.",
        ("node",),
    ),
    "split_brain": ("gauge", "1 while more than one node accepts writes.", ()),
    "stale_nodes": ("gauge", "Old primaries out of recovery on an older timeline.", ()),
    "failover_in_progress": ("gauge", "1 while a failover is in progress.", ()),
    "promotion_blocked": ("gauge", "1 while a guard refuses to promote.", ()),
    "commits_blocked": (
        "gauge",
        "1 while the primary's synchronous_standby_names names too few streaming standbys: "
        "every COMMIT waits.",
        (),
    ),
    "hang_failover_seconds": (
        "gauge",
        "Upper bound of how long a hung or black-holed primary takes to be failed over "
        "(auto mode); +Inf: never. Absent while no standby is up.",
        (),
    ),
    "last_failover_timestamp_seconds": ("gauge", "When the last failover completed.", ()),
    "failovers": ("counter", "Failovers completed since the manager started.", ()),
    "recoveries": ("counter", "Nodes that came back healthy after being lost.", ()),
    "promotions": ("counter", "Standbys this manager promoted.", ()),
    "promotion_failures": ("counter", "Promotions this manager tried that failed.", ()),
    "sync_lowered": (
        "counter",
        "Times synchronous replication was lowered (to fewer standbys or to async) "
        "because too few standbys streamed.",
        (),
    ),
    "health_check_failures": ("counter", "Probes that failed, per node.", ("node",)),
    "probe_rounds": ("counter", "Probe rounds run.", ()),
    "queries": (
        "counter",
        "Statement attempts by node, route (write, read, read_primary) and outcome.",
        ("node", "route", "outcome"),
    ),
    "probe_duration_seconds": ("histogram", "Duration of one probe, per node.", ("node",)),
    "failover_duration_seconds": (
        "histogram",
        "Failover duration, from detection to the first write on the new primary.",
        (),
    ),
}


def _series_names() -> frozenset[str]:
    names: set[str] = set()
    for short, (kind, _, _) in FAMILIES.items():
        full = PREFIX + short
        if kind == "counter":
            names.add(full + "_total")
        elif kind == "histogram":
            names.update({full + "_bucket", full + "_sum", full + "_count"})
        else:
            names.add(full)
    return frozenset(names)


METRIC_NAMES: frozenset[str] = _series_names()
"""Every series name the collector can produce."""
