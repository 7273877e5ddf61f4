"""Many application processes on one cluster: what they cost it, and how fast they all move.

For each size (1, 50, 200 managers by default) and each contender, a run
builds a fresh 3-node lab cluster (asynchronous replication, or quorum
sync with ``--sync 1``; ``max_connections`` raised so that every contender
fits), starts the arbiter (``pgfailover serve --promotion auto
--stream-port 0``, PostgreSQL's and pgfailover's default timing) and spreads
the managers over worker processes (10 managers each, at most 20; with
``--per-process 1``, one process each, as gunicorn workers have). Then:

1. **steady**: the managers idle for ``--steady`` seconds; measured: probe
   sessions on the servers (``pg_stat_activity``, application
   ``pgfailover-probe``, the arbiter's included) and the probes the managers
   ran per second (their counters: exact, where the servers' transaction
   statistics lag by up to several seconds), the arbiter's apart; then
   **all at once**: every manager writes once, all released together on
   the healthy primary (p50, p99 from the release to each acknowledgement):
   what the writes waiting at a failover cost the primary and the workers
   when they are all let go, without a failover;
2. **failover**: every manager writes (an INSERT with a unique id every
   ``--pace`` seconds, default 1, one thread each, each starting at its own
   point of the pace as independent processes do; ``--in-step``: all at
   once, so that every round of writes is one burst; the writes' own latency
   before the kill shows how busy the machine is: at 0.1 s, 200 managers
   saturate 2 CPUs), the primary is killed (SIGKILL; ``--fault hang``: its
   processes are stopped with SIGSTOP instead, a host that froze or lost
   power: no RST, no teardown on the survivors' CPUs, and every write in
   flight there hangs until its manager gives the node up), the arbiter
   promotes.
   Measured: the most probe sessions seen on the standbys and the probes
   per second in the 3 s after the kill (all of them, and those that
   reached a live node: a probe of the dead primary costs the servers
   nothing); for every manager, the time from the arbiter's switch to the
   new primary (its failover event's ``completed``, right after
   ``pg_promote`` returned) to its first acknowledged write there (p50, p99,
   max; counted from the attempt's start instead when the writer was still
   pausing between writes at the switch, so that the pace does not count as
   routing delay), the same from the promotion (when the new primary left
   recovery, by its log: the arbiter's switch comes after ``pg_promote``
   returned, the new primary was configured and re-probed), when the
   manager itself switched (its ``on_failover``),
   and how many never got there; acknowledged writes missing on the
   new primary; writes acknowledged by the old primary after the new one's
   first;
3. **footprint**: resident memory and threads each manager adds to its process.

Contenders:

- ``probing``: every manager probes every node itself (``promotion = "external"``);
- ``arbiter``: every manager follows the arbiter's stream (``source=``);
- ``libpq``: one psycopg_pool ``ConnectionPool`` per "manager" on the
  multi-host conninfo with ``target_session_attrs=read-write`` and
  ``check=ConnectionPool.check_connection``, writes retried.

The contenders take turns run by run (every contender's run at a size, then
the next round), each alone on the machine while it runs. Run as root,
each role (the database servers, the arbiter, the workers) gets its own CPU
cgroup with equal weights, as separate hosts or containers would
(``--no-cpu-groups``: one group, shared thread by thread; see cpugroups.py).

    python benchmarks/scale.py --sizes 1,50,200 --runs 3
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine
from cpugroups import CpuGroups, descendants
from scalerun import (
    Workers,
    add_cpu_groups,
    add_in_step,
    add_per_process,
    add_warmup,
    cpu_groups_kind,
    quantiles,
    run_all,
    why_no_switch,
)
from scalewrites import left_recovery, writes

from pgfailover.lab import LocalLab
from pgfailover.lab.base import conninfo

CONTENDERS = ("probing", "arbiter", "libpq")
MAX_WORKERS = 20  # with 10 managers per process (a gunicorn worker has one; 2 CPUs host them)
PACE = 1.0  # seconds between one manager's writes (0.1 at 200 managers saturates 2 CPUs)
PROBE_SESSIONS = (
    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgfailover-probe'"
)
FAILOVER_WINDOW = 3.0  # seconds after the kill in which the failover's load is measured


# -- the parent: the lab, the arbiter, the workers, the figures ------------------


def _lab(sync: int = 0, max_connections: int = 1500) -> LocalLab:
    lab = LocalLab.create(standbys=2, sync=sync)
    for node in lab.nodes:  # by default, room for 200 managers' probe and pool sessions
        lab.run_sql(node.name, f"ALTER SYSTEM SET max_connections = {max_connections:d}")
    for name in ("node1", "node2", "node0"):  # standbys first: theirs must not be lower
        lab.stop(name)
        lab.start(name)
    lab.run_sql("node0", "CREATE TABLE bench (id bigint PRIMARY KEY)")
    for name in ("node1", "node2"):
        _until(functools.partial(_replayed, lab, name))
    return lab


def _replayed(lab: LocalLab, name: str) -> bool:
    return bool(lab.run_sql(name, "SELECT to_regclass('bench') IS NOT NULL")[0][0])


def _until(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            value = check()
            if value:
                return value
        time.sleep(0.05)
    raise SystemExit(f"timed out after {timeout}s")


class Arbiter:
    """``pgfailover serve --promotion auto --stream-port 0`` over the lab, as a process
    (``extra``: more of its TOML; scale_patroni.py gives it a Patroni source)."""

    def __init__(
        self, lab: Any, directory: Path, *, promotion: str = "auto", extra: str = ""
    ) -> None:
        lines = []
        for node in lab.nodes:
            lines += ["[[nodes]]", f'name = "{node.name}"', f'dsn = "{node.dsn}"']
        config = directory / "arbiter.toml"
        config.write_text("\n".join(lines) + "\n" + extra)
        command = [sys.executable, "-m", "pgfailover", "serve", "--config", str(config)]
        command += ["--port", "0", "--stream-port", "0", "--promotion", promotion]
        with (directory / "arbiter.log").open("w") as log:
            self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
        assert self.proc.stdout is not None
        ready = json.loads(self.proc.stdout.readline())
        self.url: str = ready["url"]
        self.stream_url: str = ready["stream_url"]

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:  # noqa: S310
            return json.loads(response.read())

    def probes(self) -> int:
        """Probes the arbiter ran (``pgfailover_probe_duration_seconds_count``, every node)."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as response:  # noqa: S310
            text = response.read().decode()
        prefix = "pgfailover_probe_duration_seconds_count{"
        return int(
            sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))
        )

    def switched(self) -> tuple[str | None, float | None]:
        """The node the last completed failover went to, and when (wall clock); the API
        is asked for 30 s at most (a starved arbiter answers late)."""
        deadline = time.monotonic() + 30
        while True:
            try:
                events = self.get("/failover/history")["events"]
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
        done = [e for e in events if e["outcome"] == "completed"]
        return (done[-1]["to"], done[-1]["completed"]) if done else (None, None)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def _delta(before: dict[str, int], after: dict[str, int], nodes: list[str]) -> int:
    return sum(after.get(n, 0) - before.get(n, 0) for n in nodes)


