"""Administrative SQL: promote, fence, repoint, sync names, receiver timeout.

These run on dedicated admin connections (never pool connections), each with
a statement timeout. They need a role that may call ``pg_promote()`` and
``ALTER SYSTEM`` (a superuser, or the grants listed in the README). The
library runs them only in ``auto`` mode and for the operator's commands.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql as pgsql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgfailover.errors import PromotionFailed, first_line
from pgfailover.syncrep import RECORD_SETTING

__all__ = [
    "Admin",
    "StandbyLink",
    "admin_connection",
    "fence_node",
    "fence_sessions",
    "in_recovery",
    "keep_sync_record",
    "promote_node",
    "read_standby_link",
    "repoint_standby",
    "set_receiver_timeout",
    "set_sync_record",
    "set_sync_standby_names",
    "unfence_node",
    "wait_replayed",
]


def admin_connection(dsn: str, timeout: float) -> psycopg.Connection[tuple[Any, ...]]:
    """An autocommit connection for one administrative action."""
    ms = max(1, int(timeout * 1000))
    return psycopg.connect(
        dsn,
        autocommit=True,
        connect_timeout=max(1, round(timeout)),
        application_name="pgfailover-admin",
        client_encoding="UTF8",  # text as str even from a SQL_ASCII database
        options=f"-c statement_timeout={ms}",
    )


LOOK_EVERY = 0.005
"""Seconds between two looks at ``pg_is_in_recovery()`` while a promotion ends."""

# One statement that waits on the server for the end of recovery, looking every
# LOOK_EVERY (pg_is_in_recovery() reads shared memory), and answers the fence
# setting the moment recovery ends: no round trip per look, and the answer says
# whether anything is left to configure. No row: still in recovery after `loops`.
_WAIT_PROMOTED = """
SELECT current_setting('default_transaction_read_only')
  FROM generate_series(1, {loops})
 WHERE CASE WHEN pg_is_in_recovery() THEN pg_sleep({every}) IS NULL ELSE true END
 LIMIT 1
