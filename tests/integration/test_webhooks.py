"""``pgfailover serve --webhook``: a real HTTP receiver gets every event of a failover, in order.

A second webhook points at a port where nothing listens: its retries must
delay neither the failover nor the live receiver. The DSNs carry a
password (the lab trusts every local connection, so it is ignored by the
servers): it must appear in no document.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pgfailover.lab import LocalLab

from .helpers import get_json, serve_process, wait_until

pytestmark = pytest.mark.timeout(120)
PASSWORD = "S3cretHookPw"


class _Server(ThreadingHTTPServer):
    received: list[dict[str, Any]]


class _Receiver(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A webhook receiver on loopback, recording each document; stopped at the end."""
    server = _Server(("127.0.0.1", 0), _Receiver)
    server.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook", server.received
    finally:
        server.shutdown()
        server.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once closed: connection refused


def test_every_event_of_a_failover_reaches_the_receiver_in_order(
    fresh_lab: LocalLab, tmp_path: Path, receiver: tuple[str, list[dict[str, Any]]]
) -> None:
    url, received = receiver
    lines = []
    for node in fresh_lab.nodes:
        dsn = f"{node.dsn} password={PASSWORD}"
        lines += ["[[nodes]]", f'name = "{node.name}"', f'dsn = "{dsn}"']
    lines += ["[failover]", "health_check_interval = 0.2", "fast_interval = 0.05"]
    config = tmp_path / "pgfailover.toml"
    config.write_text("\n".join(lines) + "\n")
    dead = f"http://127.0.0.1:{_closed_port()}/hook"
    with serve_process(config, tmp_path / "serve.log", "--webhook", dead, "--webhook", url) as srv:
        fresh_lab.kill("node0")
        wait_until(
            lambda: any(d["type"] == "failover" for d in received), timeout=30, what="the event"
        )
        history = get_json(srv["url"] + "/failover/history")["events"]
    (event,) = [e for e in history if e["kind"] == "failover"]
    assert event["outcome"] == "completed"
    assert event["duration"] < 1.0  # the dead webhook's retries delayed nothing
    assert [d["seq"] for d in received] == list(range(1, len(received) + 1))  # all, in order
    changes = [(d["old"], d["new"]) for d in received if d["type"] == "state_change"]
    assert ("healthy", "degraded") in changes
    assert (
        changes.index(("healthy", "degraded"))
        < changes.index(("degraded", "failover_in_progress"))
        < changes.index(("failover_in_progress", "failover_complete"))
    )
    (posted,) = [d["event"] for d in received if d["type"] == "failover"]
    assert (posted["from"], posted["outcome"]) == ("node0", "completed")
    assert all(d["cluster"] == "default" for d in received)
    assert PASSWORD not in json.dumps(received)
    assert PASSWORD not in (tmp_path / "serve.log").read_text()
