"""The example apps run against a lab cluster."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pgfailover.lab import LocalLab

from .helpers import wait_until

ROOT = Path(__file__).resolve().parents[2]


def _lab_toml(lab: LocalLab, path: Path) -> Path:
    lines = []
    for node in lab.manager_nodes():
        lines += ["[[nodes]]", f'name = "{node.name}"', f'dsn = "{node.dsn}"']
        lines += [f"priority = {node.priority}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_flask_example_writes_on_the_primary_and_reads_a_standby(fresh_lab: LocalLab) -> None:
    pytest.importorskip("flask")
    spec = importlib.util.spec_from_file_location(
        "flask_example", ROOT / "examples/flask_app/app.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    app, failover = module.create_app(fresh_lab.manager_nodes())
    try:
        client = app.test_client()
        created: Any = client.post("/notes?text=hello").json
        assert created["served_by_port"] == fresh_lab.node("node0").port
        standbys = (fresh_lab.node("node1").port, fresh_lab.node("node2").port)

        def listed_on_a_standby() -> bool:
            # Until a standby has replayed the CREATE TABLE, a read there fails.
            response = app.test_client().get("/notes")
            return bool(
                response.status_code == 200 and response.json["served_by_port"] in standbys
            )

        wait_until(listed_on_a_standby, what="the notes listed from a standby")
    finally:
        failover.close()


def test_django_example_migrates_and_reports_status(fresh_lab: LocalLab, tmp_path: Path) -> None:
    pytest.importorskip("django")
    env = {**os.environ, "PGFAILOVER_SOURCE": str(_lab_toml(fresh_lab, tmp_path / "lab.toml"))}
    manage = str(ROOT / "examples/django_project/manage.py")
    for command in (["migrate", "--run-syncdb", "-v", "0"], ["pgfailover_status"]):
        proc = subprocess.run(
            [sys.executable, manage, *command],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            check=False,
        )
        assert proc.returncode == 0, (command, proc.stdout, proc.stderr)
    assert "primary: node0" in proc.stdout
    assert "\x1b[" not in proc.stdout  # piped: no colour codes
    tables = fresh_lab.run_sql("node0", "SELECT count(*) FROM notes_note")
    assert tables == [(0,)]


def test_django_test_runner_passes_a_write_then_read_test_case(fresh_lab: LocalLab) -> None:
    """``manage.py test`` with the README's router: one test database, dropped cleanly."""
    pytest.importorskip("django")
    env = {**os.environ, "PGFAILOVER_SOURCE": fresh_lab.url}
    manage = str(ROOT / "examples/django_project/manage.py")
    proc = subprocess.run(
        [sys.executable, manage, "test", "notes", "--noinput", "-v", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert "Ran 2 tests" in proc.stderr
    assert "test_a_write_is_read_back_in_the_same_test" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-3:-1] == ["", "OK"]
    databases = {r[0] for r in fresh_lab.run_sql("node0", "SELECT datname FROM pg_database")}
    assert not {d for d in databases if d.startswith("test_")}, databases
