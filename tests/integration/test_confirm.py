"""A Patroni follower's confirmation connection, opened ahead, on real PostgreSQL.

:class:`~pgfailover.topology.confirm.Confirmer` opens its connection to the
member likely to lead next before that member takes the leader key
(``prepare``), so the check at the promotion waits on the server at once
instead of connecting then. What must hold, seen in ``pg_stat_activity``
(application ``pgfailover-confirm``) on the shared lab (nothing is promoted):

- ``prepare`` opens one connection and the check of that node runs on it
  (the same backend), however often it is asked, also when the check
  starts while the connection is still being opened;
- a check of a standby answers nothing (still in recovery), one of the
  primary answers its timeline;
- preparing another node closes the first node's connection; ``done``
  closes everything.
"""

from __future__ import annotations

import time

import pytest

from pgfailover.lab import LocalLab
from pgfailover.topology.confirm import Confirmer

from .helpers import wait_until

SESSIONS = "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgfailover-confirm'"


def _pids(lab: LocalLab, node: str) -> list[int]:
    return [int(r[0]) for r in lab.run_sql(node, SESSIONS)]


@pytest.mark.timeout(60)
def test_a_connection_opened_ahead_is_the_one_the_check_uses(shared_lab: LocalLab) -> None:
    lab = shared_lab
    confirmer = Confirmer(
        {n.name: n.dsn for n in lab.nodes}, timeout=5.0, wait=0.05, pause=time.sleep
    )
    try:
        confirmer.prepare("node1")
        confirmer.prepare("node1")  # asked again: still one connection
        (ahead,) = wait_until(lambda: _pids(lab, "node1"), what="the connection opened ahead")
        for _ in range(3):
            assert confirmer.timeline("node1") is None  # a standby: still in recovery
            assert _pids(lab, "node1") == [ahead]  # the same backend, no other
        confirmer.prepare("node2")
        assert confirmer.timeline("node2") is None  # at once: waits for the one opening
        (_,) = wait_until(lambda: _pids(lab, "node2"), what="node2's one connection")
        wait_until(lambda: not _pids(lab, "node1"), what="node1's connection closed")
        timeline = lab.run_sql("node0", "SELECT timeline_id FROM pg_control_checkpoint()")[0][0]
        assert confirmer.timeline("node0") == timeline  # the primary takes writes
        wait_until(lambda: not _pids(lab, "node2"), what="node2's connection closed by node0's")
        confirmer.done()
        wait_until(
            lambda: not any(_pids(lab, n.name) for n in lab.nodes), what="every connection closed"
        )
    finally:
        confirmer.done()
