"""The data the state machine works on: states, roles, snapshots, decisions.

Everything here is immutable, so a snapshot can be handed to any number of
reader threads without a lock. :mod:`pgfailover.transition` computes them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

__all__ = [
    "ClusterState",
    "Decision",
    "FailoverStarted",
    "Fence",
    "NodeLost",
    "NodeRecovered",
    "NodeState",
    "Promote",
    "Role",
    "Snapshot",
    "SplitBrainDetected",
    "StateChanged",
    "SwitchPrimary",
    "evolve",
]


class ClusterState(str, Enum):
    """The state of the whole cluster, as the manager sees it."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    FAILOVER_IN_PROGRESS = "failover_in_progress"
    FAILOVER_COMPLETE = "failover_complete"
    RECOVERY_IN_PROGRESS = "recovery_in_progress"
    UNKNOWN = "unknown"
    SPLIT_BRAIN = "split_brain"


class Role(str, Enum):
    """What a node is: what the server said, or its last known role if it is down."""

    PRIMARY = "primary"
    STANDBY = "standby"
    STALE = "stale"  # out of recovery on an older timeline: needs pg_rewind
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class NodeState:
    """One node's health as of the last probe round (immutable)."""

    name: str
    address: str
    priority: int
    nofailover: bool = False  # tags from the Node (see pgfailover.config.Node)
    noloadbalance: bool = False
    role: Role = Role.UNKNOWN
    up: bool = False  # the last probe succeeded
    healthy: bool = False  # up, counting the thresholds
    checked: bool = False  # probed at least once
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    last_check: float | None = None
    response_time: float | None = None
    response_time_avg: float | None = None  # smoothed (EWMA) over the probes that answered
    down_since: float | None = None
    error: str | None = None
    timeline: int | None = None
    wal_lsn: int | None = None
    receive_lsn: int | None = None
    replay_lsn: int | None = None
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    receiver_visible: bool = False
    receiver_streaming: bool | None = None
    upstream: str | None = None
    read_only: bool | None = None
    sync_standby_names: str | None = None
    promotion_eligible: bool = False
    # The WAL receiver: seconds since it last heard its upstream (its
    # last_msg_receipt_time), the upstream's WAL end as of that message, and
    # the node's wal_receiver_timeout (seconds; 0 = off).
    receiver_silence: float | None = None
    upstream_end_lsn: int | None = None
    receiver_timeout: float | None = None
    app_name: str | None = None  # the name it streams under (pg_stat_replication)
    streaming_names: tuple[str, ...] | None = None  # who streams from it (a primary, a relay)
    sync_record: str | None = None  # pgfailover.sync: the sync names a manager wrote (syncrep)
    system_identifier: str | None = None
    follows: bool | None = None  # a standby that streams from the current primary
    not_following_since: float | None = None
    failed_at: float | None = None  # last time it became unhealthy or was lost as primary
    read_block: str | None = None  # why it serves no reads (None: it may)

    @property
    def position(self) -> int | None:
        """The most WAL this node is known to hold."""
        values = [v for v in (self.wal_lsn, self.receive_lsn, self.replay_lsn) if v is not None]
        return max(values) if values else None

    @property
    def serves_reads(self) -> bool:
        """A healthy standby that may serve reads (``read_block`` says why not).

        The one predicate routing, status and both metrics endpoints use.
        """
        return self.role is Role.STANDBY and self.read_block is None and self.up and self.healthy

    @property
    def healthy_standby(self) -> bool:
        """A standby that answered its last probe and counts as healthy (thresholds met).

        Whether it may serve reads is :attr:`serves_reads` (lag, timeline, streaming).
        """
        return self.role is Role.STANDBY and self.up and self.healthy

    @property
    def recovering(self) -> bool:
        """Answers again after being down, but not yet healthy."""
        return self.checked and self.up and not self.healthy


@dataclass(frozen=True)
class FailoverClock:
    """A cluster's failover bookkeeping, as of one round (immutable).

    ``started_at`` and ``reason``: the primary was lost then, why (``None``
    when no failover is in progress). ``count`` failovers have completed,
    the last one at ``completed_at`` (writes switched to a new primary).
    """

    started_at: float | None = None
    reason: str | None = None
    count: int = 0
    completed_at: float | None = None

    @property
    def in_progress(self) -> bool:
        """The primary was lost and no new one took over yet."""
        return self.started_at is not None


