"""The FastAPI example on a lab cluster, through its real ASGI stack (httpx's ASGI
transport, the app's lifespan), under a stream of requests while the primary is killed.

What must hold: at most the requests in flight at the kill fail (one per client task),
no request takes longer than ``failover_wait_timeout`` + 1 s, and every note the app
acknowledged is on the new primary.
"""

from __future__ import annotations

import asyncio
import importlib.util
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from pgfailover import FailoverConfig
from pgfailover.lab import LocalLab

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = 8


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "fastapi_example", ROOT / "examples/fastapi_app/app.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fastapi_example_rides_a_primary_kill_under_a_request_stream(
    sync_lab: LocalLab, capsys: pytest.CaptureFixture[str]
) -> None:
    config = FailoverConfig(
        promotion="auto",
        failover_cooldown=0,
        health_check_interval=0.2,
        fast_interval=0.05,
        health_check_timeout=1.0,
        failover_wait_timeout=10.0,
    )
    app = _example().create_app(sync_lab.manager_nodes(), config)
    old = sync_lab.node("node0").port
    results: list[tuple[float, float, int, Any]] = []  # (start, duration, status, body)
    moments: list[float] = []  # when the primary was killed

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://example") as client,
        ):
            stop = False

            async def stream(k: int) -> None:
                n = 0
                while not stop:
                    n += 1
                    started = time.monotonic()
                    response = await client.post("/notes", params={"text": f"{k}-{n}"})
                    took = time.monotonic() - started
                    results.append((started, took, response.status_code, response.json()))
                    await asyncio.sleep(0)  # a request failing at once must not starve the loop

            tasks = [asyncio.create_task(stream(k)) for k in range(CLIENTS)]
            deadline = time.monotonic() + 30
            while sum(1 for r in results if r[2] == 200) < 100 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            killed = time.monotonic()
            moments.append(killed)
            sync_lab.kill("node0")
            while time.monotonic() < deadline and not any(
                r[0] > killed and r[2] == 200 and r[3]["served_by_port"] != old for r in results
            ):
                await asyncio.sleep(0.02)
            await asyncio.sleep(1.0)  # a second of writes on the new primary
            stop = True
            await asyncio.gather(*tasks)
            listed = (await client.get("/notes")).json()
            status = (await client.get("/failover/status")).json()
        new = status["current_primary"]
        assert new in ("node1", "node2")
        assert listed["served_by_port"] != old

    asyncio.run(scenario())
    failed = [r for r in results if r[2] != 200]
    assert len(failed) <= CLIENTS, failed[:5]
    assert all(r[2] == 503 for r in failed), failed[:5]
    slowest = max(r[1] for r in results)
    assert slowest < config.failover_wait_timeout + 1, f"a request took {slowest:.2f}s"
    acked = {r[3]["id"] for r in results if r[2] == 200}
    new = next(n for n in ("node1", "node2") if sync_lab.in_recovery(n) is False)
    present = {row[0] for row in sync_lab.run_sql(new, "SELECT id FROM notes")}
    assert acked - present == set()
    port = sync_lab.node(new).port
    resumed = min(r[0] + r[1] for r in results if r[2] == 200 and r[3]["served_by_port"] == port)
    with capsys.disabled():
        print(
            f"\nfastapi example: {len(results)} requests from {CLIENTS} clients, {len(failed)} "
            f"failed (503, in flight at the kill), slowest {slowest:.2f}s, first note on "
            f"{new} {resumed - moments[0]:.2f}s after the kill, none lost"
        )
