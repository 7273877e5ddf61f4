"""Many application processes on a Patroni cluster: how fast they follow its leader change.

The Patroni side of ``scale.py``, with the same worker processes and the
same figures, on a :class:`~pgfailover.lab.patroni.PatroniLab` (three
Patroni 4 members on etcd, ``max_connections`` 1500) instead of the local
lab and arbiter. For each size (1, 50, 200 managers by default) and each
contender, a run builds a fresh Patroni cluster, spreads the managers over
worker processes (10 each, at most 20), lets them idle for ``--steady``
seconds, then has every manager write (an INSERT with a unique id every
``--pace`` seconds) and asks Patroni for a switchover to ``node1``
(``POST /switchover``). The event is a switchover rather than a kill:
Patroni replaces a crashed leader only after its leader key's TTL (at least
20 s), which measures Patroni, not its followers.

"Promotion" is when ``node1`` left recovery, by its own clock: a statement
waits on the server, looking every millisecond, and sends
``clock_timestamp()`` from that statement when recovery ends (a client
polling with a round trip per look, or asking in a second statement, saw
it up to tens of milliseconds late on busy CPUs); measured from there, for every
manager: its switch (its ``on_failover``) and its first acknowledged write
on ``node1`` (p50, p99, max). Also: the sessions the managers keep on the
servers to watch them (probes, and a follower's confirmation of the new
leader) at steady state and at most during the switchover, and what the
writes came to (lost, acknowledged by ``node0`` after the promotion).

Contenders, taking turns run by run:

- ``probing``: every manager probes every node itself;
- ``patroni``: every manager follows Patroni's REST API (``patroni+http://``,
  ``GET /cluster`` every ``fast_interval``);
- ``patroni-etcd``: every manager watches Patroni's keys in etcd (``patroni+etcd://``);
- ``patroni-arbiter``: one ``pgfailover serve --stream-port`` follows Patroni's
  keys in etcd and every manager follows its stream (``source=`` its URL);
- ``libpq``: a psycopg_pool per "manager" on the multi-host conninfo.

    python benchmarks/scale_patroni.py --sizes 1,50,200 --runs 3
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine
from cpugroups import CpuGroups, descendants
from scale import PACE, Arbiter, _sessions, _specs
from scalerun import (
    Workers,
    add_cpu_groups,
    add_in_step,
    add_per_process,
    cpu_groups_kind,
    run_all,
)
from scalewrites import writes

from pgfailover.errors import LabError
from pgfailover.lab.patroni import PatroniLab

CONTENDERS = ("probing", "patroni", "patroni-etcd", "patroni-arbiter", "libpq")
WATCH_SESSIONS = (
    "SELECT count(*) FROM pg_stat_activity "
    "WHERE application_name IN ('pgfailover-probe', 'pgfailover-confirm')"
)
WINDOW = 3.0  # seconds after the switchover request in which sessions are watched


# Waits on the server (up to 1 s a call, looking every millisecond) for the end of
# recovery and says when the server saw it, by its own clock (the same machine's), in
# a notice sent from the same statement: a client polling with a round trip per look,
# or asking for the time in a second statement, sees it late when the CPUs are busy
# (a second statement was seen to stamp it up to 80 ms late, after followers had
# switched).
_WAIT_OUT_OF_RECOVERY = """
DO $$ BEGIN
  FOR i IN 1..1000 LOOP
    IF NOT pg_is_in_recovery() THEN
      RAISE NOTICE 'left recovery at %', extract(epoch FROM clock_timestamp())::float8;
      EXIT;
    END IF;
    PERFORM pg_sleep(0.001);
  END LOOP;
