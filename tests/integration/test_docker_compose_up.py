"""The docker compose lab end to end: built from Debian's packages, a primary killed.

The images are built on the local base image (Debian 12 from debootstrap,
see :mod:`tests.integration.docker_engine`), the Python packages from a
wheelhouse filled on the host: nothing is pulled from a registry. The demo
app writes through a ``FailoverManager`` and logs every acknowledged id;
``docker kill`` takes the primary's container down (the stack runs with
quorum sync, as docker/README.md shows); the arbiter promotes a
standby and repoints the other; Prometheus in the stack scrapes the arbiter
and fires ``FailoverOccurred``; every acknowledged id must be on the new
primary. Containers, volumes and networks are removed at the end, also
after a failure; the images stay in the tests' engine as the next run's
build cache (see docker_engine). Published ports are free ones on
127.0.0.1.
"""

from __future__ import annotations

import datetime
import json
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pgfailover.lab import free_port

from .docker_engine import Engine, base_image, prune_images, sweep, wheelhouse
from .helpers import wait_until

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker" / "docker-compose.yml"
RUN = "e2e"  # the label value and image tag of this test's resources
PROJECT = "pgfailover-e2e"

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]


def _stamp(text: str) -> float:
    """An engine's RFC 3339 time (nanoseconds, ``Z``) as seconds since the epoch."""
    return datetime.datetime.fromisoformat(text[:26].rstrip("Z") + "+00:00").timestamp()


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
        return json.loads(response.read())


class Stack:
    """The compose lab of this test, on free ports, and how to reach it."""

    def __init__(self, eng: Engine) -> None:
        self.eng = eng
        taken: set[int] = set()
        self.ports = {}
        for name in ("ARBITER", "DEMO", "PROMETHEUS", "ALERTMANAGER"):
            self.ports[name] = port = free_port(taken)
            taken.add(port)
        eng.env.update(
            {
                "PGFAILOVER_BASE_IMAGE": base_image(eng),
                "PIP_INDEX_OPTIONS": "--no-index",
                "PGFAILOVER_IMAGE_TAG": RUN,
                "PGFAILOVER_LAB_LABEL": RUN,
                "DEMO_LOG_ACKS": "1",
                # Quorum sync, as docker/README.md shows it: with asynchronous
                # replication a kill may take the last acknowledged commits with it.
                "PGFAILOVER_SYNC": "ANY 1 (pg_standby1, pg_standby2)",
                **{f"PGFAILOVER_{k}_PORT": str(v) for k, v in self.ports.items()},
            }
        )

    def compose(self, *args: str, timeout: float = 600) -> str:
        cmd = [*self.eng.compose, "-p", PROJECT, "-f", str(COMPOSE_FILE), *args]
        proc = self.eng.run(*cmd, timeout=timeout, check=False)
        assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
        return proc.stdout.decode()

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service).strip()

    def healthy(self, service: str) -> bool:
        cid = self.container(service)
        if not cid:
            return False
        state = self.eng.run(
            "docker", "inspect", "--format", "{{.State.Health.Status}}", cid, check=False
        )
        return state.stdout.decode().strip() == "healthy"

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = _get(f"http://127.0.0.1:{self.ports['ARBITER']}/failover/status")
        return data

    def acked(self) -> list[tuple[float, int, str]]:
        """The demo app's acknowledged writes: (host time logged, id, node)."""
        cid = self.container("demo-app")
        logs = self.eng.run("docker", "logs", "--timestamps", cid, timeout=60)
        found = []
        for line in (logs.stdout + logs.stderr).decode().splitlines():
            match = re.match(r"(\S+) .*acked (\d+) on (\S+)", line)
            if match:
                found.append((_stamp(match[1]), int(match[2]), match[3]))
        return found

    def logs_since(self, since: float, *services: str) -> str:
        """The services' log lines from ``since`` on (host clock), to say why a bound failed."""
        out = []
        for service in services:
            cid = self.container(service)
            logs = self.eng.run("docker", "logs", "--timestamps", "--since", f"{since:.3f}", cid)
            lines = (logs.stdout + logs.stderr).decode().splitlines()
            out += [f"{service}: {line}" for line in lines]
        return "\n".join(sorted(out, key=lambda line: line.split(" ", 2)[1]))

    def exited_at(self, cid: str) -> float:
        """When the engine saw container ``cid`` exit (host clock, seconds)."""
        state = self.eng.run("docker", "inspect", "--format", "{{.State.FinishedAt}}", cid)
        return _stamp(state.stdout.decode().strip())

    def ids_on(self, service: str) -> set[int]:
        out = self.compose(
            "exec", "-T", service, "psql", "-U", "postgres", "-At", "-c", "SELECT id FROM demo"
        )
        return {int(x) for x in out.split()}

    def scraped(self, expr: str) -> list[Any]:
        url = f"http://127.0.0.1:{self.ports['PROMETHEUS']}/api/v1/query?query={expr}"
        result: list[Any] = _get(url)["data"]["result"]
        return result

    def alerts(self) -> dict[str, str]:
        data = _get(f"http://127.0.0.1:{self.ports['PROMETHEUS']}/api/v1/alerts")["data"]
        return {a["labels"]["alertname"]: a["state"] for a in data["alerts"]}


