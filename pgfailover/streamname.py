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

__all__ = ["CONFIGURED_SQL", "configured_app_name", "cut_sql", "receiver_app_name"]

# ``primary_conninfo``'s application_name, cut out on the server as libpq
# reads the string, so that no part of a password can pass for a name:
#
# - a URI: its user and password end at the first "@" before any "/" (and
#   may hold "?" or "&"), so they are removed first; then the query's last
#   application_name ("uri:" and the value, percent-encoded);
# - keywords and values: only a string that splits wholly into them (a
#   value quoted, with backslash escapes, or unquoted up to whitespace,
#   where a quote is an ordinary character) is read, pair by pair from its
#   start, so a match can never begin inside a value; the last
#   application_name ("kv:" and the value as written).
#
# Anything else (an unterminated quote) gives no name. Dollar-quoted: no
# escape processing, whatever standard_conforming_strings says.
_QUOTED = r"'(?:[^'\\]|\\.)*'"
_BARE = r"(?:[^\s'\\]|\\.)(?:[^\s\\]|\\.)*"
_PAIR = rf"([^\s=]+)\s*=\s*({_QUOTED}|{_BARE})"
_WHOLE = rf"^(?:\s*[^\s=]+\s*=\s*(?:{_QUOTED}|{_BARE}|$))*\s*$"
_URI = r"^postgres(?:ql)?://"
_URI_USER = r"^postgres(?:ql)?://(?:[^@/]*@)?"
_URI_NAME = r"^[^/?]*(?:/[^?]*)?\?(?:.*&)?application_name=([^&]*)"
_CUT = f"""
CASE WHEN {{source}} ~ $re${_URI}$re$
     THEN 'uri:' || substring(regexp_replace({{source}}, $re${_URI_USER}$re$, '')
                              FROM $re${_URI_NAME}$re$)
     WHEN {{source}} ~ $re${_WHOLE}$re$
     THEN 'kv:' || (
         SELECT m.v[2]
         FROM regexp_matches({{source}}, $re${_PAIR}$re$, 'g') WITH ORDINALITY AS m(v, n)
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
