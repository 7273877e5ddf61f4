"""Circuit breakers: a node whose queries keep failing while its probes pass is held out.

A probe runs on its own long-lived connection, so it can pass while every
query on the node fails: the node is out of connection slots
(``max_connections``), its pool is broken, its disk is full. Such a node is
made a suspect by each failing query and cleared again by the next probe
round, so without a breaker it comes back every second and fails again.

One breaker per node, for reads (a standby, and the primary when it serves
reads as the fallback):

- **closed**: requests go through; ``breaker_failures`` query connection
  failures in a row, while the node's probe says it is up, open it;
- **open**: routing skips the node for a cooldown, ``breaker_cooldown``
  doubled at each reopening up to ``breaker_max_cooldown``, less up to 20 %
  of jitter so that many processes do not come back in step;
- **half-open**: once the cooldown is over, one request at a time goes
  through (it is put first, so recovery does not wait for the read strategy
  to pick the node); ``breaker_successes`` successes in a row close the
  breaker, one failure opens it again with the longer cooldown.

Writes are never held out by a breaker: the primary is the only place a
write can go, so an open breaker would only turn a short spike into an
outage that lasts a cooldown; losing the primary is the probes' and the
failover's business. A node whose probe fails is not the breaker's
business either: its breaker is reset, and the health thresholds decide
when it is back.

The transitions are pure functions of a frozen :class:`Breaker` (tested as a
table); :class:`Breakers` keeps one per node for the executor.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

from pgfailover.config import FailoverConfig
from pgfailover.model import Snapshot

__all__ = [
    "Breaker",
    "BreakerPhase",
    "BreakerPolicy",
    "Breakers",
    "admit",
    "failed",
    "routable",
    "succeeded",
]

logger = logging.getLogger(__name__)

JITTER: Final = 0.2
"""A cooldown is shortened by up to this fraction, at random."""


class BreakerPhase(str, Enum):
    """Where a breaker is."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerPolicy:
    """The breaker settings (from :class:`~pgfailover.config.FailoverConfig`).

    ``failures == 0`` turns breakers off. ``trial_timeout``: a half-open
    trial that has not reported back after this long (a thread that died, a
    very long query) lets another request try.
    """

    failures: int = 5
    successes: int = 2
    cooldown: float = 5.0
    max_cooldown: float = 60.0
    trial_timeout: float = 30.0

    @classmethod
    def from_config(cls, cfg: FailoverConfig) -> BreakerPolicy:
        """The policy a manager with ``cfg`` uses."""
        return cls(
            failures=cfg.breaker_failures,
            successes=cfg.breaker_successes,
            cooldown=cfg.breaker_cooldown,
            max_cooldown=cfg.breaker_max_cooldown,
            trial_timeout=cfg.pool_timeout + cfg.failover_wait_timeout,
        )

    def cooldown_for(self, opens: int, draw: float) -> float:
        """The cooldown after the ``opens``-th opening in a row (``draw`` in [0, 1): jitter)."""
        base = min(self.max_cooldown, self.cooldown * 2.0 ** max(0, min(opens - 1, 60)))
        return base * (1.0 - JITTER * min(max(draw, 0.0), 1.0))


@dataclass(frozen=True)
class Breaker:
    """One node's breaker (immutable; the functions below return the next one).

    ``failures``: query connection failures in a row; ``successes``: trial
    successes in a row while half-open; ``opens``: openings since it was
    last closed (the backoff exponent); ``opened_total``: openings ever;
    ``retry_at``: when an open breaker lets a trial through; ``trial_since``:
    when the half-open trial in flight was let through.
    """

    phase: BreakerPhase = BreakerPhase.CLOSED
    failures: int = 0
    successes: int = 0
    opens: int = 0
    opened_total: int = 0
    retry_at: float | None = None
    trial_since: float | None = None
    last_error: str | None = None
    changed_at: float | None = None

    @property
    def clean(self) -> bool:
        """Closed with no failure counted: nothing to track."""
        return self.phase is BreakerPhase.CLOSED and self.failures == 0

    def as_dict(self, now: float) -> dict[str, Any]:
        """For the status report."""
        retry = None
        if self.phase is BreakerPhase.OPEN and self.retry_at is not None:
            retry = round(max(0.0, self.retry_at - now), 3)
        return {
            "state": self.phase.value,
            "failures": self.failures,
            "successes": self.successes,
            "opened_total": self.opened_total,
            "retry_in_seconds": retry,
            "last_error": self.last_error,
        }


