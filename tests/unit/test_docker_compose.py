"""Static checks of the docker compose lab (tests/integration runs it for real).

The compose file parses, follows the Compose Specification's shape, and
everything it mounts or builds from exists; services it depends on exist;
every image but Grafana's (in its own profile) is built here on a Debian 12
base given by a build argument; only 127.0.0.1 ports are published; every
service has a health check; the Prometheus config inside passes promtool;
and, where a docker CLI with the compose plugin is present, `docker compose
config` accepts it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.tools import require_tool

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "docker-compose.yml"


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = _compose()["services"]
    return services


def test_compose_file_shape() -> None:
    data = _compose()
    assert "version" not in data  # obsolete in the Compose Specification
    assert {"pg-primary", "pg-standby1", "pg-standby2", "arbiter", "demo-app"} <= set(
        data["services"]
    )
    assert {"prometheus", "alertmanager", "grafana"} <= set(data["services"])


def test_every_service_has_a_health_check_and_known_dependencies() -> None:
    services = _services()
    for name, service in services.items():
        assert "test" in service.get("healthcheck", {}), f"{name} has no health check"
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"


def test_images_are_built_here_on_a_debian_base_but_grafana() -> None:
    for name, service in _services().items():
        if name == "grafana":
            assert service["profiles"] == ["dashboards"]  # off by default: no registry needed
            assert re.fullmatch(r"grafana/grafana:\d+(\.\d+)+", service["image"])
            continue
        assert "build" in service, f"{name} is not built from Debian's packages"
        assert service["build"]["args"]["BASE_IMAGE"].endswith(":-debian:bookworm-slim}"), name
        assert service["labels"]["org.pgfailover.lab"], name


def test_only_loopback_ports_are_published() -> None:
    for name, service in _services().items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port}"


def test_everything_mounted_or_built_exists() -> None:
    data = _compose()
    declared = set(data.get("volumes", {}))
    for name, service in data["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (DOCKER / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in declared, f"{name} uses undeclared volume {source}"
        build = service.get("build")
        if build:
            context = DOCKER / build["context"]
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            assert dockerfile.is_file(), f"{name}: {dockerfile}"
            _check_dockerfile(dockerfile, context)


def _check_dockerfile(dockerfile: Path, context: Path) -> None:
    lines = [line.strip() for line in dockerfile.read_text().splitlines()]
    assert "ARG BASE_IMAGE=debian:bookworm-slim" in lines, dockerfile
    assert next(line for line in lines if line.startswith("FROM ")) == "FROM ${BASE_IMAGE}"
    user = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert user, "the image must not run as root"
    assert user[-1] not in ("root", "0")
    for line in lines:
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (context / source).exists(), f"COPY {source}: missing"


def test_entrypoint_scripts_are_executable_and_parse() -> None:
    scripts = [*(DOCKER / "images").rglob("*.sh"), *(ROOT / "pgfailover/lab/image").rglob("*.sh")]
    assert ROOT / "pgfailover/lab/image/entrypoint.sh" in scripts
    for script in scripts:
        assert script.stat().st_mode & 0o111, f"{script} is not executable"
        subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)


def test_prometheus_config_and_rules_pass_promtool(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    shutil.copy(DOCKER / "prometheus/prometheus.yml", tmp_path / "prometheus.yml")
    (tmp_path / "rules").mkdir()
    shutil.copy(ROOT / "alerts/pgfailover.rules.yml", tmp_path / "rules")
    for args in (
        ["check", "config", str(tmp_path / "prometheus.yml")],
        ["check", "rules", str(tmp_path / "rules/pgfailover.rules.yml")],
    ):
        proc = subprocess.run(
            [promtool, *args], capture_output=True, text=True, timeout=60, check=False
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


def _compose_cli() -> list[str] | None:
    """``docker compose`` where the plugin exists, else ``docker-compose``, else None."""
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, timeout=30, check=False
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_docker_compose_config_accepts_the_file() -> None:
    compose = _compose_cli()
    if compose is None:
        pytest.skip("neither the docker compose plugin nor docker-compose is installed")
    for profile in ([], ["--profile", "dashboards"]):
        proc = subprocess.run(
            [*compose, *profile, "-f", str(COMPOSE), "config", "--quiet"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
