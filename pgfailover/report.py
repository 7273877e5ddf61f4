"""The manager's status and metrics as plain JSON-ready dicts, and the status as text (pure).

Built from a snapshot, the config, the upkeep's status and the counters at
call time; DSNs are masked. The predicates (a writable primary, a healthy
standby, serves reads) are the snapshot's own, so the status, ``/metrics``
and ``/failover/metrics`` never disagree about a node.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from pgfailover.availability import WindowStats
from pgfailover.config import FailoverConfig
from pgfailover.convergence import commits_blocked
from pgfailover.counters import Counters
from pgfailover.guards import Candidate, choose_candidate, hang_failover_seconds
from pgfailover.model import NodeState, Role, Snapshot
from pgfailover.routing import DIVERGED
from pgfailover.syncrep import parse_sync, recorded
from pgfailover.upkeep import SLOW_HANG_FAILOVER, UpkeepStatus

__all__ = [
    "EXIT_DEGRADED",
    "EXIT_NO_PRIMARY",
    "EXIT_OK",
    "EXIT_USAGE",
    "cell",
    "exit_code_for",
    "failover_status",
    "iso",
    "metrics_dict",
    "node_dict",
    "render",
]

# Exit codes of `pgfailover status` and `manage.py pgfailover_status`.
EXIT_OK = 0
EXIT_DEGRADED = 1
EXIT_NO_PRIMARY = 2
EXIT_USAGE = 3  # usage and configuration errors


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
        # A node that does not answer is "down", whatever it was: a dead old
        # primary must never read as a second "primary" (last_role says what it was).
        "role": node.role.value if node.up else "down",
        "last_role": node.role.value,
        "is_primary": node.name == primary,
        "tags": [t for t in ("nofailover", "noloadbalance") if getattr(node, t)],
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
        # A stale old primary, or a standby that received WAL past the newest
        # timeline's fork (it came back pointing at the old primary): both need
        # pg_rewind, which pgfailover rejoin runs.
        "needs_rejoin": node.role is Role.STALE or (node.read_block or "").startswith(DIVERGED),
        "serves_reads": node.serves_reads,
        "read_block": node.read_block,
        "follows_primary": node.follows,
        "receiver_silence_seconds": node.receiver_silence,
        "wal_receiver_timeout_seconds": node.receiver_timeout,
        "failed_at": iso(node.failed_at),
        "error": node.error,
    }


def failover_status(
    cluster: str,
    snap: Snapshot,
    cfg: FailoverConfig,
    keeper: UpkeepStatus,
    *,
    paused_since: float | None = None,
    read_only: str | None = None,
    breakers: dict[str, dict[str, Any]] | None = None,
    availability: dict[str, WindowStats] | None = None,
) -> dict[str, Any]:
    """State, primary, every standby, counters (``get_failover_status()``).

    ``read_only``: why no primary is coming (read-only mode), if so;
    ``breakers``: each node's circuit breaker (``Breaker.as_dict``);
    ``availability``: the fraction of observed time writes were taken, per
    window (:meth:`Availability.report <pgfailover.availability.Availability.report>`).
    """
    nodes = [node_dict(n, snap.primary) for n in snap.nodes]
    for node in nodes:
        node["breaker"] = (breakers or {}).get(node["name"])
    primary = next((n for n in nodes if n["is_primary"]), None)
    return {
        "cluster": cluster,
        "state": snap.state.value,
        "current_primary": snap.primary,
        "primary": primary,
        "standbys": [n for n in nodes if not n["is_primary"]],
        "nodes": nodes,
        "promotion": cfg.promotion,
        "maintenance": {"paused": paused_since is not None, "since": iso(paused_since)},
        "promotion_blocked": snap.promotion_blocked,
        "writable": read_only is None,
        "read_only_reason": read_only,
        "split_brain": list(snap.split_brain),
        "failover_in_progress_since": iso(snap.failover.started_at),
        "failover_reason": snap.failover.reason,
        "failover_count": snap.failover.count,
        "last_failover_time": iso(snap.failover.completed_at),
        "timeline": snap.max_timeline or None,
        "state_since": iso(snap.changed_at),
        "checked_at": iso(max((n.last_check or 0.0) for n in snap.nodes) or None),
        "failure_detection": failure_detection(snap, cfg, keeper),
        "synchronous_replication": sync_status(snap, keeper),
        "redundancy": redundancy(snap, keeper),
        "availability": availability,
    }


def failure_detection(snap: Snapshot, cfg: FailoverConfig, keeper: UpkeepStatus) -> dict[str, Any]:
    """How fast a hung or black-holed primary is failed over, and why not faster."""
    bound = hang_failover_seconds(snap, cfg)
    refused = keeper.refused
    warning = None
    if cfg.promotion == "auto" and (bound is None or bound > SLOW_HANG_FAILOVER):
        warning = (
            "a hung or black-holed primary is failed over "
            + ("never" if bound is None else f"only after up to {bound:g}s")
            + ": set wal_receiver_timeout to a few seconds on the standbys"
            + (
                f" (could not: {'; '.join(f'{k}: {v}' for k, v in refused.items())})"
                if refused
                else ""
            )
        )
    return {
        "hang_failover_seconds": bound,
        "wal_receiver_timeout_target": cfg.wal_receiver_timeout or None,
        "not_applied": refused,
        "warning": warning,
    }


def kept_policy(primary: NodeState | None, keeper: UpkeepStatus) -> tuple[str | None, bool | None]:
    """The synchronous policy in force, and whether a manager wrote the primary's list
    (this process, or another by the record it kept there): then a standby that
    streams again is added to it. ``None`` without a primary."""
    if primary is None:
        return keeper.policy, None
    current = primary.sync_standby_names or ""
    record = recorded(current, primary.sync_record)
    if record is not None:
        return None if record.policy is None else record.policy.shown, True
    if keeper.ours.get(primary.name) == current:
        return keeper.policy, True
    spec = parse_sync(current)  # the operator's list is the policy
    return None if spec is None or spec.star else spec.shown, False


def sync_status(snap: Snapshot, keeper: UpkeepStatus) -> dict[str, Any]:
    """The primary's synchronous replication: setting, who streams, can commits complete."""
    primary = snap.node(snap.primary) if snap.primary else None
    policy, managed = kept_policy(primary, keeper)
    return {
        "synchronous_standby_names": None if primary is None else primary.sync_standby_names,
        "streaming": None
        if primary is None or primary.streaming_names is None
        else list(primary.streaming_names),
        "commits_blocked": commits_blocked(snap),
        "policy": policy,
        "written_by_manager": managed,
        "record_refused": keeper.record_refused,
    }


