"""Promotion guards and the evidence that a primary is gone for everyone (pure).

:func:`choose_candidate` applies the guards of DESIGN.md in order and
returns the node to promote or the guard that refused, with how to
override it. Plain snapshot in, plain answer out: every rule is a row in a
unit-test table.

Gone for everyone, or only for us
---------------------------------

A manager that cannot reach the primary does not know whether the primary
is down (crash, hang, power cut, black hole) or whether only the path from
this manager is cut (a partition). Promoting in the second case makes a
split brain. The standbys decide it: each one's WAL receiver talks to the
primary over its own connection, and PostgreSQL's receiver guarantees a
message from a live primary at least every ``wal_receiver_timeout / 2``:

- with WAL to ship, the walsender sends continuously;
- when idle, the receiver sends a keepalive request after
  ``wal_receiver_timeout / 2`` of silence, and a live walsender answers at
  once (``walreceiver.c``: ``ping_sent``);
- after ``wal_receiver_timeout`` of silence the receiver gives up.

``pg_stat_wal_receiver.last_msg_receipt_time`` records the last message, on
the standby's own clock (no clock skew enters). So a standby whose receiver
has been silent for longer than ``wal_receiver_timeout / 2 +
SILENCE_MARGIN`` has lost the primary too: the primary did not answer its
ping. A crash with a RST ends the receiver at once; a hang (SIGSTOP) or a
black hole (no RST) shows as silence; a receiver stuck connecting to a hung
server reports ``streaming`` with the time it started as its last message,
so it ages the same way. While any standby still *hears* the lost primary,
the ``receiver_streaming`` guard refuses: the primary is alive and this
manager is partitioned from it.

With PostgreSQL's default ``wal_receiver_timeout`` of 60 s that proof takes
31 s. In ``auto`` mode the manager therefore sets ``wal_receiver_timeout``
(reloadable) to ``FailoverConfig.wal_receiver_timeout`` (4 s: proof after
3 s of silence) on every node; :func:`hang_detection_seconds` says what a
cluster gets when it may not.

The guards, in order (``force`` skips only those marked *forceable*):

1. ``split_brain``: two primaries already; never forced.
2. ``primary_reachable``: the primary still answers probes (*forceable*: a
   forced switchover fences the old primary first).
3. ``another_primary``: some other node already reports itself primary;
   never forced (it would make a split brain).
4. ``no_candidate`` / ``target_not_eligible``: no healthy standby on the
   newest timeline (an orphan or a diverged node is never a candidate), or
   the asked-for node is not one. ``nofailover``: the asked-for node is
   tagged so (*forceable*); untagged, such a node is never chosen, nor
   compared with the candidates for WAL.
5. ``receiver_streaming``: a standby still hears the lost primary
   (*forceable*); ``witness_unreachable``: a standby that may still hear it
   cannot be asked (*forceable*); ``receiver_unknown``: the probe user
   cannot see a standby's WAL receiver (grant ``pg_monitor``) (*forceable*).
   ``quorum_incomplete``: with quorum sync, too few of the listed standbys
   answer to be sure the candidate holds every acknowledged commit
   (*forceable*).
6. ``not_most_advanced``: the asked-for target holds less WAL than another
   standby (*forceable*).
7. ``lag``: the candidate is more than ``max_promotion_lag_bytes`` behind
   the last position seen on the primary (*forceable*).
8. ``cooldown``: an asked-for target itself failed less than
   ``failover_cooldown`` ago (*forceable*).

Anti-flap is a rule about *which* node, never about *when*: a node that
itself failed less than ``failover_cooldown`` ago (went unhealthy: crashed,
hung, was the primary that was lost) is passed over for any steady standby
that holds as much WAL, so the cluster does not fail back to a node that
just failed. It is promoted only when no steady standby holds as much WAL:
losing acknowledged writes to avoid a flap, or leaving the cluster without
a primary after a real loss, would both be worse. A second real crash right
after a failover is therefore failed over at once.

Candidates are ranked by the WAL they hold (the most of received and
replayed): with quorum sync, an acknowledged commit is flushed on a standby
before it is acknowledged, so the standby holding the most WAL holds every
acknowledged write. Ties go to the lower ``priority``, then the name, so
every manager picks the same node.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from pgfailover.config import FailoverConfig
from pgfailover.model import NodeState, Role, Snapshot
from pgfailover.syncrep import parse_sync

__all__ = [
    "FORCEABLE",
    "SILENCE_MARGIN",
    "Candidate",
    "Refusal",
    "choose_candidate",
    "hang_detection_seconds",
    "hang_failover_seconds",
    "hears_upstream",
    "rank",
    "recently_failed",
    "silence_limit",
]

SILENCE_MARGIN: Final = 1.0
"""Seconds a live walsender gets to answer a receiver's keepalive request."""

