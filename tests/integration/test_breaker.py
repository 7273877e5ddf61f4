"""Read circuit breakers on a lab cluster: a standby out of connection slots.

node1 keeps answering its probe (the probe's connection is already open)
while no new connection can be made to it: the test takes every slot of
its ``max_connections`` and ends the pool's own connections to it. Reads
must fail over to node2 without an error reaching the application, the
breaker must open after ``breaker_failures`` failures and hold node1 out
(status and ``/metrics`` say so), and once the slots are free the breaker
must let trial reads through and close.
"""

from __future__ import annotations

import contextlib
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pgfailover import FailoverManager
from pgfailover.breaker import JITTER
from pgfailover.lab import LocalLab
from pgfailover.server import serve

from .helpers import FAST, manager_for, wait_until

pytestmark = pytest.mark.timeout(180)

CONFIG = FAST.replace(
    breaker_failures=3,
    breaker_successes=2,
    breaker_cooldown=1.0,
    breaker_max_cooldown=2.0,
    pool_timeout=0.5,
    pool_min_size=1,
    pool_max_size=2,
    read_strategy="round_robin",
)


@contextlib.contextmanager
def slots_taken(
    lab: LocalLab, node: str, turns: Sequence[threading.Lock]
) -> Iterator[list[psycopg.Connection[Any]]]:
    """Hold every connection slot of ``node``; the pool's connections to it are ended.

    The probe's connection (``pgfailover-probe``) and the WAL receiver stay:
    the node keeps passing its probes. Every connection is closed on exit.

    The readers are held out (``turns``, one lock per reader, held by a reader
    around each read) while the slots are taken. A reader's next read would
    find its connection ended and the pool would reconnect at once, into the
    slot the ended backend freed, before this loop could take it: with the
    readers running, the pool won that race every round.
    """
    held: list[psycopg.Connection[Any]] = []
    try:
        with contextlib.ExitStack() as paused:
            for turn in turns:
                paused.enter_context(turn)
            _take_every_slot(lab, node, held)
        yield held
    finally:
        for conn in held:
            conn.close()


def _take_every_slot(lab: LocalLab, node: str, held: list[psycopg.Connection[Any]]) -> None:
    """Fill ``node``'s free slots and end every other client backend, until that stays so.

    A connection still starting may not be listed yet: several rounds in a
    row must find no other client backend.
    """
    deadline, quiet = time.monotonic() + 20.0, 0
    while quiet < 5:
        assert time.monotonic() < deadline, f"could not take every slot of {node}"
        while True:
            try:
                held.append(lab.connect(node, timeout=3.0))
            except psycopg.OperationalError as exc:
                if "too many clients" not in str(exc) and "reserved" not in str(exc):
                    raise
                break
        mine = [c.info.backend_pid for c in held]
        ended = (
            held[0]
            .execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE backend_type = 'client backend' AND pid <> ALL(%s) "
                "AND application_name <> 'pgfailover-probe'",
                (mine,),
            )
            .fetchone()
        )
        quiet = quiet + 1 if ended is not None and ended[0] == 0 else 0
        time.sleep(0.05)  # poll interval between rounds


def attempts(mgr: FailoverManager, node: str) -> int:
    """Read attempts on ``node`` so far, whatever their outcome."""
    counted = dict(mgr.counters.queries)
    return sum(n for (name, _route, _outcome), n in counted.items() if name == node)


def scraped(url: str) -> dict[tuple[str, str, str], float]:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:  # noqa: S310 - loopback
        text = response.read().decode()
    return {
        (s.name, s.labels.get("node", ""), s.labels.get("state", "")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("pgfailover_breaker")
    }


def test_a_standby_out_of_connection_slots_is_held_out_then_let_back(
    fresh_lab: LocalLab,
) -> None:
    errors: list[BaseException] = []
    served: list[str] = []
    stop = threading.Event()

    turns = [threading.Lock() for _ in range(2)]

    def reader(mgr: FailoverManager, turn: threading.Lock) -> None:
        while not stop.is_set():
            with turn:
                try:
                    served.append(mgr.query("SELECT current_setting('port')", readonly=True)[0][0])
                except BaseException as exc:  # noqa: BLE001 - every failure is the test's business
                    errors.append(exc)
            stop.wait(0.01)

    with manager_for(fresh_lab, CONFIG) as mgr, serve(mgr) as server:
        port1 = str(fresh_lab.node("node1").port)
        threads = [threading.Thread(target=reader, args=(mgr, turn)) for turn in turns]
        for thread in threads:
            thread.start()
        try:
            wait_until(lambda: port1 in served, what="reads on node1")
            with slots_taken(fresh_lab, "node1", turns) as held:
                try:
                    wait_until(
                        lambda: mgr.breakers.state("node1").phase.value == "open",
                        timeout=20,
                        what="node1's breaker open",
                    )
                except pytest.fail.Exception:
                    others = held[0].execute(
                        "SELECT pid, application_name, state FROM pg_stat_activity "
                        "WHERE backend_type = 'client backend' AND pid <> ALL(%s)",
                        ([c.info.backend_pid for c in held],),
                    )
                    outcomes = {
                        k: n for k, n in dict(mgr.counters.queries).items() if k[0] == "node1"
                    }
                    pytest.fail(
                        f"node1's breaker never opened: reads on node1 {outcomes}, "
                        f"its other sessions {others.fetchall()}"
                    )
                node1 = next(n for n in mgr.get_failover_status()["nodes"] if n["name"] == "node1")
                assert node1["up"]
                assert node1["healthy"]  # its probe passes all along
                assert node1["breaker"]["state"] in ("open", "half_open")
                assert node1["breaker"]["opened_total"] >= 1
                samples = scraped(server.url)
                assert samples[("pgfailover_breaker_opens_total", "node1", "")] >= 1
                assert samples[("pgfailover_breaker_state", "node2", "closed")] == 1
                # Held out: of the reads made meanwhile, only the trials (one per
                # cooldown, at least 0.8 s) try node1; without the breaker every
                # other read would.
                mark, tried, started = len(served), attempts(mgr, "node1"), time.monotonic()
                wait_until(lambda: len(served) > mark + 100, what="100 more reads")
                elapsed = time.monotonic() - started
                trials = attempts(mgr, "node1") - tried
                assert trials <= elapsed / (CONFIG.breaker_cooldown * (1 - JITTER)) + 1, (
                    trials,
                    elapsed,
                )
                assert port1 not in served[mark:]
            wait_until(
                lambda: mgr.breakers.state("node1").phase.value == "closed",
                timeout=30,
                what="node1's breaker closed after trial reads",
            )
            mark = len(served)
            wait_until(lambda: port1 in served[mark:], what="reads on node1 again")
            samples = scraped(server.url)
            assert samples[("pgfailover_breaker_state", "node1", "closed")] == 1
        finally:
            stop.set()
            for thread in threads:
                thread.join(10)
    assert errors == []  # every read was served somewhere
