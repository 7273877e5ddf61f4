"""Whether a new Patroni leader's promotion is done: the one query a follower of Patroni makes.

Patroni takes its leader key before it promotes, and publishes the new
leader's timeline only at its next loop (up to ``loop_wait``, 10 s by
default), so :class:`~pgfailover.topology.members.PatroniReader` asks the
new leader itself while its promotion is pending, through
:class:`Confirmer`: one connection (application ``pgfailover-confirm``),
kept only while a promotion is pending or expected, on which each check is
one statement that waits on the server for up to ``wait`` seconds
(``fast_interval``) for recovery to end, looking every 5 ms there
(``pg_is_in_recovery()`` reads shared memory), and answers the timeline
the moment it ends: the follower learns of the promotion within
milliseconds, with no round trip per look.

The connection can be opened ahead (:meth:`Confirmer.prepare`), when the
reader sees which member is likely to lead next (a switchover's candidate,
or the most advanced replica while no leader runs): 50 followers opening
theirs at the moment of the promotion each waited 15-97 ms for it, on the
servers' busiest CPUs, which is most of the time a follower takes to
switch; opened ahead, the check starts waiting on the server at once.

A check runs on its own short-lived thread and the source waits for it at
most ``wait`` + 0.25 s, so a new leader that hangs (SIGSTOP, a black hole)
delays the source's next snapshot by that much, never for good. The hung
check is left to end on its own (TCP keepalives and ``tcp_user_timeout``
end it on a black hole; a frozen server ends it when it thaws), its answer
dropped; no second check of that node starts meanwhile, while a check of
another node (Patroni moved on) does.
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

# One statement: looks every LOOK_EVERY while the server is in recovery, and answers
# the timeline (a row) the moment it is not, or nothing after `loops` looks. Not a
# second statement after a DO loop: on busy CPUs that round trip alone took up to
# 80 ms at 50 followers. A server made read-only (default_transaction_read_only,
# as a fenced old primary is) answers NULL: it does not take writes.
_WAIT_WRITABLE = """
SELECT CASE WHEN current_setting('default_transaction_read_only')::bool THEN NULL
            ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
       END
  FROM generate_series(1, {loops})
 WHERE CASE WHEN pg_is_in_recovery() THEN pg_sleep({every}) IS NULL ELSE true END
 LIMIT 1
