"""Where the examples find the cluster: $PGFAILOVER_SOURCE, else the local lab."""

from __future__ import annotations

import os

from pgfailover.config import Node
from pgfailover.lab.local import LocalLab, default_lab_dir


def cluster_source() -> str | list[Node]:
    """A TOML path or DSN from ``PGFAILOVER_SOURCE``, or the nodes of `pgfailover lab up`."""
    source = os.environ.get("PGFAILOVER_SOURCE")
    if source:
        return source
    return LocalLab.open(default_lab_dir()).manager_nodes()