REDUNDANCY_LEVELS = ("none", "single", "dual", "multi")


def redundancy(snap: Snapshot, keeper: UpkeepStatus) -> dict[str, Any]:
    """How many copies of the data can take over, and whether synchronous replication holds.

    ``copies``: the writable primary and the healthy standbys streaming
    from it; ``level``: ``none`` (no writable primary), ``single`` (the
    primary alone), ``dual`` (one standby), ``multi`` (two or more).
    ``sync_quorum_ok``: the configured synchronous policy (``auto`` mode's,
    else the primary's setting) is in force and enough listed standbys
    stream; ``False`` while commits wait or are acknowledged by fewer
    standbys than configured (lowered, or async); ``None`` without
    synchronous replication or a primary.
    """
    primary = snap.writable_primary
    streaming = sorted(
        n.name
        for n in snap.nodes
        if primary is not None
        and n.name != primary.name
        and n.healthy_standby
        and n.receiver_streaming
    )
    copies = 0 if primary is None else 1 + len(streaming)
    quorum_ok: bool | None = None
    if primary is not None:
        current = parse_sync(primary.sync_standby_names)
        policy, _ = kept_policy(primary, keeper)
        wanted = parse_sync(policy) if policy else current
        if wanted is not None:
            quorum_ok = (
                current is not None and current.count >= wanted.count and not commits_blocked(snap)
            )
    return {
        "level": REDUNDANCY_LEVELS[min(copies, 3)],
        "copies": copies,
        "streaming_standbys": streaming,
        "sync_quorum_ok": quorum_ok,
    }


