"""A Flask app writing and reading through pgfailover (run: `python examples/flask_app/app.py`).

Start a cluster first with `pgfailover lab up` (or set PGFAILOVER_SOURCE to
a pgfailover.toml or a DSN). Then:

    curl -X POST 'http://127.0.0.1:5000/notes?text=hello'   # on the primary
    curl http://127.0.0.1:5000/notes                       # on a standby
    curl http://127.0.0.1:5000/failover/status             # the status API
    pgfailover lab kill node0                              # and keep writing
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from flask import Flask, jsonify, request

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from source import cluster_source

from pgfailover.config import Node
from pgfailover.contrib.flask import PgFailover


def create_app(source: str | list[Node] | None = None) -> tuple[Flask, PgFailover]:
    """The app and its extension (the manager in ``auto`` mode: the example promotes)."""
    app = Flask(__name__)
    app.config.update(
        PGFAILOVER_SOURCE=source if source is not None else cluster_source(),
        PGFAILOVER_SETTINGS={"promotion": "auto", "failover_cooldown": 0},
    )
    failover = PgFailover(app)
    failover.manager.query(
        "CREATE TABLE IF NOT EXISTS notes (id bigserial PRIMARY KEY, text text NOT NULL)"
    )

    @app.post("/notes")
    def create() -> Any:
        row = failover.query(
            "INSERT INTO notes (text) VALUES (%s) RETURNING id, inet_server_port()",
            (request.args.get("text", ""),),
        )[0]
        return jsonify(id=row[0], served_by_port=row[1])

    @app.get("/notes")
    def index() -> Any:
        rows = failover.query(
            "SELECT id, text, inet_server_port() FROM notes ORDER BY id DESC LIMIT 20",
            readonly=True,
        )
        return jsonify(
            notes=[{"id": r[0], "text": r[1]} for r in rows],
            served_by_port=rows[0][2] if rows else None,
        )

    return app, failover


if __name__ == "__main__":
    flask_app, _ = create_app()
    flask_app.run(host="127.0.0.1", port=5000)
