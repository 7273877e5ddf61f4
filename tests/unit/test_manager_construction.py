"""Building a manager: pool options from the caller, and parsing what probes read.

No pool is opened: pools are created closed, so nothing touches the network.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from pgfailover.config import FailoverConfig, Node
from pgfailover.manager import FailoverManager
from pgfailover.probe import parse_duration, receiver_app_name
from pgfailover.streamname import configured_app_name

NODES = [
    Node("node0", "host=10.0.0.1 port=5432 dbname=app", priority=0),
    Node("node1", "host=10.0.0.2 port=5432 dbname=app", priority=1),
    Node("node2", "host=10.0.0.3 port=5432 dbname=app", priority=2),
]


@contextmanager
def build(
    pool_kwargs: dict[str, Any], config: FailoverConfig | None = None
) -> Iterator[FailoverManager]:
    mgr = FailoverManager(nodes=NODES, config=config, pool_kwargs=pool_kwargs)
    try:
        yield mgr
    finally:
        mgr.close(timeout=1.0)


# id, pool_kwargs, config, expected connection kwargs, expected max_idle
CASES: list[tuple[str, dict[str, Any], FailoverConfig, dict[str, Any], float]] = [
    (
        "the caller's kwargs plus connect_timeout, and the caller's pool options",
        {"kwargs": {"application_name": "app1"}, "max_idle": 120},
        FailoverConfig(),
        {"application_name": "app1", "connect_timeout": 2},
        120,
    ),
    (
        "connect_timeout follows the config",
        {"kwargs": {"application_name": "app1"}},
        FailoverConfig(connect_timeout=5.0),
        {"application_name": "app1", "connect_timeout": 5},
        600,  # psycopg_pool's default
    ),
    (
        "the caller's own connect_timeout wins",
        {"kwargs": {"connect_timeout": 9}, "max_idle": 30},
        FailoverConfig(),
        {"connect_timeout": 9},
        30,
    ),
]


@pytest.mark.parametrize(
    ("pool_kwargs", "config", "kwargs", "max_idle"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_every_pool_gets_the_callers_options(
    pool_kwargs: dict[str, Any], config: FailoverConfig, kwargs: dict[str, Any], max_idle: float
) -> None:
    before = copy.deepcopy(pool_kwargs)
    with build(pool_kwargs, config) as mgr:
        for node in NODES:
            pool = mgr.pool(node.name)
            assert pool.closed
            assert pool.conninfo == node.dsn
            assert pool.kwargs == kwargs
            assert pool.max_idle == max_idle
        assert mgr.pool("node0").kwargs is not mgr.pool("node1").kwargs
    assert pool_kwargs == before  # the caller's dict, nested kwargs included, is untouched


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        pytest.param("1min", 60.0, id="minutes"),
        pytest.param("5s", 5.0, id="seconds"),
        pytest.param("4500ms", 4.5, id="milliseconds"),
        pytest.param("2h", 7200.0, id="hours"),
        pytest.param("1d", 86400.0, id="days"),
        pytest.param("0", 0.0, id="zero (off)"),
        pytest.param("250", 0.25, id="a bare number is in the setting's unit, milliseconds"),
        pytest.param("bogus", None, id="garbage"),
        pytest.param("5 fortnights", None, id="unknown unit"),
        pytest.param(None, None, id="unknown setting"),
    ],
)
def test_parse_duration(text: str | None, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("conninfo", "cluster_name", "expected"),
    [
        pytest.param(
            "host=10.0.0.1 port=5432 user=repl application_name=node1",
            "main",
            "node1",
            id="application_name from primary_conninfo",
        ),
        pytest.param("host=10.0.0.1 port=5432 user=repl", "main", "main", id="else cluster_name"),
        pytest.param(
            "host=10.0.0.1 port=5432 user=repl", "", "walreceiver", id="else walreceiver"
        ),
        pytest.param(None, None, "walreceiver", id="no receiver, no cluster_name"),
        pytest.param(
            "host=10.0.0.1 application_name=", "main", "main", id="empty application_name"
        ),
        pytest.param("host='unterminated", "main", "main", id="unparsable conninfo"),
    ],
)
def test_receiver_app_name(conninfo: str | None, cluster_name: str | None, expected: str) -> None:
    assert receiver_app_name(conninfo, cluster_name) == expected


@pytest.mark.parametrize(
    ("conninfo", "configured", "cluster_name", "expected"),
    [
        pytest.param(None, "pg_standby1", "pg-standby1", "pg_standby1", id="no receiver: setting"),
        pytest.param(None, None, "pg-standby1", "pg-standby1", id="no receiver, no setting"),
        pytest.param(
            "host=a application_name=node1", "ignored", "main", "node1", id="receiver first"
        ),
        pytest.param("host=a", "ignored", "main", "main", id="receiver without a name"),
    ],
)
def test_receiver_app_name_without_a_receiver(
    conninfo: str | None, configured: str | None, cluster_name: str, expected: str
) -> None:
    assert receiver_app_name(conninfo, cluster_name, configured) == expected


@pytest.mark.parametrize(
    ("cut", "expected"),
    [
        pytest.param("kv:node1", "node1", id="plain"),
        pytest.param("kv:'my app'", "my app", id="quoted"),
        pytest.param(r"kv:'it\'s'", "it's", id="quoted with an escaped quote"),
        pytest.param(r"kv:a\ b", "a b", id="escaped space"),
        pytest.param("uri:pg%5Fstandby%201", "pg_standby 1", id="uri, percent-encoded"),
        pytest.param("uri:", None, id="uri, empty"),
        pytest.param("kv:''", None, id="quoted empty"),
        pytest.param(None, None, id="none in the setting"),
        pytest.param("", None, id="empty"),
        pytest.param("other:x", None, id="unknown kind"),
    ],
)
def test_configured_app_name(cut: str | None, expected: str | None) -> None:
    assert configured_app_name(cut) == expected