"""


def promote_node(
    dsn: str,
    *,
    wait_seconds: float = 30.0,
    before: Callable[[], None] | None = None,
    sync_names: str | None = None,
    sync_record: str | None = None,
    timeout: float = 2.0,
) -> str | None:
    """Promote a standby, wait until it has left recovery, then configure it as the
    new primary on the same session.

    ``pg_promote(wait => true)`` checks for completion only every 100 ms; the
    wait here is one statement that looks every 5 ms on the server and answers
    the moment recovery ends. The configuration runs on the session that
    promoted: a new session at that moment is a backend started on a server
    whose every CPU cycle the writes waiting for it need. With nothing to
    change (no fence to lift, ``sync_names`` ``None``) the wait's answer
    already says so, and nothing more is sent, nor reloaded: a reload is paid
    by every session on the new primary, which re-reads the configuration
    before its next statement, and with hundreds of pooled sessions that
    statement is the write each of them held through the failover (their
    first writes took 0.2-0.4 s after their managers switched, against
    0.05-0.13 s for 200 writes at once on a healthy primary, on 2 CPUs).

    ``before`` runs once connected, right before ``pg_promote`` is sent (the
    arbiter lease's last check: nothing slow, such as a connection, comes
    between it and the promotion); it raises to call the promotion off.

    Returns:
        ``None``, or why the configuration failed (the promotion itself did
        not: the node is a primary).

    Raises:
        PromotionFailed: the node refused or did not finish promoting in time.
    """
    with admin_connection(dsn, wait_seconds + 5) as conn:
        if before is not None:
            before()
        row = conn.execute("SELECT pg_promote(false)").fetchone()
        if not row or not row[0]:
            raise PromotionFailed("pg_promote() refused to promote")
        loops = max(1, round(wait_seconds / LOOK_EVERY))
        row = conn.execute(_WAIT_PROMOTED.format(loops=loops, every=LOOK_EVERY)).fetchone()
        if row is None:
            raise PromotionFailed(f"still in recovery {wait_seconds:g}s after pg_promote()")
        fenced = row[0] == "on"
        if not fenced and sync_names is None:
            return None
        try:
            ms = max(1, int(timeout * 1000))
            conn.execute(pgsql.SQL("SET statement_timeout = {}").format(pgsql.Literal(ms)))
            _configure(conn, fenced=fenced, sync_names=sync_names, sync_record=sync_record)
        except psycopg.Error as exc:
            return str(exc)
    return None


def set_sync_standby_names(
    dsn: str, value: str, timeout: float, record: str | None = None
) -> str | None:
    """``ALTER SYSTEM SET synchronous_standby_names`` (and, given, the manager's
    :class:`~pgfailover.syncrep.SyncRecord` of it), then reload.

    Returns:
        ``None``, or why the record was refused (the role may not ``ALTER
        SYSTEM`` it); ``synchronous_standby_names`` is set either way.
    """
    with admin_connection(dsn, timeout) as conn:
        _set_sync(conn, value)
        refused = None if record is None else keep_sync_record(conn, record)
        conn.execute("SELECT pg_reload_conf()")
    return refused


def set_sync_record(dsn: str, record: str, timeout: float) -> str | None:
    """Only the record (``''``: remove it), then reload; why it was refused, if it was."""
    with admin_connection(dsn, timeout) as conn:
        refused = keep_sync_record(conn, record)
        if refused is None:
            conn.execute("SELECT pg_reload_conf()")
    return refused


def _set_sync(conn: psycopg.Connection[tuple[Any, ...]], value: str) -> None:
    conn.execute(
        pgsql.SQL("ALTER SYSTEM SET synchronous_standby_names = {}").format(pgsql.Literal(value))
    )


def keep_sync_record(conn: psycopg.Connection[tuple[Any, ...]], record: str) -> str | None:
    """``ALTER SYSTEM`` the record (``''``: reset it) on ``conn``, without reloading;
    why not, when the role may not (a non-superuser needs ``GRANT ALTER SYSTEM ON
    PARAMETER pgfailover.sync``)."""
    setting = pgsql.Identifier(*RECORD_SETTING.split("."))
    try:
        # Before PostgreSQL 17, ALTER SYSTEM sets only a parameter the session
        # knows: a custom one becomes known once set in the session.
        conn.execute(pgsql.SQL("SET {} = ''").format(setting))
        if record:
            conn.execute(
                pgsql.SQL("ALTER SYSTEM SET {} = {}").format(setting, pgsql.Literal(record))
            )
        else:
            conn.execute(pgsql.SQL("ALTER SYSTEM RESET {}").format(setting))
    except psycopg.errors.InsufficientPrivilege as exc:
        return first_line(exc)
    return None


def _configure(
    conn: psycopg.Connection[tuple[Any, ...]],
    *,
    fenced: bool,
    sync_names: str | None,
    sync_record: str | None = None,
) -> None:
    """Lift the fence if ``fenced``, set ``sync_names`` (and its record) if given, and
    reload. A refused record is left for upkeep, which tries again and says so."""
    if fenced:
        # Not granted: then it was never fenced by us either.
        with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
            conn.execute("ALTER SYSTEM RESET default_transaction_read_only")
    if sync_names is not None:
        _set_sync(conn, sync_names)
        if sync_record is not None:
            keep_sync_record(conn, sync_record)
    conn.execute("SELECT pg_reload_conf()")


def fence_node(dsn: str, timeout: float) -> None:
    """Soft fence: make every new transaction read-only (survives restarts)."""
    with admin_connection(dsn, timeout) as conn:
        conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        conn.execute("SELECT pg_reload_conf()")


def fence_sessions(dsn: str, timeout: float) -> tuple[int, int]:
    """Fence a primary for a switchover; (sessions ended, WAL position it stopped at).

    New transactions become read-only (:func:`fence_node`); once the
    postmaster has taken the new setting (a fresh connection sees it),
    every other client session is ended and waited for, so no transaction
    begun before the fence can still commit. The position returned is the
    WAL insert position after that, once it is flushed too: every commit
    the old primary acknowledged, ``synchronous_commit = off`` ones
    included, lies at or before it.
    """
    fence_node(dsn, timeout)
    deadline = time.monotonic() + timeout
    while True:
        with admin_connection(dsn, timeout) as conn:
            row = conn.execute(
                "SELECT current_setting('default_transaction_read_only')"
            ).fetchone()
            if row == ("on",):
                return _end_sessions(conn, deadline)
        if time.monotonic() >= deadline:
            raise PromotionFailed("the fence did not take effect: reload not applied in time")
        time.sleep(0.01)


# Where the last WAL record ends. pg_current_wal_insert_lsn() reports the
# next record's start: past the page header when that is at a page boundary
# (24 bytes, 40 at a segment's first page), which no flush reaches until
# more WAL is written. An idle primary right after a WAL segment switch
# says 0/4000028 while everything is flushed to 0/4000000.
_LAST_RECORD_END = """
    SELECT CASE WHEN pos % seg = 40 THEN pos - 40 WHEN pos % page = 24 THEN pos - 24 ELSE pos END
    FROM (SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint AS pos,
                 current_setting('wal_block_size')::bigint AS page,
                 pg_size_bytes(current_setting('wal_segment_size')) AS seg) AS p
