"""What a fork does to a manager: renewed in the child, or refused there saying why.

The part of :class:`~pgfailover.manager_base.ManagerBase` that
:mod:`pgfailover.forking`'s hook calls in a process forked while the
manager was open (or opening): the parent's parts are buried untouched,
new ones are made (no thread, no connection yet) and opened on the
child's first use of the manager, with its settings, callbacks, listeners,
read strategy and maintenance pause. A manager that cannot be carried over
a fork (an asyncio one: its pools belong to the parent's event loop; an
arbiter holding a lease in etcd) is closed instead, and each use raises
``ManagerClosed`` saying why (logged once, on first use: a worker that
never uses it stays quiet).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Any

from pgfailover import forking
from pgfailover.errors import ManagerClosed

if TYPE_CHECKING:
    from pgfailover.promote import PromotionGate
    from pgfailover.supervisor import Supervisor

__all__ = ["ForkRenewal"]

logger = logging.getLogger(__name__)


class ForkRenewal:
    """The fork state of a manager, and what the fork hook does with it.

    Locks: ``_fork_lock`` (reentrant) is taken only in a process forked while
    the manager was open, by the uses that open it again there; opening runs
    under it, and nothing waits on it afterwards.
    """

    name: str
    _opened: bool
    _closed: bool
    _gate: PromotionGate | None
    _pools: Any
    _sup: Supervisor
    _executor: Any

    def _init_renewal(self) -> None:
        self._closed_why: str | None = None  # why use is refused, when not close()
        self._closed_why_logged = False
        self._forked = False  # opened in a parent process: open again on first use here
        self._close_asked = False  # the application called close()
        self._monitored = True  # whether the monitor thread runs (again after a fork)
        self._fork_lock = threading.RLock()

    def _build(self, gate: PromotionGate | None) -> None:
        raise NotImplementedError  # pragma: no cover - the manager makes its parts

    def _reopen_forked(self) -> None:
        raise NotImplementedError  # pragma: no cover - only the sync manager reopens

    def _fork_refusal(self) -> str | None:
        """Why this manager cannot open again after a fork (``None``: it can)."""
        if self._gate is not None:
            return "an arbiter holding a lease in etcd is not carried over a fork"
        return None

    def _after_fork(self, parent: int) -> None:
        """In the child, from the fork hook: new parts, opened on first use; or refused."""
        old = self._sup
        forking.bury((self._pools, old, self._executor))
        self._fork_lock = threading.RLock()
        self._opened = False
        refusal = self._fork_refusal()
        self._fresh_parts()
        if refusal is None:
            self._forked = True
            forking.watch(self)  # a grandchild forked before its first use renews it too
            return
        self._closed = True
        self._closed_why = (
            f"manager {self.name} was opened in process {parent} before it forked this one "
            f"({os.getpid()}): {refusal}; open a new manager after the fork"
        )

    def _fresh_parts(self) -> None:
        """New parts, not opened, paused as the last ones were."""
        old = self._sup
        self._build(None)
        self._sup.actions.maintenance.carry(old.actions.maintenance.paused_since)

    def _reopen_failed(self) -> None:
        """The child's first use could not open the manager (an error, or an interrupt:
        Celery's soft time limit): the next use tries again, on new parts, rather than
        find the manager closed for good. Called with ``_fork_lock`` held."""
        self._closed = self._opened = False
        self._fresh_parts()
        forking.watch(self)

    def _refused(self) -> ManagerClosed:
        """The error for a use of a closed manager (said once in the log, if a fork did it)."""
        why = self._closed_why
        if why is None:
            return ManagerClosed(f"manager {self.name} is closed")
        if not self._closed_why_logged:
            self._closed_why_logged = True
            logger.warning("%s", why)
        return ManagerClosed(why)
