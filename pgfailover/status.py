"""The manager's status and metrics as plain JSON-ready dicts.

Built from the latest snapshot and counters at call time; DSNs are masked.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from pgfailover.model import NodeState, Role

if TYPE_CHECKING:
    from pgfailover.manager import FailoverManager

__all__ = ["failover_status", "iso", "metrics_dict", "node_dict"]


def iso(ts: float | None) -> str | None:
    """An epoch timestamp as ISO 8601 UTC, or None."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds")


def node_dict(node: NodeState, primary: str | None) -> dict[str, Any]:
    """One node's health as a JSON-ready dict."""
    return {
        "name": node.name,
        "address": node.address,
        "role": node.role.value,
        "is_primary": node.name == primary,
        "healthy": node.healthy,
        "up": node.up,
        "last_check": iso(node.last_check),
        "failure_count": node.consecutive_failures,
        "success_count": node.consecutive_successes,
        "response_time_ms": None
        if node.response_time is None
        else round(node.response_time * 1000, 3),
        "down_since": iso(node.down_since),
        "promotion_eligible": node.promotion_eligible,
        "timeline": node.timeline,
        "lag_bytes": node.lag_bytes,
        "lag_seconds": node.lag_seconds,
        "upstream": node.upstream,
        "streaming": node.receiver_streaming,
        "read_only": node.read_only,
        "stale": node.role is Role.STALE,
        "error": node.error,
    }


def failover_status(mgr: FailoverManager) -> dict[str, Any]:
    """State, primary, every standby, counters (``get_failover_status()``)."""
    snap = mgr.snapshot
    nodes = [node_dict(n, snap.primary) for n in snap.nodes]
    primary = next((n for n in nodes if n["is_primary"]), None)
    return {
        "cluster": mgr.name,
        "state": snap.state.value,
        "current_primary": snap.primary,
        "primary": primary,
        "standbys": [n for n in nodes if not n["is_primary"]],
        "nodes": nodes,
        "promotion": mgr.config.promotion,
        "promotion_blocked": snap.promotion_blocked,
        "split_brain": list(snap.split_brain),
        "failover_in_progress_since": iso(snap.failover_started_at),
        "failover_reason": snap.failover_reason,
        "failover_count": snap.failover_count,
        "last_failover_time": iso(snap.last_failover_at),
        "timeline": snap.max_timeline or None,
        "state_since": iso(snap.changed_at),
        "checked_at": iso(max((n.last_check or 0.0) for n in snap.nodes) or None),
    }


def metrics_dict(mgr: FailoverManager) -> dict[str, Any]:
    """Gauges from the snapshot and the manager's counters (``get_metrics()``)."""
    snap = mgr.snapshot
    primary = snap.node(snap.primary) if snap.primary else None
    data = mgr.stats.as_dict()
    data.update(
        {
            "cluster": mgr.name,
            "state": snap.state.value,
            "primary": snap.primary,
            "primary_healthy": int(primary is not None and primary.up),
            "standby_healthy": {
                n.name: int(n.up and n.healthy) for n in snap.nodes if n.name != snap.primary
            },
            "replication_lag_bytes": {
                n.name: n.lag_bytes
                for n in snap.nodes
                if n.lag_bytes is not None and n.name != snap.primary
            },
            "split_brain": int(bool(snap.split_brain)),
            "stale_nodes": sorted(n.name for n in snap.nodes if n.role is Role.STALE),
            "failover_count": snap.failover_count,
        }
    )
    return data
