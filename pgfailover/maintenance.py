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
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from pgfailover.events import EventLog, FailoverEvent
from pgfailover.report import iso

__all__ = ["Maintenance"]

logger = logging.getLogger(__name__)

PAUSED = "paused"
"""How a pause's event reason begins (``paused: <why>``); a resume's is ``resumed``."""


class Maintenance:
    """Whether automatic promotion is paused, since when.

    Thread safety: the state is one float swapped whole; pause and resume
    from any thread (the last one wins, each is recorded).
    """

    def __init__(self, events: EventLog, cluster: str, wake: Callable[[], None]) -> None:
        self._events = events
        self._cluster = cluster
        self._wake = wake
        self._since: float | None = None
        self._noted = False  # one log line per lost primary while paused
        last = events.latest("maintenance")  # from the history file, if there is one
        if last is not None and last.reason.startswith(PAUSED):
            self._since = last.started
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
        if since is not None and self._since is None:
            self._since = since

    @property
    def paused_since(self) -> float | None:
        """When maintenance mode began (``None``: not paused)."""
        return self._since

    def pause(self, reason: str = "maintenance") -> bool:
        """Pause automatic promotion; False if already paused."""
        if self._since is not None:
            return False
        self._since = now = time.time()
        self._noted = False
        logger.warning("cluster %s: maintenance mode: automatic promotion paused", self._cluster)
        self._record(f"{PAUSED}: {reason}", now)
        return True

    def resume(self) -> bool:
        """Leave maintenance mode (the next round may promote); False if not paused."""
        since, self._since = self._since, None
        if since is None:
            return False
        now = time.time()
        logger.warning(
            "cluster %s: maintenance mode ended after %.0fs", self._cluster, now - since
        )
        self._record("resumed", now)
        self._wake()
        return True

    def holds(self, node: str) -> bool:
        """True when paused: ``node`` would be promoted, and is not (logged once per pause)."""
        if self._since is None:
            return False
        if not self._noted:
            self._noted = True
            logger.error(
                "cluster %s: %s would be promoted, but maintenance mode is on: "
                "resume (or trigger) to fail over",
                self._cluster,
                node,
            )
        return True

    def _record(self, reason: str, now: float) -> None:
        self._events.record(
            FailoverEvent(
                "maintenance", None, None, reason, now, completed=now, outcome="completed"
            )
        )
