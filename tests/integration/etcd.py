"""A real etcd (Debian's etcd-server) for the tests, on loopback, stopped by its PID.

It listens for clients on 127.0.0.1 and on the lab's second loopback address
127.0.0.2 (same port), so that a test can cut one arbiter's path to etcd
(iptables on 127.0.0.2 only) and leave the other's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgfailover.errors import LabError
from pgfailover.lab.base import CLIENT_HOST
from pgfailover.lab.etcdserver import EtcdServer
from tests.tools import require_tool

SECOND_ADDRESS = CLIENT_HOST


@contextlib.contextmanager
def etcd_server(directory: Path) -> Iterator[int]:
    """Run etcd with its data in ``directory``; yields its client port."""
    require_tool("etcd")
    server = EtcdServer(directory)
    try:
        try:
            server.wait_ready()
        except LabError as exc:
            pytest.fail(str(exc))
        yield server.port
    finally:
        server.stop()
