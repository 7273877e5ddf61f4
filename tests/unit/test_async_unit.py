"""AsyncFailoverManager without a server: what it refuses before open and after close."""

from __future__ import annotations

import asyncio
import time

import pytest

from pgfailover import AsyncFailoverManager, ManagerClosed, Node

pytestmark = pytest.mark.timeout(30)


def _manager() -> AsyncFailoverManager:
    nodes = [Node(f"node{i}", f"host=127.0.0.1 port={i + 1} user=app") for i in range(2)]
    return AsyncFailoverManager(nodes=nodes)


def test_waiting_or_querying_before_open_is_refused_plainly() -> None:
    async def scenario() -> None:
        mgr = _manager()
        with pytest.raises(ManagerClosed, match="not open"):
            await mgr.wait_for_primary(time.monotonic() + 1)
        with pytest.raises(ManagerClosed, match="not open"):
            await mgr.query("SELECT 1")
        with pytest.raises(ManagerClosed, match="not open"):
            mgr.get_client()

    asyncio.run(scenario())


def test_a_manager_never_opened_closes_and_stays_closed() -> None:
    async def scenario() -> None:
        mgr = _manager()
        await mgr.close()
        await mgr.close()
        assert mgr.closed
        with pytest.raises(ManagerClosed, match="closed"):
            await mgr.open()

    asyncio.run(scenario())


def test_closing_from_another_event_loop_is_refused_and_changes_nothing() -> None:
    mgr = _manager()

    async def bind() -> None:
        mgr._loop = asyncio.get_running_loop()  # as open() does, without servers

    asyncio.run(bind())

    async def close_elsewhere() -> None:
        with pytest.raises(RuntimeError, match="another event loop"):
            await mgr.close()

    asyncio.run(close_elsewhere())
    assert not mgr.closed
