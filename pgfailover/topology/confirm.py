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

    Locks: ``_lock`` guards the kept connection and its node, the checks in
    flight and the newest check's number and answer (a leaf; never held
    across a query).
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
        self._flying: dict[str, threading.Thread] = {}  # guarded by self._lock: per node
        self._number = 0  # guarded by self._lock: the newest check's
        self._answer: tuple[int, int] | None = None  # guarded: (check number, timeline)

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

    def done(self) -> None:
        """Nothing is pending: close the connection (after the check in flight, if any)."""
        with self._lock:
            self._number += 1  # a check in flight answers nobody now, and keeps nothing
            conn, self._conn, self._node = self._conn, None, None
        _close(conn)

    def _run(self, node: str, number: int) -> None:
        with self._lock:
            conn = self._conn if self._node == node else None
            other = self._conn if conn is None else None
            self._conn = self._node = None
        _close(other)
        answer = None
        try:
            if conn is None:
                conn = psycopg.connect(
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
            conn.execute(self._sql)
            row = conn.execute(_WRITABLE_TIMELINE).fetchone()
            if row is not None and isinstance(row[0], int):
                answer = (number, row[0])
        except psycopg.Error:
            _close(conn)
            conn = None
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
