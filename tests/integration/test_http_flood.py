"""The arbiter's HTTP port under hostile clients.

500 connections to ``pgfailover serve``'s main port, half of them idle and
half stuck in the middle of a request, must neither grow the process's
threads or descriptors nor slow the failover it runs: its HTTP server
(waitress) reads requests on one I/O thread with a connection limit, and
the admin endpoints have a listener of their own that the flood cannot
reach. Every socket the test opens is closed and the process it starts is
stopped by its PID.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from pgfailover.lab import LocalLab

from .helpers import config_file, get_json, serve_process, wait_until

pytestmark = pytest.mark.timeout(120)

TOKEN = "flood-token-0123456789abcdef"
FLOOD = 500


def _proc_status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def _descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _flood(url: str) -> list[socket.socket]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    socks = []
    for i in range(FLOOD):
        sock = socket.create_connection((host, int(port)), timeout=5)
        socks.append(sock)
        if i % 2:  # half-sent: headers promise a body that never comes
            sock.sendall(
                b"POST /failover/trigger HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"
            )
    return socks


def test_a_flooded_http_port_grows_no_thread_and_delays_no_failover(
    fresh_lab: LocalLab, tmp_path: Path
) -> None:
    config = config_file(fresh_lab, tmp_path, "promotion = 'auto'")
    args = ("--admin-port", "0", "--token", TOKEN)
    socks: list[socket.socket] = []
    with serve_process(config, tmp_path / "serve.log", *args) as ready:
        try:
            url, admin, pid = ready["url"], ready["admin_url"], ready["pid"]
            assert url != admin
            assert get_json(url + "/failover/status")["current_primary"] == "node0"
            threads = _proc_status(pid, "Threads")
            descriptors = _descriptors(pid)

            socks = _flood(url)
            started = time.monotonic()
            status = get_json(admin + "/failover/status")  # the flood cannot reach this one
            assert time.monotonic() - started < 2.0
            assert status["current_primary"] == "node0"
            assert _proc_status(pid, "Threads") <= threads + 1
            assert _descriptors(pid) <= descriptors + FLOOD + 10  # one socket each, no more

            killed = time.time()
            fresh_lab.kill("node0")
            wait_until(
                lambda: (
                    get_json(admin + "/failover/status")["current_primary"] in ("node1", "node2")
                ),
                timeout=30,
                what="the arbiter to fail over while its HTTP port is flooded",
            )
            events = get_json(admin + "/failover/history")["events"]
            done = [e for e in events if e["kind"] == "failover" and e["outcome"] == "completed"]
            assert done, events
            took = done[-1]["completed"] - killed
            print(f"kill to writes switched, flooded: {took:.3f}s")  # the benchmark compares
            assert took < 1.0, f"failover took {took:.3f}s under the flood"
            assert _proc_status(pid, "Threads") <= threads + 1
        finally:
            for sock in socks:
                sock.close()
