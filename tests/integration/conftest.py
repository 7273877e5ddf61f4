"""Fixtures that build real replication clusters with the project's lab.

``fresh_lab`` gives each test its own 3-node cluster to break (built ahead,
while the previous test runs: see labpool); ``shared_lab`` is one cluster
for the whole session, for tests that only read. Every lab a test creates
is destroyed at the end, even when the test fails, and the session ends by
checking that no lab process survived. Network-fault rules
(iptables, root only) left by a crashed run are removed when the session
starts, and any left by this one when it ends.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from pgfailover.lab import LocalLab, netfault

from .docker_engine import Engine, engine, lab_image, why_not
from .labpool import LabPool

_created: list[LocalLab] = []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test in this directory runs against real PostgreSQL."""
    for item in items:
        if "tests/integration" in str(item.path):
            item.add_marker(pytest.mark.integration)


def make_lab(*, standbys: int = 2, sync: int = 0) -> LocalLab:
    """Create a lab that the session will destroy if the test does not."""
    lab = LocalLab.create(standbys=standbys, sync=sync)
    _created.append(lab)
    return lab


_ahead = LabPool(lambda standbys, sync: make_lab(standbys=standbys, sync=sync))


@pytest.fixture
def fresh_lab() -> Iterator[LocalLab]:
    """A new async cluster of node0 (primary), node1 and node2, for one test."""
    lab = _ahead.take(standbys=2, sync=0)
    try:
        yield lab
    finally:
        lab.destroy()


@pytest.fixture
def sync_lab() -> Iterator[LocalLab]:
    """A new cluster with quorum sync (ANY 1 of node1, node2), for one test."""
    lab = _ahead.take(standbys=2, sync=1)
    try:
        yield lab
    finally:
        lab.destroy()


@pytest.fixture(scope="session")
def shared_lab() -> Iterator[LocalLab]:
    """One cluster for the session; tests using it must not change it."""
    lab = make_lab()
    try:
        yield lab
    finally:
        lab.destroy()


@pytest.fixture(scope="session", autouse=True)
def _no_lab_process_survives() -> Iterator[None]:
    yield
    _ahead.close()
    survivors = []
    for lab in _created:
        if lab.directory.exists():
            lab.destroy()
        survivors += lab.leftovers()
    assert not survivors, f"lab processes survived the session: {survivors}"


@pytest.fixture(scope="session", autouse=True)
def _no_stale_fault_rules() -> Iterator[None]:
    """Remove the ``pgfailover-lab`` iptables rules of crashed runs before and after the
    session: every lab's whose servers are gone. A second test session running on
    this machine at the same time keeps its labs' faults (``live_labs``)."""
    usable = netfault.unavailable_reason() is None
    if usable:
        netfault.remove_stale_rules(keep=netfault.live_labs())
    yield
    if usable:
        netfault.remove_stale_rules(keep=netfault.live_labs())


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[Engine]:
    """A Docker engine for the session (started here when none answers; see docker_engine)."""
    reason = why_not()
    if reason is not None:
        if os.environ.get("PGFAILOVER_REQUIRE_TOOLS"):
            pytest.fail(f"no Docker engine for the compose lab: {reason}")
        pytest.skip(reason)
    with engine() as eng:
        yield eng


@pytest.fixture(scope="session")
def docker_lab_image(docker_engine: Engine) -> Iterator[str]:
    """The docker lab's node image, built once for the session (also what the compose
    lab's PostgreSQL image builds from, so that build finds its layers cached)."""
    yield from lab_image(docker_engine)