def _sessions(lab: Any, names: list[str], query: str = PROBE_SESSIONS) -> int:
    """Sessions on the nodes ``names``: the lab's connection is tried for 30 s (200
    managers probing can keep a server from answering it within its 3 s)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return sum(int(lab.run_sql(n, query)[0][0]) for n in names)
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _specs(
    lab: Any,
    size: int,
    contender: str,
    stream_url: str,
    pace: float,
    *,
    per_process: int = 10,
    in_step: bool = False,
    warmup: str | None = None,
) -> list[dict[str, Any]]:
    """One worker process's spec per ``per_process`` managers (at most ``MAX_WORKERS``
    processes at 10 or more a process; as many as it takes below that)."""
    nodes = [[n.name, n.dsn] for n in lab.nodes]
    hosts = ",".join(n.host for n in lab.nodes)
    ports = ",".join(str(n.port) for n in lab.nodes)
    multihost = conninfo(hosts, ports, target_session_attrs="read-write", connect_timeout=2)  # type: ignore[arg-type]
    workers = -(-size // max(1, per_process))
    if per_process >= 10:
        workers = min(MAX_WORKERS, workers)
    split = [size // workers + (1 if k < size % workers else 0) for k in range(workers)]
    return [
        {
            "contender": contender,
            "count": count,
            "nodes": nodes,
            "multihost": multihost,
            "source": stream_url,
            "base": (k + 1) * 1_000_000_000,
            "pace": pace,
            "in_step": in_step,
            "warmup": warmup,
        }
        for k, count in enumerate(c for c in split if c)
    ]


def _arbiter_rate(arbiter: Arbiter, before: int, seconds: float) -> float | None:
    """The arbiter's probes a second since ``before``; ``None`` if its API did not
    answer within 10 s (200 probing managers starved it)."""
    try:
        return round((arbiter.probes() - before) / seconds, 1)
    except OSError:
        return None


def _place(groups: CpuGroups, lab: LocalLab, arbiter: Arbiter, workers: Workers) -> None:
    """The run's roles, each in its own CPU group (see cpugroups.py)."""
    groups.put("db", [p for n in lab.nodes for p in descendants(lab.pid(n.name) or 0)])
    groups.put("arbiter", [arbiter.proc.pid])
    groups.put("apps", [proc.pid for proc in workers.procs])


