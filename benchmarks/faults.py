"""Fault to first write, per kind of fault: pgfailover against a libpq multi-host pool.

Each run builds a fresh lab cluster (node0 primary, node1 and node2 standbys,
quorum sync ``ANY 1``, PostgreSQL's default server settings), starts four
writer threads committing small INSERTs with unique ids through one
contender, applies one fault to the current primary at t0 and measures:

- ``fault_to_first_write``: t0 to the first acknowledged write on another node;
- ``promotion_delay``: t0 to the start of the promotion (pgfailover's own
  decision; for the baseline, the delay its promoter was given);
- ``promotion_to_first_write``: the end of the promotion (the new primary out
  of recovery) to that first write: what the client side adds;
- ``failed_attempts``: attempts that raised (pgfailover's include
  ``WriteOutcomeUnknown`` for COMMITs in flight at the fault);
- ``lost``: acknowledged ids missing on the final primary (0 with quorum sync);
- ``old_primary_acks_after_failover``: writes the faulted node acknowledged
  after another node had acknowledged one (a split brain: must be 0).

t0 is taken just before the fault is applied: ``lab.kill`` returns only once
the processes are reaped (25-90 ms here), and pgfailover may have failed over
by then. So the figures include the few milliseconds the lab takes before its
SIGKILL (3-6 ms on an idle machine, measured), SIGSTOP or iptables rule takes
effect; ``fault_apply_seconds`` is how long the whole call took.

Faults, each applied to the current primary at t0:

- ``crash``: SIGKILL of every server process (the kernel answers with RST);
- ``hang``: SIGSTOP of every server process (the kernel still completes
  handshakes and acknowledges data; nothing answers);
- ``blackhole``: iptables drops every packet to or from its port (root only);
- ``second_crash``: node0 is killed, writes resume on the new primary, 2 s
  later that new primary is killed at t0.

Contenders, run alone in alternating slices (pgfailover, baseline,
pgfailover, baseline, ...; ``--runs`` pairs per fault):

- ``pgfailover``: ``FailoverManager(promotion="auto", health_check_interval=1.0)``,
  library defaults otherwise; the fault is applied only once the manager has
  tuned every standby's ``wal_receiver_timeout`` (4 s) and its status shows the
  hang failover bound that follows.
- ``baseline``: a ``psycopg_pool.ConnectionPool`` on the libpq multi-host
  conninfo (``target_session_attrs=read-write``, ``connect_timeout=2``,
  ``check=ConnectionPool.check_connection``), the writers retrying failed
  attempts. Nothing in it promotes, so an orchestrator stand-in (the promoter
  of ``failover.py``, mirrored here) runs ``pg_promote`` on the most advanced
  standby, sets its ``synchronous_standby_names`` to '' and repoints the other
  standby. It promotes after the SAME delay pgfailover took to start its
  promotion for that fault in the preceding pgfailover run of the pair (for
  ``second_crash``, for each of the two crashes): both contenders get a new
  primary at the same moment, so the difference is what the client side
  adds. This is fairer than a fixed delay, which would hand the baseline a
  detector faster (0 s) or slower than pgfailover's for the hard faults. Only
  when that pgfailover run did not promote does a fixed delay stand in (the
  pgfailover targets: crash 0.2 s, hang and blackhole 5 s; for the second
  crash 0.2 s, then 1 s);
  ``delay_source`` says which. The promoter polls ``pg_is_in_recovery()``
  every 5 ms after ``pg_promote(false)``, as pgfailover does, so "promoted"
  means the same instant for both.

  The baseline's connections also carry TCP keepalives and a TCP user
  timeout, as a careful user of a plain pool would configure for failover:
  aggressive keepalives in the spirit of AWS's fast-failover guide for
  Aurora PostgreSQL (idle 1 s, interval 1 s, 5 probes) plus
  ``tcp_user_timeout=5000``. They end connections to a black-holed server;
  nothing ends one to a hung server, whose kernel still acknowledges data
  and keepalive probes, and libpq has no client-side query timeout.

    python benchmarks/faults.py --runs 5
    python benchmarks/faults.py --runs 1 --faults crash,hang
"""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from psycopg_pool import ConnectionPool

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    Record,
    emit,
    machine,
    summarize,
    writers,
)
from promotions import PromotionLog, Promotions