def metrics_dict(
    cluster: str, snap: Snapshot, cfg: FailoverConfig, counters: Counters
) -> dict[str, Any]:
    """Gauges from the snapshot and the manager's counters (``get_metrics()``)."""
    data = counters.as_dict()
    data.update(
        {
            "cluster": cluster,
            "state": snap.state.value,
            "primary": snap.primary,
            "primary_healthy": int(snap.writable_primary is not None),
            "standby_healthy": {
                n.name: int(n.healthy_standby) for n in snap.nodes if n.name != snap.primary
            },
            "replication_lag_bytes": {
                n.name: n.lag_bytes
                for n in snap.nodes
                if n.lag_bytes is not None and n.name != snap.primary
            },
            "split_brain": int(bool(snap.split_brain)),
            "commits_blocked": int(commits_blocked(snap)),
            "hang_failover_seconds": hang_failover_seconds(snap, cfg),
            "serves_reads": {
                n.name: int(n.serves_reads) for n in snap.nodes if n.name != snap.primary
            },
            "stale_nodes": sorted(n.name for n in snap.nodes if n.role is Role.STALE),
            "failover_count": snap.failover.count,
        }
    )
    return data


def exit_code_for(status: dict[str, Any]) -> int:
    """0 healthy, 1 degraded or failing over, 2 no writable primary."""
    primary = status.get("primary")
    if not primary or not primary.get("up") or status.get("split_brain"):
        return EXIT_NO_PRIMARY
    return EXIT_OK if status.get("state") == "healthy" else EXIT_DEGRADED


# ANSI SGR colours of the state in the header line.
_STATE_COLOURS = {
    "healthy": 32,
    "degraded": 33,
    "failover_in_progress": 31,
    "failover_complete": 36,
    "recovery_in_progress": 33,
    "unknown": 31,
    "split_brain": 31,
}


def _style(text: str, colour: int, enabled: bool, *, bold: bool = False) -> str:
    if not enabled:
        return text
    return f"\x1b[{'1;' if bold else ''}{colour}m{text}\x1b[0m"