"""


def _end_sessions(conn: psycopg.Connection[tuple[Any, ...]], deadline: float) -> tuple[int, int]:
    """End every other client session and wait until they are gone; then the final position.

    All are signalled at once and polled every 5 ms (``pg_terminate_backend``'s
    own wait sleeps 100 ms per session).
    """
    # Two statements: in one, the planner may call pg_terminate_backend
    # before the filter that spares this session.
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity"
        " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
    ).fetchall()
    pids = [int(r[0]) for r in rows]
    if pids:
        conn.execute("SELECT pg_terminate_backend(p) FROM unnest(%s::int[]) AS p", (pids,))
    while pids:
        left = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)
        ).fetchone()
        if not left or not left[0]:
            break
        if time.monotonic() >= deadline:
            raise PromotionFailed(f"{left[0]} ended session(s) still running on the old primary")
        time.sleep(0.005)
    row = conn.execute(_LAST_RECORD_END).fetchone()
    final = int(row[0]) if row else 0
    while True:
        flushed = conn.execute("SELECT (pg_current_wal_flush_lsn() - '0/0')::bigint").fetchone()
        if flushed is not None and int(flushed[0]) >= final:
            return len(pids), final
        if time.monotonic() >= deadline:
            raise PromotionFailed("the old primary did not flush its last WAL in time")
        time.sleep(0.005)


def in_recovery(dsn: str, timeout: float) -> bool:
    """Whether a node is (still) in recovery."""
    with admin_connection(dsn, timeout) as conn:
        row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        return bool(row and row[0])


def unfence_node(dsn: str, timeout: float) -> None:
    """Undo :func:`fence_node`: new transactions may write again."""
    with admin_connection(dsn, timeout) as conn:
        conn.execute("ALTER SYSTEM RESET default_transaction_read_only")
        conn.execute("SELECT pg_reload_conf()")


def wait_replayed(dsn: str, lsn: int, timeout: float) -> int | None:
    """Poll a standby until it has replayed ``lsn``; its replay position, ``None`` on timeout."""
    deadline = time.monotonic() + timeout
    with admin_connection(dsn, max(1.0, timeout)) as conn:
        while True:
            row = conn.execute("SELECT (pg_last_wal_replay_lsn() - '0/0')::bigint").fetchone()
            replayed = None if row is None or row[0] is None else int(row[0])
            if replayed is not None and replayed >= lsn:
                return replayed
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.005)


@dataclass(frozen=True)
class StandbyLink:
    """How a standby connects upstream: its conninfo, slot and application name."""

    conninfo: dict[str, str]
    slot: str | None
    application_name: str


def read_standby_link(dsn: str, fallback_name: str, timeout: float) -> StandbyLink:
    """Read a standby's ``primary_conninfo`` and ``primary_slot_name``."""
    with admin_connection(dsn, timeout) as conn:
        row = conn.execute(
            "SELECT current_setting('primary_conninfo'), current_setting('primary_slot_name'),"
            " current_setting('cluster_name')"
        ).fetchone()
    conninfo_text, slot, cluster_name = row if row else ("", "", "")
    params = {k: str(v) for k, v in conninfo_to_dict(conninfo_text or "").items() if v is not None}
    name = params.get("application_name") or cluster_name or fallback_name
    return StandbyLink(params, slot or None, name)