@pytest.fixture
def stack(docker_engine: Engine, docker_lab_image: str) -> Iterator[Stack]:
    """The stack; ``docker_lab_image`` first, so its PostgreSQL image builds from cache."""
    sweep(docker_engine, RUN)  # what a crashed run left
    wheelhouse()
    lab = Stack(docker_engine)
    try:
        lab.compose("build", timeout=900)
        lab.compose("up", "-d")
        yield lab
    finally:
        lab.compose("down", "-v", "--remove-orphans", timeout=300)
        sweep(docker_engine, RUN)
        prune_images(docker_engine, keep=docker_lab_image)


def test_compose_lab_fails_over_and_loses_nothing(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    services = ("pg-primary", "pg-standby1", "pg-standby2", "arbiter", "demo-app", "prometheus")
    wait_until(
        lambda: all(stack.healthy(s) for s in services), timeout=300, what="a healthy stack"
    )
    assert stack.status()["current_primary"] == "pg-primary"
    wait_until(lambda: len(stack.acked()) >= 20, timeout=60, what="the demo app writing")
    # Prometheus must have seen the counter at 0 for the failover to be an increase.
    wait_until(
        lambda: stack.scraped('pgfailover_failovers_total{cluster="lab"}'),
        timeout=60,
        what="Prometheus scraping the arbiter",
    )
    primary = stack.container("pg-primary")
    asked = time.time()
    stack.eng.run("docker", "kill", primary)
    # The kill is when the container died, not when the docker CLI was started:
    # on a busy machine the CLI and the engine took up to 1.2 s to get there.
    killed = stack.exited_at(primary)
    assert asked - 1 < killed < time.time()

    def first_elsewhere() -> float | None:
        return next((t for t, _, node in stack.acked() if node != "pg-primary"), None)

    resumed = wait_until(first_elsewhere, timeout=60, what="writes on a new primary") - killed
    new = stack.status()["current_primary"]
    assert new in ("pg-standby1", "pg-standby2")
    assert {node for _, _, node in stack.acked()} <= {"pg-primary", new}
    other = "pg-standby2" if new == "pg-standby1" else "pg-standby1"
    wait_until(
        lambda: next(n for n in stack.status()["nodes"] if n["name"] == other)["upstream"] == new,
        timeout=60,
        what=f"{other} streaming from {new}",
    )
    wait_until(
        lambda: stack.alerts().get("FailoverOccurred") == "firing",
        timeout=120,
        what="FailoverOccurred firing in the stack's Prometheus",
    )
    acked = {ident for _, ident, _ in stack.acked()}
    missing = acked - stack.ids_on(new)
    assert not missing, f"acknowledged writes missing on {new}: {sorted(missing)[:10]}"
    with capsys.disabled():  # the figure the issue asks the test to report
        print(
            f"\ncompose lab: writes resumed {resumed:.2f}s after docker kill of the primary"
            f" (the container exited {killed - asked:.2f}s after the CLI was started);"
            f" {len(acked)} writes acknowledged, none lost"
        )
    assert resumed < 2.0, stack.logs_since(killed - 0.5, "arbiter", "demo-app")
