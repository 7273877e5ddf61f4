"""Bring an old primary (or any node that fell off) back as a standby of the primary.

Runs on the node's host, as the data directory's owner: ``pgfailover rejoin``
and the lab's ``rejoin`` both call :func:`rejoin`. In order, each step
reported through ``progress``:

1. the data directory is a PostgreSQL data directory, and the primary
   answers, is out of recovery, and belongs to the same cluster (the same
   ``system_identifier``): never a rewind from a stranger;
2. ``pg_rewind`` will be able to run: ``wal_log_hints`` or data checksums
   on (else the node must be cloned again with ``pg_basebackup``);
3. the server is stopped (``stop``), the primary checkpoints (a newly
   promoted one has written its timeline switch only then) and gets the
   node's replication slot;
4. ``pg_rewind`` from the primary (it says itself when there is nothing to
   rewind, and runs crash recovery first on a node that was killed);
5. ``standby.signal`` and, in ``postgresql.auto.conf``, the
   ``primary_conninfo`` and slot; a fence (``default_transaction_read_only``),
   ``synchronous_standby_names`` and the manager's record of it
   (``pgfailover.sync``) left from its time as primary are removed;
6. the server is started (``start``) and the primary is polled until the
   node streams from it.

The manager then sees the node as a standby again: recovering, then
healthy, serving reads, and back among the synchronous standbys (``auto``
mode's upkeep).
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgfailover.dsn import mask_dsn, parse_dsn
from pgfailover.errors import ConfigurationError, PgFailoverError, first_line
from pgfailover.syncrep import RECORD_SETTING

__all__ = [
    "RejoinError",
    "control_data",
    "quote_conf",
    "rejoin",
    "set_auto_conf",
    "subprocess_runner",
]

Runner = Callable[[Sequence[str]], str]
"""Runs a command (as the data directory's owner) and returns its stdout; raises on failure."""


class RejoinError(PgFailoverError):
    """The node cannot be rejoined as asked; the message says why and what to do."""


def set_auto_conf(datadir: Path, **settings: str | None) -> None:
    """Set (or, with ``None``, remove) keys in a stopped server's ``postgresql.auto.conf``."""
    path = datadir / "postgresql.auto.conf"
    lines = path.read_text().splitlines() if path.exists() else []
    kept = [
        line
        for line in lines
        if not ((m := re.match(r"\s*([\w.]+)\s*=", line)) and m.group(1) in settings)
    ]
    kept += [
        f"{key} = {quote_conf(value)}" for key, value in settings.items() if value is not None
    ]
    path.write_text("\n".join(kept) + "\n")


def quote_conf(value: str) -> str:
    """Quote a value for a PostgreSQL configuration file."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def control_data(run: Runner, pg_controldata: str, datadir: Path) -> dict[str, str]:
    """``pg_controldata``'s fields, by name."""
    out = run([pg_controldata, "-D", str(datadir)])
    fields = {}
    for line in out.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def _primary(dsn: str, timeout: float) -> tuple[str, int]:
    """The primary's system identifier and timeline; refuses a standby or no answer."""
    try:
        with psycopg.connect(
            dsn, autocommit=True, client_encoding="UTF8", connect_timeout=max(1, round(timeout))
        ) as conn:
            row = conn.execute(
                "SELECT pg_is_in_recovery(), (SELECT system_identifier::text"
                " FROM pg_control_system()), (SELECT timeline_id FROM pg_control_checkpoint())"
            ).fetchone()
            if row is None or row[0]:
                raise RejoinError(
                    f"{mask_dsn(dsn)} is in recovery: give the DSN of the current primary"
                )
            conn.execute("CHECKPOINT")  # a new primary's timeline switch, for pg_rewind
            # Read again: until that checkpoint, a new primary's control file still
            # shows the timeline it was promoted from.
            tli = conn.execute("SELECT timeline_id FROM pg_control_checkpoint()").fetchone()
            return str(row[1]), int(tli[0] if tli else row[2])
    except psycopg.Error as exc:
        message = first_line(exc)
        raise RejoinError(f"cannot reach the primary {mask_dsn(dsn)}: {message}") from None


def _ensure_slot(dsn: str, slot: str, timeout: float) -> None:
    try:
        with psycopg.connect(
            dsn, autocommit=True, client_encoding="UTF8", connect_timeout=max(1, round(timeout))
        ) as conn:
            conn.execute(
                "SELECT pg_create_physical_replication_slot(%s, true) WHERE NOT EXISTS"
                " (SELECT 1 FROM pg_replication_slots WHERE slot_name = %s)",
                (slot, slot),
            )
    except psycopg.Error as exc:
        raise RejoinError(f"cannot create the replication slot {slot!r}: {exc}") from None


def _streams(dsn: str, name: str) -> bool:
    try:
        with psycopg.connect(
            dsn, autocommit=True, client_encoding="UTF8", connect_timeout=2
        ) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_replication"
                " WHERE application_name = %s AND state = 'streaming'",
                (name,),
            ).fetchone()
            return bool(row and row[0])
    except psycopg.Error:
        return False  # the primary blinked: ask again