def _open(
    b: Breaker, policy: BreakerPolicy, now: float, error: str | None, draw: float
) -> Breaker:
    opens = b.opens + 1
    return Breaker(
        phase=BreakerPhase.OPEN,
        failures=b.failures,
        opens=opens,
        opened_total=b.opened_total + 1,
        retry_at=now + policy.cooldown_for(opens, draw),
        last_error=error,
        changed_at=now,
    )


def failed(
    b: Breaker, policy: BreakerPolicy, now: float, error: str | None, draw: float
) -> Breaker:
    """A request on the node failed with a connection error (its probe passes)."""
    if policy.failures == 0:
        return b
    if b.phase is BreakerPhase.HALF_OPEN:
        return _open(dataclasses.replace(b, failures=b.failures + 1), policy, now, error, draw)
    if b.phase is BreakerPhase.OPEN:  # in flight before it opened: already counted out
        return dataclasses.replace(b, last_error=error)
    counted = dataclasses.replace(b, failures=b.failures + 1, last_error=error)
    if counted.failures >= policy.failures:
        return _open(counted, policy, now, error, draw)
    return counted


def succeeded(b: Breaker, policy: BreakerPolicy, now: float) -> Breaker:
    """A request on the node succeeded."""
    if b.phase is BreakerPhase.CLOSED:
        return b if b.failures == 0 else dataclasses.replace(b, failures=0)
    if b.phase is BreakerPhase.OPEN:  # in flight before it opened: proves nothing now
        return b
    successes = b.successes + 1
    if successes >= policy.successes:
        return Breaker(opened_total=b.opened_total, last_error=b.last_error, changed_at=now)
    return dataclasses.replace(b, successes=successes, trial_since=None)


def routable(b: Breaker, policy: BreakerPolicy, now: float) -> bool:
    """May a request be routed to the node now (without claiming the trial)?"""
    if b.phase is BreakerPhase.CLOSED:
        return True
    if b.phase is BreakerPhase.OPEN:
        return b.retry_at is None or now >= b.retry_at
    return b.trial_since is None or now - b.trial_since >= policy.trial_timeout


def admit(b: Breaker, policy: BreakerPolicy, now: float) -> tuple[bool, Breaker]:
    """Let one request through, claiming the trial when the breaker is not closed."""
    if b.phase is BreakerPhase.CLOSED:
        return True, b
    if not routable(b, policy, now):
        return False, b
    if b.phase is BreakerPhase.OPEN:
        return True, dataclasses.replace(
            b, phase=BreakerPhase.HALF_OPEN, successes=0, trial_since=now, changed_at=now
        )
    return True, dataclasses.replace(b, trial_since=now)


