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
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolClosed

from pgfailover.config import FailoverConfig, Node
from pgfailover.errors import ManagerClosed
from pgfailover.probe import shutdown_connection

__all__ = ["NodePools"]

logger = logging.getLogger(__name__)


class NodePools:
    """One pool per node; checked-out connections tracked until they come back.

    ``pool_kwargs`` (the caller's) go to every pool and are never modified:
    ``kwargs`` are the connection's, the rest the pool's own options.
    ``pool_class`` builds each pool (``psycopg_pool.ConnectionPool``; tests
    pass a fake).

    Locks: ``_lock`` guards the checked-out sets and the closed flag; it is a
    leaf, and nothing but a socket ``shutdown(2)`` happens under it.

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
        self._cluster = cluster
        self._pool_class = pool_class
        extra = dict(pool_kwargs or {})
        self._pools = {n.name: self._make(n, config, extra) for n in nodes}
        self._lock = threading.Lock()
        self._checked_out: dict[str, set[psycopg.Connection[Any]]] = {
            n.name: set() for n in nodes
        }  # guarded by self._lock
        self._closed = False  # guarded by self._lock

    def _make(self, node: Node, cfg: FailoverConfig, extra: dict[str, Any]) -> ConnectionPool:
        kwargs = dict(extra.get("kwargs") or {})
        kwargs.setdefault("connect_timeout", max(1, round(cfg.connect_timeout)))
        options = {k: v for k, v in extra.items() if k != "kwargs"}
        return self._pool_class(
            node.dsn,
            min_size=node.pool_min_size if node.pool_min_size is not None else cfg.pool_min_size,
            max_size=node.pool_max_size if node.pool_max_size is not None else cfg.pool_max_size,
            timeout=cfg.pool_timeout,
            name=f"pgfailover-{self._cluster}-{node.name}",
            kwargs=kwargs,
            open=False,
            **options,
        )

    def open(self) -> None:
        """Open every pool (connections are made in the background)."""
        for pool in self._pools.values():
            pool.open(wait=False)

    def get(self, node: str) -> ConnectionPool:
        """The pool of one node."""
        return self._pools[node]

    def _refuse(self) -> ManagerClosed:
        return ManagerClosed(f"manager {self._cluster} is closed")

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
        with self._lock:
            if not self._closed:
                self._checked_out[node].add(conn)
                return conn
        self.checkin(node, conn)
        raise self._refuse()

    def checkin(self, node: str, conn: psycopg.Connection[Any]) -> None:
        """Give a connection from :meth:`checkout` back to its pool."""
        with self._lock:
            self._checked_out[node].discard(conn)
        try:
            self._pools[node].putconn(conn)
        except PoolClosed:
            conn.close()

    def in_use(self, node: str) -> int:
        """How many connections to ``node`` are checked out now."""
        return len(self._checked_out[node])

    def saturated(self, node: str) -> bool:
        """Every connection the pool of ``node`` may hold is checked out (the caller's load)."""
        return len(self._checked_out[node]) >= self._pools[node].max_size

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has begun."""
        return self._closed

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

    def close(self, deadline: float) -> bool:
        """Refuse new checkouts, unblock every caller, close the pools in parallel.

        Returns False when a pool was still closing at ``deadline``
        (monotonic): a hung node cannot hold the caller up.
        """
        with self._lock:
            self._closed = True
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