def _primary_datadir(dsn: str) -> str | None:
    try:
        with psycopg.connect(
            dsn, autocommit=True, client_encoding="UTF8", connect_timeout=5
        ) as conn:
            row = conn.execute("SELECT current_setting('data_directory')").fetchone()
            return str(row[0]) if row else None
    except psycopg.Error:
        return None  # not allowed to read it: the identifier checks still apply


_CONFIG_FILES = ("postgresql.conf", "pg_hba.conf", "pg_ident.conf", "postgresql.auto.conf")


def rejoin(
    datadir: Path,
    primary_dsn: str,
    *,
    name: str,
    bindir: Path,
    run: Runner,
    stop: Callable[[], None],
    start: Callable[[], None] | None,
    conninfo: str | None = None,
    timeout: float = 60.0,
    progress: Callable[[str], None] = lambda _: None,
    own: Callable[[Path], None] = lambda _: None,
) -> None:
    """Rejoin the node in ``datadir`` as a standby of ``primary_dsn`` (see the module docstring).

    ``name`` is its ``application_name`` and replication slot (what
    ``synchronous_standby_names`` lists); ``conninfo`` the
    ``primary_conninfo`` to write (default: ``primary_dsn`` with that
    application name); ``start=None`` leaves starting to the caller's
    service manager (nothing is waited for then); ``own`` is called for
    each file written (the lab, running as root, gives them to the owner).

    Raises:
        RejoinError: with what to do; nothing was changed when it is raised
            before the server was stopped.
    """
    try:
        parse_dsn(primary_dsn, field="the primary's DSN")
    except ConfigurationError as exc:
        raise RejoinError(str(exc)) from None
    if not (datadir / "PG_VERSION").is_file() or not (datadir / "global" / "pg_control").is_file():
        raise RejoinError(f"{datadir} is not a PostgreSQL data directory (no PG_VERSION)")
    if not re.fullmatch(r"[a-z0-9_]{1,63}", name):
        raise RejoinError(
            f"node name {name!r} cannot name its replication slot: use 1-63 lower-case "
            "letters, digits or '_'"
        )
    cluster_id, timeline = _primary(primary_dsn, 10.0)
    if _primary_datadir(primary_dsn) == str(datadir.resolve()):
        raise RejoinError(f"{datadir} is the primary's own data directory: nothing to rejoin")
    progress(f"primary {mask_dsn(primary_dsn)}: timeline {timeline}, system {cluster_id}")
    local = control_data(run, str(bindir / "pg_controldata"), datadir)
    if local.get("Database system identifier") != cluster_id:
        raise RejoinError(
            f"{datadir} belongs to another cluster (system identifier "
            f"{local.get('Database system identifier')}, the primary's is {cluster_id}): "
            "clone it again with pg_basebackup"
        )
    hints = local.get("wal_log_hints setting") == "on"
    checksums = local.get("Data page checksum version", "0") != "0"
    if not (hints or checksums):
        raise RejoinError(
            f"{datadir} has neither wal_log_hints nor data checksums, so pg_rewind cannot "
            "run: set wal_log_hints = on on every node, and clone this one again with "
            "pg_basebackup"
        )
    stop()
    progress("server stopped")
    _ensure_slot(primary_dsn, name, 10.0)
    # pg_rewind copies the primary's configuration files over the node's own:
    # keep the node's (its port, its pg_hba.conf...).
    saved = {f: (datadir / f).read_bytes() for f in _CONFIG_FILES if (datadir / f).is_file()}
    try:
        out = run(
            [
                str(bindir / "pg_rewind"),
                "--target-pgdata",
                str(datadir),
                "--source-server",
                primary_dsn,
            ]
        )
    finally:
        for filename, content in saved.items():
            (datadir / filename).write_bytes(content)
    said = " ".join(out.split())
    progress("pg_rewind: " + ("no rewind required" if "no rewind required" in said else "done"))
    params = {k: str(v) for k, v in conninfo_to_dict(primary_dsn).items() if v is not None}
    params["application_name"] = name
    set_auto_conf(
        datadir,
        primary_conninfo=conninfo or make_conninfo("", **params),
        primary_slot_name=name,
        synchronous_standby_names=None,
        default_transaction_read_only=None,
        **{RECORD_SETTING: None},
    )
    (datadir / "standby.signal").touch()
    own(datadir / "postgresql.auto.conf")
    own(datadir / "standby.signal")
    progress(f"standby.signal written; streams from the primary as {name!r}, slot {name!r}")
    if start is None:
        progress("not started (--no-start): start it with your service manager")
        return
    start()
    deadline = time.monotonic() + timeout
    while not _streams(primary_dsn, name):
        if time.monotonic() >= deadline:
            raise RejoinError(
                f"{name} started but does not stream from the primary after {timeout:g}s: "
                "see its server log"
            )
        time.sleep(0.1)  # polling the primary's pg_stat_replication
    progress(f"{name} streams from the primary")


def subprocess_runner(argv: Sequence[str]) -> str:
    """Run a command as this process's user; its stdout, or :class:`RejoinError`."""
    try:
        result = subprocess.run(
            list(argv), capture_output=True, text=True, check=False, timeout=600
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RejoinError(f"{argv[0]}: {exc}") from None
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise RejoinError(
            f"{Path(argv[0]).name} failed: {detail[-1] if detail else result.returncode}"
        )
    return result.stdout