class Breakers:
    """One :class:`Breaker` per node, for the executor's read path.

    The happy path takes no lock: a success on a node with a clean breaker
    and the routing of a cluster with every breaker closed only read a
    frozen set.

    Locks: ``_lock`` guards the breakers and the two frozen sets (replaced,
    never mutated, under it); it is a leaf, and nothing is logged under it.

    Thread safety: every method may be called from any thread.
    """

    def __init__(
        self,
        nodes: Iterable[str],
        policy: BreakerPolicy,
        *,
        cluster: str = "default",
        rng: random.Random | None = None,
    ) -> None:
        self.policy = policy
        self._cluster = cluster
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not security
        self._lock = threading.Lock()
        self._states = {name: Breaker() for name in nodes}  # guarded by self._lock
        self._dirty: frozenset[str] = frozenset()  # not clean; replaced under self._lock
        self._tripped: frozenset[str] = frozenset()  # not closed; replaced under self._lock

    @property
    def tripped(self) -> frozenset[str]:
        """Nodes whose breaker is open or half-open."""
        return self._tripped

    def _set(self, node: str, new: Breaker) -> Breaker:
        """Store ``new`` and refresh the sets (caller holds ``_lock``); the old breaker."""
        old = self._states[node]
        self._states[node] = new
        if old.clean != new.clean:
            self._dirty = self._dirty - {node} if new.clean else self._dirty | {node}
        was, now = old.phase is not BreakerPhase.CLOSED, new.phase is not BreakerPhase.CLOSED
        if was != now:
            self._tripped = self._tripped | {node} if now else self._tripped - {node}
        return old

    def failure(self, node: str, error: str, *, up: bool, now: float) -> None:
        """A read on ``node`` failed with a connection error; ``up``: its last probe passed."""
        if self.policy.failures == 0 or not up:
            return
        with self._lock:
            old = self._set(
                node, failed(self._states[node], self.policy, now, error, self._rng.random())
            )
            new = self._states[node]
        if new.phase is BreakerPhase.OPEN and new.opened_total != old.opened_total:
            logger.warning(
                "cluster %s: circuit breaker of node %s opened after %d failed reads "
                "while its probe passes; no reads for %.1fs: %s",
                self._cluster,
                node,
                new.failures,
                (new.retry_at or now) - now,
                error,
            )

    def success(self, node: str, now: float) -> None:
        """A read on ``node`` succeeded."""
        if node not in self._dirty:
            return
        with self._lock:
            old = self._set(node, succeeded(self._states[node], self.policy, now))
            closed = self._states[node].phase is BreakerPhase.CLOSED
        if closed and old.phase is not BreakerPhase.CLOSED:
            logger.info("cluster %s: circuit breaker of node %s closed", self._cluster, node)

    def admit(self, node: str, now: float) -> bool:
        """May this request go to ``node``? Claims the half-open trial when it is free."""
        if node not in self._tripped:
            return True
        with self._lock:
            allowed, new = admit(self._states[node], self.policy, now)
            self._set(node, new)
            return allowed

    def arrange(self, names: Sequence[str], now: float) -> list[str]:
        """``names`` without nodes held out; nodes due a trial first."""
        tripped = self._tripped
        if not tripped or tripped.isdisjoint(names):
            return list(names)
        states = self._states
        trials = [n for n in names if n in tripped and routable(states[n], self.policy, now)]
        return trials + [n for n in names if n not in tripped]

    def sync(self, snap: Snapshot) -> None:
        """After a probe round: a node whose probe failed goes back to a clean breaker."""
        dirty = self._dirty
        if not dirty:
            return
        down = [n.name for n in snap.nodes if n.name in dirty and not n.up]
        if not down:
            return
        with self._lock:
            for name in down:
                self._set(name, Breaker(opened_total=self._states[name].opened_total))

    def describe(self, names: Iterable[str], now: float) -> str:
        """``circuit breaker open on node1 (retry in 3.2s)``: why reads have nowhere to go."""
        shown = []
        for name in names:
            retry = self._states[name].as_dict(now)["retry_in_seconds"]
            shown.append(f"{name} (retry in {retry:.1f}s)" if retry is not None else name)
        return "circuit breaker open on " + ", ".join(shown)

    def state(self, node: str) -> Breaker:
        """The breaker of ``node`` now."""
        return self._states[node]

    def states(self) -> dict[str, Breaker]:
        """Every node's breaker now."""
        with self._lock:
            return dict(self._states)

    def report(self, now: float) -> dict[str, dict[str, Any]]:
        """Every node's breaker for the status report (``now``: monotonic)."""
        return {name: b.as_dict(now) for name, b in self.states().items()}