def _steady(lab: LocalLab, arbiter: Arbiter, workers: Workers, seconds: float) -> dict[str, Any]:
    """The idle cluster: probe sessions and probes for ``seconds``; then every manager
    writing once, all at once (what the new primary and the workers take for the writes
    waiting at a failover, without one)."""
    every = ["node0", "node1", "node2"]
    out: dict[str, Any] = {"steady_probe_sessions": None}
    with contextlib.suppress(psycopg.OperationalError):  # 200 probing managers, on 2 CPUs
        out["steady_probe_sessions"] = _sessions(lab, every)
    p0, a0, t0 = workers.probes(), arbiter.probes(), time.monotonic()
    time.sleep(seconds)
    took = time.monotonic() - t0
    out["steady_probes_per_s"] = round(_delta(p0, workers.probes(), every) / took, 1)
    out["steady_arbiter_probes_per_s"] = round((arbiter.probes() - a0) / took, 1)
    burst = sorted(t for answer in workers.ask("burst") for t in answer["burst"])
    out["all_at_once_s"] = quantiles(burst)
    return out


def run_one(size: int, contender: str, run: int, args: argparse.Namespace) -> dict[str, Any]:
    """One run: steady, then the primary lost under writes; the run's record."""
    lab = _lab(args.sync)
    home = Path(tempfile.mkdtemp(prefix="pgfl-scale-"))  # the arbiter's config and log
    arbiter = Arbiter(lab, home)
    specs = _specs(
        lab,
        size,
        contender,
        arbiter.stream_url,
        args.pace,
        per_process=args.per_process,
        in_step=args.in_step,
        warmup=args.warmup,
    )
    workers = Workers(specs)
    groups = CpuGroups(args.cpu_groups)
    try:
        _place(groups, lab, arbiter, workers)
        readies = workers.ask(None)
        time.sleep(2.0)  # the managers' first rounds are behind them
        record: dict[str, Any] = {"size": size, "contender": contender, "run": run}
        record.update(_steady(lab, arbiter, workers, args.steady))
        workers.ask("write")
        time.sleep(2.0)
        # The killed node's processes die in the root group, where hundreds of them take
        # most of both CPUs until they are gone (kill_took_s, 0.6-1.6 s at 200): on a
        # real node loss that teardown is the lost host's work, here it is the
        # survivors' CPU. In a group of their own (tried, 4 runs at 200) they took
        # 1.6-2.8 s and the followers switched later (0.36-0.40 s p50 after the
        # arbiter's switch, against 0.12-0.15 s); in the database's group some were
        # still dying after 30 s.
        groups.release(descendants(lab.pid("node0") or 0))
        killed = time.time()
        record.update(_lose_primary(lab, args.fault, workers, arbiter))
        time.sleep(max(0.0, args.observe - FAILOVER_WINDOW))
        results = workers.ask("stop")
        new, switched = arbiter.switched()
        if new is None:  # the record says only that none switched: stderr says why
            print(why_no_switch(arbiter.get, home / "arbiter.log"), file=sys.stderr)
        promoted = left_recovery(lab.local_node(new).logfile, killed) if new else None
        record.update(writes(lab, results, killed, new, switched, promoted=promoted))
        record["open_s_per_process"] = max(r["open_s"] for r in readies)
        counts = [spec["count"] for spec in specs]
        record["rss_kib_per_manager"] = round(
            statistics.median(r["rss_kib"] / c for r, c in zip(readies, counts, strict=True)), 1
        )
        record["threads_per_manager"] = round(
            statistics.median(r["threads"] / c for r, c in zip(readies, counts, strict=True)), 1
        )
        return record
    finally:
        workers.kill()
        arbiter.stop()
        if args.fault == "hang":  # a stopped server does not stop: SIGKILL works on it
            with contextlib.suppress(Exception):
                lab.kill("node0")
        lab.destroy()
        groups.close()  # last: a process left in a group keeps it from being removed
        shutil.rmtree(home, ignore_errors=True)