from pgfailover import FailoverConfig, FailoverManager
from pgfailover.lab import LocalLab, netfault

FAULTS: Final = ("crash", "hang", "blackhole", "second_crash")
THREADS: Final = 4
WARMUP: Final = 1.0  # seconds of steady writes before the fault
SECOND_CRASH_AFTER: Final = 2.0  # seconds of writes on the new primary before the second crash
MOVED: Final = 200  # acknowledged writes on the new primary that end a run early
INSERT: Final = "INSERT INTO bench (id) VALUES (%s) RETURNING inet_server_port()"
# What a careful user of a plain pool sets for failover (see the docstring).
BASELINE_TCP: Final = (
    "keepalives=1&keepalives_idle=1&keepalives_interval=1&keepalives_count=5&tcp_user_timeout=5000"
)
# Promoter delays when the preceding pgfailover run did not promote: its targets.
FALLBACK_DELAYS: Final[dict[str, tuple[float, ...]]] = {
    "crash": (0.2,),
    "hang": (5.0,),
    "blackhole": (5.0,),
    "second_crash": (0.2, 1.0),
}
METRICS: Final = (
    "fault_to_first_write",
    "promotion_delay",
    "promotion_to_first_write",
    "failed_attempts",
    "lost",
)


def _wait_tuned(lab: LocalLab, mgr: FailoverManager, timeout: float = 30.0) -> float:
    """Wait until auto mode has tuned every standby; return the hang failover bound."""
    want = f"{mgr.config.wal_receiver_timeout:g}s"
    standbys = [n.name for n in lab.nodes if n.name != "node0"]
    bound: list[float] = []

    def tuned() -> bool:
        value = mgr.get_failover_status()["failure_detection"]["hang_failover_seconds"]
        # The manager's own view must reflect the tuned setting too (it is
        # max(timeout / 2 + margin, probe timeout + 3 fast probes), about 3 s).
        if value is None or value > mgr.config.wal_receiver_timeout:
            return False
        bound[:] = [float(value)]
        return all(lab.run_sql(n, "SHOW wal_receiver_timeout")[0][0] == want for n in standbys)

    lab.wait_for(tuned, timeout, f"wal_receiver_timeout {want} on {', '.join(standbys)}")
    return bound[0]


Writer = Callable[[int], int]


def _open_contender(
    lab: LocalLab, contender: str
) -> tuple[Writer, Callable[[], None], FailoverManager | None]:
    """The write function, the closer and the manager (``None`` for the baseline)."""
    if contender == "baseline":
        conninfo = f"{lab.url}?target_session_attrs=read-write&connect_timeout=2&{BASELINE_TCP}"
        pool = ConnectionPool(
            conninfo,
            min_size=THREADS,
            max_size=THREADS,
            timeout=5,
            check=ConnectionPool.check_connection,
            open=True,
        )
        pool.wait(timeout=30)

        def pool_write(i: int) -> int:
            with pool.connection() as conn:
                row = conn.execute(INSERT, (i,)).fetchone()
                return int(row[0]) if row else -1

        return pool_write, lambda: pool.close(timeout=2), None
    mgr = FailoverManager(
        nodes=lab.manager_nodes(),
        config=FailoverConfig(promotion="auto", health_check_interval=1.0),
    ).open()

    def manager_write(i: int) -> int:
        return int(mgr.query(INSERT, (i,))[0][0])

    return manager_write, lambda: mgr.close(timeout=2), mgr


def _apply(lab: LocalLab, fault: str, node: str) -> tuple[float, float]:
    """Apply ``fault`` to ``node``; return t0 and when it had taken full effect.

    t0 is taken before: ``lab.kill`` also waits for the processes to be
    reaped, and pgfailover can have failed over by the time it returns.
    """
    t0 = time.monotonic()
    if fault == "hang":
        lab.pause(node)
    elif fault == "blackhole":
        lab.blackhole(node)
    else:
        lab.kill(node)
    return t0, time.monotonic()


def _final_primary(lab: LocalLab, gone: set[str]) -> str | None:
    """The one node out of recovery among those not faulted."""
    found = [n.name for n in lab.nodes if n.name not in gone and lab.in_recovery(n.name) is False]
    return found[0] if len(found) == 1 else None


