"""Replication labs: real PostgreSQL streaming-replication clusters to break.

The local backend (:class:`LocalLab`) runs the PostgreSQL server binaries of
this machine and is the default. The docker backend
(:class:`~pgfailover.lab.docker.DockerLab`) runs the official ``postgres``
image through testcontainers; ``PGFAILOVER_LAB=docker`` selects it in
:func:`create_lab`. Network faults (black holes, client-only partitions) are
local-lab only: :mod:`pgfailover.lab.netfault`.
"""

from __future__ import annotations

import os

from pgfailover.lab.base import (
    CLIENT_HOST,
    Lab,
    NodeInfo,
    NodeStatus,
    StopMode,
    conninfo,
    free_port,
    multihost_url,
)
from pgfailover.lab.binaries import PgBinaries, find_binaries
from pgfailover.lab.local import LocalLab, default_lab_dir

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
]


def create_lab(*, standbys: int = 2, sync: int = 0) -> Lab:
    """A fresh lab in a new temporary directory, on the backend asked for.

    ``PGFAILOVER_LAB=docker`` selects the docker backend; anything else (or
    nothing) the local one.
    """
    if os.environ.get("PGFAILOVER_LAB", "local") == "docker":
        from pgfailover.lab.docker import DockerLab

        return DockerLab.create(standbys=standbys, sync=sync)
    return LocalLab.create(standbys=standbys, sync=sync)