def cell(value: Any, suffix: str = "") -> str:
    """A table cell: ``-`` for nothing, floats to three places."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}{suffix}"
    return f"{value}{suffix}"


MARKS_WIDTH = 60  # the marks column wraps here: an error is shown whole, on more lines


def render(status: dict[str, Any], *, colour: bool = False) -> str:
    """The status as an aligned table with a header line (ANSI colour if ``colour``)."""
    state = status["state"]
    head = (
        f"cluster {status.get('cluster', '-')}: "
        + _style(state.upper(), _STATE_COLOURS.get(state, 37), colour, bold=True)
        + f"   primary: {status.get('current_primary') or '-'}"
        + f"   timeline: {status.get('timeline') or '-'}"
        + f"   promotion: {status.get('promotion', '-')}"
        + (
            "   " + _style("MAINTENANCE (paused)", 33, colour, bold=True)
            if (status.get("maintenance") or {}).get("paused")
            else ""
        )
    )
    columns = ["node", "address", "role", "healthy", "tl", "lag bytes", "lag s", "rt ms", "marks"]
    rows = []
    split = set(status.get("split_brain") or [])
    for node in status["nodes"]:
        marks = []
        if node["is_primary"]:
            marks.append("writes")
        if node.get("stale"):
            marks.append("STALE")
        if node["name"] in split:
            marks.append("SPLIT-BRAIN")
        if not node["up"] and node.get("error"):
            marks.append(node["error"])
        elif node["up"] and node.get("read_block") and node["role"] == "standby":
            marks.append(f"no reads: {node['read_block']}")
        if node["up"] and node.get("error"):  # it refused the probe's new session
            marks.append(f"FULL, refusing new sessions: {node['error']}")
        breaker = node.get("breaker") or {}
        if breaker.get("state") == "open":
            marks.append(f"BREAKER OPEN (retry in {cell(breaker.get('retry_in_seconds'), 's')})")
        elif breaker.get("state") == "half_open":
            marks.append("breaker half-open (trial reads)")
        rows.append(
            [
                node["name"],
                node["address"],
                node["role"],
                "yes" if node["healthy"] else "NO",
                cell(node.get("timeline")),
                "-" if node["is_primary"] else cell(node.get("lag_bytes")),
                "-" if node["is_primary"] else cell(node.get("lag_seconds")),
                cell(node.get("response_time_ms")),
                ", ".join(marks),
            ]
        )
    # The marks (an error, why no reads) are shown whole, wrapped in their column.
    wrapped = [textwrap.wrap(row[-1], MARKS_WIDTH, break_on_hyphens=False) or [""] for row in rows]
    for row, marks_lines in zip(rows, wrapped, strict=True):
        row[-1] = marks_lines[0]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    lines = [
        head,
        "",
        "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip(),
    ]
    indent = " " * (sum(widths[:-1]) + 2 * (len(widths) - 1))
    for row, marks_lines in zip(rows, wrapped, strict=True):
        text = "\n".join(
            ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()]
            + [indent + more for more in marks_lines[1:]]
        )
        healthy = row[3] == "yes"
        lines.append(text if healthy else _style(text, 31, colour))
    extra = []
    if status.get("read_only_reason"):
        extra.append(f"READ-ONLY: writes fail at once: {status['read_only_reason']}")
    if status.get("promotion_blocked"):
        extra.append(f"promotion blocked: {status['promotion_blocked']}")
    if status.get("failover_reason"):
        extra.append(f"failover: {status['failover_reason']}")
    sync = status.get("synchronous_replication") or {}
    if sync.get("commits_blocked"):
        extra.append(
            f"COMMITS BLOCKED: synchronous_standby_names {sync.get('synchronous_standby_names')!r}"
            f" names no streaming standby (streaming: {', '.join(sync.get('streaming') or [])})"
        )
    warning = (status.get("failure_detection") or {}).get("warning")
    if warning:
        extra.append(f"warning: {warning}")
    return "\n".join(lines + (["", *extra] if extra else []))


@dataclass(frozen=True)
class TriggerPlan:
    """What a manual trigger found and would do: shown before the operator confirms."""

    allowed: bool
    lines: list[str]
    guard: str | None  # the refusing guard


def trigger_plan(
    snap: Snapshot, config: FailoverConfig, now: float, target: str | None, force: bool
) -> TriggerPlan:
    """The primary and every standby as the trigger sees them, then the plan or the refusal."""
    lines = []
    primary = snap.node(snap.primary) if snap.primary else None
    if primary is not None:
        reach = "reachable" if primary.up else f"NOT reachable ({primary.error})"
        lines.append(f"primary      {primary.name}: {reach}, timeline {primary.timeline}")
    else:
        lines.append(f"primary      none (last: {snap.last_primary or '-'})")
    for node in snap.standbys:
        receiver = (
            "streaming"
            if node.receiver_streaming
            else "not streaming"
            if node.receiver_streaming is False
            else "receiver not visible"
        )
        lines.append(
            f"standby      {node.name}: {'up' if node.up else 'DOWN'}, {receiver}"
            f"{f' from {node.upstream}' if node.upstream else ''}, "
            f"lag {cell(node.lag_bytes)} bytes, timeline {cell(node.timeline)}"
        )
    choice = choose_candidate(snap, config, now, target=target, force=force)
    if isinstance(choice, Candidate):
        fence = primary.name if primary is not None and primary.up else None
        plan = f"promote {choice.node} ({choice.reason})"
        if fence:
            plan = f"soft-fence {fence} (read-only), then " + plan
        if config.repoint_standbys:
            plan += ", then repoint the other standbys to it"
        lines.append(f"plan         {plan}")
        return TriggerPlan(True, lines, None)
    lines.append(f"refused      guard {choice.guard}: {choice.reason}")
    lines.append(f"override     {choice.override}")
    return TriggerPlan(False, lines, choice.guard)
