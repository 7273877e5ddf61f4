"""A manager opened before a fork (gunicorn --preload, Celery's prefork pool) in the child.

The child must not use the parent's sessions, must not end them, and must
have a working manager of its own: callbacks, monitor and routing included;
and so must each worker of ``gunicorn --preload`` serving a Flask app whose
``PgFailover(app)`` opened the manager in gunicorn's master.
An asyncio manager, whose pools belong to the parent's event loop, is
refused in the child with a line saying why.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgfailover.lab import LocalLab

from .helpers import lab_config, serve_process, stop_process, wait_until

pytestmark = pytest.mark.timeout(120)

SCRIPT = Path(__file__).with_name("forkcheck.py")
ROWS = 200


def _run(lab: LocalLab, kind: str, source: str | None = None) -> dict[str, Any]:
    nodes = [[n.name, n.dsn] for n in lab.manager_nodes()]
    spec = {"nodes": nodes, "rows": ROWS, "kind": kind, "source": source}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = dict(json.loads(done.stdout.strip().splitlines()[-1]))
    assert out["child"] is not None, f"the child hung or died: {done.stderr[-3000:]}"
    return out


@pytest.fixture
def forked_table(shared_lab: LocalLab) -> Iterator[LocalLab]:
    """The shared lab with no table ``forked`` before the test, and none after it."""

    def drop() -> None:
        with psycopg.connect(shared_lab.dsn("node0"), autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS forked")

    drop()
    try:
        yield shared_lab
    finally:
        drop()


def _all_stored(lab: LocalLab, out: dict[str, Any], rows: int) -> None:
    """Every write the parent and the child acknowledged is on the primary."""
    with psycopg.connect(lab.dsn("node0")) as conn:
        stored = {r[0] for r in conn.execute("SELECT id FROM forked")}
    acked = set(out["acked"]) | set(out["child"]["acked"])
    assert len(acked) == rows
    assert acked <= stored


def test_a_forked_child_opens_its_own_manager_and_leaves_the_parents_sessions(
    forked_table: LocalLab,
) -> None:
    out = _run(forked_table, "sync")
    child = out["child"]
    assert "error" not in child, child["error"]
    # Its own session, not the parent's pooled one (one connection per pool).
    assert child["backend"] != out["backend"]
    # The parent's session outlived the child and its close(): nothing ended it.
    assert out["backend_after"] == out["backend"]
    # A working manager: its monitor, its callbacks (registered before the fork),
    # its reads (read-your-writes).
    assert child["monitor"]
    assert child["state"] == "healthy"
    assert child["first_status"] == "healthy"  # status, its first use, opened it
    assert "healthy" in child["changes"]
    assert child["read"] == ROWS
    _all_stored(forked_table, out, 2 * ROWS)


def test_a_forked_follower_follows_the_arbiter_on_a_stream_of_its_own(
    forked_table: LocalLab, tmp_path: Path
) -> None:
    config = lab_config(forked_table, tmp_path / "pgfailover.toml")
    # Not auto: an auto arbiter tunes the standbys' settings, and this lab is shared.
    options = ("--stream-port", "0", "--promotion", "manual")
    with serve_process(config, tmp_path / "arbiter.log", *options) as ready:
        out = _run(forked_table, "sync", source=ready["stream_url"])
    child = out["child"]
    assert "error" not in child, child["error"]
    assert child["source"] == "following"
    assert out["source"] == {"mode": "following", "fallbacks": 0}  # the parent never lost it
    assert child["backend"] != out["backend"]
    assert out["backend_after"] == out["backend"]
    _all_stored(forked_table, out, 2 * ROWS)


def test_a_fork_while_another_thread_opens_the_manager_leaves_the_child_a_working_one(
    shared_lab: LocalLab,
) -> None:
    out = _run(shared_lab, "opening")
    child = out["child"]
    assert "error" not in child, child["error"]
    assert child["backend"] != out["backend"]
    assert out["backend_after"] == out["backend"]


def test_failover_engines_in_a_forked_child_use_new_engine_pools(forked_table: LocalLab) -> None:
    pytest.importorskip("sqlalchemy")
    out = _run(forked_table, "sqlalchemy")
    child = out["child"]
    assert "error" not in child, child["error"]
    # The write engine's one pooled connection is the parent's alone, before, during
    # and after the child's writes; the child's is its own.
    assert out["backend_during"] == out["backend_after"] == out["backend"]
    assert child["backend"] != out["backend"]
    _all_stored(forked_table, out, 4 * ROWS)


def test_a_forked_child_refuses_an_asyncio_manager_saying_why(shared_lab: LocalLab) -> None:
    out = _run(shared_lab, "async")
    child = out["child"]
    assert "error" not in child, child["error"]
    refused = child["refused"]
    assert "forked" in refused
    assert "event loop" in refused
    assert out["backend_after"] == out["backend"]


PRELOADED_APP = """\
import os
from pathlib import Path

