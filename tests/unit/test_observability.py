"""Metrics exposition, the Grafana dashboard, alert rules and the OpenAPI document.

No PostgreSQL here: a manager that was never opened still has a snapshot
(every node unknown) and counters, which is all the collector reads; the
gauges read from a snapshot are checked as a table over snapshots that the
real state machine builds from probe results. The dashboard and the rules
are checked against the names the exporter really produces; promtool checks
the rules when it is installed (``make test`` installs it and sets
``PGFAILOVER_REQUIRE_TOOLS=1``, so there it must be).
"""

from __future__ import annotations

import json
import math
import re
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pgfailover import FailoverConfig, FailoverManager, Node
from pgfailover.guards import SILENCE_MARGIN
from pgfailover.metrics import METRIC_NAMES, _families, _fill_snapshot, register
from pgfailover.model import Snapshot
from pgfailover.probe import ProbeResult
from pgfailover.server import AdminApp, openapi
from pgfailover.stream import PATH as STREAM_PATH
from pgfailover.stream import SUSPECT_PATH
from tests.tools import require_tool

from .fakes import GateDouble
from .helpers import down, healthy_round, primary, run, standby

ROOT = Path(__file__).resolve().parents[2]
METRIC = re.compile(r"\bpgfailover_[a-z_]+\b")


def _manager(name: str = "app") -> FailoverManager:
    nodes = [
        Node("node0", "host=127.0.0.1 port=1 user=app password=hunter2secret", priority=0),
        Node("node1", "host=127.0.0.1 port=2 user=app password=hunter2secret", priority=1),
    ]
    return FailoverManager(nodes=nodes, config=FailoverConfig(), name=name)


@pytest.fixture
def manager() -> Iterator[FailoverManager]:
    mgr = _manager()
    yield mgr
    mgr.close(timeout=1)


def _samples(registry: CollectorRegistry) -> list[Any]:
    text = generate_latest(registry).decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def test_exposition_uses_only_declared_names_and_labels_every_series(
    manager: FailoverManager,
) -> None:
    registry = CollectorRegistry()
    register(manager, registry)
    samples = _samples(registry)
    names = {s.name for s in samples}
    assert names <= METRIC_NAMES, names - METRIC_NAMES
    assert {
        "pgfailover_cluster_state",
        "pgfailover_node_up",
        "pgfailover_failovers_total",
        "pgfailover_probe_rounds_total",
        "pgfailover_failover_duration_seconds_count",
    } <= names
    assert all(s.labels.get("cluster") == "app" for s in samples)
    states = {s.labels["state"]: s.value for s in samples if s.name == "pgfailover_cluster_state"}
    assert states["unknown"] == 1
    assert sum(states.values()) == 1
    assert "hunter2secret" not in generate_latest(registry).decode()


class _Gate(GateDouble):
    """A promotion gate (the arbiter lease's part the collector reads), held or not."""

    def __init__(self, held: bool) -> None:
        super().__init__()
        self.held = held

    @property
    def holding(self) -> object | None:
        return object() if self.held else None

    def fencing_revision(self) -> int | None:
        return 7 if self.held else None

    def status(self) -> dict[str, Any]:
        return {"held": self.held, "holder": self.identity if self.held else "other:2"}


@pytest.mark.parametrize(
    ("gate", "exported"),
    [(None, None), (_Gate(held=True), 1.0), (_Gate(held=False), 0.0)],
    ids=["no lease", "held", "not held"],
)
def test_the_arbiter_lease_is_exported_only_where_there_is_one(
    gate: _Gate | None, exported: float | None
) -> None:
    nodes = [Node("node0", "host=127.0.0.1 port=1 user=app"), Node("node1", "host=x port=2")]
    mgr = FailoverManager(nodes=nodes, config=FailoverConfig(), name="app", promotion_gate=gate)
    try:
        registry = CollectorRegistry()
        register(mgr, registry)
        found = [s.value for s in _samples(registry) if s.name == "pgfailover_arbiter_lease_held"]
        assert found == ([] if exported is None else [exported])
        assert mgr.lease_status() == (None if gate is None else gate.status())
        assert mgr.get_metrics().get("arbiter_lease_held") == exported  # the JSON twin
    finally:
        mgr.close(timeout=1)