FORCEABLE = frozenset(
    {
        "primary_reachable",
        "nofailover",
        "witness_unreachable",
        "quorum_incomplete",
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


def silence_limit(node: NodeState) -> float | None:
    """Seconds of receiver silence that prove the upstream gone for ``node``.

    ``None`` when silence proves nothing: the receiver never pings
    (``wal_receiver_timeout = 0``) or the setting is unknown.
    """
    timeout = node.receiver_timeout
    if timeout is None or timeout <= 0:
        return None
    return timeout / 2 + SILENCE_MARGIN


def hears_upstream(node: NodeState) -> bool:
    """``node``'s WAL receiver streams and heard its upstream recently."""
    if not node.receiver_streaming:
        return False
    limit = silence_limit(node)
    if limit is None or node.receiver_silence is None:
        return True  # cannot tell: assume it does (the safe side for promotion)
    return node.receiver_silence <= limit


def hang_detection_seconds(snap: Snapshot) -> float | None:
    """The longest receiver silence that must pass before a hung primary is proven gone.

    The slowest standby decides (the guard waits for every one of them);
    ``None`` when some standby's silence can never prove it (its
    ``wal_receiver_timeout`` is 0) or no standby is known.
    """
    limits = []
    for node in snap.nodes:
        if node.role is not Role.STANDBY or not node.up:
            continue
        limit = silence_limit(node)
        if limit is None:
            return None
        limits.append(limit)
    return max(limits) if limits else None


def hang_failover_seconds(snap: Snapshot, config: FailoverConfig) -> float | None:
    """The longest a hung or black-holed primary can take to be failed over (``auto``).

    The later of two clocks: the manager's own detection (a probe timeout,
    then ``unhealthy_threshold`` fast probes) and the standbys' proof of
    silence (:func:`hang_detection_seconds`, counted from the primary's last
    message, so often less). ``None``: never, with these settings.
    """
    silence = hang_detection_seconds(snap)
    if silence is None:
        return None
    own = config.health_check_timeout + config.unhealthy_threshold * config.fast_interval
    return round(max(silence, own), 3)


def recently_failed(node: NodeState, now: float, config: FailoverConfig) -> bool:
    """Anti-flap: ``node`` itself failed less than ``failover_cooldown`` ago."""
    return node.failed_at is not None and now - node.failed_at < config.failover_cooldown


def rank(node: NodeState) -> tuple[int, int, str]:
    """Sort key: most WAL first, then lower priority, then name."""
    return (-(node.position or 0), node.priority, node.name)


def _eligible(node: NodeState, max_timeline: int) -> bool:
    """A healthy standby on the newest timeline: never an orphan or a diverged node,
    whose WAL position, on another history, says nothing about what it holds."""
    return (
        node.up
        and node.healthy
        and node.role is Role.STANDBY
        and node.position is not None
        and (node.timeline or 0) >= max_timeline
    )


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
    eligible = sorted((n for n in snap.nodes if _eligible(n, snap.max_timeline)), key=rank)
    candidates = [n for n in eligible if not n.nofailover]
    if target is not None:
        names = {n.name for n in snap.nodes}
        if target not in names:
            return Refusal("target_not_eligible", f"unknown node {target!r}")
        matching = [n for n in eligible if n.name == target]
        if not matching:
            node = snap.node(target)
            why = "is down" if not node.up else f"is {node.role.value}, not a healthy standby"
            return Refusal("target_not_eligible", f"{target} {why}")
        chosen = matching[0]
        if chosen.nofailover:
            refusal = refuse("nofailover", f"{target} is tagged nofailover")
            if refusal:
                return refusal
            candidates = [chosen, *candidates]
    if not candidates:
        tagged = sorted(n.name for n in eligible if n.nofailover)
        return Refusal(
            "no_candidate",
            "no healthy standby to promote"
            + (f" ({', '.join(tagged)} tagged nofailover)" if tagged else ""),
        )
    best = sorted(candidates, key=rank)[0]
    if target is None:
        # Anti-flap: a node that itself just failed is passed over for a
        # steady one holding as much WAL (never for one that lacks WAL).
        steady = [
            n
            for n in candidates
            if not recently_failed(n, now, config) and (n.position or 0) >= (best.position or 0)
        ]
        chosen = steady[0] if steady else best
    refusal = _lost_primary_heard(snap, config, refuse) or _quorum_incomplete(snap, refuse)
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
    if target is not None and recently_failed(chosen, now, config):
        refusal = refuse(
            "cooldown",
            f"{chosen.name} itself failed {now - (chosen.failed_at or now):.1f}s ago "
            f"(failover_cooldown={config.failover_cooldown:g}s)",
        )
        if refusal:
            return refusal
    why = "asked for" if target else "most advanced healthy standby"
    if target is None and recently_failed(chosen, now, config):
        why += (
            f" (it failed {now - (chosen.failed_at or now):.0f}s ago, but no steady standby "
            "holds as much WAL)"
        )
    return Candidate(chosen.name, max(0, lag), f"{chosen.name}: {why}, {max(0, lag)} bytes behind")


def _lost_primary_heard(
    snap: Snapshot, config: FailoverConfig, refuse: Callable[[str, str], Refusal | None]
) -> Refusal | None:
    """Every standby that could still hear the lost primary must say it does not.

    What a standby hears, unless it is another standby of the cluster that
    answers (a cascade), is a primary somewhere: the lost one, or one this
    manager never reached (it started while cut off from it). A standby the
    manager cannot ask is no proof either way: if it went down no earlier
    than the primary began failing it may be the one still streaming from
    it, so ``witness_unreachable`` refuses (a double failure needs an
    operator's ``force``). So does a standby whose WAL receiver the probe
    user cannot see (``receiver_unknown``).
    """
    lost = snap.last_primary
    by_name = {n.name: n for n in snap.nodes}
    lost_node = by_name.get(lost or "")
    lost_since = lost_node.down_since if lost_node is not None else None
    slack = config.health_check_timeout + 2 * config.health_check_interval
    for node in snap.nodes:
        if node.name == lost or node.role is not Role.STANDBY:
            continue
        if not node.up:
            if (
                lost_since is None
                or node.down_since is None
                or (node.down_since >= lost_since - slack)
            ):
                refusal = refuse(
                    "witness_unreachable",
                    f"{node.name} cannot be asked whether it still hears "
                    f"{lost or 'the primary'} ({node.error or 'no answer'})",
                )
                if refusal:
                    return refusal
            continue
        if not node.receiver_visible:
            refusal = refuse(
                "receiver_unknown",
                f"cannot see {node.name}'s WAL receiver: grant pg_monitor to the probe user",
            )
            if refusal:
                return refusal
            continue
        if not hears_upstream(node):
            continue
        relay = by_name.get(node.upstream or "")
        if relay is not None and relay.up and relay.role is Role.STANDBY:
            continue
        silence = f" {node.receiver_silence:.1f}s ago" if node.receiver_silence is not None else ""
        limit = silence_limit(node)
        proof = f" (proof of loss after {limit:.1f}s of silence)" if limit else ""
        refusal = refuse(
            "receiver_streaming",
            f"{node.name} heard from {node.upstream or 'the primary'}{silence}{proof}: "
            "the primary is alive and this manager may be partitioned from it",
        )
        if refusal:
            return refusal
    return None


def _quorum_incomplete(
    snap: Snapshot, refuse: Callable[[str, str], Refusal | None]
) -> Refusal | None:
    """With quorum sync, enough listed standbys must answer to hold every acknowledged commit.

    Under ``ANY k (n names)`` a COMMIT was acknowledged once k of them had
    it, so only n - k + 1 of them together are sure to hold every one; the
    most advanced of those is promoted. With fewer reachable, a missing one
    may hold commits the others lack (``FIRST k`` is treated the same way).
    """
    lost = snap.last_primary
    if lost is None:
        return None
    spec = parse_sync(snap.node(lost).sync_standby_names)
    if spec is None or spec.star:
        return None
    listed = {name.casefold() for name in spec.names}
    reachable = [
        n.name
        for n in snap.nodes
        if n.name != lost
        and n.up
        and n.role is Role.STANDBY
        and (n.app_name or "").casefold() in listed
    ]
    need = len(listed) - spec.count + 1
    if len(reachable) >= need:
        return None
    return refuse(
        "quorum_incomplete",
        f"{lost} acknowledged commits once {spec.count} of {len(listed)} standbys "
        f"({', '.join(spec.names)}) had them; only {len(reachable)} "
        f"({', '.join(reachable) or 'none'}) answer, {need} are needed to be sure none is lost",
    )
