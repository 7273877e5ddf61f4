"""One probe of one node: what the server says it is, in one round trip.

``SELECT 1`` is not a health check: it passes on a standby and on a demoted
primary. A probe asks for the role (``pg_is_in_recovery()``), the timeline,
the WAL positions (current on a primary; received and replayed on a
standby), the replay timestamp, the WAL receiver's status and upstream, and
``transaction_read_only``, all in one statement on the probe's own
connection (never a pool connection), with connect and statement timeouts.

The WAL receiver's columns are only visible to superusers and members of
``pg_read_all_stats`` (``pg_monitor``); without them ``receiver_visible`` is
false and promotion guards that need the receiver refuse to act.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import psycopg

from pgfailover.errors import first_line
from pgfailover.refusals import refused_for_capacity
from pgfailover.streamname import CONFIGURED_SQL, configured_app_name, receiver_app_name
from pgfailover.syncrep import RECORD_SETTING

__all__ = [
    "PROBE_SQL",
    "NodeProber",
    "ProbeResult",
    "failed",
    "parse_duration",
    "receiver_app_name",
    "refused_for_capacity",
    "shutdown_connection",
]

logger = logging.getLogger(__name__)

PROBE_SQL = f"""
SELECT pg_is_in_recovery(),
       CASE WHEN pg_is_in_recovery()
            THEN coalesce(r.received_tli, (SELECT timeline_id FROM pg_control_checkpoint()))
            ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
       END,
       CASE WHEN pg_is_in_recovery() THEN NULL
            ELSE (pg_current_wal_lsn() - '0/0')::bigint END,
       (pg_last_wal_receive_lsn() - '0/0')::bigint,
       (pg_last_wal_replay_lsn() - '0/0')::bigint,
       extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8,
       pg_has_role(current_user, 'pg_read_all_stats', 'USAGE'),
       r.status,
       r.sender_host,
       r.sender_port,
       current_setting('transaction_read_only') = 'on',
       current_setting('synchronous_standby_names'),
       (SELECT system_identifier FROM pg_control_system())::text,
       extract(epoch FROM clock_timestamp() - r.last_msg_receipt_time)::float8,
       (r.latest_end_lsn - '0/0')::bigint,
       current_setting('wal_receiver_timeout'),
       r.conninfo,
       current_setting('cluster_name'),
       CASE WHEN NOT pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') THEN NULL
            ELSE ARRAY(SELECT application_name::text FROM pg_stat_replication
                       WHERE state = 'streaming' ORDER BY 1) END,
       {CONFIGURED_SQL},
       current_setting('{RECORD_SETTING}', true)
