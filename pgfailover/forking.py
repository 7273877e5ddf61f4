"""Managers in a process forked from one that had them open.

gunicorn ``--preload``, uWSGI without ``lazy-apps``, Celery's prefork pool
and multiprocessing's ``fork`` start method make their workers with
``os.fork()`` after the application's modules ran: a manager opened at
import (Flask's ``init_app``, a module-level ``FailoverManager``) is copied
into every worker, and the copy cannot be used as it is:

- its threads (the monitor, the pools' workers, a follower's stream) did
  not survive the fork, and a lock one of them held is held forever;
- its connections' sockets are shared with the parent and every sibling:
  two processes on one session interleave their messages and may read each
  other's results, and a copy that closes one (libpq's Terminate message)
  ends the parent's session.

So in the child, each manager open at the fork is given new parts (pools,
monitor, locks: nothing the parent's threads could hold), keeps its
settings, callbacks, listeners and read strategy, and opens again on first
use, with its own connections (:meth:`ManagerBase._after_fork`); the
engines of :class:`~pgfailover.contrib.sqlalchemy.FailoverEngines` get new
SQLAlchemy pools (``dispose(close=False)``, SQLAlchemy's advice). The
parent's parts are kept referenced here for the child's life and never
touched: no byte is written on the parent's sockets, none is closed (a
close would send Terminate), and no finaliser runs on them. Their file
descriptors (a few per node) stay open in the child until it exits; the
parent's sessions are its own, as before the fork.

``subprocess`` does not run these hooks (it forks and executes in C), so a
command started from an application costs nothing.

Locks: none. The hook runs in the child right after ``fork()``, while it
has one thread.
"""

from __future__ import annotations

import logging
import os
import weakref
from typing import Any, Protocol

__all__ = ["bury", "unwatch", "watch"]

logger = logging.getLogger(__name__)


class ForkAware(Protocol):
    """What the hook asks, in the child, of an open manager (or ``FailoverEngines``)."""

    def _after_fork(self, parent: int) -> None: ...


_open: weakref.WeakSet[ForkAware] = weakref.WeakSet()  # managers open in this process
_graveyard: list[Any] = []  # parts inherited from the parent: never used, closed, or collected


def watch(owner: ForkAware) -> None:
    """``owner`` holds connections: a child forked from now on renews it."""
    _open.add(owner)


def unwatch(owner: ForkAware) -> None:
    """``owner`` is closed (or not yet reopened after a fork)."""
    _open.discard(owner)


def bury(parts: Any) -> None:
    """Keep the parent's ``parts`` alive and untouched for the rest of this process."""
    _graveyard.append(parts)


def _in_child() -> None:
    parent = os.getppid()
    owners = list(_open)
    _open.clear()  # each watches itself again once it holds connections here
    for owner in owners:
        try:
            owner._after_fork(parent)
        except Exception:  # a hook must not fail the fork; the manager says why on use
            logger.exception("pgfailover: renewing a manager after fork failed")


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_in_child)