def test_a_manager_that_never_probed_exports_no_reads_no_blocked_commits_and_no_hang_bound(
    manager: FailoverManager,
) -> None:
    manager.counters.bump("sync_lowered")
    registry = CollectorRegistry()
    register(manager, registry)
    values = {(s.name, s.labels.get("node")): s.value for s in _samples(registry)}
    assert values[("pgfailover_commits_blocked", None)] == 0
    assert values[("pgfailover_sync_lowered_total", None)] == 1
    # No primary known: every node is a non-primary, and none is a standby yet.
    assert values[("pgfailover_node_serves_reads", "node0")] == 0
    assert values[("pgfailover_node_serves_reads", "node1")] == 0
    # No standby is up to prove a hung primary silent: no bound at all, not +Inf.
    assert ("pgfailover_hang_failover_seconds", None) not in values


# wal_receiver_timeout 4s (the helpers' default): a standby's silence proves
# the primary gone after half of it plus the margin; that is later than the
# manager's own detection with the default config.
BOUND = 4.0 / 2 + SILENCE_MARGIN
ORPHAN = [primary("node0", tl=2), standby("node1", tl=2), standby("node2", tl=1, upstream=None)]
SYNC_WAITS = [primary("node0", sync="node1", streaming=("node2",)), *healthy_round()[1:]]
SYNC_STREAMS = [primary("node0", sync="node1", streaming=("node1",)), *healthy_round()[1:]]
NEVER_TIMES_OUT = [primary("node0"), standby("node1"), standby("node2", receiver_timeout=0.0)]
STANDBYS_DOWN = [healthy_round(), *[[primary("node0"), down("node1"), down("node2")]] * 3]

# (name, probe rounds, commits_blocked, hang_failover_seconds (None: absent), serves_reads)
SNAPSHOT_CASES: list[tuple[str, list[list[ProbeResult]], int, float | None, dict[str, int]]] = [
    ("healthy, async", [healthy_round()], 0, BOUND, {"node1": 1, "node2": 1}),
    ("sync standby not streaming: commits wait", [SYNC_WAITS], 1, BOUND, {"node1": 1, "node2": 1}),
    ("the sync standby streams", [SYNC_STREAMS], 0, BOUND, {"node1": 1, "node2": 1}),
    ("a receiver never times out", [NEVER_TIMES_OUT], 0, math.inf, {"node1": 1, "node2": 1}),
    ("an orphan on the old timeline", [ORPHAN], 0, BOUND, {"node1": 1, "node2": 0}),
    ("every standby down: no bound", STANDBYS_DOWN, 0, None, {"node1": 0, "node2": 0}),
]


def _gauges(snap: Snapshot, config: FailoverConfig) -> dict[tuple[str, str | None], float]:
    families = _families()
    _fill_snapshot(families, "app", snap, config)
    return {
        (s.name, s.labels.get("node")): s.value
        for family in families.values()
        for s in family.samples
    }


@pytest.mark.parametrize(
    ("rounds", "blocked", "hang", "serves_reads"),
    [c[1:] for c in SNAPSHOT_CASES],
    ids=[c[0] for c in SNAPSHOT_CASES],
)
def test_snapshot_gauges_for_commits_hang_detection_and_reads(
    rounds: Iterable[list[ProbeResult]],
    blocked: int,
    hang: float | None,
    serves_reads: dict[str, int],
) -> None:
    config = FailoverConfig()
    gauges = _gauges(run(rounds, config)[0], config)
    assert gauges[("pgfailover_commits_blocked", None)] == blocked
    assert gauges.get(("pgfailover_hang_failover_seconds", None)) == hang
    reads = {
        node: value
        for (name, node), value in gauges.items()
        if name == "pgfailover_node_serves_reads" and node is not None
    }
    assert reads == serves_reads  # the primary (node0) has no series


def test_one_registry_exports_several_clusters_and_refuses_a_duplicate_name() -> None:
    first, second, clash = _manager("orders"), _manager("billing"), _manager("orders")
    try:
        registry = CollectorRegistry()
        register(first, registry)
        register(second, registry)
        clusters = {s.labels["cluster"] for s in _samples(registry)}
        assert clusters == {"orders", "billing"}
        with pytest.raises(ValueError, match="'orders' is already exported"):
            register(clash, registry)
        second.close(timeout=1)
        assert {s.labels["cluster"] for s in _samples(registry)} == {"orders"}
    finally:
        for mgr in (first, second, clash):
            mgr.close(timeout=1)