from flask import Flask, jsonify

from pgfailover.contrib.flask import PgFailover

app = Flask(__name__)
app.config["PGFAILOVER_SOURCE"] = os.environ["APP_CONFIG"]
pgfailover = PgFailover(app)  # opens the manager: in gunicorn's master, with --preload
backend = pgfailover.manager.query("SELECT pg_backend_pid()")[0][0]
Path(os.environ["APP_MASTER"]).write_text(f"{os.getpid()} {backend}")


@app.post("/write/<int:i>")
def write(i):
    rows = pgfailover.manager.query(
        "INSERT INTO preloaded (id, worker) VALUES (%s, %s)"
        " RETURNING pg_backend_pid(), pg_sleep(0.05)::text",
        (i, os.getpid()),
    )
    return jsonify(worker=os.getpid(), backend=rows[0][0])
"""


def test_gunicorn_preload_workers_each_write_on_sessions_of_their_own(
    shared_lab: LocalLab, tmp_path: Path
) -> None:
    pytest.importorskip("gunicorn")
    pytest.importorskip("flask")
    (tmp_path / "app.py").write_text(PRELOADED_APP)
    config = lab_config(shared_lab, tmp_path / "pgfailover.toml")
    master_file = tmp_path / "master"
    with psycopg.connect(shared_lab.dsn("node0"), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS preloaded")
        conn.execute("CREATE TABLE preloaded (id int PRIMARY KEY, worker int)")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port, fd = listener.getsockname()[1], listener.fileno()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGFAILOVER")}
    env |= {"APP_CONFIG": str(config), "APP_MASTER": str(master_file)}
    # Sync workers: each serves one request at a time, so concurrent requests reach both.
    args = [sys.executable, "-m", "gunicorn", "--preload", "--workers", "2"]
    args += ["--bind", f"fd://{fd}", "--graceful-timeout", "5", "app:app"]
    with (tmp_path / "gunicorn.log").open("w") as log:
        proc = subprocess.Popen(  # stopped by its PID below
            args, cwd=tmp_path, env=env, stdout=log, stderr=log, pass_fds=(fd,)
        )
    listener.close()
    try:
        wait_until(master_file.exists, 60, "the app loaded in gunicorn's master")
        master_pid, master_backend = map(int, master_file.read_text().split())
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda i: _post(port, f"/write/{i}"), range(1, 49)))
    finally:
        stop_process(proc)
    log_text = (tmp_path / "gunicorn.log").read_text()
    assert all(status == 200 for status, _ in answers), log_text[-3000:]
    served = {body["worker"] for _, body in answers}
    assert len(served) == 2, f"both workers served: {served}"
    assert master_pid not in served
    owner: dict[int, set[int]] = {}
    for _, body in answers:
        owner.setdefault(body["backend"], set()).add(body["worker"])
    # No session is shared: not the master's, not between the workers.
    assert master_backend not in owner
    assert all(len(workers) == 1 for workers in owner.values()), owner
    with psycopg.connect(shared_lab.dsn("node0"), autocommit=True) as conn:
        stored: dict[int, int] = dict(conn.execute("SELECT id, worker FROM preloaded").fetchall())
        conn.execute("DROP TABLE preloaded")
    assert stored == {i: body["worker"] for i, (_, body) in enumerate(answers, start=1)}


def _post(port: int, path: str) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path)
        response = conn.getresponse()
        body = response.read()
        return response.status, json.loads(body) if response.status == 200 else body
    finally:
        conn.close()