def _lose_primary(lab: LocalLab, fault: str, workers: Workers, arbiter: Arbiter) -> dict[str, Any]:
    """Lose node0 (``fault``: kill or hang) and count the probes of the window after it."""
    every, standbys = ["node0", "node1", "node2"], ["node1", "node2"]
    p0, a0 = workers.probes(), arbiter.probes()
    record: dict[str, Any] = {"fault": fault}
    began, window = time.time(), time.monotonic() + FAILOVER_WINDOW
    with concurrent.futures.ThreadPoolExecutor(1) as background:
        # The lab waits until every process is gone (seconds, with 200 backends).
        losing = background.submit(_kill if fault == "kill" else _hang, lab, "node0")
        peak = 0
        while time.monotonic() < window:
            with contextlib.suppress(Exception):
                peak = max(peak, _sessions(lab, standbys))
            time.sleep(0.1)
        record["kill_took_s"] = round(losing.result(timeout=60) - began, 3)
    record["failover_probe_sessions_max"] = peak
    p1 = workers.probes()
    record["failover_probes_per_s"] = round(_delta(p0, p1, every) / FAILOVER_WINDOW, 1)
    record["failover_live_probes_per_s"] = round(_delta(p0, p1, standbys) / FAILOVER_WINDOW, 1)
    record["failover_arbiter_probes_per_s"] = _arbiter_rate(arbiter, a0, FAILOVER_WINDOW)
    return record


def _kill(lab: LocalLab, name: str) -> float:
    """Kill ``name`` (node loss); when its last process was gone (wall clock)."""
    lab.kill(name)
    return time.time()


def _hang(lab: LocalLab, name: str) -> float:
    """Freeze ``name`` (a hung host: SIGSTOP, no RST); when every process had stopped."""
    lab.pause(name)
    return time.time()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1,50,200")
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pace", type=float, default=PACE, help="seconds between writes")
    parser.add_argument(
        "--sync", type=int, default=0, help="quorum sync: ANY N of the standbys (0: async)"
    )
    parser.add_argument("--steady", type=float, default=10.0, help="seconds of idle measured")
    parser.add_argument("--observe", type=float, default=8.0, help="seconds after the kill")
    parser.add_argument(
        "--fault",
        choices=("kill", "hang"),
        default="kill",
        help="kill: SIGKILL the primary (its teardown runs on these CPUs); hang: SIGSTOP "
        "it, a frozen host (no RST: writes in flight there hang until given up)",
    )
    add_cpu_groups(parser)
    add_per_process(parser)
    add_in_step(parser)
    add_warmup(parser)
    args = parser.parse_args()
    header = {"benchmark": "scale", "machine": machine(), "pace_s": args.pace, "sync": args.sync}
    header.update(cpu_groups=cpu_groups_kind(args), per_process=args.per_process)
    header.update(in_step=args.in_step, warmup=args.warmup, fault=args.fault)
    run_all(args, CONTENDERS, run_one, header)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