def test_dashboard_queries_only_metrics_the_exporter_produces() -> None:
    dashboard = json.loads((ROOT / "grafana/dashboards/pgfailover.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    used = {m for e in exprs for m in METRIC.findall(e)}
    assert len(used) >= 10
    assert used <= METRIC_NAMES, used - METRIC_NAMES
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    topics = ["cluster state", "primary", "health", "lag", "failover", "probe", "queries"]
    topics += ["commits blocked", "synchronous", "hang", "reads", "maintenance", "rejoin"]
    topics += ["redundancy", "quorum", "read-only", "availability", "circuit breakers"]
    topics += ["read strategy"]
    for topic in topics:
        assert topic in titles, topic
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for path in (ROOT / "grafana/provisioning").rglob("*.yml"):
        assert yaml.safe_load(path.read_text())["apiVersion"] == 1, path


RULES = ROOT / "alerts/pgfailover.rules.yml"


def test_alert_rules_cover_the_original_names_and_use_real_metrics() -> None:
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    names = {r["alert"] for r in rules}
    assert {
        "PrimaryDatabaseDown",
        "AllDatabasesDown",
        "FailoverOccurred",
        "SplitBrain",
        "StalePrimaryOnline",
        "ReplicationLagHigh",
        "RedundancyLost",
        "HealthCheckFailing",
        "ExporterDown",
    } <= names
    assert {
        "CommitsBlocked",
        "SynchronousReplicationLowered",
        "SlowHangFailover",
        "StandbyServesNoReads",
    } <= names
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]
        used = set(METRIC.findall(rule["expr"]))
        assert used, rule["alert"]
        assert used <= METRIC_NAMES, (rule["alert"], used - METRIC_NAMES)


@pytest.mark.parametrize(
    ("tool", "args"),
    [
        ("promtool", ["check", "rules", "alerts/pgfailover.rules.yml"]),
        ("promtool", ["test", "rules", "alerts/tests/pgfailover.test.yml"]),
        ("promtool", ["check", "config", "alerts/prometheus.yml"]),
        ("amtool", ["check-config", "alerts/alertmanager.yml"]),
    ],
    ids=["check-rules", "test-rules", "check-config", "alertmanager-config"],
)
def test_prometheus_tools_accept_the_files(tool: str, args: list[str]) -> None:
    proc = subprocess.run(
        [require_tool(tool), *args],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_openapi_document_is_valid_and_matches_the_routes(manager: FailoverManager) -> None:
    from openapi_spec_validator import validate

    doc = openapi()
    validate(doc)
    documented = {
        (method.upper(), path)
        for path, ops in doc["paths"].items()
        for method in ops
        if method != "servers"  # the stream's own listener
    }
    app = AdminApp(manager, token="t" * 32)
    stream_port = {("GET", STREAM_PATH), ("POST", SUSPECT_PATH)}
    served = set(app.routes) | {("GET", "/metrics")} | stream_port
    assert documented == served
    admin = {key for key, (_, needs_token) in app.routes.items() if needs_token}
    secured = {
        (method.upper(), path)
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
        if method != "servers" and op.get("security")
    }
    assert secured == admin


def _get(app: AdminApp, path: str) -> tuple[int, Any]:
    """One GET through the WSGI interface, as a server would call it."""
    answer: list[str] = []

    def start_response(status: str, _headers: list[tuple[str, str]], _exc: Any = None) -> Any:
        answer.append(status)
        return lambda _data: None

    body = b"".join(app({"REQUEST_METHOD": "GET", "PATH_INFO": path}, start_response))
    return int(answer[0].split()[0]), json.loads(body)


@pytest.mark.parametrize("path", ["/failover/status", "/failover/metrics", "/failover/health"])
def test_answers_of_a_manager_that_never_probed_match_the_document(
    manager: FailoverManager, path: str
) -> None:
    doc = openapi()
    status, body = _get(AdminApp(manager), path)
    schema = doc["paths"][path]["get"]["responses"][str(status)]["content"]["application/json"]
    jsonschema.validate(body, {"components": doc["components"], **schema["schema"]})
    if path == "/failover/health":
        assert (status, body["status"]) == (503, "unavailable")
