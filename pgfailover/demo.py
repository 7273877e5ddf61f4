"""``make demo``: a live failover on a local 3-node cluster, with a report.

Builds a lab cluster with quorum sync (ANY 1 of 2 standbys), opens a manager
in ``auto`` mode, runs a steady write workload from several threads, kills
the primary, and shows what happens as it happens: state changes, which node
is primary, writes per second, errors (each state change once: the
manager's own log line, with its reason). It ends with a report (the
failover event's detection-to-promoted time and, what the application saw,
the kill to the first write on the new primary; failed, unknown-outcome
and lost writes, every acknowledged write being looked up on the new
primary) and tears the cluster down.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TextIO

from pgfailover.config import FailoverConfig
from pgfailover.errors import WriteOutcomeUnknown
from pgfailover.lab import LocalLab
from pgfailover.manager import FailoverManager

__all__ = ["DemoReport", "run_demo"]

THREADS = 4


@dataclass
class DemoReport:
    """What the demo measured."""

    acked: list[tuple[int, str, float]] = field(default_factory=list)  # id, node, time
    failed: list[str] = field(default_factory=list)
    unknown: int = 0
    kill_at: float = 0.0
    old_primary: str = "node0"
    new_primary: str | None = None
    first_write_after_kill: float | None = None
    detection_to_writable: float | None = None  # the failover event: detection to promoted
    lost: int = 0


class _Say(logging.Handler):
    """The manager's own log lines (each state change once, with its reason), timestamped."""

    def __init__(self, say: Callable[[str], None]) -> None:
        super().__init__(logging.INFO)
        self.say = say

    def emit(self, record: logging.LogRecord) -> None:
        self.say(record.getMessage())


@contextmanager
def _manager_lines(say: Callable[[str], None]) -> Iterator[None]:
    """Print pgfailover's log lines through ``say`` (and only there) while the demo runs."""
    logger = logging.getLogger("pgfailover")
    handler, propagate, level = _Say(say), logger.propagate, logger.level
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
        logger.setLevel(level)


def _workload(mgr: FailoverManager, report: DemoReport, stop: threading.Event, base: int) -> None:
    i = base
    while not stop.is_set():
        i += 1
        try:
            rows = mgr.query(
                "INSERT INTO demo (id) VALUES (%s) RETURNING current_setting('cluster_name')", (i,)
            )
            report.acked.append((i, rows[0][0], time.monotonic()))
        except WriteOutcomeUnknown:
            report.unknown += 1
        except Exception as exc:  # noqa: BLE001 - the demo reports every failure
            report.failed.append(f"{type(exc).__name__}: {exc}")


def run_demo(out: TextIO = sys.stdout, *, seconds_after_kill: float = 4.0) -> DemoReport:
    """Run the demo, printing as it goes; returns the report."""
    t0 = time.monotonic()

    def say(message: str) -> None:
        out.write(f"[{time.monotonic() - t0:6.2f}s] {message}\n")
        out.flush()

    say("building a 3-node cluster: node0 primary, node1 and node2 standbys, quorum sync ANY 1")
    lab = LocalLab.create(standbys=2, sync=1, progress=lambda m: say(f"  lab: {m}"))
    report = DemoReport()
    try:
        lab.run_sql(
            "node0", "CREATE TABLE demo (id bigint PRIMARY KEY, at timestamptz DEFAULT now())"
        )
        nodes = lab.manager_nodes()
        config = FailoverConfig(promotion="auto", health_check_interval=0.5, failover_cooldown=0)
        mgr = FailoverManager(nodes=nodes, config=config, name="demo")

        with _manager_lines(say), mgr:
            say(f"manager open in auto mode; primary {mgr.snapshot.primary}")
            stop = threading.Event()
            workers = [
                threading.Thread(
                    target=_workload, args=(mgr, report, stop, k * 100_000_000), daemon=True
                )
                for k in range(THREADS)
            ]
            for w in workers:
                w.start()
            _ticker(mgr, report, say, 2.0)
            say(f"KILL node0 (SIGKILL to every server process); {len(report.acked)} writes so far")
            report.kill_at = time.monotonic()
            lab.kill("node0")
            _ticker(mgr, report, say, seconds_after_kill)
            stop.set()
            for w in workers:
                w.join(10)
            report.new_primary = mgr.snapshot.primary
            done = mgr.events.latest("failover")
            if done is not None and done.outcome == "completed" and done.completed is not None:
                report.detection_to_writable = done.completed - done.started
            after = [a for a in report.acked if a[1] != "node0" and a[2] > report.kill_at]
            if after:
                report.first_write_after_kill = min(a[2] for a in after) - report.kill_at
            if report.new_primary:
                present = {r[0] for r in lab.run_sql(report.new_primary, "SELECT id FROM demo")}
                report.lost = len({a[0] for a in report.acked} - present)
            for event in mgr.history():
                for note in event.notes:
                    say(f"  note: {note}")
    finally:
        lab.destroy()
        say("cluster torn down")
    _print_report(report, out)
    return report


def _ticker(
    mgr: FailoverManager, report: DemoReport, say: Callable[[str], None], seconds: float
) -> None:
    end = time.monotonic() + seconds
    last = len(report.acked)
    last_t = time.monotonic()
    while time.monotonic() < end:
        time.sleep(0.5)
        now = time.monotonic()
        count = len(report.acked)
        rate = (count - last) / (now - last_t)
        last, last_t = count, now
        snap = mgr.snapshot
        say(
            f"primary {snap.primary or '-':<6} state {snap.state.value:<20} "
            f"{rate:7.0f} writes/s  failed {len(report.failed)}  unknown {report.unknown}"
        )


def _seconds(value: float | None) -> str:
    return f"{value:.3f} s" if value is not None else "never"


def _print_report(report: DemoReport, out: TextIO) -> None:
    first = report.first_write_after_kill
    lines = [
        "",
        "report",
        "------",
        f"old primary                  {report.old_primary} (killed)",
        f"new primary                  {report.new_primary or 'none'}",
        f"detection -> promoted        {_seconds(report.detection_to_writable)}"
        "  (the failover event: the manager saw node0 fail, promoted, repointed)",
        f"kill -> first write on new   {_seconds(first)}"
        "  (what the application saw: SIGKILL to its next acknowledged write)",
        f"acknowledged writes          {len(report.acked)}",
        f"failed writes                {len(report.failed)}",
        f"outcome unknown (in flight)  {report.unknown}  (COMMITs cut by the kill, <= {THREADS})",
        f"acknowledged but lost        {report.lost}",
    ]
    lines += [f"  failure: {f}" for f in report.failed[:5]]
    out.write("\n".join(lines) + "\n")


def main() -> int:
    """Entry point of ``python -m pgfailover.demo``; exit 1 if the failover failed."""
    logging.basicConfig(
        level=logging.WARNING, format="           %(levelname)s %(name)s: %(message)s"
    )
    # The dead node's pool retries in the background; its warnings are noise here.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    report = run_demo()
    ok = report.new_primary not in (None, "node0") and report.lost == 0 and not report.failed
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
