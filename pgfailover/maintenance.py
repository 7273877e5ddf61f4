"""Maintenance mode: automatic promotion (and upkeep) off until resumed.

Operators pause a cluster for work that takes the primary down on purpose
(a restart they will do themselves, a network change). Detection, routing,
status, metrics and alerts go on; a manual trigger or switchover still
promotes (the operator asked for it). Each pause and resume is recorded in
the history, and shows in status and as ``pgfailover_maintenance_paused``.

With a history file, a pause outlives the process that holds it: an
arbiter restarted during the work (a crash, a deploy, systemd's
``Restart=``) reads its last pause or resume back and stays paused,
rather than promote in the middle of work an operator announced. Without
one, a pause lasts for the life of the process.

With several arbiters (``pgfailover serve --etcd``) the pause is the
cluster's, not one process's: it is written to etcd
(``<prefix>/<cluster>/maintenance``, attached to no lease) before it takes
effect, every arbiter adopts it within a fraction of a second
(:meth:`Maintenance.adopt`, from the lease thread), and the lease holder
reads it again in the same etcd read that confirms its lease right before
an automatic ``pg_promote``. An operator who paused through one arbiter is
not surprised by another that takes the lease meanwhile (a deploy that
restarts the arbiters one by one). A resume through any arbiter writes
the key as resumed (not deleted): an arbiter that was down meanwhile and
reads its old pause back from its history file learns of the resume. Only
while the key has never been written (a pause taken before the arbiters
shared one) is such a pause written to etcd rather than dropped.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pgfailover.events import EventLog, FailoverEvent
from pgfailover.report import iso

__all__ = ["Maintenance", "SharedPause", "SharedPauses"]

logger = logging.getLogger(__name__)

PAUSED = "paused"
"""How a pause's event reason begins (``paused: <why>``); a resume's is ``resumed``."""


@dataclass(frozen=True)
class SharedPause:
    """The cluster's pause as etcd holds it: paused or resumed, since when, why, by
    which arbiter."""

    since: float
    reason: str
    by: str
    paused: bool = True

    def encode(self) -> str:
        """The key's value (JSON)."""
        return json.dumps(
            {"paused": self.paused, "since": self.since, "reason": self.reason, "by": self.by}
        )

    @classmethod
    def decode(cls, value: str, written: float) -> SharedPause:
        """What a key's value says; one that cannot be read (written by hand) is a
        pause, since ``written`` (the safe side: nothing promotes)."""
        try:
            data = json.loads(value)
            return cls(
                float(data["since"]),
                str(data["reason"])[:200],
                str(data["by"])[:200],
                data.get("paused", True) is not False,
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return cls(written, f"unreadable value {value[:60]!r}", "?")

    def describe(self) -> str:
        """One line for refusals and logs."""
        what = "paused" if self.paused else "resumed"
        return f"{what} by {self.by} at {iso(self.since)}: {self.reason}"

    def as_dict(self) -> dict[str, Any]:
        """For status (under ``lease``)."""
        return {
            "paused": self.paused,
            "since": iso(self.since),
            "reason": self.reason,
            "by": self.by,
        }


class SharedPauses(Protocol):
    """Where a pause is shared with the other arbiters (the lease's etcd)."""

    def share_pause(self, pause: SharedPause) -> int:
        """Write ``pause`` for every arbiter; the etcd revision of the write.

        Raises:
            PgFailoverError: it could not be written.
        """
        ...

    def share_resume(self, resume: SharedPause) -> int:
        """Write ``resume`` (``paused`` false) for every arbiter; the etcd revision.

        Raises:
            PgFailoverError: it could not be written.
        """
        ...


class Maintenance:
    """Whether automatic promotion is paused, since when.

    Locks: ``_sharing`` serialises the changes of a shared pause (an etcd
    write and the local change after it) with :meth:`adopt`, so that a read
    made before a write is never applied after it (reads older than the
    last write's revision are dropped); :meth:`adopt` only tries it, so the
    lease thread never waits behind an operator's etcd write. ``_lock``
    guards the pause (its time and reason, the note flag, the revision
    floor); a leaf, taken inside ``_sharing``. Events and logs come after
    both.

    Thread safety: pause and resume from any thread (the last one wins, each
    is recorded); :meth:`adopt` from the lease thread.
    """

    def __init__(
        self,
        events: EventLog,
        cluster: str,
        wake: Callable[[], None],
        *,
        shared: SharedPauses | None = None,
        identity: str = "",
    ) -> None:
        self._events = events
        self._cluster = cluster
        self._wake = wake
        self._shared = shared
        self._identity = identity
        self._sharing = threading.Lock()
        self._lock = threading.Lock()
        self._since: float | None = None  # guarded by self._lock
        self._reason = ""  # guarded by self._lock
        self._noted = False  # guarded by self._lock: one log line per lost primary while paused
        self._floor = 0  # guarded by self._lock: the revision of this process's last write
        last = events.latest("maintenance")  # from the history file, if there is one
        if last is not None and last.reason.startswith(PAUSED):
            self._since = last.started
            self._reason = last.reason[len(PAUSED) :].lstrip(": ") or "maintenance"
            logger.warning(
                "cluster %s: maintenance mode still on (%s, at %s in the history file): "
                "automatic promotion stays paused until resumed",
                cluster,
                last.reason,
                iso(last.started),
            )

    def carry(self, since: float | None) -> None:
        """Stay paused since ``since``, as the process this one was forked from was (no
        event: the pause was recorded where it began); ``None`` changes nothing."""
        with self._lock:
            if since is not None and self._since is None:
                self._since = since

    @property
    def paused_since(self) -> float | None:
        """When maintenance mode began (``None``: not paused)."""
        return self._since

    @property
    def reason(self) -> str | None:
        """Why it is paused (``None``: not paused)."""
        with self._lock:
            return self._reason if self._since is not None else None

    @property
    def shared(self) -> bool:
        """Whether pauses are the cluster's (in etcd) rather than this process's."""
        return self._shared is not None

    def pause(self, reason: str = "maintenance") -> bool:
        """Pause automatic promotion; False if already paused.

        Raises:
            PgFailoverError: the pause could not be shared (etcd): nothing changed.
        """
        with self._sharing:
            if self._since is not None:
                return False
            now = time.time()
            written = 0
            if self._shared is not None:
                written = self._shared.share_pause(SharedPause(now, reason, self._identity))
            with self._lock:
                self._since, self._reason, self._noted = now, reason, False
                self._floor = max(self._floor, written)
        logger.warning("cluster %s: maintenance mode: automatic promotion paused", self._cluster)
        self._record(f"{PAUSED}: {reason}", now)
        return True

    def resume(self) -> bool:
        """Leave maintenance mode (the next round may promote); False if not paused.

        With a shared pause the key is written as resumed even when this
        process is not paused (another arbiter may be, not heard of yet).

        Raises:
            PgFailoverError: the resume could not be shared: nothing changed.
        """
        with self._sharing:
            written = 0
            if self._shared is not None:
                resume = SharedPause(time.time(), "resumed", self._identity, paused=False)
                written = self._shared.share_resume(resume)
            with self._lock:
                since, self._since = self._since, None
                self._floor = max(self._floor, written)
        if since is None:
            return False
        self._resumed(since, "resumed")
        return True

    def adopt(self, state: SharedPause | None, revision: int) -> None:
        """The cluster's pause as etcd held it at ``revision`` (``None``: the key was
        never written), from the lease thread.

        A pause taken through another arbiter is taken here too, and a resume
        through another ends the pause here; a pause this process read back
        from its history file while the key was never written is shared, not
        dropped. A read older than this process's last write, or one that
        comes while an operator's pause or resume is being written, is
        dropped (the lease looks again within a fraction of a second).
        """
        if not self._sharing.acquire(blocking=False):
            return
        try:
            with self._lock:
                if revision < self._floor:
                    return
                since = self._since
                if state is not None and state.paused and since is None:
                    self._since, self._reason, self._noted = state.since, state.reason, False
                elif state is not None and not state.paused and since is not None:
                    self._since = None
                carried = (
                    SharedPause(since, self._reason, self._identity)
                    if state is None and since is not None
                    else None
                )
            if carried is not None:
                self._carry(carried)
        finally:
            self._sharing.release()
        if state is not None and state.paused and since is None:
            logger.warning(
                "cluster %s: maintenance mode (shared in etcd, %s): automatic promotion paused",
                self._cluster,
                state.describe(),
            )
            self._record(f"{PAUSED}: {state.reason} (by {state.by}, shared in etcd)", time.time())
        elif state is not None and not state.paused and since is not None:
            self._resumed(since, f"resumed (by {state.by}, shared in etcd)")

    def _carry(self, pause: SharedPause) -> None:
        """Share a pause read back from the history file (it stays paused here if not);
        under ``_sharing``."""
        assert self._shared is not None  # noqa: S101 - only a shared pause is carried
        try:
            written = self._shared.share_pause(pause)
        except Exception as exc:  # noqa: BLE001 - stays paused here; the next look retries
            logger.error("cluster %s: the pause could not be shared: %s", self._cluster, exc)
            return
        with self._lock:
            self._floor = max(self._floor, written)
        logger.warning(
            "cluster %s: maintenance mode read back from the history file, now shared in etcd",
            self._cluster,
        )

    def holds(self, node: str) -> bool:
        """True when paused: ``node`` would be promoted, and is not (logged once per pause)."""
        with self._lock:
            if self._since is None:
                return False
            first, self._noted = not self._noted, True
        if first:
            logger.error(
                "cluster %s: %s would be promoted, but maintenance mode is on: "
                "resume (or trigger) to fail over",
                self._cluster,
                node,
            )
        return True

    def _resumed(self, since: float, reason: str) -> None:
        now = time.time()
        logger.warning(
            "cluster %s: maintenance mode ended after %.0fs", self._cluster, now - since
        )
        self._record(reason, now)
        self._wake()

    def _record(self, reason: str, now: float) -> None:
        self._events.record(
            FailoverEvent(
                "maintenance", None, None, reason, now, completed=now, outcome="completed"
            )
        )
