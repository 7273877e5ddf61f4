"""The scale benchmarks' tables (scale.py, scale_patroni.py, arbiter_loss.py) for report.py.

Kept apart from report.py, which renders the one-cluster benchmarks' tables:
these three share their helpers (quantiles in seconds, how the CPUs were
shared, how the writers were paced).
"""

from __future__ import annotations

from typing import Any


def _seconds(r: dict[str, Any], prefix: str, *names: str) -> str:
    """The quantiles ``names`` of ``prefix`` in a summary, as "a / b s" (or n/a)."""
    values = [r.get(f"{prefix}_{n}_s") for n in names]
    if any(v is None for v in values):
        return "n/a"
    return " / ".join(f"{v:.3f}" for v in values) + " s"


def _count(value: float | None) -> str:
    """A median count, or n/a where no run had one (no new primary to count on)."""
    return "n/a" if value is None else f"{value:g}"


def _groups(records: list[dict[str, Any]]) -> str:
    """How the run shared the CPUs (scale.py's and scale_patroni.py's ``cpu_groups``)."""
    kind = next((r.get("cpu_groups") for r in records if "pace_s" in r), None)
    if kind:
        return f"each role in its own CPU cgroup ({kind}, equal weights)"
    return "one CPU cgroup for everything"


def _start(records: list[dict[str, Any]]) -> str:
    """How the writers were paced (``in_step``; runs before it existed were in step)."""
    in_step = next((r.get("in_step", True) for r in records if "pace_s" in r), True)
    return "all in step" if in_step else "each from its own point of the pace"


def _warmup(records: list[dict[str, Any]]) -> str:
    """The pools' ``pool_warmup`` (``--warmup``), if the run had one."""
    sql = next((r.get("warmup") for r in records if "pace_s" in r), None)
    return f"; every pool connection warmed up with `{sql}`" if sql else ""


def _fault(records: list[dict[str, Any]]) -> str:
    """How the primary was lost (``--fault``; runs before it existed killed it)."""
    fault = next((r.get("fault", "kill") for r in records if "pace_s" in r), "kill")
    return "the primary hung (SIGSTOP)" if fault == "hang" else "the primary killed (SIGKILL)"


def scale_table(records: list[dict[str, Any]]) -> list[str]:
    """Many managers on one cluster: probe load, and how fast they all move (scale.py)."""
    summaries = [r for r in records if r.get("summary") and "contender" in r]
    if not summaries:
        return []
    pace = next((r.get("pace_s") for r in records if "pace_s" in r), None)
    sync = next((r.get("sync") for r in records if "pace_s" in r), 0)
    replication = f"quorum sync (ANY {sync})" if sync else "asynchronous replication"
    lines = [
        f"Writes every {pace:g} s per manager, {_start(records)}; {replication}; "
        f"{_fault(records)}; {_groups(records)}{_warmup(records)}."
        if pace is not None
        else "",
        "",
        "| managers | contender | probe sessions | probes/s steady | probes/s failover "
        "(live nodes) | write latency before p50 / p99 | all writing at once p50 / p99 "
        "| switch to manager switch p50 / p99 "
        "| switch to first write p50 / p99 / max "
        "| promotion to first write p50 / p99 / max | lost | memory / threads per manager |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summaries:
        lines.append(
            f"| {r['size']} | {r['contender']} | {_count(r['steady_probe_sessions'])} "
            f"| {r['steady_probes_per_s']:g} (+{r['steady_arbiter_probes_per_s']:g} arbiter) "
            f"| {r['failover_probes_per_s']:g} ({r['failover_live_probes_per_s']:g}) "
            f"| {_seconds(r, 'write_before', 'p50', 'p99')} "
            f"| {_seconds(r, 'all_at_once', 'p50', 'p99')} "
            f"| {_seconds(r, 'switch_to_manager_switch', 'p50', 'p99')} "
            f"| {_seconds(r, 'switch_to_first_write', 'p50', 'p99', 'max')} "
            f"| {_seconds(r, 'promotion_to_first_write', 'p50', 'p99', 'max')} "
            f"| {_count(r['lost'])} | {r['rss_kib_per_manager'] / 1024:.2f} MiB / "
            f"{r['threads_per_manager']:g} |"
        )
    return lines


def scale_patroni_table(records: list[dict[str, Any]]) -> list[str]:
    """Many managers on a Patroni cluster through its switchover (scale_patroni.py)."""
    summaries = [r for r in records if r.get("summary") and "contender" in r]
    if not summaries:
        return []
    pace = next((r.get("pace_s") for r in records if "pace_s" in r), None)
    lines = [
        f"Writes every {pace:g} s per manager, {_start(records)}; a Patroni switchover; "
        f"{_groups(records)}."
        if pace is not None
        else "",
        "",
        "| managers | contender | watch sessions steady / most in the switchover "
        "| probes/s steady | write latency before p50 / p99 "
        "| promotion to manager switch p50 / p99 "
        "| promotion to first write p50 / p99 / max | lost | old leader's acks after "
        "| memory / threads per manager |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summaries:
        lines.append(
            f"| {r['size']} | {r['contender']} "
            f"| {r['steady_probe_sessions']:g} / {r['failover_probe_sessions_max']:g} "
            f"| {r['steady_probes_per_s']:g} "
            f"| {_seconds(r, 'write_before', 'p50', 'p99')} "
            f"| {_seconds(r, 'switch_to_manager_switch', 'p50', 'p99')} "
            f"| {_seconds(r, 'switch_to_first_write', 'p50', 'p99', 'max')} "
            f"| {_count(r['lost'])} | {r['old_primary_acks_after_new']:g} "
            f"| {r['rss_kib_per_manager'] / 1024:.2f} MiB / {r['threads_per_manager']:g} |"
        )
    return lines


def _ramp(stat: dict[str, float | None] | None) -> str:
    """When the followers' sessions reached 10 / 50 / 90 % of their most (or n/a)."""
    if not stat or any(stat.get(k) is None for k in ("p10", "p50", "p90")):
        return "n/a"
    return " / ".join(f"{stat[k]:.2f}" for k in ("p10", "p50", "p90")) + " s"


def arbiter_loss_table(records: list[dict[str, Any]]) -> list[str]:
    """An arbiter killed under its followers: the probe sessions they open (arbiter_loss.py)."""
    summaries = [r for r in records if r.get("summary") and "case" in r]
    if not summaries:
        return []
    header = next((r for r in records if "pace_s" in r), {})
    lines = [
        f"Writes every {header.get('pace_s', 1.0):g} s per follower; the followed arbiter "
        f"killed (SIGKILL), sessions counted for {header.get('observe_s', 3.0):g} s; "
        f"max_connections {header.get('max_connections', 1500)} on every node; "
        f"{_groups(records)}; medians over the runs.",
        "",
        "| followers | arbiters | runs | most probe sessions opened "
        "| 10 / 50 / 90 % of them by | followers probing at the end "
        "| on the other arbiter at the end | writes failed | fewest counts in a run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summaries:
        lines.append(
            f"| {r['size']} | {r['case']} | {r['runs']} "
            f"| {r['followers_probe_sessions_max']:g} "
            f"| {_ramp(r.get('followers_sessions_reached_s'))} "
            f"| {r['followers_probing_at_end']:g} "
            f"| {_count(r.get('followers_on_the_other_at_end')) if r['case'] == 'two' else 'n/a'} "
            f"| {_count(r.get('failed_writes'))} | {_count(r.get('samples_min'))} |"
        )
    return lines
