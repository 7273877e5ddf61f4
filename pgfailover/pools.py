"""A psycopg_pool ``ConnectionPool`` per node, and the connections checked out of them.

The manager routes each statement to a node and takes a connection from that
node's pool. :class:`NodePools` remembers which connections are checked out,
so that when a node is lost (or the manager closes) every caller blocked on
it is unblocked at once: their sockets are shut down and the statement fails
with a connection error instead of waiting on a hung server.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, Protocol, TypeVar

import psycopg
from psycopg_pool import ConnectionPool, PoolClosed

from pgfailover.config import FailoverConfig, Node
from pgfailover.errors import ManagerClosed
from pgfailover.probe import shutdown_connection
from pgfailover.warmup import warm_configure

__all__ = ["NodePools", "TrackedPools", "pool_options"]

logger = logging.getLogger(__name__)


def pool_options(
    node: Node, cfg: FailoverConfig, cluster: str, extra: Mapping[str, Any]
) -> dict[str, Any]:
    """The keyword arguments of ``node``'s pool (sync or async): sizes, timeout, name,
    the connection's ``kwargs`` (``connect_timeout`` by default), the caller's options."""
    kwargs = dict(extra.get("kwargs") or {})
    kwargs.setdefault("connect_timeout", max(1, round(cfg.connect_timeout)))
    options = {k: v for k, v in extra.items() if k != "kwargs"}
    return {
        "min_size": node.pool_min_size if node.pool_min_size is not None else cfg.pool_min_size,
        "max_size": node.pool_max_size if node.pool_max_size is not None else cfg.pool_max_size,
        "timeout": cfg.pool_timeout,
        "name": f"pgfailover-{cluster}-{node.name}",
        "kwargs": kwargs,
        "open": False,
        **options,
    }


class _Pool(Protocol):
    """What tracking reads of a pool, sync or async."""

    @property
    def max_size(self) -> int: ...


PoolT = TypeVar("PoolT", bound=_Pool)


class TrackedPools(Generic[PoolT]):
    """Which connections are checked out of each node's pool, and aborting them.

    The part of :class:`NodePools` and its asyncio twin
    (:class:`pgfailover.aio.pools.AsyncNodePools`) that does no I/O: the
    monitor thread calls :meth:`abort` on a lost node whichever kind of
    connection the application holds (a socket ``shutdown(2)`` works on both).

    Locks: ``_lock`` guards the checked-out sets and the closed flag; it is a
    leaf, and nothing but a socket ``shutdown(2)`` happens under it.

    Thread safety: every method may be called from any thread.
    """

    def __init__(
        self,
        nodes: Sequence[Node],
        config: FailoverConfig,
        cluster: str,
        pool_kwargs: Mapping[str, Any] | None,
    ) -> None:
        extra = dict(pool_kwargs or {})
        self._cluster = cluster
        # What each node's pool is built with (the subclass builds it).
        self._options = {n.name: pool_options(n, config, cluster, extra) for n in nodes}
        self._lock = threading.Lock()
        self._checked_out: dict[str, set[Any]] = {n.name: set() for n in nodes}  # under _lock
        self._closed = False  # guarded by self._lock
        self._pools: dict[str, PoolT] = {}  # each node's pool, built by the subclass

    def _warm_up(self, config: FailoverConfig, hook: Callable[..., Any]) -> None:
        """Make ``pool_warmup`` each pool's ``configure`` (``hook``: the sync or the
        asyncio one of :mod:`pgfailover.warmup`), the caller's own chained after it."""
        if not config.pool_warmup:
            return
        for options in self._options.values():
            options["configure"] = hook(
                config.pool_warmup,
                options["name"],
                options.get("configure"),
                timeout=config.connect_timeout,
            )

    def _refuse(self) -> ManagerClosed:
        return ManagerClosed(f"manager {self._cluster} is closed")

    def _track(self, node: str, conn: Any) -> bool:
        """Record ``conn`` as checked out; False once closed (give it back and refuse)."""
        with self._lock:
            if not self._closed:
                self._checked_out[node].add(conn)
                return True
        return False

    def _untrack(self, node: str, conn: Any) -> None:
        with self._lock:
            self._checked_out[node].discard(conn)

    def in_use(self, node: str) -> int:
        """How many connections to ``node`` are checked out now."""
        return len(self._checked_out[node])

    def saturated(self, node: str) -> bool:
        """Every connection the pool of ``node`` may hold is checked out (the caller's load)."""
        return len(self._checked_out[node]) >= int(self._pools[node].max_size)

    @property
    def closed(self) -> bool:
        """True once closing has begun."""
        return self._closed

    def _close_begin(self) -> None:
        with self._lock:
            self._closed = True

    def abort(self, node: str) -> int:
        """Unblock every caller using ``node`` (a lost primary): shut their sockets down.

        A statement stuck on a hung server fails at once with a connection
        error: before COMMIT it is retried on the new primary, during COMMIT
        it raises ``WriteOutcomeUnknown``.
        """
        with self._lock:
            conns = list(self._checked_out[node])
            for conn in conns:
                shutdown_connection(conn)
        if conns:
            logger.warning("node %s: %d in-flight connection(s) aborted", node, len(conns))
        return len(conns)


