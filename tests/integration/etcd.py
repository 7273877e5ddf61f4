"""A real etcd (Debian's etcd-server) for the tests, on loopback, stopped by its PID.

It listens for clients on 127.0.0.1 and on the lab's second loopback address
127.0.0.2 (same port), so that a test can cut one arbiter's path to etcd
(iptables on 127.0.0.2 only) and leave the other's.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pgfailover.config import FailoverConfig, Node
from pgfailover.errors import LabError
from pgfailover.etcd import Etcd
from pgfailover.lab.base import CLIENT_HOST
from pgfailover.lab.etcdserver import EtcdServer
from pgfailover.topology.members import PatroniReader
from pgfailover.topology.patroni import PatroniEtcdSource
from tests.tools import require_tool

SECOND_ADDRESS = CLIENT_HOST
PATRONI = "/service/main/"
PATRONI_NODES = [Node(f"node{i}", f"host=10.0.0.{i + 1} port=5432") for i in range(2)]


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


def read_and_watch(
    writer: Etcd,
    config: FailoverConfig,
    source_for: Callable[[PatroniReader], PatroniEtcdSource],
) -> str:
    """Patroni's keys written by hand (a leader ``a``, a streaming replica ``b``) are the
    first snapshot of the source ``source_for`` makes; ``b`` stopped next is pushed by
    the watch within 5 s (make the source read every 30 s: only the watch can bring it
    in time). Returns what the source shows of its setting."""
    members = {
        "a": {"conn_url": "postgres://10.0.0.1:5432/postgres", "state": "running",
              "role": "primary", "timeline": 1, "xlog_location": 1000},
        "b": {"conn_url": "postgres://10.0.0.2:5432/postgres", "state": "running",
              "role": "replica", "replication_state": "streaming", "timeline": 1,
              "xlog_location": 1000},
    }  # fmt: skip
    writer.put(f"{PATRONI}leader", "a")
    for name, member in members.items():
        writer.put(f"{PATRONI}members/{name}", json.dumps(member))
    source = source_for(PatroniReader(PATRONI_NODES, config, "main"))
    try:
        updates = source.messages("")
        first = next(updates)
        assert first.snapshot.primary == "node0"
        assert first.snapshot.node("node1").up
        members["b"].pop("replication_state")  # Patroni's member key for a stopped replica
        members["b"]["state"] = "stopped"
        started = time.monotonic()
        writer.put(f"{PATRONI}members/b", json.dumps(members["b"]))
        second = next(updates)
        assert time.monotonic() - started < 5.0  # pushed, not read 30 s later
        assert second.snapshot.node("node1").serves_reads is False
        return source.shown
    finally:
        source.close()
