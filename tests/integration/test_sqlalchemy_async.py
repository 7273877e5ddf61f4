"""SQLAlchemy asyncio over AsyncFailoverEngines on a lab cluster: AsyncSessions route
writes to the primary and reads to standbys, and ride a primary kill under a stream of
ORM writes (``auto`` mode, quorum sync): at most the units of work in flight fail, and
every committed row is on the new primary."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import BigInteger, String, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pgfailover import AsyncFailoverManager
from pgfailover.contrib.causality import read_your_writes
from pgfailover.contrib.sqlalchemy_async import AsyncFailoverEngines
from pgfailover.lab import LocalLab

from .helpers import FAST

pytestmark = pytest.mark.timeout(180)
TASKS = 8


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    text: Mapped[str] = mapped_column(String)


def test_async_sessions_route_and_ride_a_primary_kill(
    sync_lab: LocalLab, capsys: pytest.CaptureFixture[str]
) -> None:
    ports: dict[object, str] = {n.port: n.name for n in sync_lab.nodes}
    committed: list[tuple[int, float]] = []
    failed: list[tuple[int, str]] = []

    async def scenario() -> str:
        config = FAST.replace(promotion="auto", failover_wait_timeout=10.0)
        async with AsyncFailoverManager(nodes=sync_lab.manager_nodes(), config=config) as mgr:
            engines = AsyncFailoverEngines(mgr)
            try:
                async with engines.async_primary.begin() as conn:
                    await conn.run_sync(Base.metadata.create_all)
                Session = engines.sessionmaker()
                async with Session() as session, session.begin():
                    session.add(Note(id=0, text="first"))
                    assert (
                        ports.get(await session.scalar(select(func.inet_server_port()))) == "node0"
                    )

                async def on_a_standby() -> bool:
                    async with Session() as session:
                        port = await session.scalar(select(func.inet_server_port()))
                        return ports.get(port) != "node0" and bool(
                            (await session.scalars(select(Note))).all()
                        )

                deadline = time.monotonic() + 20
                while not await on_a_standby():
                    assert time.monotonic() < deadline, "reads never reached a standby"
                    await asyncio.sleep(0.05)
                with read_your_writes():  # a unit that wrote reads its own writes
                    async with Session() as session, session.begin():
                        session.add(Note(id=-1, text="mine"))
                    async with Session() as session:
                        assert await session.get(Note, -1) is not None

                stop = False

                async def stream(k: int) -> None:
                    i = k * 10_000_000
                    while not stop:
                        i += 1
                        try:
                            async with Session() as session, session.begin():
                                session.add(Note(id=i, text=f"{k}"))
                            committed.append((i, time.monotonic()))
                        except Exception as exc:  # noqa: BLE001 - counted and asserted on
                            failed.append((i, repr(exc)[:200]))
                            await asyncio.sleep(0)

                tasks = [asyncio.create_task(stream(k)) for k in range(1, TASKS + 1)]
                while len(committed) < 100:
                    await asyncio.sleep(0.02)
                killed = time.monotonic()
                sync_lab.kill("node0")
                deadline = time.monotonic() + 30
                while mgr.snapshot.primary in (None, "node0") or not any(
                    t > killed + 0.5 for _, t in committed
                ):
                    assert time.monotonic() < deadline, "writes never resumed"
                    await asyncio.sleep(0.02)
                stop = True
                await asyncio.gather(*tasks)
                new = mgr.snapshot.primary
                assert new is not None
                return new
            finally:
                await engines.dispose()

    new = asyncio.run(scenario())
    assert len(failed) <= TASKS, failed[:5]
    present = {row[0] for row in sync_lab.run_sql(new, "SELECT id FROM notes")}
    assert {i for i, _ in committed} - present == set()
    with capsys.disabled():
        print(
            f"\nsqlalchemy asyncio: {len(committed)} units committed from {TASKS} tasks, "
            f"{len(failed)} failed (in flight at the kill), none lost"
        )
