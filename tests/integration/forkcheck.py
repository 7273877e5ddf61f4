"""A process that opens a manager, forks, and has parent and child both use it.

``python forkcheck.py '<JSON>'`` (``nodes``: ``[[name, dsn], ...]``,
``rows``: writes per process, ``kind``: ``sync``, ``opening`` (the fork
while another thread opens the manager), ``sqlalchemy`` or ``async``)
prints one
JSON line: what the parent and the child each saw. Run by
``test_fork.py`` in a process of its own, so that the test runner itself
never forks with threads running. The child always ends with
``os._exit``; a child that hangs is the parent's to report (``child``
missing) and the test's to kill.
"""

from __future__ import annotations

import asyncio
import faulthandler
import json
import os
import select
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from pgfailover import AsyncFailoverManager, FailoverConfig, FailoverManager, Node
from pgfailover.errors import ManagerClosed

INSERT = "INSERT INTO forked (id, who) VALUES (%s, %s)"
BACKEND = "SELECT pg_backend_pid()"  # on the primary: a write route


def _config(source: str | None = None) -> FailoverConfig:
    # One connection per pool: a parent's pooled session is the one a copy would reuse.
    return FailoverConfig(
        health_check_interval=0.2,
        fast_interval=0.05,
        pool_min_size=1,
        pool_max_size=1,
        source=source,
    )


def _write(mgr: FailoverManager, who: str, first: int, rows: int) -> list[int]:
    done = []
    for i in range(first, first + rows):
        mgr.query(INSERT, (i, who))
        done.append(i)
    return done


def _child(mgr: FailoverManager, changes: list[str], spec: dict[str, Any]) -> dict[str, Any]:
    seen_before = len(changes)  # the parent's, copied by the fork
    first_status = mgr.get_failover_status()["state"]  # a health check's first: it opens
    backend = mgr.query(BACKEND)[0][0]
    acked = _write(mgr, "child", 1_000_000, spec["rows"])
    position = mgr.write_position()  # read-your-writes: a standby that has them, or the primary
    rows = mgr.query(
        "SELECT count(*) FROM forked WHERE who = 'child'", readonly=True, min_lsn=position
    )
    deadline = time.monotonic() + 10
    while len(changes) == seen_before and time.monotonic() < deadline:
        time.sleep(0.02)  # the child's own first round: UNKNOWN -> HEALTHY, on its thread
    while mgr.source_status() is not None and time.monotonic() < deadline:
        if (mgr.source_status() or {}).get("mode") == "following":
            break  # a follower: on a stream of its own (the parent's thread is not here)
        time.sleep(0.02)
    report = {
        "source": (mgr.source_status() or {}).get("mode"),
        "pid": os.getpid(),
        "backend": backend,
        "acked": acked,
        "read": rows[0][0],
        "state": mgr.get_failover_status()["state"],
        "first_status": first_status,
        "monitor": any(t.name.startswith("pgfailover-monitor") for t in threading.enumerate()),
        "changes": changes[seen_before:],
    }
    mgr.close()
    return report


def _run_sync(spec: dict[str, Any]) -> dict[str, Any]:
    nodes = [Node(name, dsn) for name, dsn in spec["nodes"]]
    mgr = FailoverManager(nodes=nodes, config=_config(spec.get("source"))).open()
    changes: list[str] = []
    mgr.on_state_change(lambda _old, new, _snap: changes.append(new.value))
    mgr.query("CREATE TABLE IF NOT EXISTS forked (id bigint PRIMARY KEY, who text)")
    backend = mgr.query(BACKEND)[0][0]
    pid, reader = _fork(lambda: _child(mgr, changes, spec))
    acked = _write(mgr, "parent", 1, spec["rows"])  # meanwhile, on the parent's session
    child = _read_child(reader, pid, deadline=time.monotonic() + 60)
    after = mgr.query(BACKEND)[0][0]  # the same session still: the child left it alone
    source = mgr.source_status()
    mgr.close()
    return {
        "backend": backend,
        "backend_after": after,
        "acked": acked,
        "child": child,
        "source": source and {k: source[k] for k in ("mode", "fallbacks")},
    }


