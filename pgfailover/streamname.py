"""The name a standby streams under: the name quorum sync lists it by.

A standby's WAL receiver connects with ``application_name`` from
``primary_conninfo``, else ``cluster_name``, else ``walreceiver``; the
primary's ``synchronous_standby_names`` lists standbys by that name. The
manager needs it twice, and both times right after the primary died: the
``quorum_incomplete`` guard counts which listed standbys answer, and the new
primary's ``synchronous_standby_names`` is written from the others' names.

While the receiver runs, ``pg_stat_wal_receiver.conninfo`` shows its
connection string (password removed). When the primary is dead the
receiver is not running (it retries every ``wal_retrieve_retry_interval``
and exits at once), so the probe reads the name from the
``primary_conninfo`` setting instead. That setting holds the replication
password, so the name is cut out of it on the server (:data:`CONFIGURED_SQL`)
and only the name crosses the network; ``pg_monitor`` (through
``pg_read_all_settings``) may read it. Guessing ``cluster_name`` there, as
the probe did before, refused every automatic promotion with quorum sync on
servers whose ``cluster_name`` is not their ``application_name`` (the
docker lab's ``pg-standby1`` streams as ``pg_standby1``).
"""

from __future__ import annotations

import re
import urllib.parse

import psycopg
from psycopg.conninfo import conninfo_to_dict

__all__ = ["CONFIGURED_SQL", "configured_app_name", "receiver_app_name"]

# ``primary_conninfo``'s application_name, cut out on the server: a URI's
# query parameter ("uri:" and the percent-encoded value), or a keyword/value
# string's last application_name ("kv:" and the value as written, quoted or
# not). Keyword/value pairs are matched left to right, each quoted value
# whole, so a password holding "application_name=" is never taken for one.
# Dollar-quoted: no escape processing, whatever standard_conforming_strings.
_CUT = r"""
CASE WHEN {source} ~ $re$^postgres(ql)?://$re$
     THEN 'uri:' || substring({source} FROM $re$[?&]application_name=([^&#]*)$re$)
     ELSE 'kv:' || (
         SELECT m.v[2]
         FROM regexp_matches(
                  {source},
                  $re$([A-Za-z_]+)\s*=\s*('(?:[^'\\]|\\.)*'|(?:[^\s'\\]|\\.)+)$re$,
                  'g') WITH ORDINALITY AS m(v, n)
         WHERE m.v[1] = 'application_name'
         ORDER BY m.n DESC
         LIMIT 1)
END"""


def cut_sql(source: str) -> str:
    """The SQL expression that cuts the application_name out of ``source`` (SQL)."""
    return _CUT.format(source=source)


# Only on a standby whose receiver shows nothing, and only for a role that
# may read the setting (else current_setting() raises and the probe fails).
CONFIGURED_SQL = f"""CASE WHEN pg_is_in_recovery() AND r.conninfo IS NULL
                 AND pg_has_role(current_user, 'pg_read_all_settings', 'USAGE')
            THEN {cut_sql("current_setting('primary_conninfo')")} END"""

_ESCAPED = re.compile(r"\\(.)", re.S)


def configured_app_name(cut: str | None) -> str | None:
    """The application_name :data:`CONFIGURED_SQL` cut out, decoded; None if none."""
    if not cut:
        return None
    kind, _, value = cut.partition(":")
    if kind == "uri":
        name = urllib.parse.unquote(value)
    elif kind == "kv":
        if len(value) >= 2 and value[0] == value[-1] == "'":
            value = value[1:-1]
        name = _ESCAPED.sub(r"\1", value)
    else:
        return None
    return name or None


def receiver_app_name(
    conninfo: str | None, cluster_name: str | None, configured: str | None = None
) -> str:
    """The name a standby streams under, as libpq's walreceiver picks it.

    ``application_name`` from the running receiver's ``conninfo`` (shown,
    password removed, in ``pg_stat_wal_receiver.conninfo``), else from
    ``primary_conninfo`` (``configured``, when no receiver runs), else
    ``cluster_name``, else ``walreceiver``.
    """
    if conninfo:
        try:
            name = conninfo_to_dict(conninfo).get("application_name")
        except psycopg.Error:
            name = None
        if name:
            return str(name)
    elif configured:
        return configured
    return cluster_name or "walreceiver"
