"""Promotion: which standby to promote (pure), and promoting it (I/O).

:func:`choose_candidate` applies the guards of DESIGN.md in order and
returns the node to promote or the guard that refused, with how to
override it. It is pure: plain snapshot in, plain answer out.

The guards, in order (``force`` skips only those marked *forceable*):

1. ``split_brain``: two primaries already; never forced.
2. ``primary_reachable``: the primary still answers probes (*forceable*: a
   forced switchover fences the old primary first).
3. ``another_primary``: some other node already reports itself primary;
   never forced (it would make a split brain).
4. ``no_candidate`` / ``target_not_eligible``: no healthy standby, or the
   asked-for node is not one.
5. ``receiver_streaming``: a standby still streams from the lost primary,
   which proves the primary alive and us partitioned from it
   (*forceable*); ``receiver_unknown``: the probe user cannot see the WAL
   receiver (grant ``pg_monitor``) (*forceable*).
6. ``not_most_advanced``: the asked-for target holds less WAL than another
   standby (*forceable*).
7. ``lag``: the candidate is more than ``max_promotion_lag_bytes`` behind
   the last position seen on the primary (*forceable*).
8. ``cooldown``: less than ``failover_cooldown`` since the last failover
   (*forceable*).

Candidates are ranked by the WAL they hold (the most of received and
replayed): with quorum sync, an acknowledged commit is flushed on a standby
before it is acknowledged, so the standby holding the most WAL holds every
acknowledged write. Ties go to the lower ``priority``, then the name, so
every manager picks the same node.
"""

from __future__ import annotations

from dataclasses import dataclass

from pgfailover.config import FailoverConfig
from pgfailover.model import NodeState, Role, Snapshot

__all__ = ["FORCEABLE", "Candidate", "Refusal", "choose_candidate", "rank"]

FORCEABLE = frozenset(
    {
        "primary_reachable",
        "receiver_streaming",
        "receiver_unknown",
        "not_most_advanced",
        "lag",
        "cooldown",
    }
)


@dataclass(frozen=True)
class Candidate:
    """The standby to promote, and how far behind the last primary it is."""

    node: str
    lag_bytes: int | None
    reason: str


@dataclass(frozen=True)
class Refusal:
    """A guard refused: which one, why, and how to override it."""

    guard: str
    reason: str

    @property
    def forceable(self) -> bool:
        """True when ``force=True`` skips this guard."""
        return self.guard in FORCEABLE

    @property
    def override(self) -> str:
        """A sentence telling an operator how to get past this guard."""
        if self.forceable:
            return "use force=True (pgfailover trigger --force) to skip this guard"
        return "this guard cannot be forced: resolve the cause first"


def rank(node: NodeState) -> tuple[int, int, str]:
    """Sort key: most WAL first, then lower priority, then name."""
    return (-(node.position or 0), node.priority, node.name)


def _eligible(node: NodeState) -> bool:
    return node.up and node.healthy and node.role is Role.STANDBY and node.position is not None


def choose_candidate(
    snap: Snapshot,
    config: FailoverConfig,
    now: float,
    *,
    target: str | None = None,
    force: bool = False,
) -> Candidate | Refusal:
    """The standby to promote now, or the first guard that refuses."""

    def refuse(guard: str, reason: str) -> Refusal | None:
        if force and guard in FORCEABLE:
            return None
        return Refusal(guard, reason)

    if snap.split_brain:
        return Refusal("split_brain", f"split brain between {', '.join(snap.split_brain)}")
    if snap.primary is not None and snap.node(snap.primary).up:
        refusal = refuse("primary_reachable", f"the primary {snap.primary} answers probes")
        if refusal:
            return refusal
    others = [
        n.name for n in snap.nodes if n.up and n.role is Role.PRIMARY and n.name != snap.primary
    ]
    if others:
        return Refusal("another_primary", f"{', '.join(others)} already reports itself primary")
    candidates = sorted((n for n in snap.nodes if _eligible(n)), key=rank)
    if not candidates:
        return Refusal("no_candidate", "no healthy standby to promote")
    best = candidates[0]
    chosen = best
    if target is not None:
        names = {n.name for n in snap.nodes}
        if target not in names:
            return Refusal("target_not_eligible", f"unknown node {target!r}")
        matching = [n for n in candidates if n.name == target]
        if not matching:
            node = snap.node(target)
            why = "is down" if not node.up else f"is {node.role.value}, not a healthy standby"
            return Refusal("target_not_eligible", f"{target} {why}")
        chosen = matching[0]
    lost = snap.last_primary
    for node in snap.nodes:
        if node.name == lost or node.role is not Role.STANDBY or not node.up:
            continue
        if node.receiver_streaming and (node.upstream in (None, lost)):
            refusal = refuse(
                "receiver_streaming",
                f"{node.name} still streams from {node.upstream or 'the primary'}: "
                "the primary is alive and this manager may be partitioned from it",
            )
            if refusal:
                return refusal
    if not chosen.receiver_visible:
        refusal = refuse(
            "receiver_unknown",
            f"cannot see {chosen.name}'s WAL receiver: grant pg_monitor to the probe user",
        )
        if refusal:
            return refusal
    if chosen is not best and (chosen.position or 0) < (best.position or 0):
        refusal = refuse(
            "not_most_advanced",
            f"{chosen.name} holds {(best.position or 0) - (chosen.position or 0)} bytes "
            f"less WAL than {best.name}",
        )
        if refusal:
            return refusal
    reference = max(snap.last_primary_lsn or 0, best.position or 0)
    lag = reference - (chosen.position or 0)
    if lag > config.max_promotion_lag_bytes:
        refusal = refuse(
            "lag",
            f"{chosen.name} is {lag} bytes behind the last primary position "
            f"(max_promotion_lag_bytes={config.max_promotion_lag_bytes})",
        )
        if refusal:
            return refusal
    if (
        snap.last_failover_at is not None
        and now - snap.last_failover_at < config.failover_cooldown
    ):
        refusal = refuse(
            "cooldown",
            f"last failover {now - snap.last_failover_at:.1f}s ago "
            f"(failover_cooldown={config.failover_cooldown:g}s)",
        )
        if refusal:
            return refusal
    why = "asked for" if target else "most advanced healthy standby"
    return Candidate(chosen.name, max(0, lag), f"{chosen.name}: {why}, {max(0, lag)} bytes behind")
