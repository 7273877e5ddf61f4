"""A real etcd (Debian's etcd-server) for the tests, on loopback, stopped by its PID.

It listens for clients on 127.0.0.1 and on the lab's second loopback address
127.0.0.2 (same port), so that a test can cut one arbiter's path to etcd
(iptables on 127.0.0.2 only) and leave the other's.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgfailover.etcd import Etcd, EtcdError
from pgfailover.lab import free_port
from tests.tools import require_tool

from .helpers import stop_process

SECOND_ADDRESS = "127.0.0.2"


@contextlib.contextmanager
def etcd_server(directory: Path) -> Iterator[int]:
    """Run etcd with its data in ``directory``; yields its client port."""
    binary = require_tool("etcd")
    port = free_port()
    peer = free_port({port})
    log = (directory / "etcd.log").open("w")
    proc = subprocess.Popen(
        [
            binary,
            "--name=test",
            f"--data-dir={directory / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{port},http://{SECOND_ADDRESS}:{port}",
            f"--advertise-client-urls=http://127.0.0.1:{port}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=test=http://127.0.0.1:{peer}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        client = Etcd([f"http://127.0.0.1:{port}"], timeout=1.0)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.call("maintenance/status", {})
                break
            except EtcdError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail(
                        f"etcd did not start: {(directory / 'etcd.log').read_text()[-2000:]}"
                    )
                time.sleep(0.05)
        client.close()
        yield port
    finally:
        stop_process(proc)
        log.close()
