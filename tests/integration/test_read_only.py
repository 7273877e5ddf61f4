"""Read-only mode on a real cluster: a lost primary that nobody will replace.

In ``manual`` mode, once the primary is declared lost, every write fails at
once with ``ReadOnlyMode`` (not after ``failover_wait_timeout``) while reads
go on from the standbys; ``writable``, the status and the callback say so,
and an operator's trigger ends it.
"""

from __future__ import annotations

import time

import pytest

from pgfailover import ReadOnlyMode
from pgfailover.lab import LocalLab

from .helpers import FAST, manager_for, prepare, wait_replayed, wait_until

pytestmark = pytest.mark.timeout(120)


def test_a_manual_manager_goes_read_only_at_once_and_back_after_a_trigger(
    fresh_lab: LocalLab,
) -> None:
    prepare(fresh_lab)
    changes: list[tuple[bool, str | None]] = []
    with manager_for(fresh_lab, FAST.replace(promotion="manual")) as mgr:
        mgr.on_writable_change(lambda writable, reason: changes.append((writable, reason)))
        mgr.query("INSERT INTO w VALUES (1)")
        assert mgr.writable
        wait_replayed(fresh_lab, "SELECT count(*) FROM w", [(1,)])  # replication is async here
        fresh_lab.kill("node0")
        wait_until(lambda: not mgr.writable, timeout=10, what="read-only mode")
        slowest = 0.0
        for i in range(20):
            started = time.monotonic()
            with pytest.raises(ReadOnlyMode, match="promotion is manual"):
                mgr.query("INSERT INTO w VALUES (%s)", (100 + i,))
            slowest = max(slowest, time.monotonic() - started)
        assert slowest < 0.05, slowest  # at once, not failover_wait_timeout (15 s)
        assert mgr.query("SELECT count(*) FROM w", readonly=True) == [(1,)]  # reads go on
        status = mgr.get_failover_status()
        assert status["writable"] is False
        assert "manual" in status["read_only_reason"]
        wait_until(lambda: [w for w, _ in changes] == [False], what="the callback")

        event = mgr.perform_failover("node1")
        assert event.outcome == "completed", event
        assert mgr.writable
        mgr.query("INSERT INTO w VALUES (2)")
        wait_until(lambda: len(changes) == 2, what="writable again")
        assert changes[1] == (True, None)
