"""A FastAPI app writing and reading through AsyncFailoverManager.

Start a cluster first with ``pgfailover lab up`` (or set PGFAILOVER_SOURCE to
a pgfailover.toml or a DSN), then serve it with any ASGI server, e.g.
``uvicorn --app-dir examples/fastapi_app app:app``:

    curl -X POST 'http://127.0.0.1:8000/notes?text=hello'  # on the primary
    curl http://127.0.0.1:8000/notes                      # on a standby
    curl http://127.0.0.1:8000/failover/status            # the manager's status
    pgfailover lab kill node0                             # and keep writing

The manager lives for the app's lifespan; a dependency yields a pooled
connection (the primary's for writes, a standby's for reads) and commits
when the endpoint returns. The writing dependency uses ``scope="function"``
so that its COMMIT happens before the response is sent: a client is never
told "created" for a write whose COMMIT failed.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from source import cluster_source

from pgfailover import AsyncFailoverManager, FailoverConfig, PgFailoverError, WriteOutcomeUnknown
from pgfailover.config import Node
from pgfailover.dispatch import is_connection_error


def manager(request: Request) -> AsyncFailoverManager:
    """The app's manager (made by its lifespan)."""
    mgr: AsyncFailoverManager = request.app.state.pgfailover
    return mgr


Manager = Annotated[AsyncFailoverManager, Depends(manager)]


async def primary(mgr: Manager) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A connection to the primary, committed when the endpoint returns."""
    async with mgr.get_client() as conn:
        yield conn


async def standby(mgr: Manager) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """A connection to a fitting standby (the primary if none fits)."""
    async with mgr.get_client(readonly=True) as conn:
        yield conn


# scope="function": the COMMIT happens before the response is sent.
Primary = Annotated[psycopg.AsyncConnection[Any], Depends(primary, scope="function")]
Standby = Annotated[psycopg.AsyncConnection[Any], Depends(standby)]

router = APIRouter()


@router.post("/notes")
async def create(text: str, conn: Primary) -> dict[str, Any]:
    cur = await conn.execute(
        "INSERT INTO notes (text) VALUES (%s) RETURNING id, inet_server_port()", (text,)
    )
    note_id, port = (await cur.fetchall())[0]
    return {"id": note_id, "served_by_port": port}


@router.get("/notes")
async def index(conn: Standby) -> dict[str, Any]:
    cur = await conn.execute(
        "SELECT id, text, inet_server_port() FROM notes ORDER BY id DESC LIMIT 20"
    )
    rows = await cur.fetchall()
    return {
        "notes": [{"id": r[0], "text": r[1]} for r in rows],
        "served_by_port": rows[0][2] if rows else None,
    }


@router.get("/failover/status")
def status(mgr: Manager) -> dict[str, Any]:
    return mgr.get_failover_status()


async def unavailable(request: Request, exc: Exception) -> JSONResponse:
    """No primary (a failover running past the wait, read-only mode), a lost COMMIT, a
    connection lost mid-request: 503 with the reason. Other database errors: 500."""
    if isinstance(exc, WriteOutcomeUnknown):
        return JSONResponse({"error": str(exc), "outcome": "unknown"}, status_code=503)
    if isinstance(exc, PgFailoverError) or is_connection_error(exc):
        return JSONResponse({"error": str(exc)}, status_code=503)
    return JSONResponse({"error": type(exc).__name__}, status_code=500)


def _manager(source: str | list[Node], config: FailoverConfig) -> AsyncFailoverManager:
    if isinstance(source, list):
        return AsyncFailoverManager(nodes=source, config=config)
    if source.endswith(".toml"):
        return AsyncFailoverManager.from_config(source)
    return AsyncFailoverManager.from_dsn(source, config=config)


def create_app(
    source: str | list[Node] | None = None, config: FailoverConfig | None = None
) -> FastAPI:
    """The app; its manager (``auto`` mode by default: the example promotes) opens with
    the app's lifespan and closes with it."""
    config = config or FailoverConfig(promotion="auto", failover_cooldown=0)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with _manager(source or cluster_source(), config) as mgr:
            await mgr.query(
                "CREATE TABLE IF NOT EXISTS notes (id bigserial PRIMARY KEY, text text NOT NULL)"
            )
            app.state.pgfailover = mgr
            yield

    app = FastAPI(lifespan=lifespan)
    app.include_router(router)
    app.add_exception_handler(psycopg.Error, unavailable)
    return app


app = create_app()  # for `uvicorn app:app`: the cluster is found when the app starts
