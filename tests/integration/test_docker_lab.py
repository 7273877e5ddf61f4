"""The docker lab backend, where a Docker engine answers (skipped otherwise)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pgfailover.lab.docker import DockerLab, docker_available

_REASON = docker_available()
pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(_REASON is not None, reason=f"docker lab: {_REASON}"),
]


@pytest.fixture
def docker_lab() -> Iterator[DockerLab]:
    lab = DockerLab.create(standbys=2, sync=1)
    try:
        yield lab
    finally:
        lab.destroy()


@pytest.mark.timeout(600)
def test_docker_lab_fails_over_and_rejoins(docker_lab: DockerLab) -> None:
    assert docker_lab.primary() == "node0"
    docker_lab.run_sql("node0", "CREATE TABLE t (id int)")
    docker_lab.kill("node0")
    assert docker_lab.process_state("node0") == "stopped"
    docker_lab.promote("node1")
    docker_lab.follow("node2", "node1")
    docker_lab.rejoin("node0")
    upstreams = {s.name: s.upstream for s in docker_lab.status()}
    assert upstreams == {"node0": "node1", "node1": None, "node2": "node1"}
    docker_lab.pause("node2")
    assert docker_lab.process_state("node2") == "paused"
    docker_lab.resume("node2")
    assert docker_lab.in_recovery("node2") is True
