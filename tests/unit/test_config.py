"""Configuration: validation messages, DSN splitting, TOML and environment."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from pgfailover import ConfigurationError, FailoverConfig, FailoverManager, Node
from pgfailover.dsn import mask_dsn, split_multihost
from pgfailover.sources import load_env, load_toml, nodes_from_dsn


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"promotion": "yolo"}, "promotion must be one of external, auto, manual, got 'yolo'"),
        (
            {"health_check_interval": 0},
            "health_check_interval must be a number > 0 and <= 86400, got 0",
        ),
        (
            {"health_check_timeout": -1.0},
            "health_check_timeout must be a number > 0 and <= 86400, got -1.0",
        ),
        (
            {"health_check_timeout": 1e10},
            "health_check_timeout must be a number > 0 and <= 86400, got 10000000000.0",
        ),
        (
            {"fast_interval": float("nan")},
            "fast_interval must be a number > 0 and <= 86400, got nan",
        ),
        (
            {"unhealthy_threshold": 0},
            "unhealthy_threshold must be an integer >= 1 and <= 1000, got 0",
        ),
        (
            {"healthy_threshold": 1.5},
            "healthy_threshold must be an integer >= 1 and <= 1000, got 1.5",
        ),
        ({"history_file": 5}, "history_file must be a file name (or unset), got 5"),
        ({"history_file": "/"}, "history_file must be a file, got the directory '/'"),
        (
            {"history_file": "/nonexistent-dir/h.jsonl"},
            "its directory does not exist",
        ),
        (
            {"pool_min_size": 5, "pool_max_size": 2},
            "pool_min_size (5) must not exceed pool_max_size (2)",
        ),
        (
            {"fast_interval": 2.0},
            "fast_interval (2.0) must not exceed health_check_interval (1.0)",
        ),
        ({"read_strategy": "fastest"}, "read_strategy must be one of"),
        ({"fence_stale_primary": "yes"}, "fence_stale_primary must be true or false, got 'yes'"),
        (
            {"failover_cooldown": True},
            "failover_cooldown must be a number >= 0 and <= 86400, got True",
        ),
    ],
)
def test_bad_settings_name_the_field_and_value(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        FailoverConfig(**changes)  # type: ignore[arg-type]
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_defaults_are_what_a_user_would_choose() -> None:
    cfg = FailoverConfig()
    assert cfg.promotion == "external"
    assert cfg.health_check_interval == 1.0
    assert cfg.fast_interval <= 0.1
    assert (cfg.unhealthy_threshold, cfg.healthy_threshold) == (3, 2)


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        ("postgresql://app:s3cret@h1:5432,h2:5433/app?sslmode=require", ["h1:5432", "h2:5433"]),
        ("host=a,b,c port=5432 dbname=x", ["a:5432", "b:5432", "c:5432"]),
        ("host=a,b port=1,2 dbname=x target_session_attrs=read-write", ["a:1", "b:2"]),
        ("postgresql:///app?host=/run/a,/run/b", ["/run/a:5432", "/run/b:5432"]),
    ],
)
def test_multihost_dsns_become_one_node_per_host(dsn: str, expected: list[str]) -> None:
    nodes = nodes_from_dsn(dsn)
    assert [n.name for n in nodes] == expected
    assert [n.priority for n in nodes] == list(range(len(expected)))
    for node in nodes:
        assert "target_session_attrs" not in node.dsn
        assert "," not in node.dsn


def test_multihost_keeps_shared_parameters() -> None:
    (first, second) = split_multihost("postgresql://app:pw@h1,h2:6000/db?sslmode=require")
    assert "sslmode=require" in first
    assert "password=pw" in second
    assert "port=6000" in second


@pytest.mark.parametrize(
    ("dsn", "message"),
    [
        ("host=a,b,c port=1,2", "3 hosts but 2 ports"),
        ("dbname=x", "names no host"),
        ("host=a password=hunter2 nonsense", "invalid DSN"),
        ("postgresql://u:hunter2@a,a/db", "appears twice"),
        ("host=a port=x password=hunter2", "port 'x' .* is not a port number"),
        ("host=a,b port=5432,70000 password=hunter2", "port '70000'"),
    ],
)
def test_bad_dsns_are_clear_and_never_show_the_password(dsn: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as info:
        nodes_from_dsn(dsn)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    "dsn",
    [
        "host=a password=hunter2 dbname=x",
        "postgresql://u:hunter2@a/db",
        "host=a password='hunter2 x' broken=",
        "postgresql://u:hunter2@a:notaport/db",
    ],
)
def test_mask_dsn_hides_passwords_even_in_broken_dsns(dsn: str) -> None:
    masked = mask_dsn(dsn)
    assert "hunter2" not in masked
    assert "***" in masked


def test_node_repr_and_errors_mask_the_password() -> None:
    node = Node("db1", "host=a password=hunter2")
    assert "hunter2" not in repr(node)
    with pytest.raises(ConfigurationError, match="names several hosts") as info:
        Node("db2", "host=a,b password=hunter2")
    assert "hunter2" not in str(info.value)
    with pytest.raises(ConfigurationError, match="node name 'bad name'"):
        Node("bad name", "host=a")


def test_manager_rejects_duplicate_and_missing_nodes() -> None:
    with pytest.raises(ConfigurationError, match="duplicate node name"):
        FailoverManager(nodes=[Node("a", "host=x"), Node("a", "host=y")])
    with pytest.raises(ConfigurationError, match="no nodes"):
        FailoverManager()
    with pytest.raises(ConfigurationError, match="either nodes= or primary="):
        FailoverManager("host=a", nodes=[Node("a", "host=x")])


def test_toml_with_nodes_and_settings(tmp_path: Path) -> None:
    path = tmp_path / "pgfailover.toml"
    path.write_text(
        '[[nodes]]\nname = "db1"\ndsn = "host=10.0.0.1 dbname=app"\npriority = 1\n'
        '[[nodes]]\nname = "db2"\ndsn = "host=10.0.0.2 dbname=app"\n'
        '[failover]\npromotion = "auto"\nhealth_check_interval = 2.0\n'
    )
    nodes, cfg = load_toml(path)
    assert [n.name for n in nodes] == ["db1", "db2"]
    assert cfg.promotion == "auto"
    assert cfg.health_check_interval == 2.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'dsn = "host=a,b"\n[failover]\nhealth_check_intervall = 1\n',
            "unknown setting(s) health_check_intervall",
        ),
        ('dsn = "host=a"\nprimary = "host=b"\n', "exactly one of dsn"),
        ('dsn = "host=a"\nextra = 1\n', "unknown setting(s) extra"),
        ("dsn = \n", "config file"),
        (
            '[[nodes]]\nname = "x"\ndsn = "host=a"\ncolour = "red"\n',
            "nodes[0]: unknown setting(s) colour",
        ),
        ('[[nodes]]\nname = "x"\n', "nodes[0]: missing dsn"),
    ],
)
def test_bad_toml_is_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        load_toml(path)


def test_missing_toml_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_toml(tmp_path / "nope.toml")


def test_env_with_the_original_names() -> None:
    nodes, cfg = load_env(
        {
            "DB_HOST": "db1,db2",
            "DB_PORT": "5433",
            "DB_NAME": "app",
            "DB_USER": "app",
            "DB_PASSWORD": "hunter2",
            "DB_SSL": "true",
            "FAILOVER_HEALTH_CHECK_INTERVAL": "10000",
        }
    )
    assert nodes is not None
    assert [n.name for n in nodes] == ["db1:5433", "db2:5433"]
    assert "sslmode=require" in nodes[0].dsn
    assert cfg.health_check_interval == 10.0


def test_env_with_pgfailover_names() -> None:
    nodes, cfg = load_env(
        {
            "PGFAILOVER_DSN": "host=a,b",
            "PGFAILOVER_PROMOTION": "auto",
            "PGFAILOVER_FENCE_STALE_PRIMARY": "yes",
            "PGFAILOVER_UNHEALTHY_THRESHOLD": "5",
        }
    )
    assert nodes is not None
    assert len(nodes) == 2
    assert (cfg.promotion, cfg.fence_stale_primary, cfg.unhealthy_threshold) == ("auto", True, 5)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"PGFAILOVER_UNHEALTHY_THRESHOLD": "three"},
            "PGFAILOVER_UNHEALTHY_THRESHOLD: cannot read 'three' as int",
        ),
        ({"FAILOVER_HEALTH_CHECK_INTERVAL": "soon"}, "FAILOVER_HEALTH_CHECK_INTERVAL"),
        ({"PGFAILOVER_PROMOTION": "sometimes"}, "promotion must be one of"),
    ],
)
def test_bad_env_is_a_clear_error(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        load_env(env)


def test_from_env_without_nodes_says_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("PGFAILOVER_DSN", "DB_HOST"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(ConfigurationError, match="set PGFAILOVER_DSN or DB_HOST"):
        FailoverManager.from_env()


@pytest.mark.parametrize(
    ("address", "dsn", "expected"),
    [
        pytest.param(
            None, "host=db1 port=5432 user=app", "host=db1 port=5432 user=app", id="unset"
        ),
        pytest.param(
            "repl-db1:5433",
            "host=db1 hostaddr=10.0.0.1 port=5432 user=app password=s",
            {"host": "repl-db1", "port": "5433", "user": "app", "password": "s"},
            id="host and port, hostaddr dropped",
        ),
        pytest.param(
            "10.1.0.1", "host=db1 port=6432", {"host": "10.1.0.1", "port": "6432"}, id="host"
        ),
        pytest.param("[fd00::1]:5432", "host=db1", {"host": "fd00::1", "port": "5432"}, id="ipv6"),
    ],
)
def test_replication_address(address: str | None, dsn: str, expected: object) -> None:
    node = Node("node1", dsn, replication_address=address)
    if isinstance(expected, str):
        assert node.replication_dsn == expected
    else:
        assert conninfo_to_dict(node.replication_dsn) == expected


@pytest.mark.parametrize(
    "address", ["", "db1 db2", "db1,db2", "db1:0", "db1:65536", "db1:x", "[::1"]
)
def test_bad_replication_address_is_one_line(address: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Node("node1", "host=db1 password=hunter2", replication_address=address)
    assert str(caught.value) == (
        f"node node1: replication_address: {address!r} is not host, host:port or [v6]:port"
    )


def test_toml_nodes_take_a_replication_address(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[[nodes]]\nname = "db1"\ndsn = "host=10.0.0.1"\nreplication_address = "10.9.0.1:5432"\n'
    )
    nodes, _ = load_toml(path)
    assert conninfo_to_dict(nodes[0].replication_dsn)["host"] == "10.9.0.1"