@dataclass(frozen=True)
class Snapshot:
    """The cluster as of one probe round. Immutable: readers never lock.

    ``primary`` is where writes go now (``None``: nowhere). ``last_primary``
    and ``last_primary_lsn`` remember the primary that was lost, for the
    promotion guards. ``max_timeline`` is the newest timeline a primary was
    seen on: a node out of recovery below it is stale. ``failover`` is the
    failover bookkeeping (:class:`FailoverClock`).
    """

    nodes: tuple[NodeState, ...]
    state: ClusterState = ClusterState.UNKNOWN
    primary: str | None = None
    last_primary: str | None = None
    last_primary_lsn: int | None = None
    max_timeline: int = 0
    split_brain: tuple[str, ...] = ()
    failover: FailoverClock = FailoverClock()
    promotion_blocked: str | None = None
    rounds: int = 0
    changed_at: float = 0.0
    system_identifier: str | None = None
    fork_timeline: int = 0  # the newest timeline switch seen, and where it forked
    fork_lsn: int | None = None

    def node(self, name: str) -> NodeState:
        """One node by name (``KeyError`` if unknown)."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    @property
    def standbys(self) -> tuple[NodeState, ...]:
        """Every node but the primary."""
        return tuple(n for n in self.nodes if n.name != self.primary)

    @property
    def writable_primary(self) -> NodeState | None:
        """The primary when its last probe answered (it takes writes), else ``None``.

        The one predicate status, ``check_primary_health`` and both metrics
        endpoints use for "the primary is healthy".
        """
        if self.primary is None:
            return None
        node = self.node(self.primary)
        return node if node.up else None

    @property
    def in_doubt(self) -> bool:
        """The primary is missing or failed its last probe: probe fast."""
        if self.primary is None:
            return True
        return not self.node(self.primary).up


@dataclass(frozen=True)
class SwitchPrimary:
    """Writes now go to ``node`` (an orchestrator's promotion, or ours)."""

    node: str
    previous: str | None
    timeline: int | None
    reason: str
    lost_lsn: int | None = None  # the furthest WAL the previous primary was known to hold


@dataclass(frozen=True)
class Promote:
    """Promote ``node`` with ``pg_promote()`` (``auto`` mode)."""

    node: str
    previous: str | None
    reason: str
    lag_bytes: int | None


@dataclass(frozen=True)
class Fence:
    """Soft-fence a stale old primary (``default_transaction_read_only``)."""

    node: str
    reason: str


@dataclass(frozen=True)
class SplitBrainDetected:
    """Two writable nodes on one timeline: writes are refused."""

    nodes: tuple[str, ...]


@dataclass(frozen=True)
class FailoverStarted:
    """The primary is lost: a failover has begun (detection time)."""

    previous: str | None
    reason: str


@dataclass(frozen=True)
class StateChanged:
    """The cluster state changed."""

    old: ClusterState
    new: ClusterState


@dataclass(frozen=True)
class NodeLost:
    """A node crossed the unhealthy threshold."""

    node: str
    error: str | None


@dataclass(frozen=True)
class NodeRecovered:
    """A node that was unhealthy passed the healthy threshold again."""

    node: str


Decision = (
    SwitchPrimary
    | Promote
    | Fence
    | SplitBrainDetected
    | FailoverStarted
    | StateChanged
    | NodeLost
    | NodeRecovered
)


_Frozen = TypeVar("_Frozen", NodeState, FailoverClock, Snapshot)
_FIELDS: dict[type, frozenset[str]] = {
    cls: frozenset(f.name for f in dataclasses.fields(cls))
    for cls in (NodeState, FailoverClock, Snapshot)
}


def evolve(obj: _Frozen, **changes: Any) -> _Frozen:
    """A copy of ``obj`` with ``changes``: ``dataclasses.replace``, at a twentieth of its cost.

    ``replace`` goes through ``__init__``, which sets each of a node's 40
    fields with ``object.__setattr__``: 22 µs a call on this 2-CPU machine.
    A round (a probe round, or a source's snapshot) makes about a dozen, so
    a follower spent 0.3 ms of CPU per snapshot in them alone, and 200
    followers paid that at once at a failover. These classes have no
    ``__post_init__`` and no slots: copying the instance's dictionary gives
    the same object. What mypy checks of ``replace``'s arguments it cannot
    check here (only the names are checked, at run time); the state
    machine's tables cover what it builds.

    Raises:
        TypeError: a name that is not a field of ``obj``'s class (what
            ``replace`` would raise too).
    """
    cls = type(obj)
    unknown = changes.keys() - _FIELDS[cls]
    if unknown:
        raise TypeError(f"{cls.__name__} has no field {', '.join(sorted(unknown))}")
    new = object.__new__(cls)
    new.__dict__.update(obj.__dict__)
    new.__dict__.update(changes)
    return new
