"""Whether a new Patroni leader's promotion is done: the one query a follower of Patroni makes.

Patroni takes its leader key before it promotes, and publishes the new
leader's timeline only at its next loop (up to ``loop_wait``, 10 s by
default), so :class:`~pgfailover.topology.members.PatroniReader` asks the
new leader itself while its promotion is pending, through
:class:`Confirmer`: one connection (application ``pgfailover-confirm``),
kept only while that promotion is pending, on which each check waits on the
server for up to ``wait`` seconds (``fast_interval``) for recovery to end,
looking every 5 ms there (``pg_is_in_recovery()`` reads shared memory): the
follower learns of the promotion within milliseconds, with no round trip
per look.

A check runs on its own short-lived thread and the source waits for it at
most ``wait`` + 0.25 s, so a new leader that hangs (SIGSTOP, a black hole)
delays the source's next snapshot by that much, never for good; the check
in flight finishes, or fails, on its own, and no second one starts meanwhile.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import psycopg

__all__ = ["Confirmer"]

LOOK_EVERY = 0.005  # seconds between two looks at pg_is_in_recovery() on the server
SLACK = 0.25  # seconds a check may take beyond `wait` (connect, round trips)

_WAIT_PROMOTED = """
DO $$ BEGIN
  FOR i IN 1..{loops} LOOP
    EXIT WHEN NOT pg_is_in_recovery();
    PERFORM pg_sleep({every});
  END LOOP;
END $$
"""

_WRITABLE_TIMELINE = b"""
SELECT CASE WHEN pg_is_in_recovery() OR current_setting('transaction_read_only')::bool
            THEN NULL
            ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
       END
"""


class Confirmer:
    """Asks a new leader whether it takes writes yet (:meth:`timeline`).

    Thread safety: :meth:`timeline` and :meth:`done` are called by the
    source's thread; each check runs on a ``pgfailover-confirm`` thread.

    Locks: ``_lock`` guards the connection and its node, the check in
    flight, its answer and ``_let_go`` (a leaf; never held across a query).
    """

    def __init__(
        self,
        dsns: Mapping[str, str],
        *,
        timeout: float,
        wait: float,
        pause: Callable[[float], object],
    ) -> None:
        self._dsns = dict(dsns)
        self._timeout = timeout
        self._wait = wait
        self._pause = pause
        self._sql = _WAIT_PROMOTED.format(
            loops=max(1, round(wait / LOOK_EVERY)), every=LOOK_EVERY
        ).encode()
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None  # guarded by self._lock
        self._node: str | None = None  # guarded by self._lock: whose connection
        self._check: threading.Thread | None = None  # guarded by self._lock
        self._answer: tuple[str, int] | None = None  # guarded by self._lock
        self._let_go = False  # guarded by self._lock: close the connection after the check

    def timeline(self, node: str) -> int | None:
        """``node``'s timeline if it takes writes (within about ``wait``), else ``None``
        after ``wait`` has passed; never raises."""
        started = time.monotonic()
        with self._lock:
            check = self._check
            if check is None or not check.is_alive():
                check = threading.Thread(
                    target=self._run, args=(node,), name="pgfailover-confirm", daemon=True
                )
                self._check = check
                check.start()
        check.join(self._wait + SLACK)
        with self._lock:
            answer, self._answer = self._answer, None
        if answer is not None and answer[0] == node:
            return answer[1]
        self._pause(max(0.0, self._wait - (time.monotonic() - started)))
        return None

    def done(self) -> None:
        """Nothing is pending: close the connection (after the check in flight, if any)."""
        with self._lock:
            if self._check is not None and self._check.is_alive():
                self._let_go = True
                return
            conn, self._conn, self._node = self._conn, None, None
        _close(conn)

    def _run(self, node: str) -> None:
        with self._lock:
            conn, mine = self._conn, self._node == node
            self._conn = self._node = None
        if not mine:
            _close(conn)
            conn = None
        answer = None
        try:
            if conn is None:
                conn = psycopg.connect(
                    self._dsns[node],
                    autocommit=True,
                    connect_timeout=max(1, round(self._timeout)),
                    application_name="pgfailover-confirm",
                )
            conn.execute(self._sql)
            row = conn.execute(_WRITABLE_TIMELINE).fetchone()
            if row is not None and isinstance(row[0], int):
                answer = (node, row[0])
        except psycopg.Error:
            _close(conn)
            conn = None
        with self._lock:
            self._answer = answer
            if self._let_go:
                self._let_go = False
                keep = None
            else:
                keep, conn = conn, None
            self._conn, self._node = keep, (node if keep is not None else None)
        _close(conn)


def _close(conn: psycopg.Connection[tuple[Any, ...]] | None) -> None:
    if conn is not None:
        with contextlib.suppress(psycopg.Error):
            conn.close()
