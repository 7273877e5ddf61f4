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

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from pgfailover.lab import LocalLab

from .helpers import config_file, wait_until

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


def _get(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback
        return json.loads(response.read())


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
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "pgfailover", "serve", "--config", str(config)),
            *("--port", "0", "--admin-port", "0", "--token", TOKEN),
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    socks: list[socket.socket] = []
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        url, admin = ready["url"], ready["admin_url"]
        assert url != admin
        assert _get(url + "/failover/status")["current_primary"] == "node0"
        threads = _proc_status(proc.pid, "Threads")
        descriptors = _descriptors(proc.pid)

        socks = _flood(url)
        started = time.monotonic()
        status = _get(admin + "/failover/status")  # the flood cannot reach this listener
        assert time.monotonic() - started < 2.0
        assert status["current_primary"] == "node0"
        assert _proc_status(proc.pid, "Threads") <= threads + 1
        assert _descriptors(proc.pid) <= descriptors + FLOOD + 10  # one socket each, no more

        killed = time.time()
        fresh_lab.kill("node0")
        wait_until(
            lambda: _get(admin + "/failover/status")["current_primary"] in ("node1", "node2"),
            timeout=30,
            what="the arbiter to fail over while its HTTP port is flooded",
        )
        events = _get(admin + "/failover/history")["events"]
        done = [e for e in events if e["kind"] == "failover" and e["outcome"] == "completed"]
        assert done, events
        took = done[-1]["completed"] - killed
        print(f"kill to writes switched, flooded: {took:.3f}s")  # the benchmark compares
        assert took < 1.0, f"failover took {took:.3f}s under the flood"
        assert _proc_status(proc.pid, "Threads") <= threads + 1
    finally:
        for sock in socks:
            sock.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()
        log.close()
