"""The bad-input corpus: every input once reported as mishandled, and generated ones.

Each case must give one line naming the problem, the documented exit code
(3 for the command line), no traceback and no secret, and change nothing:
no history file written, no promotion. Three parts:

- a table of command-line cases (TOML files, ``--url``, ``--dsn``, the
  environment), each the way a careless operator would write it;
- Hypothesis: values of every TOML type for every setting of ``[failover]``,
  ``[server]`` and ``[[nodes]]``;
- Hypothesis: HTTP requests of any method, path, token and body against a
  live ``serve`` on loopback (a documented status, never a 500; one JSON
  line; no promotion).
"""

from __future__ import annotations

import dataclasses
import json
import math
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgfailover import FailoverConfig, FailoverManager, Node
from pgfailover.cli.app import cli
from pgfailover.config import ServerSettings
from pgfailover.errors import ConfigurationError
from pgfailover.events import EventLog, FailoverEvent
from pgfailover.schema import from_mapping
from pgfailover.server import AdminServer, serve
from pgfailover.sources import parse_toml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

pytestmark = pytest.mark.timeout(120)

SECRET = "S3cretZZpw"
TOKEN = "corpus-token-0123456789"
NODES = '[[nodes]]\nname = "n1"\ndsn = "host=127.0.0.1 port=1 password=S3cretZZpw"\n'
DSN = 'dsn = "host=127.0.0.1 port=1 password=S3cretZZpw"\n'


class CliCase(NamedTuple):
    id: str
    toml: str | None  # written to a file passed with --config
    args: tuple[str, ...]
    env: dict[str, str]
    says: str


