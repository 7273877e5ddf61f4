"""A primary with no connection slot free is still the primary: a lab cluster.

In production an application's pools, a connection leak or a burst of new
clients use every slot of ``max_connections``; the manager's probe session
ends (an administrator ends idle sessions, a pooler drops it,
``idle_session_timeout``) and every new session is refused with "sorry, too
many clients already". The server is alive and the pools' sessions still
serve. The manager, in ``auto`` mode, must keep the primary: not give it up,
hold writes or promote a standby (the old behaviour after three refusals).
Every acknowledged write (unique ids) is checked on the primary at the end.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

from pgfailover.lab import LocalLab

from .helpers import FAST, INSERT_SQL, manager_for, prepare, wait_until

pytestmark = pytest.mark.timeout(120)

CONFIG = FAST.replace(promotion="auto", pool_min_size=2, pool_max_size=2)
PROBES = "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgfailover-probe'"


def _fill(lab: LocalLab, held: list[psycopg.Connection[Any]]) -> None:
    """Open connections to node0 until it refuses one for lack of slots."""
    while True:
        try:
            held.append(lab.connect("node0", timeout=3.0))
        except psycopg.OperationalError as exc:
            if "too many clients" not in str(exc):
                raise
            return


def _take_the_probes_slot(lab: LocalLab, held: list[psycopg.Connection[Any]]) -> None:
    """End the manager's probe session on node0 and take its slot, until it has none.

    The prober retries at once when its session ends: it may win the freed
    slot, and is then ended again.
    """
    _fill(lab, held)
    probes = wait_until(lambda: held[0].execute(PROBES).fetchall(), what="the probe session")
    for _ in range(50):
        for (pid,) in probes:
            held[0].execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
        _fill(lab, held)
        probes = held[0].execute(PROBES).fetchall()
        if not probes:
            return
    pytest.fail("the probe kept taking the freed slot")


def test_a_full_primary_keeps_taking_writes_and_is_not_failed_over(fresh_lab: LocalLab) -> None:
    lab = fresh_lab
    prepare(lab)
    acked: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()
    held: list[psycopg.Connection[Any]] = []

    with manager_for(lab, CONFIG) as mgr:

        def writer() -> None:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    mgr.query(INSERT_SQL, (i,))
                    acked.append(i)
                except BaseException as exc:  # noqa: BLE001 - every failure is the test's
                    errors.append(exc)
                stop.wait(0.02)

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            wait_until(lambda: len(acked) > 10, what="writes on node0")
            try:
                _take_the_probes_slot(lab, held)

                def node0() -> dict[str, Any]:
                    status = mgr.get_failover_status()
                    return next(n for n in status["nodes"] if n["name"] == "node0")

                wait_until(
                    lambda: "too many clients" in (node0()["error"] or ""),
                    what="node0's probe refused",
                )
                refused = mgr.counters.health_check_failures["node0"]
                # Many more refusals than unhealthy_threshold, under polling.
                wait_until(
                    lambda: mgr.counters.health_check_failures["node0"] >= refused + 10,
                    what="ten more refused probes",
                )
                mark = len(acked)
                wait_until(lambda: len(acked) > mark + 20, what="writes while node0 is full")
                status = mgr.get_failover_status()
                assert (status["state"], status["current_primary"]) == ("healthy", "node0")
                assert node0()["up"]
                assert node0()["healthy"]
                assert mgr.counters.failovers == 0
                assert lab.run_sql("node1", "SELECT pg_is_in_recovery()")[0][0]
                assert lab.run_sql("node2", "SELECT pg_is_in_recovery()")[0][0]
            finally:
                for conn in held:
                    conn.close()
            wait_until(lambda: node0()["error"] is None, what="node0's probe answering again")
        finally:
            stop.set()
            thread.join(30)
    assert errors == []
    present = {row[0] for row in lab.run_sql("node0", "SELECT id FROM w")}
    assert set(acked) <= present
