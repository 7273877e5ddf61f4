"""Opt-in: bring the compose lab up and run one failover (needs a Docker engine).

Set PGFAILOVER_DOCKER_E2E=1 where `docker compose` can reach an engine; the
stack is torn down (with its volumes) whatever happens.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from .helpers import wait_until

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ["docker", "compose", "-f", str(ROOT / "docker/docker-compose.yml")]

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(900)]


def _status() -> dict[str, Any]:
    with urllib.request.urlopen("http://127.0.0.1:8008/failover/status", timeout=5) as response:
        data: dict[str, Any] = json.loads(response.read())
        return data


def test_compose_lab_fails_over() -> None:
    if not os.environ.get("PGFAILOVER_DOCKER_E2E"):
        pytest.skip("set PGFAILOVER_DOCKER_E2E=1 to run the compose lab (needs a Docker engine)")
    if shutil.which("docker") is None:
        pytest.fail("PGFAILOVER_DOCKER_E2E is set but there is no docker CLI")
    try:
        subprocess.run([*COMPOSE, "up", "-d", "--build", "--wait"], check=True, timeout=600)
        assert _status()["current_primary"] == "pg-primary"
        subprocess.run([*COMPOSE, "kill", "pg-primary"], check=True, timeout=60)
        wait_until(
            lambda: _status()["current_primary"] in ("pg-standby1", "pg-standby2"),
            timeout=60,
            what="the arbiter promoting a standby",
        )
    finally:
        subprocess.run([*COMPOSE, "down", "-v"], check=False, timeout=300)
