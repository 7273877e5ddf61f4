"""The docker lab backend (testcontainers) on the session's Docker engine.

The node image is built once per session from the package's own
``pgfailover/lab/image`` on the local Debian base (no registry); each test
makes its own lab and removes it, and checks that nothing carrying the
lab's label is left. The first drives the Python API under a
``FailoverManager`` in ``auto`` mode (a primary killed under a stream of
writes, the other standby repointed, the old primary rejoined, a standby
frozen and thawed); the second the CLI, as the README shows it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pgfailover.lab.docker import DockerLab
from pgfailover.lab.dockerengine import LABEL, client, sweep
from tests.readme import block

from .console import run_console
from .docker_engine import Engine, lab_environment
from .helpers import FAST, Workload, manager_for, prepare, wait_until

pytestmark = [pytest.mark.docker, pytest.mark.timeout(600)]


@pytest.fixture
def docker_env(docker_engine: Engine, docker_lab_image: str) -> Iterator[Engine]:
    """The engine, with this process's environment pointed at it (and nothing of a
    crashed run's docker labs left)."""
    with lab_environment(docker_engine):
        sweep()
        try:
            yield docker_engine
        finally:
            sweep()


def _labelled(tag: str) -> list[str]:
    """Containers, volumes and networks still carrying the label of lab ``tag``."""
    selector = {"label": f"{LABEL}={tag}"}
    engine = client()
    try:
        return [
            *(c.name for c in engine.containers.list(all=True, filters=selector)),
            *(v.name for v in engine.volumes.list(filters=selector)),
            *(n.name for n in engine.networks.list(filters=selector)),
        ]
    finally:
        engine.close()


def _upstreams(lab: DockerLab) -> dict[str, str | None]:
    return {s.name: s.upstream for s in lab.status()}


def test_a_manager_fails_over_a_docker_lab_and_the_old_primary_rejoins(
    docker_env: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    with DockerLab.create(standbys=2, sync=1) as lab:
        built = time.monotonic() - started
        tag = lab.tag
        assert len(_labelled(tag)) == 7  # 3 containers, 3 volumes, 1 network
        assert _upstreams(lab) == {"node0": None, "node1": "node0", "node2": "node0"}
        prepare(lab)
        # The manager runs on the host and reaches the nodes through their published
        # ports, which the nodes cannot use among themselves: it promotes, and the
        # lab repoints the other standby, as an orchestrator would (until then,
        # commits wait for the quorum sync standby).
        config = FAST.replace(promotion="auto", repoint_standbys=False)
        with manager_for(lab, config) as mgr, Workload(mgr) as load:
            wait_until(lambda: len(load.acked) > 50, what="writes on node0")
            killed = time.monotonic()
            lab.kill("node0")  # returns once the container has exited
            dead = time.monotonic()  # any later acknowledgement is the new primary's
            assert lab.process_state("node0") == "stopped"
            wait_until(lambda: mgr.snapshot.primary not in (None, "node0"), what="a promotion")
            promoted = time.monotonic() - killed
            new = mgr.snapshot.primary
            assert new in ("node1", "node2")
            other = "node2" if new == "node1" else "node1"
            lab.follow(other, new)
            wait_until(
                lambda: any(t > dead for _, _, t in load.acked),
                timeout=30,
                what="a write after the kill",
            )
            resumed = min(t for _, _, t in load.acked if t > dead) - killed
            count = len(load.acked)
            wait_until(lambda: len(load.acked) > count + 50, what="writes going on")
            event = mgr.history()[-1]
            assert (event.kind, event.from_node, event.to_node) == ("failover", "node0", new)
        assert not load.failed, load.failed[:3]
        assert len(load.unknown) <= 4  # at most one commit in flight per thread
        acked = {i for i, _, _ in load.acked}
        present = {r[0] for r in lab.run_sql(new, "SELECT id FROM w")}
        assert acked - present == set()

        lab.rejoin("node0")
        assert _upstreams(lab) == {"node0": new, new: None, other: new}
        assert lab.in_recovery("node0") is True
        lab.pause(other)
        assert lab.process_state(other) == "paused"
        lab.resume(other)
        lab.stop(other, "fast")
        assert lab.process_state(other) == "stopped"
        lab.start(other)
        wait_until(lambda: _upstreams(lab)[other] == new, what=f"{other} streaming again")
    assert _labelled(tag) == []
    with capsys.disabled():
        print(
            f"\ndocker lab: 3 nodes up in {built:.1f}s; {new} promoted {promoted:.2f}s after "
            f"the kill, writes resumed after {resumed:.2f}s (the other standby repointed by "
            f"the lab); {len(acked)} acknowledged, 0 lost"
        )


def test_the_readme_docker_lab_session(docker_env: Engine, tmp_path: Path) -> None:
    """The README's session, as written; then nothing of the lab is left."""
    lab_dir = tmp_path / "lab"
    run_console(block("docker-lab-session"), tmp_path, lab_dir)
    assert not lab_dir.exists()
    assert sweep() == 0  # lab down removed every container, volume and network


def _cli(directory: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "pgfailover", "lab", *args, "--dir", str(directory)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def test_lab_up_restarts_a_stopped_docker_lab(docker_env: Engine, tmp_path: Path) -> None:
    directory = tmp_path / "lab"
    _cli(directory, "up", "--backend", "docker", "--standbys", "1")
    tag = json.loads((directory / "lab.json").read_text())["tag"]
    try:

        def status() -> dict[str, dict[str, Any]]:
            rows = json.loads(_cli(directory, "status", "--json"))
            return {row["name"]: row for row in rows}

        _cli(directory, "stop", "node0")
        _cli(directory, "kill", "node1")
        assert {r["process"] for r in status().values()} == {"stopped"}
        assert "restarting the lab" in _cli(directory, "up")
        wait_until(
            lambda: (
                {n: (r["role"], r["upstream"]) for n, r in status().items()}
                == {"node0": ("primary", None), "node1": ("standby", "node0")}
            ),
            what="node0 primary, node1 streaming from it",
        )
        assert "host=127.0.0.1" in _cli(directory, "config")
    finally:
        _cli(directory, "down")
    assert not directory.exists()
    assert _labelled(tag) == []