def repoint_standby(
    standby_dsn: str,
    link: StandbyLink,
    new_primary_dsn: str,
    new_primary_admin_dsn: str,
    timeout: float,
) -> None:
    """Point a running standby at a new primary: ``ALTER SYSTEM`` + reload.

    The standby keeps its user, password, SSL and application name; only
    the address changes to the new primary's. Its replication slot, if it
    uses one, is created on the new primary first.
    """
    target = conninfo_to_dict(new_primary_dsn)
    params = dict(link.conninfo)
    for key in ("host", "hostaddr", "port"):
        params.pop(key, None)
        if target.get(key):
            params[key] = str(target[key])
    params.setdefault("application_name", link.application_name)
    if link.slot:
        with admin_connection(new_primary_admin_dsn, timeout) as conn:
            conn.execute(
                "SELECT pg_create_physical_replication_slot(%s, true) WHERE NOT EXISTS"
                " (SELECT 1 FROM pg_replication_slots WHERE slot_name = %s)",
                (link.slot, link.slot),
            )
    with admin_connection(standby_dsn, timeout) as conn:
        conn.execute(
            pgsql.SQL("ALTER SYSTEM SET primary_conninfo = {}").format(
                pgsql.Literal(make_conninfo("", **params))
            )
        )
        conn.execute("SELECT pg_reload_conf()")


def set_receiver_timeout(dsn: str, seconds: float, timeout: float) -> str | None:
    """``ALTER SYSTEM SET wal_receiver_timeout`` and reload (no restart needed).

    Returns why it cannot take effect instead of writing a setting that
    would be ignored: a value given on the server's command line (``-c``)
    or in its environment outranks ``postgresql.auto.conf``.
    """
    with admin_connection(dsn, timeout) as conn:
        row = conn.execute(
            "SELECT source FROM pg_settings WHERE name = 'wal_receiver_timeout'"
        ).fetchone()
        source = row[0] if row else None
        if source in ("command line", "environment variable", "override"):
            return f"wal_receiver_timeout is set on the server's {source}: ALTER SYSTEM cannot win"
        conn.execute(
            pgsql.SQL("ALTER SYSTEM SET wal_receiver_timeout = {}").format(
                pgsql.Literal(f"{max(1, round(seconds * 1000))}ms")
            )
        )
        conn.execute("SELECT pg_reload_conf()")
    return None


class Admin:
    """The admin SQL a promotion runs, one method per action.

    :class:`~pgfailover.failover.FailoverActions` and
    :class:`~pgfailover.promote.Promoter` call these instead of the module
    functions, so their unit tests can stand in a recording fake for the
    database (every method maps one to one onto a function above).
    """

    def promote(
        self,
        dsn: str,
        before: Callable[[], None] | None = None,
        sync_names: str | None = None,
        timeout: float = 2.0,
        sync_record: str | None = None,
    ) -> str | None:
        """:func:`promote_node`."""
        return promote_node(
            dsn, before=before, sync_names=sync_names, sync_record=sync_record, timeout=timeout
        )

    def fence(self, dsn: str, timeout: float) -> None:
        """:func:`fence_node`."""
        fence_node(dsn, timeout)

    def fence_sessions(self, dsn: str, timeout: float) -> tuple[int, int]:
        """:func:`fence_sessions`."""
        return fence_sessions(dsn, timeout)

    def in_recovery(self, dsn: str, timeout: float) -> bool:
        """:func:`in_recovery`."""
        return in_recovery(dsn, timeout)

    def unfence(self, dsn: str, timeout: float) -> None:
        """:func:`unfence_node`."""
        unfence_node(dsn, timeout)

    def wait_replayed(self, dsn: str, lsn: int, timeout: float) -> int | None:
        """:func:`wait_replayed`."""
        return wait_replayed(dsn, lsn, timeout)

    def read_link(self, dsn: str, fallback_name: str, timeout: float) -> StandbyLink:
        """:func:`read_standby_link`."""
        return read_standby_link(dsn, fallback_name, timeout)

    def repoint(
        self,
        dsn: str,
        link: StandbyLink,
        new_primary_dsn: str,
        timeout: float,
        replication_dsn: str | None = None,
    ) -> None:
        """:func:`repoint_standby` to ``replication_dsn``'s host and port (default: the new
        primary's DSN), its slot created through the new primary's DSN."""
        repoint_standby(dsn, link, replication_dsn or new_primary_dsn, new_primary_dsn, timeout)
