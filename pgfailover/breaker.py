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
  to pick the node); only that trial's result counts, ``breaker_successes``
  successes in a row close the breaker, one failure opens it again with the
  longer cooldown.

A breaker moves reads elsewhere; it never makes a read fail that would
otherwise have been tried: when every node a read could go to is held out,
it goes to them anyway, in the usual order. Writes are never held out: the
primary is the only place a write can go, and losing it is the probes' and
the failover's business. A node that turns unhealthy (its probes fail past
the threshold) is not the breaker's business either: its breaker is reset,
and the health thresholds decide when it is back. A pool that merely has
every connection checked out (the application's own load) is not a failure
of the node. And evidence goes stale: a breaker that saw no request for
``breaker_max_cooldown`` after its trial fell due (an idle application, a
node kept from reads for lag) closes again.

The transitions are pure functions of a frozen :class:`Breaker` (tested as a
table); :class:`Breakers` keeps one per node for the executor.
"""

from __future__ import annotations

import dataclasses
import itertools
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
    "released",
    "routable",
    "stale",
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
    ``retry_at``: when an open breaker lets a trial through; ``trial`` and
    ``trial_since``: the token of the half-open trial in flight (0: none)
    and when it was let through; ``changed_at``: the last transition or
    trial.
    """

    phase: BreakerPhase = BreakerPhase.CLOSED
    failures: int = 0
    successes: int = 0
    opens: int = 0
    opened_total: int = 0
    retry_at: float | None = None
    trial: int = 0
    trial_since: float | None = None
    last_error: str | None = None
    changed_at: float | None = None

    @property
    def clean(self) -> bool:
        """Closed with no failure counted: nothing to track."""
        return self.phase is BreakerPhase.CLOSED and self.failures == 0

    def shown(self, now: float) -> BreakerPhase:
        """The phase as reported: an open breaker whose trial is due is half-open."""
        if self.phase is BreakerPhase.OPEN and self.retry_at is not None and now >= self.retry_at:
            return BreakerPhase.HALF_OPEN
        return self.phase

    def as_dict(self, now: float) -> dict[str, Any]:
        """For the status report."""
        retry = None
        if self.phase is BreakerPhase.OPEN and self.retry_at is not None:
            retry = round(max(0.0, self.retry_at - now), 3)
        return {
            "state": self.shown(now).value,
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


def succeeded(b: Breaker, policy: BreakerPolicy, now: float, token: int = 0) -> Breaker:
    """A request on the node succeeded; ``token``: the trial it was, if one.

    While half-open only the trial's own result counts: a request that
    began before the breaker opened proves nothing about the node now.
    """
    if b.phase is BreakerPhase.CLOSED:
        return b if b.failures == 0 else dataclasses.replace(b, failures=0)
    if b.phase is BreakerPhase.OPEN or token == 0 or token != b.trial:
        return b
    successes = b.successes + 1
    if successes >= policy.successes:
        return Breaker(opened_total=b.opened_total, last_error=b.last_error, changed_at=now)
    return dataclasses.replace(b, successes=successes, trial=0, trial_since=None, changed_at=now)


def released(b: Breaker, token: int) -> Breaker:
    """The trial ``token`` ended without saying anything of the node: let another try."""
    if token == 0 or b.phase is not BreakerPhase.HALF_OPEN or b.trial != token:
        return b
    return dataclasses.replace(b, trial=0, trial_since=None)


def routable(b: Breaker, policy: BreakerPolicy, now: float) -> bool:
    """May a request be routed to the node now (without claiming the trial)?"""
    if b.phase is BreakerPhase.CLOSED:
        return True
    if b.phase is BreakerPhase.OPEN:
        return b.retry_at is None or now >= b.retry_at
    return b.trial_since is None or now - b.trial_since >= policy.trial_timeout


def admit(b: Breaker, policy: BreakerPolicy, now: float, token: int) -> tuple[bool, Breaker]:
    """Let one request through; when the breaker is not closed it becomes trial ``token``."""
    if b.phase is BreakerPhase.CLOSED:
        return True, b
    if not routable(b, policy, now):
        return False, b
    return True, dataclasses.replace(
        b,
        phase=BreakerPhase.HALF_OPEN,
        successes=b.successes if b.phase is BreakerPhase.HALF_OPEN else 0,
        trial=token,
        trial_since=now,
        changed_at=now,
    )


def stale(b: Breaker, policy: BreakerPolicy, now: float) -> bool:
    """No request came for ``max_cooldown`` after the trial fell due: the evidence is old."""
    if b.phase is BreakerPhase.CLOSED:
        return False
    if b.phase is BreakerPhase.OPEN:
        due = b.retry_at if b.retry_at is not None else now
    else:
        due = b.changed_at if b.changed_at is not None else now
        if b.trial:  # a trial in flight: stale once it has timed out too
            due += policy.trial_timeout
    return now >= due + policy.max_cooldown


def _healthy(snap: Snapshot, name: str) -> bool:
    """The node's probes pass, thresholds counted (a single missed probe does not count)."""
    try:
        return snap.node(name).healthy
    except KeyError:
        return False


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
        self._tokens = itertools.count(1)  # trial tokens; next() is atomic under the GIL
        self._dirty: frozenset[str] = frozenset()  # not clean; replaced under self._lock
        self._tripped: frozenset[str] = frozenset()  # not closed; replaced under self._lock

    @property
    def tripped(self) -> frozenset[str]:
        """Nodes whose breaker is open or half-open."""
        return self._tripped

    def clean(self, node: str) -> bool:
        """The breaker of ``node`` is closed with no failure counted (no lock taken)."""
        return node not in self._dirty

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

    def failure(self, node: str, error: str, *, healthy: bool, now: float) -> None:
        """A read on ``node`` failed with a connection error; ``healthy``: its probes pass."""
        if self.policy.failures == 0 or not healthy:
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

    def success(self, node: str, now: float, token: int = 0) -> None:
        """A read on ``node`` succeeded (``token``: the trial it was, from :meth:`admit`)."""
        if node not in self._dirty:
            return
        with self._lock:
            old = self._set(node, succeeded(self._states[node], self.policy, now, token))
            closed = self._states[node].phase is BreakerPhase.CLOSED
        if closed and old.phase is not BreakerPhase.CLOSED:
            logger.info("cluster %s: circuit breaker of node %s closed", self._cluster, node)

    def admit(self, node: str, now: float) -> tuple[bool, int]:
        """May this request go to ``node``, and as which trial (0: not a trial)?

        Pass the token to :meth:`success` and :meth:`release`.
        """
        if node not in self._tripped:
            return True, 0
        token = next(self._tokens)
        with self._lock:
            allowed, new = admit(self._states[node], self.policy, now, token)
            self._set(node, new)
        return allowed, token if allowed else 0

    def release(self, node: str, token: int) -> None:
        """The request ``token`` ended saying nothing of the node (not a connection error,
        not an answer): another may be the trial."""
        if token == 0:
            return
        with self._lock:
            self._set(node, released(self._states[node], token))

    def arrange(self, names: Sequence[str], now: float) -> list[str]:
        """``names`` without nodes held out, nodes due a trial first; all of them, in
        order, when every one is held out (a breaker never leaves a read nowhere to go)."""
        tripped = self._tripped
        if not tripped or tripped.isdisjoint(names):
            return list(names)
        states = self._states
        trials = [n for n in names if n in tripped and routable(states[n], self.policy, now)]
        kept = trials + [n for n in names if n not in tripped]
        return kept or list(names)

    def sync(self, snap: Snapshot, now: float) -> None:
        """After each probe round: reset the breaker of a node that turned unhealthy (the
        health thresholds take over) and of one whose evidence went stale."""
        dirty = self._dirty
        if not dirty:
            return
        with self._lock:
            for name in dirty:
                b = self._states[name]
                if not _healthy(snap, name) or stale(b, self.policy, now):
                    self._set(name, Breaker(opened_total=b.opened_total))

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
