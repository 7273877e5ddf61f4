"""The worker side of scale.py and scale_patroni.py: N managers (or pools) of one contender.

``python benchmarks/scaleworker.py '<spec as JSON>'`` opens ``spec["count"]``
clients of ``spec["contender"]``, writes one row with each, answers one
JSON line on stdout, then obeys ``count`` (probes run, and what each
follower follows), ``write`` and ``stop`` on stdin (one JSON answer each):
the parent (:class:`scalerun.Workers`) speaks to twenty of these at once.
``burst`` has every client write once, all released together, and answers
how long each took: what a failover's waiting writes cost the new primary
and the workers, without a failover.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Imported before the baseline is taken: a manager's footprint excludes the library's.
from psycopg_pool import ConnectionPool

from pgfailover import FailoverConfig, FailoverManager, Node
from pgfailover.errors import first_line
from pgfailover.warmup import warm_configure

# The contenders with a source (the last three: scale_patroni.py).
FOLLOWERS = ("arbiter", "patroni", "patroni-etcd", "patroni-arbiter")
INSERT = "INSERT INTO bench (id) VALUES (%s) RETURNING inet_server_port()"


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


SWITCHED: dict[int, float] = {}  # manager -> when it switched to the new primary (worker)


def _switched(into: dict[int, float], k: int, _event: object) -> None:
    into[k] = time.time()


def _clients(
    spec: dict[str, Any],
) -> tuple[list[Any], list[Any], Callable[[], dict[str, int]], Callable[[], dict[str, int]]]:
    """The contender's writers (``write(id) -> port``), closers, a probe counter, and
    a count of the followers by what they follow (a source URL, or ``probing``)."""
    writes: list[Any] = []
    closers: list[Any] = []
    managers: list[FailoverManager] = []
    if spec["contender"] == "libpq":
        for _ in range(spec["count"]):
            pool = ConnectionPool(
                spec["multihost"],
                min_size=1,
                max_size=2,
                check=ConnectionPool.check_connection,
                configure=warm_configure(spec["warmup"], "libpq", None, timeout=2.0)
                if spec.get("warmup")
                else None,
                kwargs={"autocommit": True},
                open=True,
            )
            pool.wait(30)

            def write_pool(i: int, pool: ConnectionPool = pool) -> int:
                with pool.connection() as conn:
                    row = conn.execute(INSERT, (i,)).fetchone()
                    return int(row[0]) if row else 0

            writes.append(write_pool)
            closers.append(pool.close)
    else:
        nodes = [Node(name, dsn) for name, dsn in spec["nodes"]]
        source = spec["source"] if spec["contender"] in FOLLOWERS else None
        config = FailoverConfig(
            pool_min_size=1, pool_max_size=2, source=source, pool_warmup=spec.get("warmup")
        )
        for k in range(spec["count"]):
            mgr = FailoverManager(nodes=nodes, config=config).open()
            mgr.on_failover(functools.partial(_switched, SWITCHED, k))

            def write_mgr(i: int, mgr: FailoverManager = mgr) -> int:
                return int(mgr.query(INSERT, (i,))[0][0])

            writes.append(write_mgr)
            closers.append(mgr.close)
            managers.append(mgr)

    def probes() -> dict[str, int]:
        out: dict[str, int] = {}
        for mgr in managers:
            for node, hist in mgr.counters.probe_durations.items():
                out[node] = out.get(node, 0) + hist.count
        return out

    def following() -> dict[str, int]:
        out: dict[str, int] = {}
        for mgr in managers:
            status = mgr.source_status() or {}
            what = status.get("following") if status.get("mode") == "following" else None
            key = what or str(status.get("mode", "none"))
            out[key] = out.get(key, 0) + 1
        return out

    return writes, closers, probes, following


def run(spec: dict[str, Any]) -> None:
    """Run ``spec["count"]`` clients; answer ``count``, ``write`` and ``stop`` on stdin."""
    logging.disable(logging.CRITICAL)  # 200 pools retrying a dead node: thousands of lines
    rss, threads = _rss_kib(), threading.active_count()
    started = time.monotonic()
    writes, closers, probes, following = _clients(spec)
    opened = time.monotonic() - started
    for k, write in enumerate(writes):  # a first write each: the pools' connections exist
        _retry(write, spec["base"] - 1 - k)
    ready = {"open_s": round(opened, 3), "rss_kib": _rss_kib() - rss}
    _answer({**ready, "threads": threading.active_count() - threads})
    stop = threading.Event()
    acks: list[list[tuple[int, int, float, float]]] = [[] for _ in writes]  # id, port, began, done
    failures = [0] * len(writes)
    reasons: Counter[str] = Counter()  # why writes failed (first lines), for the diagnosis

    def loop(k: int) -> None:
        i = spec["base"] + k * 1_000_000
        # Application processes do not write in step: each writer starts at its own
        # point of the pace (seeded, so that runs compare), unless told to start at once
        # (then each round of writes reaches the primary as one burst).
        start = random.Random(i).uniform(0, spec["pace"])  # noqa: S311 - not a secret
        if not spec.get("in_step") and stop.wait(start):
            return
        while not stop.is_set():
            i += 1
            try:
                began = time.time()
                acks[k].append((i, writes[k](i), began, time.time()))
            except Exception as exc:  # noqa: BLE001 - counted; the next attempt follows
                failures[k] += 1
                reasons[f"{type(exc).__name__}: {first_line(exc)}"[:160]] += 1
            stop.wait(spec["pace"])

    loops = [threading.Thread(target=loop, args=(k,), daemon=True) for k in range(len(writes))]
    for line in sys.stdin:
        command = line.strip()
        if command == "count":
            _answer({"probes": probes(), "following": following()})
        elif command == "burst":
            _answer({"burst": _burst(writes, spec["base"] - 100_000)})
        elif command == "write":
            for t in loops:
                t.start()
            _answer({"writing": True})
        elif command == "stop":
            break
    stop.set()
    for t in loops:
        if t.is_alive():
            t.join(30)
    _answer({"acks": acks, "failures": failures, "reasons": reasons, "switched": SWITCHED})
    closing = [threading.Thread(target=c) for c in closers]
    for t in closing:
        t.start()
    for t in closing:
        t.join(30)


def _burst(writes: list[Any], first_id: int) -> list[float]:
    """One write per client, all released at once: seconds from the release to each
    acknowledgement (a write that failed is left out)."""
    took: list[float] = []
    released = [0.0]

    def release() -> None:  # run once every writer (and this thread) is at the gate
        released[0] = time.monotonic()

    gate = threading.Barrier(len(writes) + 1, action=release)

    def one(k: int) -> None:
        gate.wait()
        try:
            writes[k](first_id - k)
        except Exception:  # noqa: BLE001 - left out; the run's checks come later
            return
        took.append(time.monotonic() - released[0])

    threads = [threading.Thread(target=one, args=(k,)) for k in range(len(writes))]
    for t in threads:
        t.start()
    gate.wait()  # every writer goes now
    for t in threads:
        t.join(60)
    return took


def _answer(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


def _retry(write: Any, i: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            write(i)
            return
        except Exception:  # noqa: BLE001 - the cluster settles
            time.sleep(0.1)


if __name__ == "__main__":
    run(json.loads(sys.argv[1]))