def _wait_moved(record: Record, ports: set[int], after: float, deadline: float) -> bool:
    """Wait until ``MOVED`` writes were acknowledged elsewhere, or the deadline."""
    while time.monotonic() < deadline:
        if len(record.acks_elsewhere(ports, after)) >= MOVED:
            return True
        time.sleep(0.05)
    return False


def _second_crash(
    lab: LocalLab,
    contender: str,
    record: Record,
    promos: Promotions,
    *,
    delay: float,
    observe: float,
) -> tuple[str, float, str | None]:
    """Crash node0, wait for writes on its successor; return it, the crash time, an error."""
    crashed = time.monotonic()
    lab.kill("node0")
    if contender == "baseline":
        promos.promote(lab, ["node1", "node2"], delay, crashed)
    port0 = lab.node("node0").port
    error = None
    if not _wait_moved(record, {port0}, crashed, crashed + observe):
        error = "writes did not resume after the first crash"
    promos.join()
    moved = record.acks_elsewhere({port0}, crashed)
    successor = next((n.name for n in lab.nodes if moved and n.port == moved[-1][1]), "node1")
    time.sleep(SECOND_CRASH_AFTER)  # the scenario: writes on the new primary, not a wait
    return successor, crashed, error


def _stop(threads: list[threading.Thread], stop: threading.Event) -> None:
    """Stop the writers; those stuck on a hung server are left behind (daemons)."""
    stop.set()
    deadline = time.monotonic() + 3
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))


def run_once(
    fault: str, contender: str, delays: tuple[float, ...], observe: float
) -> dict[str, Any]:
    """One run on a fresh cluster; returns its JSON record.

    ``delays`` are the baseline promoter's delays, one per crash.
    """
    lab = LocalLab.create(standbys=2, sync=1)
    record = Record()
    stop = threading.Event()
    promos = Promotions(PromotionLog())
    logging.getLogger("pgfailover").addHandler(promos.log)
    faulted: str | None = None
    out: dict[str, Any] = {"benchmark": "faults", "fault": fault, "contender": contender}
    try:
        lab.run_sql("node0", "CREATE TABLE bench (id bigint PRIMARY KEY)")
        write, closer, mgr = _open_contender(lab, contender)
        if mgr is not None:
            out["hang_failover_bound"] = _wait_tuned(lab, mgr)
        threads = writers(write, record, stop, THREADS)
        for t in threads:
            t.start()
        time.sleep(WARMUP)  # a steady workload before the fault, not synchronisation
        faulted, first_crash = "node0", None
        if fault == "second_crash":
            faulted, first_crash, error = _second_crash(
                lab, contender, record, promos, delay=delays[0] if delays else 0.0, observe=observe
            )
            if error:
                out["error"] = error
        gone = {"node0", faulted}
        faulted_port = lab.node(faulted).port
        t0, applied = _apply(lab, fault, faulted)
        out["fault_apply_seconds"] = round(applied - t0, 4)
        if contender == "baseline":
            candidates = [n.name for n in lab.nodes if n.name not in gone]
            promos.promote(lab, candidates, delays[-1], t0)
        _wait_moved(record, {faulted_port}, t0, t0 + observe)
        _stop(threads, stop)
        promos.join()
        closer()
        first_new, result = _result(lab, record, faulted_port, t0, gone)
        out.update(faulted=faulted, **result)
        out.update(_timings(contender, promos, first_new, t0, first_crash))
        if contender == "baseline":
            out["promoter_delays"] = list(delays)
        return out
    finally:
        stop.set()
        logging.getLogger("pgfailover").removeHandler(promos.log)
        try:
            if fault == "blackhole":
                lab.heal()
            elif fault == "hang" and faulted is not None:
                lab.kill(faulted)  # no late commits from the old primary
        finally:
            lab.destroy()