def _run_opening(spec: dict[str, Any]) -> dict[str, Any]:
    """Fork while another thread is in the middle of ``open()``."""
    nodes = [Node(name, dsn) for name, dsn in spec["nodes"]]
    mgr = FailoverManager(nodes=nodes, config=_config())
    opener = threading.Thread(target=mgr.open)
    opener.start()
    deadline = time.monotonic() + 10
    while not mgr._opened and time.monotonic() < deadline:
        pass  # no sleep: fork as soon as opening has begun

    def in_child() -> dict[str, Any]:
        out = {"backend": mgr.query(BACKEND)[0][0], "acked": []}
        mgr.close()
        return out

    pid, reader = _fork(in_child)
    opener.join(30)
    backend = mgr.query(BACKEND)[0][0]
    child = _read_child(reader, pid, deadline=time.monotonic() + 60)
    after = mgr.query(BACKEND)[0][0]
    mgr.close()
    return {"backend": backend, "backend_after": after, "acked": [], "child": child}


def _run_sqlalchemy(spec: dict[str, Any]) -> dict[str, Any]:
    from sqlalchemy import text

    from pgfailover.contrib.sqlalchemy import FailoverEngines

    nodes = [Node(name, dsn) for name, dsn in spec["nodes"]]
    manager = FailoverManager(nodes=nodes, config=_config())
    # One pooled connection per engine: the parent's is the one a copy would reuse.
    engines = FailoverEngines(manager, engine_options={"pool_size": 1, "max_overflow": 0})
    session = engines.sessionmaker()

    def write(who: str, first: int) -> tuple[int, list[int]]:
        acked = []
        for i in range(first, first + spec["rows"]):
            with session() as s, s.begin():
                s.execute(text("INSERT INTO forked (id, who) VALUES (:i, :w)"), {"i": i, "w": who})
            acked.append(i)
        with session() as s, s.begin():
            backend = s.execute(text("SELECT pg_backend_pid()"))  # text(): the primary
            return int(backend.scalar_one()), acked

    manager.query("CREATE TABLE IF NOT EXISTS forked (id bigint PRIMARY KEY, who text)")
    backend, acked = write("parent", 1)

    def in_child() -> dict[str, Any]:
        child_backend, child_acked = write("child", 1_000_000)
        engines.close()
        manager.close()
        return {"backend": child_backend, "acked": child_acked}

    pid, reader = _fork(in_child)
    during, more = write("parent", 1 + spec["rows"])  # meanwhile, on the parent's session
    child = _read_child(reader, pid, deadline=time.monotonic() + 60)
    after, last = write("parent", 1 + 2 * spec["rows"])
    acked += more + last
    engines.close()
    manager.close()
    return {
        "backend": backend,
        "backend_during": during,
        "backend_after": after,
        "acked": acked,
        "child": child,
    }


def _run_async(spec: dict[str, Any]) -> dict[str, Any]:
    nodes = [Node(name, dsn) for name, dsn in spec["nodes"]]

    async def main() -> dict[str, Any]:
        async with AsyncFailoverManager(nodes=nodes, config=_config()) as mgr:
            backend = (await mgr.query(BACKEND))[0][0]

            def in_child() -> dict[str, Any]:  # the parent's loop runs here too: no await
                try:
                    mgr.get_client()
                except ManagerClosed as exc:
                    return {"refused": str(exc)}
                return {"error": "no refusal"}

            pid, reader = _fork(in_child)
            child_out = await asyncio.to_thread(_read_child, reader, pid, time.monotonic() + 60)
            after = (await mgr.query(BACKEND))[0][0]
            return {"backend": backend, "backend_after": after, "child": child_out}

    return asyncio.run(main())


def _fork(body: Callable[[], dict[str, Any]]) -> tuple[int, int]:
    """Fork: the child runs ``body``, writes its dict (or its error) on a pipe and ends
    with ``os._exit``; the parent gets the child's PID and the pipe's reading end."""
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(reader)
        faulthandler.dump_traceback_later(50, exit=True)  # a hang shows where, on stderr
        try:
            out = body()
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            out = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(writer, json.dumps(out).encode())
        os._exit(0)
    os.close(writer)
    return pid, reader


def _read_child(reader: int, pid: int, deadline: float) -> dict[str, Any] | None:
    """The child's report, or ``None`` if it has none by ``deadline`` (it is then killed)."""
    data = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([reader], [], [], 0.1)
        if ready:
            chunk = os.read(reader, 1 << 20)
            if not chunk:
                break
            data += chunk
    else:
        os.kill(pid, 9)
    os.waitpid(pid, 0)
    os.close(reader)
    return json.loads(data) if data else None


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    run = {
        "sync": _run_sync,
        "opening": _run_opening,
        "sqlalchemy": _run_sqlalchemy,
        "async": _run_async,
    }[spec["kind"]]
    result = run(spec)
    sys.stdout.write(json.dumps(result) + "\n")
