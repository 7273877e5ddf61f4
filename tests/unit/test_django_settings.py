"""``databases()``: the DATABASES Django gets, made to survive failovers (no database)."""

from __future__ import annotations

import pytest

pytest.importorskip("django")
from pgfailover import FailoverConfig, Node
from pgfailover.contrib.django import _pool_options, databases
from pgfailover.errors import ConfigurationError

NODES = [Node("db1", "host=10.0.0.1 dbname=app user=app"), Node("db2", "host=10.0.0.2 dbname=app")]


def test_every_alias_checks_its_connection_and_default_reaches_the_primary() -> None:
    found = databases(NODES)
    assert set(found) == {"default", "db1", "db2"}
    assert all(entry["CONN_HEALTH_CHECKS"] is True for entry in found.values())
    assert found["default"]["HOST"] == "10.0.0.1,10.0.0.2"
    assert found["default"]["OPTIONS"]["target_session_attrs"] == "read-write"
    assert found["db1"]["TEST"] == {"MIRROR": "default"}
    assert databases(NODES, CONN_HEALTH_CHECKS=False)["db1"]["CONN_HEALTH_CHECKS"] is False


@pytest.mark.parametrize(
    ("given", "config", "timeout"),
    [
        (True, FailoverConfig(), 4.0),  # 2 x connect_timeout
        (True, FailoverConfig(connect_timeout=0.5), 2.0),  # at least 2 s
        (True, FailoverConfig(connect_timeout=10, failover_wait_timeout=5), 5.0),  # capped
        ({"timeout": 7, "max_size": 3}, FailoverConfig(), 7),  # the user's choice kept
    ],
)
def test_the_pool_waits_briefly(given: object, config: FailoverConfig, timeout: float) -> None:
    pool = _pool_options(given, config)
    assert "check" not in pool  # Django adds ConnectionPool.check_connection itself
    assert pool["timeout"] == timeout
    if isinstance(given, dict):
        assert pool["max_size"] == 3


def test_pool_true_becomes_options_in_every_alias() -> None:
    found = databases(NODES, options={"pool": True})
    assert all(e["OPTIONS"]["pool"]["timeout"] == 4.0 for e in found.values())


def test_a_node_named_default_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="Django reserves"):
        databases([Node("default", "host=a")])
