"""The name a standby streams under, when its primary is dead and it has no receiver.

Quorum sync lists standbys by the ``application_name`` they stream under. The
probe must know it at the moment the primary dies, when no WAL receiver runs
on the standbys; a ``cluster_name`` that is not that name (the docker lab's
``pg-standby1`` streams as ``pg_standby1``) must not be taken for it, or the
``quorum_incomplete`` guard finds no listed standby and refuses every
automatic promotion.
"""

from __future__ import annotations

import pytest
from psycopg.conninfo import conninfo_to_dict

from pgfailover.lab import LocalLab
from pgfailover.streamname import configured_app_name, cut_sql

from .helpers import FAST, Workload, manager_for, port_of, prepare, wait_until

pytestmark = pytest.mark.timeout(180)

CONNINFOS = [
    "host=a user=r application_name=node1 connect_timeout=2",
    "host=a application_name = 'my app' port=5432",
    r"application_name='it\'s' host=a",
    r"host=a application_name=a\ b",
    "host=a password='x application_name=evil' application_name=real",
    "host=a password='application_name=evil'",
    "application_name=first host=a application_name=second",
    "host=a fallback_application_name=fb",
    "host=a",
    "",
    "postgresql://r:pw@a:5432/db?sslmode=disable&application_name=pg%5Fstandby1",
    "postgres://a/db?application_name=x&sslmode=require",
    "postgresql://r:application_name=evil@a/db",
    "postgresql://a/db",
]


@pytest.mark.parametrize("conninfo", CONNINFOS)
def test_the_name_is_cut_out_on_the_server_as_libpq_reads_it(
    shared_lab: LocalLab, conninfo: str
) -> None:
    """Only the name leaves the server, and it is the one libpq's own parser finds."""
    query = f"SELECT {cut_sql('%s::text')}"
    ((cut,),) = shared_lab.run_sql("node0", query, [conninfo] * query.count("%s"))
    expected = conninfo_to_dict(conninfo).get("application_name") or None
    assert configured_app_name(cut) == expected
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
    prepare(sync_lab)
    _rename_clusters(sync_lab)
    old_port = sync_lab.node("node0").port
    with manager_for(sync_lab, FAST.replace(promotion="auto")) as mgr, Workload(mgr) as load:
        wait_until(lambda: load.acked_on(old_port) > 20, what="writes on node0")
        sync_lab.kill("node0")
        wait_until(
            lambda: any(p != old_port for _, p, _ in load.acked[-5:]),
            timeout=20,
            what="writes on a new primary (not a quorum_incomplete refusal)",
        )
        new_port = next(p for _, p, _ in reversed(load.acked) if p != old_port)
        wait_until(lambda: load.acked_on(new_port) > 20, what="writes going on after it")
        new = port_of(sync_lab, new_port)
        other = "node2" if new == "node1" else "node1"
        # The new primary lists the other standby by the name it streams under.
        ((sync_names,),) = sync_lab.run_sql(new, "SHOW synchronous_standby_names")
        assert other in sync_names, sync_names
        assert f"db-{other}" not in sync_names, sync_names
        sync_lab.wait_streaming(other, new)
        wait_until(lambda: mgr.snapshot.node(other).app_name == other, what=f"{other}'s name")
    acked = {i for i, _, _ in load.acked}
    present = {r[0] for r in sync_lab.run_sql(new, "SELECT id FROM w")}
    assert not acked - present, f"{len(acked - present)} acknowledged writes missing"
    assert not load.failed, load.failed[:3]
