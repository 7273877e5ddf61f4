"""``pool_warmup``: the setting's checks, and the configure hook, as tables of cases.

The hook runs on a stand-in connection that records what it was asked and
fails as told; the real pools run it in tests/integration/test_warmup.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

import psycopg
import pytest

from pgfailover import ConfigurationError, FailoverConfig
from pgfailover.errors import first_line
from pgfailover.pools import NodePools
from pgfailover.warmup import async_warm_configure, warm_configure

from .helpers import NODES


class Conn:
    """What the hook uses of a connection: a transaction, execute, broken/closed."""

    def __init__(self, error: psycopg.Error | None = None, *, breaks: bool = False) -> None:
        self.error, self.breaks = error, breaks
        self.broken = self.closed = False
        self.log: list[str] = []

    @contextlib.contextmanager
    def transaction(self, *, force_rollback: bool) -> Iterator[None]:
        self.log.append("begin")
        try:
            yield
        finally:
            self.log.append("rollback" if force_rollback else "commit")

    def execute(self, query: bytes) -> None:
        self.log.append(query.decode())
        if self.error is not None and query.decode() != LIMITS:
            self.broken = self.breaks
            raise self.error


class AsyncConn(Conn):
    """The same, awaited (an ``AsyncConnection``'s methods)."""

    @contextlib.asynccontextmanager
    async def transaction(  # type: ignore[override]
        self, *, force_rollback: bool
    ) -> AsyncIterator[None]:
        with super().transaction(force_rollback=force_rollback):
            yield

    async def execute(self, query: bytes) -> None:  # type: ignore[override]
        super().execute(query)


FAILS = psycopg.errors.UndefinedTable('relation "orders" does not exist')
BREAKS = psycopg.OperationalError("server closed the connection unexpectedly")
SQL = "SELECT 1 FROM orders LIMIT 0"
LIMITS = "SET LOCAL statement_timeout = 2000; SET LOCAL lock_timeout = 2000"  # timeout=2


CASES = [
    # the warm-up's outcome on each new connection of one pool; warnings logged;
    # calls of the caller's own configure; whether the hook raised (the pool discards)
    pytest.param([None, None], 0, 2, False, id="works: silent, then the caller's"),
    pytest.param([FAILS, FAILS, FAILS], 1, 3, False, id="fails: one warning a pool"),
    pytest.param([FAILS, None, FAILS], 2, 3, False, id="fails again after working: warns"),
    pytest.param([BREAKS], 0, 0, True, id="broken: the pool discards it"),
]


@pytest.mark.parametrize(("outcomes", "warnings", "then_calls", "raised"), CASES)
def test_the_hook_rolls_back_keeps_the_connection_and_warns_once(
    outcomes: list[psycopg.Error | None],
    warnings: int,
    then_calls: int,
    raised: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="pgfailover.warmup")
    for asynchronous in (False, True):
        caplog.clear()
        called: list[object] = []

        async def then_async(c: Any, called: list[object] = called) -> None:
            called.append(c)

        sync_hook = warm_configure(SQL, "p", called.append, timeout=2)
        async_hook = async_warm_configure(SQL, "p", then_async, timeout=2)
        conns: list[Conn] = []
        for outcome in outcomes:
            conn = (AsyncConn if asynchronous else Conn)(outcome, breaks=outcome is BREAKS)
            conns.append(conn)
            try:
                if asynchronous:
                    asyncio.run(async_hook(conn))  # type: ignore[arg-type]
                else:
                    sync_hook(conn)  # type: ignore[arg-type]
            except psycopg.Error:
                assert raised
            else:
                assert not raised
        assert all(c.log == ["begin", LIMITS, SQL, "rollback"] for c in conns)
        assert len(called) == then_calls
        logged = [r for r in caplog.records if "pool_warmup failed" in r.getMessage()]
        assert sum(r.levelno == logging.WARNING for r in logged) == warnings, asynchronous
        assert all("orders" in r.getMessage() and "pool p:" in r.getMessage() for r in logged)


def test_each_pool_warns_for_itself(caplog: pytest.LogCaptureFixture) -> None:
    """One pool's failing warm-up does not silence another's first warning."""
    caplog.set_level(logging.WARNING, logger="pgfailover.warmup")
    for pool in ("a", "b", "a", "b"):
        warm_configure("SELECT 1 FROM orders", pool, None, timeout=2)(Conn(FAILS))  # type: ignore[arg-type]
    # a new hook per call here: each call's hook is a pool of its own
    assert [r.getMessage().split()[1] for r in caplog.records] == ["a:", "b:", "a:", "b:"]
    caplog.clear()
    hooks = {
        pool: warm_configure("SELECT 1 FROM orders", pool, None, timeout=2) for pool in ("a", "b")
    }
    for pool in ("a", "b", "a", "b"):
        hooks[pool](Conn(FAILS))  # type: ignore[arg-type]
    assert [r.getMessage().split()[1] for r in caplog.records] == ["a:", "b:"]


@pytest.mark.parametrize(
    ("value", "refused"),
    [
        ("SELECT 1 FROM orders LIMIT 0", None),
        ("SELECT 1 FROM a LIMIT 0; SELECT 1 FROM b LIMIT 0", None),
        ("", "pool_warmup"),
        ("   \n", "blanks"),
        ("SELECT 1\x00", "NUL"),
        (42, "pool_warmup"),
        ("x" * 70_000, "pool_warmup"),
    ],
)
def test_the_setting_is_sql_or_refused_in_one_line(value: Any, refused: str | None) -> None:
    if refused is None:
        assert FailoverConfig(pool_warmup=value).pool_warmup == value
        assert FailoverConfig.from_mapping({"pool_warmup": value}).pool_warmup == value
        return
    with pytest.raises(ConfigurationError, match=refused) as caught:
        FailoverConfig(pool_warmup=value)
    assert "\n" not in str(caught.value)


class FakePool:
    """Records the options a pool is built with."""

    def __init__(self, conninfo: str, **options: Any) -> None:
        self.conninfo, self.options = conninfo, options
        self.max_size = options["max_size"]


def test_the_pools_chain_the_callers_configure_after_the_warmup() -> None:
    mine = Conn()
    seen: list[object] = []
    theirs = seen.append
    pools = NodePools(
        NODES,
        FailoverConfig(pool_warmup="SELECT 1"),
        "app",
        {"configure": theirs},
        pool_class=cast(Any, FakePool),
    )
    for node in NODES:
        options = pools.get(node.name).options  # type: ignore[attr-defined]
        assert options["configure"] is not theirs, node.name
    pools.get("node0").options["configure"](mine)  # type: ignore[attr-defined]
    assert mine.log == ["begin", LIMITS, "SELECT 1", "rollback"]
    assert seen == [mine]
    plain = NodePools(
        NODES, FailoverConfig(), "app", {"configure": theirs}, pool_class=cast(Any, FakePool)
    )
    assert plain.get("node0").options["configure"] is theirs  # type: ignore[attr-defined]
    bare = NodePools(NODES, FailoverConfig(), "app", pool_class=cast(Any, FakePool))
    assert "configure" not in bare.get("node0").options  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        (FAILS, 'relation "orders" does not exist'),
        (psycopg.Error('syntax error at "x"\nLINE 1: x\n        ^'), 'syntax error at "x"'),
        (psycopg.Error("  \n"), "Error"),
        (KeyError(), "KeyError"),
    ],
)
def test_a_warning_shows_the_errors_first_line(error: BaseException, shown: str) -> None:
    """What the warm-up's warning (and the probes, rejoin, upkeep) show of an error."""
    assert first_line(error) == shown