FROM (SELECT 1) AS one LEFT JOIN pg_stat_wal_receiver AS r ON true
"""

_UNITS = {"ms": 0.001, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str | None) -> float | None:
    """A time setting as ``current_setting`` shows it ('1min', '5s', '0'), in seconds."""
    if text is None:
        return None
    value = text.strip()
    number = value.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = value[len(number) :] or "ms"
    try:
        return float(number) * _UNITS[unit]
    except (KeyError, ValueError):
        return None


@dataclass(frozen=True)
class ProbeResult:
    """What one probe of one node found.

    ``ok`` is false when the node could not be reached or the probe failed
    (``error`` says why). LSNs are byte positions (``pg_lsn - '0/0'``).
    ``replay_age`` is the seconds since the last replayed transaction
    committed on the primary (``None`` on a primary). ``receiver_silence`` is
    how long ago the WAL receiver last heard its upstream, on the standby's
    own clock; ``upstream_end_lsn`` the upstream's WAL end as of that
    message; ``streaming_names`` who streams from it now (a primary, or a
    standby that relays WAL to others); ``sync_record`` the manager's record
    of the ``synchronous_standby_names`` it wrote there
    (:class:`~pgfailover.syncrep.SyncRecord`, as text). It is read with
    ``current_setting``: ``pg_settings`` does not list a custom setting
    (PostgreSQL keeps it as a placeholder), and a role or database default
    for it takes the privilege to set it, which only the manager's role
    needs.
    ``busy`` (with ``ok`` false): the server refused a new session for lack
    of connection slots (:func:`refused_for_capacity`): alive, role unknown.
    ``opening`` (with ``ok`` false): the probe's new session did not open in
    time: the server gave no answer (a connect timeout, or a probe abandoned
    while opening), so it never ran its statement there. A refused or reset
    connection is an answer, and is not ``opening``.
    """

    node: str
    ok: bool
    started: float
    response_time: float
    error: str | None = None
    in_recovery: bool | None = None
    timeline: int | None = None
    wal_lsn: int | None = None
    receive_lsn: int | None = None
    replay_lsn: int | None = None
    replay_age: float | None = None
    receiver_visible: bool = False
    receiver_status: str | None = None
    sender_host: str | None = None
    sender_port: int | None = None
    read_only: bool | None = None
    sync_standby_names: str | None = None
    system_identifier: str | None = None
    receiver_silence: float | None = None
    upstream_end_lsn: int | None = None
    receiver_timeout: float | None = None
    app_name: str | None = None
    streaming_names: tuple[str, ...] | None = None
    sync_record: str | None = None
    busy: bool = False
    opening: bool = False

    @property
    def writable(self) -> bool:
        """Out of recovery and not read-only: this node takes writes."""
        return self.ok and self.in_recovery is False and self.read_only is False

    @property
    def position(self) -> int | None:
        """How much WAL the node holds: current (primary) or received/replayed."""
        values = [v for v in (self.wal_lsn, self.receive_lsn, self.replay_lsn) if v is not None]
        return max(values) if values else None


def shutdown_connection(conn: psycopg.Connection[Any]) -> None:
    """Shut a connection's socket down so that a thread blocked on it returns.

    A hung server (stopped, or behind a black hole) never answers and a
    blocking read waits forever; after ``shutdown(2)`` the read fails at once
    with a connection error. The descriptor stays owned by the connection
    (the caller must make sure it is not closed concurrently).
    """
    if conn.closed:
        return
    try:
        sock = socket.socket(fileno=conn.fileno())
    except (OSError, psycopg.Error):
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.detach()


def failed(
    node: str, started: float, error: str, *, busy: bool = False, opening: bool = False
) -> ProbeResult:
    """A failed probe result."""
    took = time.monotonic() - started
    return ProbeResult(node, False, started, took, error=error, busy=busy, opening=opening)


class _Closed(Exception):
    """The prober was closed while it connected."""


# The newest timeline among the WAL segments in pg_wal: a standby receives
# (and recycles segments under) the timeline it replays, and never a newer
# one it has not switched to. pg_ls_waldir() needs pg_monitor.
SEGMENT_TIMELINE_SQL = """
SELECT max(('x' || substr(name, 1, 8))::bit(32)::int)
FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$'
"""


def _replay_timeline(
    conn: psycopg.Connection[tuple[Any, ...]], checkpoint: int | None
) -> int | None:
    """A standby's timeline while its WAL receiver is down.

    PostgreSQL then only reports its last restartpoint's timeline, which
    lags behind a timeline switch until the next restartpoint (a standby
    on timeline 5 read as 4); the WAL segments it holds say which it is on.
    A role without pg_monitor keeps the restartpoint's.
    """
    try:
        row = conn.execute(SEGMENT_TIMELINE_SQL).fetchone()
    except psycopg.errors.InsufficientPrivilege:
        return checkpoint
    known = [t for t in (checkpoint, row[0] if row else None) if t is not None]
    return max(known, default=None)


class NodeProber:
    """Probes one node over a dedicated, persistent connection.

    The connection is reused between probes (one backend per node, not one
    fork per probe) and dropped on any error; a kept one that fails at once
    (the server ended it) is replaced within the same probe. A refusal for
    lack of slots is reported ``busy`` and logged once per episode, and a
    session that did not open in time ``opening``. :meth:`abort` unblocks a probe
    stuck on a hung server by shutting the socket down, so that its thread
    returns; the monitor calls it when a probe outlives the round's deadline.

    Locks: ``_lock`` guards the connection, the closed flag and whether a
    session is being opened (:attr:`opening`); a leaf (a
    socket ``shutdown(2)`` is all that happens under it, never a query).
    ``_running`` is held for the length of a probe, so that :meth:`release`
    can tell an idle connection from one in use (it only tries it, never
    waits; taken before ``_lock``).

    Thread safety: :meth:`probe` runs in one thread at a time (the monitor
    never starts a second probe of a node while one runs); :meth:`abort` and
    :meth:`close` may be called from any thread.
    """

    def __init__(self, name: str, dsn: str, *, timeout: float) -> None:
        self.name = name
        self._dsn = dsn
        self._timeout = timeout
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None  # guarded by self._lock
        self._closed = False  # guarded by self._lock
        self._running = threading.Lock()  # held for a probe (release() waits for none)
        self._refused = False  # the last probe was refused for capacity (probe thread only)
        self._opening = False  # guarded by self._lock: a probe is opening a session

    def _connect(self, wait: float | None) -> psycopg.Connection[tuple[Any, ...]]:
        statement_ms = max(1, int(self._timeout * 1000))
        conn = psycopg.connect(
            self._dsn,
            autocommit=True,
            connect_timeout=max(1, round(max(self._timeout, wait or 0.0))),
            application_name="pgfailover-probe",
            # Text as str even from a SQL_ASCII database (psycopg gives bytes there).
            client_encoding="UTF8",
            options=f"-c statement_timeout={statement_ms} -c lock_timeout={statement_ms}",
        )
        conn.prepare_threshold = 0
        return conn

    def probe(self, wait: float | None = None) -> ProbeResult:
        """Probe the node once; never raises.

        ``wait``: how long a new session may take to open, when longer than the
        probe's timeout (a follower's first rounds after falling back, see
        :meth:`ProbeRound.run`); the statement's timeout stays the probe's.
        """
        with self._running:
            return self._probe(wait)

    def _probe(self, wait: float | None) -> ProbeResult:
        started = time.monotonic()
        with self._lock:
            if self._closed:
                return failed(self.name, started, "prober closed")
            conn = self._conn
        kept = conn is not None and not conn.closed
        row: tuple[Any, ...] | None = None
        for retry in (False, True):
            try:
                row = self._ask(None if retry else conn, wait)
                break
            except _Closed:
                return failed(self.name, started, "prober closed")
            except (psycopg.Error, OSError) as exc:
                self._drop()
                # A kept session that failed at once (an administrator or
                # idle_session_timeout ended it, a pooler dropped it) says nothing of
                # the node yet: a new one is tried at once. A slow failure is not
                # retried: a hung server must cost one timeout, not two.
                if retry or not kept or time.monotonic() - started >= self._timeout / 2:
                    return self._failed(started, exc)
        self._refused = False
        if row is None:  # the statement always returns one row
            return failed(self.name, started, "probe returned no row")
        try:
            result = self._result(row, started)
        except (TypeError, ValueError, IndexError) as exc:  # never raise: report it
            logger.warning("probe %s: unexpected answer: %s", self.name, exc)
            return failed(self.name, started, f"unexpected probe answer: {exc}")
        logger.debug(
            "probe %s: %s tl=%s in %.1f ms",
            self.name,
            "standby" if result.in_recovery else "primary",
            result.timeline,
            result.response_time * 1000,
        )
        return result

    def _ask(
        self, conn: psycopg.Connection[tuple[Any, ...]] | None, wait: float | None
    ) -> tuple[Any, ...] | None:
        """The probe's row, on ``conn`` or on a new connection (kept for the next probe)."""
        if conn is None or conn.closed:
            with self._lock:
                self._opening = True
            conn = self._connect(wait)  # on failure, _failed() reads and clears _opening
            with self._lock:
                self._opening = False
                if self._closed:
                    conn.close()
                    raise _Closed
                self._conn = conn
        row = conn.execute(PROBE_SQL).fetchone()
        if row is not None and row[0] and row[7] is None and row[6]:
            row = (row[0], _replay_timeline(conn, row[1]), *row[2:])
        return row

    @property
    def opening(self) -> bool:
        """A probe is opening a new session now (a straggler that never got to ask)."""
        with self._lock:
            return self._opening

    def _failed(self, started: float, exc: BaseException) -> ProbeResult:
        with self._lock:
            opening, self._opening = self._opening, False
        # Only a session that got no answer in time is "opening" (no news of a node
        # whose statements succeed). A refusal or a reset is news: nothing accepts
        # there now, whatever a reply a query read just before said.
        opening = opening and isinstance(exc, psycopg.errors.ConnectionTimeout)
        message = first_line(exc)
        busy = refused_for_capacity(message)
        if busy and not self._refused:
            logger.warning(
                "node %s refuses new sessions (%s): it is alive, so a node that was up "
                "keeps its role until it answers or fails otherwise",
                self.name,
                message,
            )
        else:
            logger.debug("probe %s failed: %s", self.name, message)
        self._refused = busy
        return failed(self.name, started, message, busy=busy, opening=opening)

    def _result(self, row: tuple[Any, ...], started: float) -> ProbeResult:
        """The probe's row as a :class:`ProbeResult`."""
        elapsed = time.monotonic() - started
        return ProbeResult(
            node=self.name,
            ok=True,
            started=started,
            response_time=elapsed,
            in_recovery=bool(row[0]),
            timeline=row[1],
            wal_lsn=row[2],
            receive_lsn=row[3],
            replay_lsn=row[4],
            replay_age=row[5],
            receiver_visible=bool(row[6]),
            receiver_status=row[7],
            sender_host=row[8],
            sender_port=row[9],
            read_only=bool(row[10]),
            sync_standby_names=row[11],
            system_identifier=row[12],
            receiver_silence=row[13],
            upstream_end_lsn=row[14],
            receiver_timeout=parse_duration(row[15]),
            app_name=receiver_app_name(row[16], row[17], configured_app_name(row[19])),
            streaming_names=None if row[18] is None else tuple(row[18]),
            sync_record=row[20] or None,
        )

    def release(self) -> None:
        """Close the probe connection unless a probe is using it; the next probe reconnects."""
        if self._running.acquire(blocking=False):
            try:
                self._drop()
            finally:
                self._running.release()

    def _drop(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def abort(self) -> None:
        """Unblock a probe waiting on a hung server (shut its socket down)."""
        with self._lock:
            if self._conn is not None:
                shutdown_connection(self._conn)

    def close(self) -> None:
        """Close the probe connection; later probes fail fast."""
        with self._lock:
            self._closed = True
        self.abort()
        self._drop()
