"""A primary that takes no new session is still the primary: a lab cluster.

In production an application's pools, a connection leak or a burst of new
clients use every slot of ``max_connections``; the manager's probe session
ends (an administrator ends idle sessions, a pooler drops it,
``idle_session_timeout``) and every new session is refused with "sorry, too
many clients already". The server is alive and the pools' sessions still
serve. The manager, in ``auto`` mode, must keep the primary: not give it up,
hold writes or promote a standby (the old behaviour after three refusals).

The same when new connections hang instead (a full listen backlog drops
their SYNs: an iptables rule the test adds, tagged, removed in a
``finally``): the probe's new session times out, while the writes on the
pools' sessions go on; those writes show the node serving.

Every acknowledged write (unique ids) is checked on the primary at the end.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

from pgfailover import FailoverManager
from pgfailover.lab import LocalLab, netfault

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


class Writer:
    """Writes unique ids through the manager every 20 ms on its own thread."""

    def __init__(self, mgr: FailoverManager) -> None:
        self.acked: list[int] = []
        self.errors: list[BaseException] = []
        self._mgr = mgr
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            i += 1
            try:
                self._mgr.query(INSERT_SQL, (i,))
                self.acked.append(i)
            except BaseException as exc:  # noqa: BLE001 - every failure is the test's
                self.errors.append(exc)
            self._stop.wait(0.02)

    def __enter__(self) -> Writer:
        self._thread.start()
        wait_until(lambda: len(self.acked) > 10, what="writes on node0")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def more(self, count: int, what: str) -> None:
        mark = len(self.acked)
        wait_until(lambda: len(self.acked) > mark + count, what=what)


def _node0(mgr: FailoverManager) -> dict[str, Any]:
    return next(n for n in mgr.get_failover_status()["nodes"] if n["name"] == "node0")


def _kept(mgr: FailoverManager, lab: LocalLab) -> None:
    """node0 is still the primary: no failover, no promotion."""
    status = mgr.get_failover_status()
    assert (status["state"], status["current_primary"]) == ("healthy", "node0")
    assert _node0(mgr)["up"]
    assert _node0(mgr)["healthy"]
    assert mgr.counters.failovers == 0
    assert lab.run_sql("node1", "SELECT pg_is_in_recovery()")[0][0]
    assert lab.run_sql("node2", "SELECT pg_is_in_recovery()")[0][0]


def test_a_full_primary_keeps_taking_writes_and_is_not_failed_over(fresh_lab: LocalLab) -> None:
    lab = fresh_lab
    prepare(lab)
    held: list[psycopg.Connection[Any]] = []
    with manager_for(lab, CONFIG) as mgr, Writer(mgr) as writer:
        try:
            _take_the_probes_slot(lab, held)
            wait_until(
                lambda: "too many clients" in (_node0(mgr)["error"] or ""),
                what="node0's probe refused",
            )
            refused = mgr.counters.health_check_failures["node0"]
            # Many more refusals than unhealthy_threshold, under polling.
            wait_until(
                lambda: mgr.counters.health_check_failures["node0"] >= refused + 10,
                what="ten more refused probes",
            )
            writer.more(20, "writes while node0 is full")
            _kept(mgr, lab)
        finally:
            for conn in held:
                conn.close()
        wait_until(lambda: _node0(mgr)["error"] is None, what="node0's probe answering again")
    assert writer.errors == []
    present = {row[0] for row in lab.run_sql("node0", "SELECT id FROM w")}
    assert set(writer.acked) <= present


@pytest.mark.skipif(netfault.unavailable_reason() is not None, reason="needs root and iptables")
def test_a_primary_whose_new_connections_hang_keeps_taking_writes(fresh_lab: LocalLab) -> None:
    lab = fresh_lab
    prepare(lab)
    with (
        lab.connect("node0") as admin,  # opened before the fault: new ones would hang
        manager_for(lab, CONFIG) as mgr,
        Writer(mgr) as writer,
    ):
        try:
            lab.backlog("node0")
            wait_until(lambda: admin.execute(PROBES).fetchall(), what="the probe session")
            admin.execute(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                "WHERE application_name = 'pgfailover-probe'"
            )
            failed = mgr.counters.health_check_failures["node0"]
            # Each probe's new session times out (1 s): well past unhealthy_threshold.
            wait_until(
                lambda: mgr.counters.health_check_failures["node0"] >= failed + 4,
                timeout=30,
                what="four probes of node0 failing to connect",
            )
            writer.more(20, "writes while node0 takes no new connection")
            _kept(mgr, lab)
        finally:
            lab.heal("node0")
        assert lab.faults() == {}
        wait_until(lambda: admin.execute(PROBES).fetchall(), what="a new probe session on node0")
    assert writer.errors == []
    present = {row[0] for row in lab.run_sql("node0", "SELECT id FROM w")}
    assert set(writer.acked) <= present