CLI_CASES = [
    CliCase("failover not a table", DSN + "failover = 5\n", (), {}, "[failover] must be a table"),
    CliCase(
        "standbys not a list",
        'primary = "host=a"\nstandbys = 5\n',
        (),
        {},
        "standbys must be a list of DSNs",
    ),
    CliCase(
        "history_file a number",
        DSN + "[failover]\nhistory_file = 5\n",
        (),
        {},
        "history_file must be a file name",
    ),
    CliCase(
        "history_file a directory",
        DSN + '[failover]\nhistory_file = "/"\n',
        (),
        {},
        "history_file must be a file, got the directory '/'",
    ),
    CliCase(
        "node pool_max_size 0",
        NODES + "pool_max_size = 0\n",
        (),
        {},
        "pool_max_size must be at least 1",
    ),
    CliCase(
        "node pool min over max",
        NODES + "pool_min_size = 5\npool_max_size = 2\n",
        (),
        {},
        "pool_min_size (5) must not exceed pool_max_size (2)",
    ),
    CliCase(
        "timeout of 1e10",
        DSN + "[failover]\nhealth_check_timeout = 1e10\n",
        (),
        {},
        "health_check_timeout must be a number > 0 and <= 86400",
    ),
    CliCase(
        "a setting misspelt",
        DSN + "[failover]\nhealth_check_intervall = 1\n",
        (),
        {},
        "did you mean health_check_interval?",
    ),
    CliCase("a top-level key misspelt", 'dns = "host=a"\n', (), {}, "did you mean dsn?"),
    CliCase(
        "Patroni's etcd without where its keys are",
        DSN + '[failover]\nsource = "patroni+etcd://e:2379"\n',
        (),
        {},
        "Patroni's etcd needs where its keys are",
    ),
    CliCase(
        "a Patroni password that breaks the URL",
        DSN + '[failover]\nsource = "patroni+http://u:S3cret#x@db:8008"\n',
        (),
        {},
        "cannot read its host and port",
    ),
    CliCase(
        "server port text",
        DSN + '[server]\nport = "abc"\n',
        (),
        {},
        "port must be an integer >= 0 and <= 65535, got 'abc'",
    ),
    CliCase("server port 99999", DSN + "[server]\nport = 99999\n", (), {}, "got 99999"),
    CliCase("server host a number", DSN + "[server]\nhost = 5\n", (), {}, "host must be a host"),
    CliCase(
        "server token a number",
        DSN + "[server]\ntoken = 12345678901234567890\n",
        (),
        {},
        "token must be a string (or unset), got ***",
    ),
    CliCase(
        "server token with a newline",
        DSN + '[server]\ntoken = "S3cretZZpw-0123456789\\n"\n',
        (),
        {},
        "printable ASCII without surrounding whitespace",
    ),
    CliCase(
        "server token not ASCII",
        DSN + '[server]\ntoken = "S3cretZZpw-012345678\u00e9"\n',
        (),
        {},
        "printable ASCII",
    ),
    CliCase(
        "server log_format typo",
        DSN + '[server]\nlog_format = "jsn"\n',
        (),
        {},
        "log_format must be one of plain, json, got 'jsn'",
    ),
    CliCase(
        "server key misspelt",
        DSN + "[server]\nprot = 8008\n",
        (),
        {},
        "prot (did you mean port?)",
    ),
    CliCase(
        "token with a newline",
        None,
        ("--url", "http://127.0.0.1:1", "--token", "S3cretZZpw-0123456789\n"),
        {},
        "printable ASCII without surrounding whitespace",
    ),
    CliCase(
        "token in the environment too short",
        None,
        ("--url", "http://127.0.0.1:1"),
        {"PGFAILOVER_ADMIN_TOKEN": "S3cretZZpw"},
        "at least 16 characters",
    ),
    CliCase("url bad port", None, ("--url", "http://127.0.0.1:99999"), {}, "Port out of range"),
    CliCase("url bad IPv6", None, ("--url", "http://[::1"), {}, "Invalid IPv6 URL"),
    CliCase("url with a blank", None, ("--url", "http://127.0.0.1 :8008"), {}, "--url"),
    CliCase("url not http", None, ("--url", "ftp://h"), {}, "http:// or https://"),
    CliCase(
        "url with credentials",
        None,
        ("--url", "http://u:S3cretZZpw@h:8008?x=1"),
        {},
        "base URL only",
    ),
    CliCase(
        "dsn with a bad percent-encoding",
        None,
        ("--dsn", "postgresql://u:S3cretZZpw%ZZ@h/db"),
        {},
        "invalid percent-encoded token",
    ),
    CliCase(
        "dsn with an upper-case scheme",
        None,
        ("--dsn", "POSTGRESQL://u:S3cretZZpw@h/db"),
        {},
        "lower-case postgresql://",
    ),
    CliCase(
        "dsn with a raw '/' in the password",
        None,
        ("--dsn", "postgresql://u:S3cret/ZZpw@h/db"),
        {},
        "percent-encode it as %2F",
    ),
    CliCase(
        "dsn with a percent-encoded password key",
        None,
        ("--dsn", "postgresql://app@127.0.0.1:1/db?pass%77ord=S3cretZZpw&bogus=1"),
        {},
        "invalid DSN",
    ),
    CliCase(
        "dsn with a misspelt password key",
        None,
        ("--dsn", "host=127.0.0.1 passwd=S3cretZZpw"),
        {},
        "invalid connection option",
    ),
    CliCase(
        "dsn with a password and no '='",
        None,
        ("--dsn", "host=127.0.0.1 password:S3cretZZpw"),
        {},
        "invalid DSN (not shown: it may hold a password)",
    ),
    CliCase(
        "dsn with a bad port and the password last",
        None,
        ("--dsn", "host=127.0.0.1 port=abc password=S3cretZZpw"),
        {},
        "is not a port number (1-65535, or empty for 5432)",
    ),
    CliCase(
        "dsn with a bad sslmode",
        None,
        ("--dsn", "host=127.0.0.1 sslmode=bogus password=S3cretZZpw"),
        {},
        "sslmode 'bogus'",
    ),
    CliCase(
        "url with a '/' in its password",
        None,
        ("--url", "http://admin:S3cret/ZZpw@127.0.0.1:1"),
        {},
        "--url",
    ),
    CliCase(
        "url with a bad port and a token in its query",
        None,
        ("--url", "http://127.0.0.1:abc/?token=S3cretZZpw"),
        {},
        "--url",
    ),
    CliCase(
        "a DSN pasted as promotion",
        DSN + '[failover]\npromotion = "postgresql://administrator_account:S3cretZZpw@db1/app"\n',
        (),
        {},
        "promotion must be one of external, auto, manual",
    ),
    CliCase(
        "a DSN pasted as history_file",
        DSN + '[failover]\nhistory_file = "postgresql://app:S3cretZZpw@db1/app"\n',
        (),
        {},
        "its directory does not exist",
    ),
    CliCase("config and dsn together", DSN, ("--dsn", "host=h"), {}, "give one of --config"),
    CliCase(
        "DB_SSL typo",
        None,
        (),
        {"DB_HOST": "h", "DB_PASSWORD": SECRET, "DB_SSL": "ture"},
        "DB_SSL must be true or false or a libpq sslmode",
    ),
    CliCase(
        "setting variable misspelt",
        None,
        (),
        {"PGFAILOVER_DSN": "host=h", "PGFAILOVER_HEALTH_CHECK_INTERVALL": "1"},
        "did you mean PGFAILOVER_HEALTH_CHECK_INTERVAL?",
    ),
    CliCase(
        "setting variable not a number",
        None,
        (),
        {"PGFAILOVER_DSN": "host=h", "PGFAILOVER_UNHEALTHY_THRESHOLD": "three"},
        "cannot read 'three' as int",
    ),
]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith(("PGFAILOVER_", "DB_", "PG")):
            monkeypatch.delenv(key)


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
@pytest.mark.usefixtures("clean_env")
def test_the_command_line_says_what_is_wrong_in_one_line(
    case: CliCase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args: list[str] = ["status", *case.args]
    if case.toml is not None:
        config = tmp_path / "pgfailover.toml"
        config.write_text(case.toml)
        args += ["--config", str(config)]
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 3, result.output
    assert len(lines) == 1, result.output
    assert case.says in lines[0], lines[0]
    assert "Traceback" not in result.output
    for part in (SECRET, "S3cret", "ZZpw"):
        assert part not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == (["pgfailover.toml"] if case.toml else [])


# -- generated TOML values -----------------------------------------------

TOML_VALUES: st.SearchStrategy[tuple[str, Any]] = st.one_of(
    st.integers(-(2**63), 2**63 - 1).map(lambda i: (str(i), i)),
    st.floats(allow_nan=True).map(
        lambda f: (
            (("nan" if math.isnan(f) else ("inf" if f > 0 else "-inf")), f)
            if not math.isfinite(f)
            else (repr(f), f)
        )
    ),
    st.booleans().map(lambda b: (str(b).lower(), b)),
    st.text(st.characters(exclude_categories=["Cs", "Cc"]), max_size=20).map(
        lambda s: (json.dumps(s, ensure_ascii=False), s)
    ),
    st.lists(st.integers(0, 9), max_size=3).map(lambda x: (json.dumps(x), x)),
    st.just(("{ a = 1 }", {"a": 1})),
)

TABLES = {
    "failover": [f.name for f in dataclasses.fields(FailoverConfig)],
    "server": [f.name for f in dataclasses.fields(ServerSettings)],
    "nodes": ["priority", "pool_min_size", "pool_max_size", "nofailover", "noloadbalance"],
}


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(sorted(TABLES)).flatmap(
        lambda table: st.tuples(st.just(table), st.sampled_from(TABLES[table]), TOML_VALUES)
    )
)
def test_any_toml_value_is_accepted_or_refused_by_name(case: tuple[str, str, Any]) -> None:
    table, key, (literal, _) = case
    if table == "nodes":
        text = NODES + f"{key} = {literal}\n"
    else:
        text = DSN + f"[{table}]\n{key} = {literal}\n"
    data = tomllib.loads(text)
    try:
        if table == "server":
            from_mapping(ServerSettings, data["server"], source="f.toml [server]")
        else:
            parse_toml(data, "f.toml")
    except ConfigurationError as exc:
        message = str(exc)
        assert "\n" not in message
        assert key in message, message
        assert SECRET not in message
        if key == "token":
            assert literal.strip('"') not in message or len(literal) < 4


