"""No password in any message: a property over arbitrary passwords and DSN shapes.

Hypothesis writes passwords of arbitrary characters (quotes, '%', '/', '@',
'?', blanks, control characters, any script) into the DSN shapes users
write: URLs with the password percent-encoded or raw, any scheme case,
key/value strings quoted or not, URL query parameters. Whatever pgfailover
makes of the DSN (a node, its repr and address, a manager's status and
metrics, Prometheus text, or a ``ConfigurationError``), and whatever it
logs on the way, must hold neither
the password nor any part of it around a marker placed inside it. A table
of the cases once reported follows.
"""

from __future__ import annotations

import json
import logging
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from pgfailover import FailoverConfig, FailoverManager, Node
from pgfailover.dsn import mask_dsn, node_address, parse_dsn
from pgfailover.errors import ConfigurationError
from pgfailover.metrics import register
from pgfailover.sources import nodes_from_dsn

MARK = "Qz7Mk"
WORD = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)
ANY_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=10)
RAW_VALUE = st.text(
    st.characters(exclude_categories=["Cs", "Zs", "Cc"], exclude_characters="'\\"),
    max_size=10,
)


def _quoted(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@st.composite
def dsn_with_password(draw: st.DrawFn) -> tuple[str, str]:
    shape = draw(
        st.sampled_from(["url", "url_raw", "kv_quoted", "kv_raw", "query", "sslpassword"])
    )
    raw = shape == "kv_raw"
    text = RAW_VALUE if raw else ANY_TEXT
    password = draw(text) + MARK + draw(text)
    user, host, db = draw(WORD), draw(WORD), draw(WORD)
    port = draw(st.integers(1, 65535))
    if shape == "url":
        dsn = f"postgresql://{user}:{quote(password, safe='')}@{host}:{port}/{db}"
    elif shape == "url_raw":
        scheme = draw(st.sampled_from(["postgresql", "postgres", "POSTGRESQL", "Postgres"]))
        dsn = f"{scheme}://{user}:{password}@{host}:{port}/{db}"
    elif shape == "kv_quoted":
        dsn = f"host={host} port={port} user={user} password={_quoted(password)} dbname={db}"
    elif shape == "kv_raw":
        dsn = f"host={host} port={port} password={password} dbname={db}"
    elif shape == "query":
        dsn = f"postgresql://{user}@{host}:{port}/{db}?password={quote(password, safe='')}"
    else:
        dsn = f"host={host} sslpassword={_quoted(password)} sslmode=require"
    return dsn, password


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def _everything_shown(dsn: str) -> list[str]:
    """Every string pgfailover produces from ``dsn``: reprs, status, errors, logs."""
    records = _Records()
    root = logging.getLogger("pgfailover")
    root.addHandler(records)
    level = root.level
    root.setLevel(logging.DEBUG)
    shown = [mask_dsn(dsn)]
    try:
        try:
            node = Node("n1", dsn)
            shown += [repr(node), node.safe_dsn, node_address(dsn)]
            mgr = FailoverManager(nodes=[node], config=FailoverConfig(), name="c")
            registry = CollectorRegistry()
            register(mgr, registry)
            shown += [
                json.dumps(mgr.get_failover_status()),
                json.dumps(mgr.get_metrics()),
                generate_latest(registry).decode(),
                repr(mgr),
            ]
        except ConfigurationError as exc:
            shown.append(str(exc))
        try:
            shown += [repr(n) for n in nodes_from_dsn(dsn)]
        except ConfigurationError as exc:
            shown.append(str(exc))
    finally:
        root.removeHandler(records)
        root.setLevel(level)
    return shown + records.lines


@settings(
    max_examples=2000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(dsn_with_password())
def test_no_password_shows_anywhere(case: tuple[str, str]) -> None:
    dsn, password = case
    for text in _everything_shown(dsn):
        assert MARK not in text, (dsn, text)
        assert password not in text, (dsn, text)
        assert quote(password, safe="") not in text, (dsn, text)


@pytest.mark.parametrize(
    ("dsn", "message"),
    [
        ("postgresql://u:S3cretZZ%ZZPW@h/db", "invalid percent-encoded token"),
        ("postgresql://u:S3cretZZ%00PW@h/db", ""),
        ("POSTGRESQL://u:S3cretZZPW@h/db", "lower-case postgresql://"),
        ("postgresql://u:S3cret/ZZPW@h:5432/db", "holds '/'"),
        ("postgresql://u:1234/S3cretZZPW@h:5432/db", "holds '/'"),
        ("postgresql://u:S3cret?ZZPW@h:5432/db", ""),  # libpq reads this one right
        ("postgresql://u:S3cret@ZZPW@h:5432/db", "holds '@'"),
        ("host=h password=S3cret ZZPW dbname=x", 'missing "=" after'),
    ],
)
def test_the_reported_leaks_are_one_clear_line(dsn: str, message: str) -> None:
    try:
        parse_dsn(dsn)
        Node("n1", dsn)
    except ConfigurationError as exc:
        text = str(exc)
        assert message in text
        assert "\n" not in text
    else:
        assert not message, "accepted"
    for text in _everything_shown(dsn):
        for part in ("S3cret", "ZZPW"):
            assert part not in text, (dsn, text)