END $$
"""
_LEFT = "left recovery at "


def _promoted(dsn: str, into: dict[str, float], stop: threading.Event) -> None:
    """Set ``into["at"]`` (wall clock) to when the server at ``dsn`` left recovery, as
    seen on the server within a millisecond."""

    def notice(diag: psycopg.errors.Diagnostic) -> None:
        message = diag.message_primary or ""
        if message.startswith(_LEFT):
            into.setdefault("at", float(message.removeprefix(_LEFT)))

    while not stop.is_set():
        with contextlib.suppress(psycopg.Error), psycopg.connect(dsn, autocommit=True) as conn:
            conn.add_notice_handler(notice)
            while not stop.is_set():
                conn.execute(_WAIT_OUT_OF_RECOVERY)
                if "at" in into:
                    return
        stop.wait(0.01)


def _switchover(lab: PatroniLab, candidate: str, patience: float = 60.0) -> None:
    """Ask Patroni for the switchover until it takes it. A starved Patroni refuses
    ("no good candidates": it could not reach the candidate's REST API in 2 s)."""
    deadline = time.monotonic() + patience
    while True:
        try:
            lab.switchover(candidate)
            return
        except LabError:
            if lab.leader() == candidate:  # it went through, but the answer did not
                return
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _footprint(readies: list[dict[str, Any]], counts: list[int]) -> dict[str, float]:
    """Memory and threads per manager; and the arbiter's columns of scale.py, naught here
    (no arbiter; probes during the switchover are not counted: its sessions are)."""
    pairs = list(zip(readies, counts, strict=True))
    return {
        "rss_kib_per_manager": round(statistics.median(r["rss_kib"] / c for r, c in pairs), 1),
        "threads_per_manager": round(statistics.median(r["threads"] / c for r, c in pairs), 1),
        "steady_arbiter_probes_per_s": 0.0,
        "failover_probes_per_s": 0.0,
        "failover_live_probes_per_s": 0.0,
        "failover_arbiter_probes_per_s": 0.0,
    }


def _switch(lab: PatroniLab, every: list[str]) -> tuple[float, float | None, int]:
    """Switch over to node1 while watching: when asked, when promoted, the most
    watch sessions seen in the first :data:`WINDOW` seconds."""
    promoted: dict[str, float] = {}
    stop = threading.Event()
    poller = threading.Thread(
        target=_promoted, args=(lab.node("node1").dsn, promoted, stop), daemon=True
    )
    poller.start()
    requested = time.time()
    switch = threading.Thread(target=_switchover, args=(lab, "node1"), daemon=True)
    switch.start()
    peak, window = 0, time.monotonic() + WINDOW
    while time.monotonic() < window:
        with contextlib.suppress(Exception):
            peak = max(peak, _sessions(lab, every, WATCH_SESSIONS))
        time.sleep(0.1)
    switch.join(90)
    poller.join(60)
    stop.set()
    return requested, promoted.get("at"), peak


def run_one(size: int, contender: str, run: int, args: argparse.Namespace) -> dict[str, Any]:
    """One run: steady, then a switchover under writes; the run's record."""
    lab = PatroniLab.create(max_connections=1500)
    every = [n.name for n in lab.nodes]
    groups = CpuGroups(args.cpu_groups)
    try:
        lab.run_sql("node0", "CREATE TABLE bench (id bigint PRIMARY KEY)")
        source = lab.etcd_source if contender == "patroni-etcd" else lab.source
        home = Path(tempfile.mkdtemp(prefix="pgfl-scale-"))  # the arbiter's config and log
        arbiter = None
        if contender == "patroni-arbiter":
            extra = f'[failover]\nsource = "{lab.etcd_source}"\n'
            arbiter = Arbiter(lab, home, promotion="external", extra=extra)
            source = arbiter.stream_url
        specs = _specs(
            lab,
            size,
            contender,
            source,
            args.pace,
            per_process=args.per_process,
            in_step=args.in_step,
        )
        workers = Workers(specs)
        try:
            groups.put("db", [p for pid in lab.patroni_pids() for p in descendants(pid)])
            groups.put("etcd", [lab.etcd.proc.pid] if lab.etcd is not None else [])
            if arbiter is not None:
                groups.put("arbiter", [arbiter.proc.pid])
            groups.put("apps", [proc.pid for proc in workers.procs])
            readies = workers.ask(None)
            time.sleep(2.0)
            record: dict[str, Any] = {"size": size, "contender": contender, "run": run}
            record["steady_probe_sessions"] = _sessions(lab, every, WATCH_SESSIONS)
            p0, t0 = workers.probes(), time.monotonic()
            time.sleep(args.steady)
            probed = sum(workers.probes().values()) - sum(p0.values())
            record["steady_probes_per_s"] = round(probed / (time.monotonic() - t0), 1)
            workers.ask("write")
            time.sleep(2.0)
            requested, at, record["failover_probe_sessions_max"] = _switch(lab, every)
            time.sleep(max(0.0, args.observe - WINDOW))
            results = workers.ask("stop")
            record["promotion_after_request_s"] = round(at - requested, 3) if at else None
            record.update(writes(lab, results, requested, "node1", at, old="node0"))
            record.update(_footprint(readies, [spec["count"] for spec in specs]))
            return record
        finally:
            workers.kill()
            if arbiter is not None:
                arbiter.stop()
            shutil.rmtree(home, ignore_errors=True)
    finally:
        lab.destroy()
        groups.close()  # last: a process left in a group keeps it from being removed


def _stop(signum: int, _frame: object) -> None:
    """SIGTERM (or SIGINT, which a shell leaves ignored in a background job): stop,
    running every ``finally`` so that no Patroni, PostgreSQL or etcd is left."""
    raise SystemExit(128 + signum)


def main() -> None:
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1,50,200")
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pace", type=float, default=PACE, help="seconds between writes")
    parser.add_argument("--steady", type=float, default=5.0, help="seconds of idle measured")
    parser.add_argument("--observe", type=float, default=6.0, help="seconds after the request")
    add_cpu_groups(parser)
    add_per_process(parser)
    add_in_step(parser)
    args = parser.parse_args()
    header = {"benchmark": "scale_patroni", "machine": machine(), "pace_s": args.pace}
    header["cpu_groups"] = cpu_groups_kind(args)
    header["per_process"] = args.per_process
    header["in_step"] = args.in_step
    run_all(args, CONTENDERS, run_one, header)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