# -- generated HTTP requests ---------------------------------------------


@pytest.fixture(scope="module")
def live() -> Iterator[tuple[FailoverManager, AdminServer]]:
    nodes = [Node(f"node{i}", f"host=127.0.0.1 port={i + 1} user=app") for i in range(3)]
    mgr = FailoverManager(
        nodes=nodes, config=FailoverConfig(pool_min_size=0, connect_timeout=0.5), name="c"
    )
    with serve(mgr, token=TOKEN) as srv:
        yield mgr, srv


PATHS = [
    "/failover/status",
    "/failover/metrics",
    "/failover/health",
    "/failover/history",
    "/failover/history?limit=3",
    "/failover/trigger",
    "/failover/switchover",
    "/failover/check-health",
    "/failover/pause",
    "/failover/resume",
    "/metrics",
    "/openapi.json",
]
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=6,
)
BODIES = st.one_of(
    st.dictionaries(
        st.sampled_from(["target", "force", "timeout", "reason", "x"]), JSON_VALUES, max_size=3
    ).map(lambda d: json.dumps(d).encode()),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=40),
)


DOCUMENTED = {200, 400, 401, 403, 404, 405, 409, 411, 413, 431, 502, 503}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
    path=st.one_of(st.sampled_from(PATHS), st.text("/abcdefz?=&%.-", max_size=20)),
    auth=st.sampled_from([None, f"Bearer {TOKEN}", "Bearer wrong-token-0123456789", "Basic x"]),
    body=BODIES,
)
def test_any_http_request_gets_a_documented_status_and_promotes_nothing(
    live: tuple[FailoverManager, AdminServer],
    method: str,
    path: str,
    auth: str | None,
    body: bytes,
) -> None:
    mgr, srv = live
    target = path if path.startswith("/") else "/" + path
    head = f"{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    if auth:
        head += f"Authorization: {auth}\r\n"
    request = head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
    host, port = srv.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    status_line, _, rest = raw.partition(b"\r\n")
    status = int(status_line.split()[1])
    assert status in DOCUMENTED, raw[:300]  # never a 500
    headers, _, payload = rest.partition(b"\r\n\r\n")
    if b"application/json" in headers and payload:
        answer = json.loads(payload)
        if status >= 400 and not (status == 503 and target.startswith("/failover/health")):
            assert "\n" not in answer["error"]
            assert TOKEN not in answer["error"]
    assert all(e.kind != "failover" or e.outcome != "completed" for e in mgr.history())
    if mgr.paused:
        mgr.resume()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("switchover", "--url", "http://127.0.0.1:1", "--timeout", "nan"), "not a number of"),
        (("status", "--url", "http://127.0.0.1:1", "--timeout", "inf"), "not a number of"),
        (("history", "--file", "/nonexistent/h.jsonl", "--dsn", "host=h"), "does not exist"),
        (("serve", "--dsn", "host=h", "--webhook", "ftp://x/S3cret"), "--webhook must be an http"),
        (("serve", "--dsn", "host=h", "--webhook", "http://h:0/S3cret"), "--webhook must be"),
        (("serve", "--dsn", "host=h", "--etcd", "etcd:2379"), "etcd 'etcd:2379': expected http"),
        (("serve", "--dsn", "host=h", "--etcd", "http://u:S3cret@e:x"), "etcd 'http://u:***@e:x'"),
        (("serve", "--dsn", "host=h", "--etcd-prefix", "no-slash"), "etcd_prefix"),
        (("serve", "--dsn", "host=h", "--etcd-ttl", "1"), "is not in the range 2<=x<=300"),
        (
            ("serve", "--dsn", "host=h", "--etcd", "https://e:2379", "--etcd-cacert", "/no/ca"),
            "etcd_ca_file '/no/ca': cannot be used: No such file or directory",
        ),
        (("serve", "--dsn", "host=h", "--etcd-cert", "/c.pem"), "set etcd too"),
        (
            ("serve", "--dsn", "host=h", "--etcd", "https://e:2379", "--etcd-key", "/k.pem"),
            "etcd_key_file '/k.pem' needs etcd_cert_file",
        ),
        (("rejoin", "n", "--pgdata", "/", "--primary", "postgresql://u:S3cretZZpw%ZZ@h/db"), ""),
        (("lab", "up", "--backend", "kubernetes", "--dir", "/nonexistent"), "not a lab backend"),
        (("lab", "up", "--backend", "docker", "--pg-version", "16", "--dir", "/x"), "runs Postgr"),
    ],
)
@pytest.mark.usefixtures("clean_env")
def test_other_commands_say_what_is_wrong_in_one_line(args: tuple[str, ...], says: str) -> None:
    result = CliRunner().invoke(cli, list(args))
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 3, result.output
    assert says in lines[-1]
    assert "Traceback" not in result.output
    assert "S3cret" not in result.output
    assert "ZZpw" not in result.output


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("trigger", "--to", "node9", "--yes"), "HTTP 404: unknown node 'node9'"),
        (("switchover", "--to", "node9", "--yes"), "HTTP 404: unknown node 'node9'"),
        (("pause",), "HTTP 401: wrong token"),
        (("check-health",), "HTTP 401: wrong token"),
    ],
)
def test_through_url_a_wrong_request_exits_3_as_in_local_mode(
    live: tuple[FailoverManager, AdminServer], args: tuple[str, ...], says: str
) -> None:
    _, srv = live
    token = TOKEN if "node9" in args else "wrong-token-0123456789"
    result = CliRunner().invoke(cli, [*args[:1], "--url", srv.url, "--token", token, *args[1:]])
    assert result.exit_code == 3, result.output
    assert says in result.output
    assert "Traceback" not in result.output


@pytest.mark.usefixtures("clean_env")
def test_history_reads_a_file_without_any_cluster(tmp_path: Path) -> None:
    """``pgfailover history --file F`` alone, as the README shows it."""
    path = tmp_path / "history.jsonl"
    EventLog(path=path).record(FailoverEvent("failover", "node0", "node1", "crash", 1000.0))
    result = CliRunner().invoke(cli, ["history", "--file", str(path)])
    assert result.exit_code == 0, result.output
    assert "node0 -> node1" in " ".join(result.output.split())
    result = CliRunner().invoke(cli, ["history"])
    assert result.exit_code == 3, result.output  # no file and no cluster: say where to look
    assert "no history here: give --file" in result.output
