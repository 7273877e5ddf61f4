"""Replication labs: real PostgreSQL streaming-replication clusters to break.

The local backend (:class:`LocalLab`) runs the PostgreSQL server binaries of
this machine and is the default. The docker backend
(:class:`~pgfailover.lab.docker.DockerLab`) runs the same cluster in
containers through testcontainers, on an image it builds from Debian's
packages; ``PGFAILOVER_LAB=docker`` selects it in :func:`create_lab`, and
``pgfailover lab up --backend docker`` in the CLI. Network faults (black
holes, client-only partitions, full backlogs) are local-lab only:
:mod:`pgfailover.lab.netfault`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from pgfailover.errors import LabError
from pgfailover.lab.base import (
    CLIENT_HOST,
    Lab,
    NodeInfo,
    NodeStatus,
    StopMode,
    conninfo,
    free_port,
    multihost_url,
    read_state,
)
from pgfailover.lab.binaries import PgBinaries, find_binaries
from pgfailover.lab.local import STATE_FILE, LocalLab, default_lab_dir

if TYPE_CHECKING:
    from pgfailover.lab.docker import DockerLab

__all__ = [
    "CLIENT_HOST",
    "Lab",
    "LocalLab",
    "NodeInfo",
    "NodeStatus",
    "PgBinaries",
    "StopMode",
    "conninfo",
    "create_lab",
    "default_lab_dir",
    "find_binaries",
    "free_port",
    "multihost_url",
    "open_lab",
]


def create_lab(*, standbys: int = 2, sync: int = 0) -> Lab:
    """A fresh lab in a new temporary directory, on the backend asked for.

    ``PGFAILOVER_LAB=docker`` selects the docker backend, ``local`` (or
    nothing) the local one.

    Raises:
        LabError: another value, or the backend could not build the lab.
    """
    backend = os.environ.get("PGFAILOVER_LAB") or "local"
    if backend == "docker":
        from pgfailover.lab.docker import DockerLab

        return DockerLab.create(standbys=standbys, sync=sync)
    if backend != "local":
        raise LabError(f"PGFAILOVER_LAB={backend!r}: the lab backends are 'local' and 'docker'")
    return LocalLab.create(standbys=standbys, sync=sync)


def open_lab(directory: Path | str) -> LocalLab | DockerLab:
    """Reopen the lab kept in ``directory``, on the backend that made it.

    Raises:
        LabError: no lab there, or its state file is not one.
    """
    base = Path(directory).absolute()
    if read_state(base, STATE_FILE).get("backend") == "docker":
        from pgfailover.lab.docker import DockerLab

        return DockerLab.open(base)
    return LocalLab.open(base)
