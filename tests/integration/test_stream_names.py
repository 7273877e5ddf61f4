"""The name a standby streams under, when its primary is dead and it has no receiver.

Quorum sync lists standbys by the ``application_name`` they stream under. The
probe must know it at the moment the primary dies, when no WAL receiver runs
on the standbys; a ``cluster_name`` that is not that name (the docker lab's
``pg-standby1`` streams as ``pg_standby1``) must not be taken for it, or the
``quorum_incomplete`` guard finds no listed standby and refuses every
automatic promotion.
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from pgfailover import FailoverManager
from pgfailover.lab import LocalLab
from pgfailover.streamname import configured_app_name, cut_sql

from .helpers import FAST, Workload, manager_for, prepare, wait_replayed, wait_until

pytestmark = pytest.mark.timeout(180)

CONNINFOS = [
    "host=a user=r application_name=node1 connect_timeout=2",
    "host=a application_name = 'my app' port=5432",
    "\thost=a\n application_name=\ttabbed ",
    r"application_name='it\'s' host=a",
    r"host=a application_name=a\ b",
    "host=a application_name=it's",
    "application_name= host=a",
    "host=a application_name=",
    "application_name=first host=a application_name=second",
    "host=a fallback_application_name=fb",
    "host=a",
    "",
    # Passwords that hold what looks like a name: never cut out.
    "host=a password='x application_name=evil' application_name=real",
    "host=a password='application_name=evil'",
    "host=a password=pw'application_name=evil",
    "host=a password=x'application_name=evil' port=1",
    "host=a password='abc application_name=evil",
    "postgresql://r:pw?application_name=evil@a/db",
    "postgresql://r:p&application_name=evil@a/db?sslmode=disable",
    "postgresql://r:application_name=evil@a/db",
    # URIs.
    "postgresql://r:pw@a:5432/db?sslmode=disable&application_name=pg%5Fstandby1",
    "postgres://a/db?application_name=x&sslmode=require",
    "postgresql://a/db?application_name=a&application_name=b",
    "postgresql://a/db?application_name=a%23b",
    "postgresql://a/db&application_name=x",
    "postgresql://[::1]:5432?application_name=v6",
    "postgresql://a/db",
]


def _libpq_name(conninfo: str) -> str | None:
    """The application_name libpq's own parser reads, None when it rejects the string."""
    try:
        name = conninfo_to_dict(conninfo).get("application_name")
    except psycopg.ProgrammingError:
        return None
    return str(name) if name else None


@pytest.mark.parametrize("conninfo", CONNINFOS)
def test_the_name_is_cut_out_on_the_server_as_libpq_reads_it(
    shared_lab: LocalLab, conninfo: str
) -> None:
    """Only the name leaves the server, it is the one libpq finds, and never a password's part."""
    query = f"SELECT {cut_sql('%s::text')}"
    ((cut,),) = shared_lab.run_sql("node0", query, [conninfo] * query.count("%s"))
    assert configured_app_name(cut) == _libpq_name(conninfo)
    assert "evil" not in (cut or "")


def _rename_clusters(lab: LocalLab) -> None:
    """Give each standby a ``cluster_name`` that is not the name it streams under."""
    for standby in ("node1", "node2"):
        lab.run_sql(standby, f"ALTER SYSTEM SET cluster_name = 'db-{standby}'")
        lab.stop(standby)
        lab.start(standby)
        lab.wait_streaming(standby, "node0")
        assert lab.run_sql(standby, "SHOW cluster_name") == [(f"db-{standby}",)]


@pytest.mark.slow
def test_quorum_sync_fails_over_when_cluster_names_are_not_the_stream_names(
    sync_lab: LocalLab,
) -> None:
    """The primary dies; with no receiver left on the standbys, each is still known by the
    name quorum sync lists it by, and the promotion the guards allow completes."""
    prepare(sync_lab)
    _rename_clusters(sync_lab)
    old_port = sync_lab.node("node0").port
    config = FAST.replace(promotion="manual")
    with manager_for(sync_lab, config) as mgr:
        with Workload(mgr) as before:  # stopped before the kill: read-only writes would spin
            wait_until(lambda: before.acked_on(old_port) > 20, what="writes on node0")
        sync_lab.kill("node0")
        wait_until(lambda: not mgr.writable, what="the loss of node0")

        def named_without_receivers() -> bool:
            snap = mgr.snapshot
            standbys = [snap.node(s) for s in ("node1", "node2")]
            return all(n.up and n.receiver_streaming is not True for n in standbys) and [
                n.app_name for n in standbys
            ] == ["node1", "node2"]

        wait_until(named_without_receivers, what="the standbys named, with no receiver")
        event = mgr.perform_failover()  # the guards, quorum_incomplete among them
        assert event.outcome == "completed", event
        new = event.to_node
        assert new in ("node1", "node2")
        with Workload(mgr) as after:
            wait_until(lambda: len(after.acked) > 20, what="writes on the new primary")
    assert {port for _, port, _ in after.acked} == {sync_lab.node(new).port}
    other = "node2" if new == "node1" else "node1"
    sync_lab.wait_streaming(other, new)
    acked = {i for i, _, _ in before.acked + after.acked}
    present = {r[0] for r in sync_lab.run_sql(new, "SELECT id FROM w")}
    assert not acked - present, f"{len(acked - present)} acknowledged writes missing"


def test_a_cascade_whose_relay_replication_names_otherwise_fails_over(fresh_lab: LocalLab) -> None:
    """node2 streams from node1, which streams from node0; replication names the nodes by
    one address, the manager by another. When node0 dies node2 goes on hearing node1: the
    manager must know node1 is its sender (by the name node1's pg_stat_replication shows),
    or node2 counts as hearing the primary and every promotion is refused."""
    prepare(fresh_lab)
    fresh_lab.follow("node2", "node1")
    nodes = fresh_lab.manager_nodes(client_address=True)  # not the address replication uses
    config = FAST.replace(promotion="auto")
    with FailoverManager(nodes=nodes, config=config).open() as mgr:
        wait_until(
            lambda: mgr.snapshot.node("node2").upstream == "node1", what="node2's sender, by name"
        )
        mgr.query("INSERT INTO w VALUES (1)")
        wait_replayed(fresh_lab, "SELECT count(*) FROM w", [(1,)])  # replication is async here
        fresh_lab.kill("node0")
        new = wait_until(
            lambda: mgr.snapshot.primary if mgr.snapshot.primary != "node0" else None,
            what="a promotion (not a receiver_streaming refusal)",
        )
        assert new in ("node1", "node2")
        assert mgr.query("SELECT count(*) FROM w") == [(1,)]
        mgr.query("INSERT INTO w VALUES (2)")
        assert mgr.query("SELECT inet_server_port()") == [(fresh_lab.node(new).port,)]
