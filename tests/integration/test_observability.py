"""The status/admin HTTP API and the metrics, against lab clusters and a real Prometheus.

Every JSON answer is validated against the OpenAPI document's schema for
that endpoint and status, so the document stays true. The end-to-end test
runs Debian's Prometheus on 127.0.0.1 with the repository's alert rules,
scraping a manager over a lab cluster, and watches the alerts through
Prometheus's own API while the primary is killed and a standby promoted.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pgfailover import FailoverManager
from pgfailover.availability import WindowStats
from pgfailover.lab import LocalLab, free_port
from pgfailover.server import AdminServer, openapi, serve
from tests.tools import require_tool

from .helpers import FAST, config_file, get_json, manager_for, serve_process, wait_until

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-admin-token-for-tests"
DOC = openapi()


def _call(  # noqa: PLR0917 - a test helper read like an HTTP request line
    server: AdminServer,
    method: str,
    path: str,
    body: Any = None,
    token: str | None = None,
    raw: bytes | None = None,
) -> tuple[int, Any, str]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(server.url + path, data=data, method=method)  # noqa: S310
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
            status, text, ctype = response.status, response.read().decode(), response.headers
    except urllib.error.HTTPError as exc:
        with exc:  # an unclosed error response leaks its socket (ResourceWarning)
            status, text, ctype = exc.code, exc.read().decode(), exc.headers
    content_type = ctype.get("Content-Type", "")
    parsed = json.loads(text) if content_type.startswith("application/json") else text
    if content_type.startswith("application/json"):
        _check_schema(method, path.split("?", maxsplit=1)[0], status, parsed)
    return status, parsed, text


def _check_schema(method: str, path: str, status: int, body: Any) -> None:
    """The answer matches what the OpenAPI document promises for it."""
    op = DOC["paths"].get(path, {}).get(method.lower())
    if op is None:
        schema: dict[str, Any] = {"$ref": "#/components/schemas/Error"}
    else:
        response = op["responses"].get(str(status))
        assert response is not None, f"{method} {path} answered {status}, not documented"
        schema = response["content"]["application/json"]["schema"]
    resolver = {"components": DOC["components"], **schema}
    jsonschema.validate(body, resolver)


@pytest.fixture
def served(fresh_lab: LocalLab) -> Iterator[tuple[FailoverManager, AdminServer]]:
    with manager_for(fresh_lab, name="app") as mgr, serve(mgr, token=TOKEN) as server:
        yield mgr, server


def test_read_endpoints_answer_as_documented(
    served: tuple[FailoverManager, AdminServer], fresh_lab: LocalLab
) -> None:
    _, server = served
    status, body, text = _call(server, "GET", "/failover/status")
    assert status == 200
    assert body["current_primary"] == "node0"
    assert {n["name"] for n in body["standbys"]} == {"node1", "node2"}
    assert "password" not in text
    assert _call(server, "GET", "/failover/metrics")[0] == 200
    status, body, _ = _call(server, "GET", "/failover/health")
    assert (status, body["primary"]) == (200, "node0")
    assert _call(server, "GET", "/failover/history?limit=5")[1]["events"] == []
    assert _call(server, "GET", "/failover/history?limit=x")[0] == 400
    assert _call(server, "GET", "/nope")[0] == 404
    assert _call(server, "DELETE", "/failover/status")[0] == 405
    assert _call(server, "GET", "/openapi.json")[1]["openapi"].startswith("3.")

    status, _, text = _call(server, "GET", "/metrics")
    assert status == 200
    samples = {
        (s.name, s.labels.get("node")): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    assert samples[("pgfailover_primary_healthy", None)] == 1
    assert samples[("pgfailover_node_is_primary", "node0")] == 1
    assert samples[("pgfailover_healthy_standbys", None)] == 2

    fresh_lab.kill("node0")  # external mode and nobody promotes: no writable primary
    wait_until(lambda: _call(server, "GET", "/failover/health")[0] == 503, what="health 503")


def test_health_answers_503_while_commits_cannot_complete(
    served: tuple[FailoverManager, AdminServer], fresh_lab: LocalLab
) -> None:
    _, server = served

    def series(name: str) -> dict[str | None, float]:
        text = _call(server, "GET", "/metrics")[2]
        return {
            s.labels.get("node"): s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == name
        }

    def health() -> tuple[int, Any]:
        status, body, _ = _call(server, "GET", "/failover/health")
        return status, body

    wait_until(
        lambda: series("pgfailover_node_serves_reads") == {"node1": 1, "node2": 1},
        what="both standbys serving reads",
    )
    assert series("pgfailover_commits_blocked") == {None: 0}
    assert series("pgfailover_hang_failover_seconds")[None] > 0  # finite or +Inf: standbys up
    assert health()[0] == 200

    # External mode: nobody lowers a setting that names no streaming standby.
    fresh_lab.run_sql("node0", "ALTER SYSTEM SET synchronous_standby_names = 'nobody'")
    fresh_lab.run_sql("node0", "SELECT pg_reload_conf()")
    wait_until(lambda: health()[1]["status"] == "commits_blocked", what="health: commits blocked")
    status, body = health()
    assert (status, body["primary"]) == (503, "node0")
    assert "every COMMIT waits" in body["reason"]
    assert series("pgfailover_commits_blocked") == {None: 1}
    sync = _call(server, "GET", "/failover/status")[1]["synchronous_replication"]
    assert (sync["synchronous_standby_names"], sync["commits_blocked"]) == ("nobody", True)

    fresh_lab.run_sql("node0", "ALTER SYSTEM RESET synchronous_standby_names")
    fresh_lab.run_sql("node0", "SELECT pg_reload_conf()")
    wait_until(lambda: health()[0] == 200, what="health: commits complete again")
    assert health()[1]["status"] == "ok"
    assert series("pgfailover_commits_blocked") == {None: 0}


def test_admin_endpoints_need_the_token_and_report_guards(
    served: tuple[FailoverManager, AdminServer],
) -> None:
    mgr, server = served
    assert _call(server, "POST", "/failover/check-health")[0] == 401
    assert _call(server, "POST", "/failover/check-health", token="wrong-token-xxxxxxx")[0] == 401
    assert _call(server, "POST", "/failover/check-health", token=TOKEN)[0] == 200
    status, body, _ = _call(server, "POST", "/failover/trigger", raw=b"{not json", token=TOKEN)
    assert status == 400
    assert "JSON" in body["error"]
    assert _call(server, "POST", "/failover/trigger", {"force": "yes"}, token=TOKEN)[0] == 400
    assert _call(server, "POST", "/failover/trigger", {"to": "node1"}, token=TOKEN)[0] == 400
    status, body, _ = _call(server, "POST", "/failover/trigger", {"target": "node9"}, token=TOKEN)
    assert status == 404
    assert body["nodes"] == ["node0", "node1", "node2"]
    status, body, _ = _call(server, "POST", "/failover/trigger", {"target": "node1"}, token=TOKEN)
    assert status == 409
    assert body["guard"] == "primary_reachable"
    assert mgr.snapshot.primary == "node0"
    status, body, _ = _call(
        server, "POST", "/failover/trigger", {"target": "node1", "force": True}, token=TOKEN
    )
    assert status == 200, body
    assert body["event"]["to"] == "node1"
    assert body["event"]["outcome"] == "completed"
    wait_until(lambda: mgr.snapshot.primary == "node1", what="writes moved to node1")
    events = _call(server, "GET", "/failover/history")[1]["events"]
    assert [e["outcome"] for e in events][-2:] == ["refused", "completed"]


def test_admin_endpoints_are_disabled_without_a_token(fresh_lab: LocalLab) -> None:
    with manager_for(fresh_lab) as mgr, serve(mgr) as server:
        status, body, _ = _call(server, "POST", "/failover/trigger", {}, token="anything-at-all")
        assert status == 403
        assert "disabled" in body["error"]
        assert mgr.snapshot.primary == "node0"


def _prometheus(tmp_path: Path, target_port: int) -> tuple[subprocess.Popen[bytes], str]:
    binary = require_tool("prometheus")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {ROOT / 'alerts/pgfailover.rules.yml'}\n"
        "scrape_configs:\n  - job_name: pgfailover\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{target_port}']\n"
    )
    with (tmp_path / "prometheus.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    return proc, f"http://127.0.0.1:{port}"


def _api(base: str, path: str) -> Any:
    try:
        with urllib.request.urlopen(base + path, timeout=5) as response:  # noqa: S310 - loopback
            return json.loads(response.read())["data"]
    except urllib.error.HTTPError as exc:
        # Prometheus answers 503 while it starts: close the response (an open
        # one leaks its socket) and let the caller's polling try again.
        exc.close()
        raise RuntimeError(f"Prometheus answered HTTP {exc.code} to {path}") from None


def _alerts(base: str) -> dict[str, str]:
    return {a["labels"]["alertname"]: a["state"] for a in _api(base, "/api/v1/alerts")["alerts"]}


@pytest.mark.timeout(180)
def test_prometheus_sees_the_failover_alerts(fresh_lab: LocalLab, tmp_path: Path) -> None:
    with manager_for(fresh_lab, FAST, name="app") as mgr, serve(mgr) as server:
        proc, base = _prometheus(tmp_path, server.port)
        try:
            wait_until(
                lambda: _api(base, "/api/v1/query?query=pgfailover_primary_healthy")["result"],
                timeout=60,
                what="Prometheus scraping pgfailover",
            )
            fresh_lab.kill("node0")  # external mode: nobody promotes yet
            wait_until(
                lambda: _alerts(base).get("PrimaryDatabaseDown") == "firing",
                timeout=60,
                what="PrimaryDatabaseDown firing",
            )
            fresh_lab.promote("node1")  # the orchestrator acts; the manager follows
            wait_until(lambda: mgr.snapshot.primary == "node1", what="writes on node1")
            wait_until(
                lambda: (
                    _alerts(base).get("FailoverOccurred") == "firing"
                    and "PrimaryDatabaseDown" not in _alerts(base)
                ),
                timeout=60,
                what="FailoverOccurred firing and PrimaryDatabaseDown resolved",
            )
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _dashboard_metrics() -> set[str]:
    """The series names the Grafana dashboard's queries use."""
    dashboard = json.loads((ROOT / "grafana/dashboards/pgfailover.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    return {m for e in exprs for m in re.findall(r"\bpgfailover_[a-z_]+\b", e)}


def test_redundancy_and_read_only_mode_in_a_live_scrape(sync_lab: LocalLab) -> None:
    """Quorum sync, two standbys: multi; one stopped: dual, the quorum (ANY 1) still holds."""
    with manager_for(sync_lab, FAST.replace(promotion="auto")) as mgr, serve(mgr) as server:

        def scraped() -> dict[str, float]:
            with urllib.request.urlopen(server.url + "/metrics", timeout=5) as response:  # noqa: S310 - loopback
                text = response.read().decode()
            return {
                s.name + "".join(f"{{{v}}}" for k, v in s.labels.items() if k == "level"): s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
            }

        wait_until(lambda: scraped()["pgfailover_redundancy_copies"] == 3, what="3 copies")
        samples = scraped()
        # Every series the dashboard draws is in a live scrape (the failover
        # timestamp only once a failover happened; queries once one ran; the
        # source's only from a manager that follows one: test_following; the
        # lease's only from an arbiter with --etcd: test_arbiters).
        mgr.query("SELECT 1", readonly=True)
        live = {name.split("{")[0] for name in scraped()}
        assert _dashboard_metrics() - live == {
            "pgfailover_last_failover_timestamp_seconds",
            "pgfailover_source_following",
            "pgfailover_source_fallbacks_total",
            "pgfailover_arbiter_lease_held",
        }
        assert samples["pgfailover_redundancy_level{multi}"] == 1
        assert samples["pgfailover_sync_quorum_ok"] == 1
        assert samples["pgfailover_read_only"] == 0
        sync_lab.stop("node2")
        wait_until(lambda: scraped()["pgfailover_redundancy_copies"] == 2, what="2 copies")
        samples = scraped()
        assert samples["pgfailover_redundancy_level{dual}"] == 1
        assert samples["pgfailover_sync_quorum_ok"] == 1  # ANY 1 of node1, node2: node1 streams
        held = mgr.get_failover_status()["redundancy"]
        assert (held["level"], held["streaming_standbys"]) == ("dual", ["node1"])


def _hour(mgr: FailoverManager) -> WindowStats:
    report = mgr.availability()
    assert report is not None
    return report["1h"]


def test_availability_survives_a_restart_through_the_history_file(
    fresh_lab: LocalLab, tmp_path: Path
) -> None:
    """An outage (the primary killed, an orchestrator promotes 0.4 s later) counts against
    availability; a new manager on the same history file (a restart of ``serve``) starts
    from those figures, not from 100 %."""
    config = FAST.replace(history_file=str(tmp_path / "history.jsonl"))
    with manager_for(fresh_lab, config, name="app") as mgr, serve(mgr) as server:
        wait_until(lambda: _hour(mgr)["observed_seconds"] > 0.5, what="observed")
        assert _hour(mgr)["ratio"] == 1.0
        fresh_lab.kill("node0")
        wait_until(lambda: _hour(mgr)["down_seconds"] >= 0.4, what="an outage of 0.4s")
        fresh_lab.promote("node1")
        wait_until(lambda: mgr.snapshot.primary == "node1", timeout=30, what="writes on node1")
        before = _hour(mgr)
        assert before["ratio"] is not None
        assert before["ratio"] < 1.0
        assert before["down_seconds"] >= 0.4  # at least the orchestrator's delay
        assert before["down_seconds"] < before["observed_seconds"]
        status = _call(server, "GET", "/failover/status")[1]  # schema-checked
        assert status["availability"]["24h"]["down_seconds"] == pytest.approx(
            status["availability"]["1h"]["down_seconds"]
        )
        scraped = {
            (s.name, s.labels.get("window")): s.value
            for family in text_string_to_metric_families(_call(server, "GET", "/metrics")[2])
            for s in family.samples
        }
        assert scraped[("pgfailover_availability_ratio", "1h")] < 1.0
        assert scraped[("pgfailover_availability_observed_seconds", "7d")] > 0
    with manager_for(fresh_lab, config, name="app") as again:
        after = _hour(again)
        assert after["down_seconds"] == pytest.approx(before["down_seconds"], abs=0.01)
        assert after["observed_seconds"] >= before["observed_seconds"]
        assert after["ratio"] is not None
        assert after["ratio"] < 1.0
        assert [e.kind for e in again.history()] == ["failover"]  # ledger lines are not events


def test_availability_survives_a_kill_9_of_serve(fresh_lab: LocalLab, tmp_path: Path) -> None:
    """``pgfailover serve`` (auto mode) fails the primary over, is killed with SIGKILL, and
    the next ``serve`` on the same config reports the same outage from the history file."""
    config = config_file(fresh_lab, tmp_path)

    def hour(url: str) -> WindowStats:
        figures: WindowStats = get_json(url + "/failover/status")["availability"]["1h"]
        return figures

    with serve_process(config, tmp_path / "first.log") as first:
        wait_until(lambda: hour(first["url"])["observed_seconds"] > 0.5, what="observed")
        fresh_lab.kill("node0")
        # Either standby (the most advanced one: replication is asynchronous here).
        wait_until(
            lambda: (
                get_json(first["url"] + "/failover/status")["current_primary"]
                in ("node1", "node2")
            ),
            timeout=30,
            what="a standby promoted",
        )
        # The outage ends (and its line is written) at the first round that sees the new
        # primary healthy, which may come after the status names it primary: until then the
        # figure still grows.
        readings = [hour(first["url"])["down_seconds"]]

        def settled() -> bool:
            readings.append(hour(first["url"])["down_seconds"])
            return readings[-1] == readings[-2]

        wait_until(settled, timeout=10, what="the outage to end")
        before = hour(first["url"])
        assert before["down_seconds"] > 0
        os.kill(first["pid"], signal.SIGKILL)  # no close(): what the file holds is all
    with serve_process(config, tmp_path / "second.log") as second:
        after = hour(second["url"])
        assert after["down_seconds"] == pytest.approx(before["down_seconds"], abs=0.01)
        assert after["ratio"] is not None
        assert after["ratio"] < 1.0
        history = get_json(second["url"] + "/failover/history")
        assert [e["kind"] for e in history["events"]] == ["failover"]
