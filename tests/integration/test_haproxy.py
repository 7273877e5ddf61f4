"""HAProxy (Debian's) steered by pgfailover's agent, end to end on loopback.

``examples/haproxy/haproxy.cfg`` as shipped, its addresses from the
environment, in front of a lab cluster; the arbiter is ``pgfailover serve``
with ``--haproxy-agent-port``. A plain psycopg client (what any non-Python
client is to HAProxy) writes through the read-write port while the primary
is killed: it reaches the new primary within one check interval (0.5 s)
plus 0.5 s of the arbiter's switch, and every acknowledged write is on the
final primary (a quorum sync lab, so that the write just before the kill
is on a standby). Reads through the read-only port never reach a node the
manager would not read from: the old primary, or a standby whose replay is
paused past the lag limit. HAProxy and serve are stopped by their PIDs.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pgfailover.lab import LocalLab, free_port
from tests.tools import require_tool

from .helpers import config_file, get_json, prepare, serve_process, stop_process, wait_until

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "examples" / "haproxy" / "haproxy.cfg"
CHECK_INTERVAL = 0.5  # inter / agent-inter in the shipped config


@pytest.fixture
def arbiter(sync_lab: LocalLab, tmp_path: Path) -> Iterator[tuple[str, int]]:
    """``pgfailover serve`` with the agent; yields (its URL, the agent's port)."""
    prepare(sync_lab)
    config = config_file(sync_lab, tmp_path, "promotion = 'auto'\nmax_read_lag_bytes = 1048576")
    agent = free_port()
    with serve_process(
        config, tmp_path / "serve.log", "--haproxy-agent-port", str(agent)
    ) as ready:
        yield ready["url"], agent


@pytest.fixture
def haproxy(
    sync_lab: LocalLab, arbiter: tuple[str, int], tmp_path: Path
) -> Iterator[tuple[int, int]]:
    """HAProxy with the shipped config; yields (read-write port, read-only port)."""
    binary = require_tool("haproxy")
    rw, ro = free_port(), free_port()
    env = dict(os.environ)
    env.update(
        PGFAILOVER_BIND="127.0.0.1",
        PGFAILOVER_RW_PORT=str(rw),
        PGFAILOVER_RO_PORT=str(ro),
        PGFAILOVER_AGENT_HOST="127.0.0.1",
        PGFAILOVER_AGENT_PORT=str(arbiter[1]),
        **{f"PGFAILOVER_NODE{i}": f"{n.host}:{n.port}" for i, n in enumerate(sync_lab.nodes)},
    )
    log = (tmp_path / "haproxy.log").open("w")
    proc = subprocess.Popen([binary, "-db", "-f", str(CONFIG)], env=env, stdout=log, stderr=log)
    try:
        yield rw, ro
    finally:
        stop_process(proc)
        log.close()


def _port_through(port: int, sql: str = "SELECT inet_server_port()") -> int:
    with psycopg.connect(
        host="127.0.0.1", port=port, user="postgres", dbname="postgres", connect_timeout=2
    ) as conn:
        return int(conn.execute(sql).fetchone()[0])  # type: ignore[index]


def test_haproxy_follows_the_arbiter_for_writes_and_reads(
    sync_lab: LocalLab, arbiter: tuple[str, int], haproxy: tuple[int, int]
) -> None:
    url, _ = arbiter
    rw, ro = haproxy
    ports = {n.name: n.port for n in sync_lab.nodes}
    wait_until(lambda: _port_through(rw) == ports["node0"], what="the rw port at node0")
    wait_until(
        lambda: {_port_through(ro) for _ in range(6)} == {ports["node1"], ports["node2"]},
        what="the ro port balancing over both standbys",
    )

    acked: list[tuple[int, int, float]] = []  # id, server port, time
    with psycopg.connect(
        host="127.0.0.1", port=rw, user="postgres", dbname="postgres", autocommit=True
    ) as first:
        first.execute("INSERT INTO w VALUES (0)")
    acked.append((0, ports["node0"], time.time()))
    killed = time.time()
    sync_lab.kill("node0")
    next_id = 1
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len([a for a in acked if a[1] != ports["node0"]]) < 20:
        try:
            port = _port_through(
                rw, f"INSERT INTO w VALUES ({next_id}) RETURNING inet_server_port()"
            )
            acked.append((next_id, port, time.time()))
            next_id += 1
        except psycopg.Error:
            time.sleep(0.02)  # pacing a retry loop, not synchronisation
    events = get_json(url + "/failover/history")["events"]
    done = [e for e in events if e["kind"] == "failover" and e["outcome"] == "completed"]
    assert done, events
    new_primary = done[-1]["to"]
    switched = done[-1]["completed"]
    first_new = min(t for _, p, t in acked if p == ports[new_primary])
    print(
        f"kill to switch {switched - killed:.3f}s, switch to first write via HAProxy "
        f"{first_new - switched:.3f}s"
    )
    assert first_new - switched <= CHECK_INTERVAL + 0.5
    assert all(p == ports[new_primary] for i, p, _ in acked if i > 0)
    stored = {r[0] for r in sync_lab.run_sql(new_primary, "SELECT id FROM w")}
    assert {i for i, _, _ in acked} <= stored

    other = next(n for n in ("node1", "node2") if n != new_primary)
    sync_lab.wait_streaming(other, new_primary, timeout=30)
    wait_until(
        lambda: {_port_through(ro) for _ in range(4)} == {ports[other]},
        timeout=15,
        what="the ro port at the remaining standby",
    )
    sync_lab.run_sql(other, "SELECT pg_wal_replay_pause()")
    try:
        sync_lab.run_sql(
            new_primary,
            "INSERT INTO w SELECT g FROM generate_series(1000000, 1040000) g",
        )
        wait_until(
            lambda: (
                get_json(url + "/failover/status")["nodes"][int(other[-1])]["serves_reads"]
                is False
            ),
            what="the manager to stop reading from the lagging standby",
        )
        marked = time.monotonic()

        def refused() -> bool:
            try:
                _port_through(ro)
            except psycopg.OperationalError:
                return True
            return False

        wait_until(refused, timeout=CHECK_INTERVAL + 2.0, what="HAProxy to drop the standby")
        assert time.monotonic() - marked <= CHECK_INTERVAL + 0.5 + 0.5  # agent interval + slack
        for _ in range(10):  # no standby fit to read from: HAProxy has none to give
            assert refused()
    finally:
        sync_lab.run_sql(other, "SELECT pg_wal_replay_resume()")
