"""query() takes one round trip for a read (pgfailover.statements), psycopg's three
for a write, and hands its connection back as it came.

Round trips are counted by a proxy in front of the primary that holds every
answer from the server back for a while and records, per connection, when
the client sent something and when an answer reached it. A round trip
begins when the client sends after an answer reached it: a client that
pipelines its messages sends them all before any answer comes. The probe's
connection (``application_name=pgfailover-probe``) is passed through
untimed and not counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from pgfailover import AsyncFailoverManager, FailoverConfig, FailoverManager, Node
from pgfailover.lab import LocalLab
from pgfailover.statements import read, settle

HOLD = 0.2  # seconds every answer to a counted connection is held back
# One pool connection: a second one opening would add its own round trips.
ONE = FailoverConfig(pool_min_size=1, pool_max_size=1, health_check_interval=5.0)


class TripCounter:
    """A TCP proxy on loopback in front of ``upstream`` (host, port), run in a thread."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self._upstream = upstream
        self._events: list[list[tuple[str, float]]] = []  # per counted connection
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main: asyncio.Task[None] | None = None
        self.port = 0
        self._thread = threading.Thread(target=self._run, name="trip-counter", daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "the proxy did not start"

    def trips(self, since: float, until: float) -> int:
        """Round trips begun in [since, until] on the counted connections."""
        total = 0
        with self._lock:
            conns = [list(e) for e in self._events]
        for events in conns:
            answered = True  # the first send in the window begins a round trip
            for side, at in events:
                if not since <= at <= until:
                    continue
                if side == "s":
                    answered = True
                elif answered:
                    total += 1
                    answered = False
        return total

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop

        async def main() -> None:
            server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            self._main = asyncio.current_task()
            self._ready.set()
            try:
                await server.serve_forever()
            finally:
                server.close()
                handlers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for task in handlers:
                    task.cancel()
                await asyncio.gather(*handlers, return_exceptions=True)

        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(main())
        loop.close()

    async def _handle(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self._upstream)
        except BaseException:  # the server gone, or the proxy stopping meanwhile
            client_w.close()
            raise
        events: list[tuple[str, float]] = []
        counted = asyncio.Event()  # set once the startup message shows it is not the probe
        seen = bytearray()

        async def up() -> None:
            while data := await client_r.read(65536):
                if not counted.is_set() and len(seen) < 4096:
                    seen.extend(data)
                    if b"user\x00" in seen and b"pgfailover-probe" not in seen:
                        with self._lock:
                            self._events.append(events)
                        counted.set()
                with self._lock:
                    events.append(("c", time.monotonic()))
                server_w.write(data)
                await server_w.drain()
            server_w.close()

        async def down() -> None:
            queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

            async def deliver() -> None:
                while True:
                    at, data = await queue.get()
                    if not data:
                        client_w.close()
                        return
                    await asyncio.sleep(max(0.0, at - time.monotonic()))
                    with self._lock:  # before the client can have it, so before its next send
                        events.append(("s", time.monotonic()))
                    client_w.write(data)
                    await client_w.drain()

            sender = asyncio.ensure_future(deliver())
            try:
                while True:
                    data = await server_r.read(65536)
                    hold = HOLD if counted.is_set() else 0.0
                    await queue.put((time.monotonic() + hold, data))
                    if not data:
                        break
                await sender
            finally:
                sender.cancel()

        # Both directions end, and both sockets are closed, however the connection
        # ends (either side, a reset, the proxy stopping): nothing left to the GC.
        pumps = [asyncio.ensure_future(up()), asyncio.ensure_future(down())]
        try:
            with contextlib.suppress(OSError, ConnectionError):
                await asyncio.gather(*pumps)
        finally:
            for task in pumps:
                task.cancel()
            client_w.close()
            server_w.close()
            await asyncio.gather(
                *pumps, client_w.wait_closed(), server_w.wait_closed(), return_exceptions=True
            )

    def close(self) -> None:
        """Stop the proxy and every connection through it."""
        loop, main = self._loop, self._main
        if loop is not None and main is not None:
            loop.call_soon_threadsafe(main.cancel)
        self._thread.join(10)


@pytest.fixture
def counter(shared_lab: LocalLab) -> Iterator[tuple[TripCounter, str]]:
    node = shared_lab.nodes[0]
    proxy = TripCounter((node.host, node.port))
    try:
        dsn = make_conninfo(node.dsn, host="127.0.0.1", port=proxy.port, sslmode="disable")
        yield proxy, dsn
    finally:
        proxy.close()
        gc.collect()  # a socket or transport the proxy left open warns here, in this test


def _counted(proxy: TripCounter, call: Callable[[], Any]) -> tuple[int, Any]:
    since = time.monotonic()
    result = call()
    return proxy.trips(since, time.monotonic()), result


@pytest.mark.timeout(60)
def test_query_reads_in_one_round_trip_and_writes_in_three(
    shared_lab: LocalLab, counter: tuple[TripCounter, str]
) -> None:
    proxy, dsn = counter
    table = f"trips_{time.monotonic_ns()}"
    shared_lab.run_sql("node0", f"CREATE TABLE {table} (id int PRIMARY KEY)")
    try:
        with FailoverManager(nodes=[Node("node0", dsn)], config=ONE) as mgr:
            mgr.query("SELECT 1")  # the pool's connection is open and warm
            trips, rows = _counted(proxy, lambda: mgr.query("SELECT %s::int", (7,), readonly=True))
            assert (trips, rows) == (1, [(7,)])
            two = "SELECT 1; SELECT 2"  # still one statement string, one transaction
            trips, rows = _counted(proxy, lambda: mgr.query(two, readonly=True))
            assert (trips, rows) == (1, [(1,)])
            # BEGIN, the statement, COMMIT: a COMMIT of its own keeps the retry rule exact.
            insert = f"INSERT INTO {table} VALUES (%s) RETURNING id"
            trips, rows = _counted(proxy, lambda: mgr.query(insert, (1,)))
            assert (trips, rows) == (3, [(1,)])
            with mgr.get_client() as conn:  # handed back out of autocommit, as it came
                assert not conn.autocommit
                assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (1,)
    finally:
        shared_lab.run_sql("node0", f"DROP TABLE {table}")


@pytest.mark.timeout(60)
def test_the_asyncio_manager_takes_as_few_round_trips_and_rolls_back_here_too(
    shared_lab: LocalLab, counter: tuple[TripCounter, str], caplog: pytest.LogCaptureFixture
) -> None:
    proxy, dsn = counter
    table = f"trips_{time.monotonic_ns()}"
    shared_lab.run_sql("node0", f"CREATE TABLE {table} (id int PRIMARY KEY)")
    caplog.set_level(logging.WARNING, logger="psycopg.pool")

    async def main() -> list[int]:
        trips = []
        async with AsyncFailoverManager(nodes=[Node("node0", dsn)], config=ONE) as mgr:
            await mgr.query("SELECT 1")
            since = time.monotonic()
            assert await mgr.query("SELECT %s::int", (7,), readonly=True) == [(7,)]
            trips.append(proxy.trips(since, time.monotonic()))
            insert = f"INSERT INTO {table} VALUES (%s) RETURNING id"
            since = time.monotonic()
            assert await mgr.query(insert, (1,)) == [(1,)]
            trips.append(proxy.trips(since, time.monotonic()))
            with pytest.raises(psycopg.errors.UniqueViolation):
                await mgr.query(insert, (1,))
            async with mgr.get_client() as conn:
                assert not conn.autocommit
                cur = await conn.execute(f"SELECT count(*) FROM {table}")
                assert await cur.fetchone() == (1,)
        return trips

    try:
        assert asyncio.run(main()) == [1, 3]
        assert not [r for r in caplog.records if "rolling back" in r.getMessage()]
    finally:
        shared_lab.run_sql("node0", f"DROP TABLE {table}")


@pytest.mark.timeout(60)
def test_a_connection_with_its_own_transaction_settings_keeps_them(
    shared_lab: LocalLab, counter: tuple[TripCounter, str]
) -> None:
    proxy, dsn = counter
    with psycopg.connect(dsn) as conn:
        conn.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
        probe = "SELECT current_setting('transaction_isolation')"
        trips, rows = _counted(proxy, lambda: read(conn, probe, None))
        assert (trips, rows) == (3, [("serializable",)])  # its BEGIN says so
        conn.isolation_level = None
        trips, rows = _counted(proxy, lambda: read(conn, probe, None))
        assert (trips, rows) == (1, [("read committed",)])
        assert not conn.autocommit


@pytest.mark.timeout(60)
def test_a_failed_write_is_rolled_back_here_and_the_connection_reused(
    shared_lab: LocalLab, caplog: pytest.LogCaptureFixture
) -> None:
    table = f"trips_{time.monotonic_ns()}"
    shared_lab.run_sql("node0", f"CREATE TABLE {table} (id int PRIMARY KEY)")
    try:
        node = shared_lab.nodes[0]
        with FailoverManager(nodes=[Node("node0", node.dsn)], config=ONE) as mgr:
            insert = f"INSERT INTO {table} VALUES (%s)"
            mgr.query(insert, (1,))
            with mgr.get_client() as conn:
                pid = conn.info.backend_pid
            caplog.set_level(logging.WARNING, logger="psycopg.pool")
            with pytest.raises(psycopg.errors.UniqueViolation):
                mgr.query(insert, (1,))
            with pytest.raises(psycopg.errors.DivisionByZero):
                mgr.query("SELECT 1 / %s", (0,), readonly=True)
            mgr.query(insert, (2,))
            with mgr.get_client() as conn:
                assert conn.info.backend_pid == pid  # the same session, not a replacement
                assert not conn.autocommit
                assert conn.execute(
                    f"SELECT array_agg(id ORDER BY id) FROM {table}"
                ).fetchone() == ([1, 2],)
            assert not [r for r in caplog.records if "rolling back" in r.getMessage()]
    finally:
        shared_lab.run_sql("node0", f"DROP TABLE {table}")


@pytest.mark.timeout(60)
def test_settle_closes_a_connection_it_cannot_bring_back(shared_lab: LocalLab) -> None:
    with psycopg.connect(shared_lab.nodes[0].dsn, autocommit=True) as conn:
        conn.pgconn.send_query(b"SELECT 1")  # a statement under way, as an interrupt leaves it
        assert not conn.closed
        settle(conn, True)
        assert conn.closed  # the pool replaces it, rather than hand out an autocommit session