def _timings(
    contender: str,
    promos: Promotions,
    first_new: float | None,
    t0: float,
    first_crash: float | None,
) -> dict[str, Any]:
    """When the promotion started after t0, and from its end to the first write."""
    started, promoted = promos.after(t0)
    out: dict[str, Any] = {
        "promotion_delay": None if started is None else round(started - t0, 4),
        "promotion_to_first_write": None
        if first_new is None or promoted is None
        else round(first_new - promoted, 4),
    }
    if contender == "pgfailover":  # what the baseline's promoter waits next
        delays = []
        if first_crash is not None:
            first = promos.after(first_crash, until=t0)[0]
            delays.append(None if first is None else round(first - first_crash, 4))
        out["promotion_delays"] = [*delays, out["promotion_delay"]]
    return out


def _result(
    lab: LocalLab, record: Record, faulted_port: int, t0: float, gone: set[str]
) -> tuple[float | None, dict[str, Any]]:
    """The first write elsewhere after ``t0``, and the run's counts."""
    with record.lock:
        acked = list(record.acked)
        failures = list(record.failures)
    new = [a for a in acked if a[1] != faulted_port and a[2] > t0]
    old = [a for a in acked if a[1] == faulted_port and a[2] <= t0]
    first_new = min((a[2] for a in new), default=None)
    primary = _final_primary(lab, gone)
    lost = None
    if primary is not None:
        present = {r[0] for r in lab.run_sql(primary, "SELECT id FROM bench")}
        lost = len({a[0] for a in acked} - present)
    return first_new, {
        "fault_to_first_write": None if first_new is None else round(first_new - t0, 4),
        "unavailability": None
        if first_new is None or not old
        else round(first_new - max(a[2] for a in old), 4),
        "failed_attempts": len(failures),
        "failure_kinds": sorted({k for _, k in failures}),
        "acked": len(acked),
        "acked_after_t0": len(new),
        "final_primary": primary,
        "lost": lost,
        # Replies already on their way when the fault struck may be read
        # (and stamped) after it; only one after the failover is a split brain.
        "old_primary_acks_after_failover": 0
        if first_new is None
        else sum(1 for a in acked if a[1] == faulted_port and a[2] > first_new),
    }


def _baseline_delays(fault: str, pgfailover_run: dict[str, Any]) -> tuple[tuple[float, ...], str]:
    measured = pgfailover_run.get("promotion_delays") or []
    fallback = FALLBACK_DELAYS[fault]
    if measured and all(d is not None for d in measured) and len(measured) == len(fallback):
        return tuple(float(d) for d in measured), "pgfailover"
    return fallback, "fallback"


def main(argv: list[str] | None = None) -> int:
    """Run the pairs and print one JSON line per run, then a summary line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="pairs of runs per fault")
    parser.add_argument("--faults", default=",".join(FAULTS))
    parser.add_argument(
        "--observe", type=float, default=20.0, help="seconds to wait for writes after t0"
    )
    parser.add_argument("--log-level", default="WARNING", help="of the log on stderr")
    args = parser.parse_args(argv)
    faults = [f for f in args.faults.split(",") if f]
    unknown = sorted(set(faults) - set(FAULTS))
    if unknown:
        parser.error(f"unknown fault(s) {', '.join(unknown)} (known: {', '.join(FAULTS)})")
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(asctime)s %(threadName)s %(name)s %(levelname)s %(message)s",
    )
    emit(
        {
            "benchmark": "faults",
            "machine": machine(),
            "date": datetime.date.today().isoformat(),
            "observe_s": args.observe,
        }
    )
    runs = []
    for fault in faults:
        reason = netfault.unavailable_reason() if fault == "blackhole" else None
        if reason:
            emit({"benchmark": "faults", "fault": fault, "skipped": reason})
            continue
        for pair in range(args.runs):
            ours = run_once(fault, "pgfailover", (), args.observe)
            ours["pair"] = pair
            runs.append(ours)
            emit(ours)
            delays, source = _baseline_delays(fault, ours)
            theirs = run_once(fault, "baseline", delays, args.observe)
            theirs["pair"] = pair
            theirs["delay_source"] = source
            runs.append(theirs)
            emit(theirs)
    summary = summarize(runs, ["fault", "contender"], METRICS)
    for row in summary:
        row["recovered"] = sum(
            1
            for r in runs
            if r["fault"] == row["fault"]
            and r["contender"] == row["contender"]
            and r["fault_to_first_write"] is not None
        )
    emit({"benchmark": "faults", "observe_s": args.observe, "summary": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