class NodePools(TrackedPools[ConnectionPool]):
    """One ``psycopg_pool.ConnectionPool`` per node; checked-out connections tracked
    until they come back (:class:`TrackedPools`).

    ``pool_kwargs`` (the caller's) go to every pool and are never modified:
    ``kwargs`` are the connection's, the rest the pool's own options.
    ``pool_class`` builds each pool (``psycopg_pool.ConnectionPool``; tests
    pass a fake).

    Thread safety: every method may be called from any thread.
    """

    def __init__(
        self,
        nodes: Sequence[Node],
        config: FailoverConfig,
        cluster: str,
        pool_kwargs: Mapping[str, Any] | None = None,
        *,
        pool_class: Callable[..., ConnectionPool] = ConnectionPool,
    ) -> None:
        super().__init__(nodes, config, cluster, pool_kwargs)
        self._warm_up(config, warm_configure)
        self._pools = {n.name: pool_class(n.dsn, **self._options[n.name]) for n in nodes}

    def open(self) -> None:
        """Open every pool (connections are made in the background)."""
        for pool in self._pools.values():
            pool.open(wait=False)

    def get(self, node: str) -> ConnectionPool:
        """The pool of one node."""
        return self._pools[node]

    def checkout(self, node: str, timeout: float) -> psycopg.Connection[Any]:
        """A connection from ``node``'s pool, tracked until :meth:`checkin`.

        Raises:
            psycopg_pool.PoolTimeout: none came within ``timeout``.
            ManagerClosed: the pools are closed (also for callers who were
                waiting when they closed).
        """
        if self._closed:
            raise self._refuse()
        try:
            conn = self._pools[node].getconn(timeout=timeout)
        except PoolClosed:
            raise self._refuse() from None
        if self._track(node, conn):
            return conn
        self.checkin(node, conn)
        raise self._refuse()

    def checkin(self, node: str, conn: psycopg.Connection[Any]) -> None:
        """Give a connection from :meth:`checkout` back to its pool."""
        self._untrack(node, conn)
        try:
            self._pools[node].putconn(conn)
        except PoolClosed:
            conn.close()

    def close(self, deadline: float) -> bool:
        """Refuse new checkouts, unblock every caller, close the pools in parallel.

        Returns False when a pool was still closing at ``deadline``
        (monotonic): a hung node cannot hold the caller up.
        """
        self._close_begin()
        for name in self._pools:
            self.abort(name)
        closers = [
            threading.Thread(
                target=self._close_one,
                args=(pool, max(0.1, deadline - time.monotonic())),
                name=f"pgfailover-close-{name}",
                daemon=True,
            )
            for name, pool in self._pools.items()
        ]
        for thread in closers:
            thread.start()
        for thread in closers:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in closers)

    @staticmethod
    def _close_one(pool: ConnectionPool, timeout: float) -> None:
        try:
            pool.close(timeout=timeout)
        except Exception:
            logger.exception("closing pool %s failed", pool.name)