"""


class Confirmer:
    """Asks a new leader whether it takes writes yet (:meth:`timeline`).

    Thread safety: :meth:`timeline` and :meth:`done` are called by the
    source's thread; each check runs on a ``pgfailover-confirm`` thread.

    Locks: ``_lock`` guards the kept connection and its node, the checks and
    the preparation in flight and the newest check's number and answer (a
    leaf; never held across a query or a connect).
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
        self._sql = _WAIT_WRITABLE.format(
            loops=max(1, round(wait / LOOK_EVERY)), every=LOOK_EVERY
        ).encode()
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None  # guarded by self._lock
        self._node: str | None = None  # guarded by self._lock: whose connection
        self._flying: dict[str, threading.Thread] = {}  # guarded by self._lock: per node
        self._number = 0  # guarded by self._lock: the newest check's
        self._answer: tuple[int, int] | None = None  # guarded: (check number, timeline)
        self._preparing: tuple[str, threading.Thread] | None = None  # guarded by self._lock
        self._prepared = 0  # guarded by self._lock: the newest preparation's number

    def timeline(self, node: str) -> int | None:
        """``node``'s timeline if it takes writes (within about ``wait``), else ``None``
        once ``wait`` has passed; never raises.

        A check that has not answered within ``wait`` + :data:`SLACK` is left to
        finish on its own (its answer is dropped); while it hangs, no other
        check of that node starts, so a frozen server holds one thread and one
        connection per node, not one per call.
        """
        started = time.monotonic()
        with self._lock:
            check = self._flying.get(node)
            if check is None or not check.is_alive():
                self._number += 1
                check = threading.Thread(
                    target=self._run,
                    args=(node, self._number),
                    name="pgfailover-confirm",
                    daemon=True,
                )
                self._flying[node] = check
                number = self._number
                check.start()
            else:
                number = -1  # a hung check of this node: wait out `wait`
        if number > 0:
            check.join(self._wait + SLACK)
        with self._lock:
            answer = self._answer if self._answer and self._answer[0] == number else None
            self._answer = None
        if answer is not None:
            return answer[1]
        self._pause(max(0.0, self._wait - (time.monotonic() - started)))
        return None

    def prepare(self, node: str) -> None:
        """``node`` is likely to lead next: open the connection its check needs now,
        in the background, and keep it (one to another node is closed).

        Nothing is opened when a connection to ``node`` is kept or being opened
        already. A check of ``node`` that starts meanwhile waits for this
        connection rather than open a second one.
        """
        with self._lock:
            if self._node == node or (
                self._preparing is not None
                and self._preparing[0] == node
                and self._preparing[1].is_alive()
            ):
                return
            self._number += 1  # a check of another node in flight keeps nothing now
            self._prepared += 1
            conn, self._conn, self._node = self._conn, None, None
            thread = threading.Thread(
                target=self._open_ahead,
                args=(node, self._prepared),
                name="pgfailover-confirm",
                daemon=True,
            )
            self._preparing = (node, thread)
            thread.start()
        _close(conn)

    def done(self) -> None:
        """Nothing is pending: close the connection (after the check or the
        preparation in flight, if any)."""
        with self._lock:
            self._number += 1  # a check in flight answers nobody now, and keeps nothing
            self._prepared += 1  # a preparation in flight keeps nothing either
            conn, self._conn, self._node = self._conn, None, None
            self._preparing = None
        _close(conn)

    def _connect(self, node: str) -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(
            self._dsns[node],
            autocommit=True,
            connect_timeout=max(1, round(self._timeout)),
            application_name="pgfailover-confirm",
            # A black hole ends the connection instead of holding it for hours.
            keepalives=1,
            keepalives_idle=1,
            keepalives_interval=1,
            keepalives_count=3,
            tcp_user_timeout=int((self._wait + self._timeout) * 1000),
            options=f"-c statement_timeout={int((self._wait + SLACK) * 1000)}",
        )

    def _open_ahead(self, node: str, number: int) -> None:
        try:
            conn: psycopg.Connection[tuple[Any, ...]] | None = self._connect(node)
        except psycopg.Error:
            return  # the check will try again, when (if) it is needed
        with self._lock:
            if number == self._prepared and self._conn is None:  # still wanted
                self._conn, self._node, conn = conn, node, None
        _close(conn)

    def _kept(self, node: str) -> psycopg.Connection[tuple[Any, ...]] | None:
        """The connection kept for ``node`` (after its preparation, if one is under
        way), taken; one kept for another node is closed."""
        with self._lock:
            preparing = self._preparing
        if preparing is not None and preparing[0] == node:
            preparing[1].join(self._timeout + SLACK)
        with self._lock:
            conn = self._conn if self._node == node else None
            other = self._conn if conn is None else None
            self._conn = self._node = None
            if self._preparing is preparing:
                self._preparing = None
        _close(other)
        return conn

    def _run(self, node: str, number: int) -> None:
        conn = self._kept(node)
        answer = None
        for fresh in (conn is None, True):
            try:
                if conn is None:
                    conn = self._connect(node)
                row = conn.execute(self._sql).fetchone()
                if row is not None and isinstance(row[0], int):
                    answer = (number, row[0])
                break
            except psycopg.Error:
                _close(conn)
                conn = None
                if fresh:  # a connection opened for this check: the server said no
                    break
                # A connection kept since its preparation may have died idle: once more.
        with self._lock:
            if number == self._number:  # still wanted: answer, and keep the connection
                self._answer = answer
                if self._conn is None and conn is not None:
                    self._conn, self._node, conn = conn, node, None
        _close(conn)


def _close(conn: psycopg.Connection[tuple[Any, ...]] | None) -> None:
    if conn is not None:
        with contextlib.suppress(psycopg.Error):
            conn.close()
