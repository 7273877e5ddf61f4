"""An ``auto`` manager whose role has exactly the grants the README lists, no superuser.

A quorum-sync lab (``ANY 1 (node1, node2)``); the manager's role gets the
README's list (``pg_monitor``, ``REPLICATION``, ``pg_promote``,
``pg_reload_conf``, ``pg_signal_backend`` and ``ALTER SYSTEM`` on the
parameters named), with and without ``ALTER SYSTEM`` on ``pgfailover.sync``,
the record of the synchronous list it writes. The primary is killed: the
manager promotes, rewrites the new primary's ``synchronous_standby_names``
for the standby left, repoints that standby (its slot needs
``REPLICATION``), and every acknowledged write is on the new primary.
Without the record's grant the list is written all the same, and status
and the log say the record cannot be kept.
"""

from __future__ import annotations

import logging

import pytest
from psycopg.conninfo import make_conninfo

from pgfailover import FailoverManager, Node
from pgfailover.lab import LocalLab
from pgfailover.syncrep import SyncRecord, parse_record, parse_sync

from .helpers import FAST, prepare, wait_replayed, wait_until

pytestmark = pytest.mark.timeout(120)

ROLE = "pgf_manager"
SECRET = "grants-test-secret"  # a lab password
README_GRANTS = (
    f"CREATE ROLE {ROLE} LOGIN REPLICATION PASSWORD '{SECRET}'",
    f"GRANT pg_monitor, pg_signal_backend TO {ROLE}",
    f"GRANT EXECUTE ON FUNCTION pg_promote(boolean, integer), pg_reload_conf() TO {ROLE}",
    "GRANT ALTER SYSTEM ON PARAMETER wal_receiver_timeout, synchronous_standby_names,"
    f" primary_conninfo, default_transaction_read_only TO {ROLE}",
)
POLICY = parse_sync("ANY 1 (node1, node2)")


def _record(lab: LocalLab, node: str) -> SyncRecord | None:
    return parse_record(lab.run_sql(node, "SELECT current_setting('pgfailover.sync', true)")[0][0])


@pytest.mark.parametrize("record_granted", [True, False], ids=["record granted", "not granted"])
def test_a_manager_with_the_readme_grants_fails_over_and_keeps_sync_replication(
    sync_lab: LocalLab, record_granted: bool, caplog: pytest.LogCaptureFixture
) -> None:
    prepare(sync_lab)
    for statement in README_GRANTS:
        sync_lab.run_sql("node0", statement)
    sync_lab.run_sql("node0", f"GRANT SELECT, INSERT ON w TO {ROLE}")  # the application's
    if record_granted:
        sync_lab.run_sql("node0", f"GRANT ALTER SYSTEM ON PARAMETER pgfailover.sync TO {ROLE}")
    wait_replayed(sync_lab, "SELECT count(*) FROM pg_roles WHERE rolname = %s", [(1,)], (ROLE,))
    nodes = [
        Node(n.name, make_conninfo(n.dsn, user=ROLE, password=SECRET))
        for n in sync_lab.manager_nodes()
    ]
    caplog.set_level(logging.WARNING, logger="pgfailover")
    with FailoverManager(nodes=nodes, config=FAST.replace(promotion="auto")).open() as mgr:
        acked = [i for i in range(1, 21) if mgr.query("INSERT INTO w VALUES (%s)", (i,)) == []]
        assert len(acked) == 20
        sync_lab.kill("node0")

        def new_primary() -> str | None:
            snap = mgr.snapshot
            return snap.primary if snap.primary in ("node1", "node2") and mgr.writable else None

        promoted = wait_until(new_primary, timeout=30, what="a standby promoted by the manager")
        other = "node2" if promoted == "node1" else "node1"
        mgr.query("INSERT INTO w VALUES (21)")
        acked.append(21)
        rows = sync_lab.run_sql(promoted, "SELECT id FROM w ORDER BY id")
        assert [r[0] for r in rows] == acked  # quorum sync: nothing acknowledged is lost
        sync_lab.wait_streaming(other, promoted)  # repointed, its slot created
        written = str(sync_lab.run_sql(promoted, "SHOW synchronous_standby_names")[0][0])
        spec = parse_sync(written)
        assert spec is not None
        assert (spec.method, spec.count, spec.names) == ("ANY", 1, (other,))
        status = mgr.get_failover_status()["synchronous_replication"]
        assert status["written_by_manager"] is True
        assert status["policy"] == "ANY 1 (node1, node2)"
        if record_granted:
            assert _record(sync_lab, promoted) == SyncRecord(written, POLICY)
            assert status["record_refused"] is None
            assert "cannot keep pgfailover.sync" not in caplog.text
        else:
            assert _record(sync_lab, promoted) is None

            def refused() -> str | None:
                sync = mgr.get_failover_status()["synchronous_replication"]
                return sync["record_refused"]  # type: ignore[no-any-return]

            why = wait_until(refused, timeout=30, what="the refused record in status")
            assert "permission denied" in why
            assert caplog.text.count("cannot keep pgfailover.sync") == 1
        assert SECRET not in caplog.text
