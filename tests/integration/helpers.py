"""Helpers for integration tests: waiting with deadlines, managers over labs."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from pgfailover import FailoverConfig, FailoverManager
from pgfailover.errors import WriteOutcomeUnknown
from pgfailover.lab import LocalLab

FAST = FailoverConfig(
    health_check_interval=0.2,
    fast_interval=0.05,
    health_check_timeout=1.0,
    failover_cooldown=0,
    failover_wait_timeout=15.0,
)


def wait_until(check: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll ``check()`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - keep polling, report the last one
            last = exc
        time.sleep(0.02)
    pytest.fail(
        f"timed out after {timeout}s waiting for {what}"
        + (f" (last error: {last})" if last else "")
    )


def manager_for(lab: LocalLab, config: FailoverConfig = FAST, **kwargs: Any) -> FailoverManager:
    """An open manager over every node of ``lab``."""
    nodes = lab.manager_nodes()
    return FailoverManager(nodes=nodes, config=config, **kwargs).open()


def port_of(lab: LocalLab, port: int) -> str:
    """The node name listening on ``port``."""
    return next(n.name for n in lab.nodes if n.port == port)


class Workload:
    """Threads committing INSERTs with unique ids, recording what was acknowledged."""

    _runs = itertools.count()  # each workload of a session writes its own ids

    def __init__(self, mgr: FailoverManager, threads: int = 4) -> None:
        self.mgr = mgr
        run = next(Workload._runs) * 100_000_000
        self.acked: list[tuple[int, int, float]] = []  # (id, server port, time)
        self.unknown: list[int] = []
        self.failed: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(run + k * 10_000_000,), daemon=True)
            for k in range(threads)
        ]

    def _run(self, base: int) -> None:
        i = base
        while not self._stop.is_set():
            i += 1
            try:
                rows = self.mgr.query(
                    "INSERT INTO w VALUES (%s) RETURNING inet_server_port()", (i,)
                )
                self.acked.append((i, rows[0][0], time.monotonic()))
            except WriteOutcomeUnknown:
                self.unknown.append(i)
            except Exception as exc:  # noqa: BLE001 - recorded and asserted on
                self.failed.append((i, repr(exc)))

    def __enter__(self) -> Workload:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def acked_on(self, port: int) -> int:
        return sum(1 for _, p, _ in self.acked if p == port)


def prepare(lab: LocalLab) -> None:
    lab.run_sql("node0", "CREATE TABLE w (id bigint PRIMARY KEY)")
    for standby in ("node1", "node2"):

        def replayed(name: str = standby) -> bool:
            return bool(lab.run_sql(name, "SELECT to_regclass('w') IS NOT NULL")[0][0])

        wait_until(replayed, what=f"{standby} to replay the table")
