"""Finding the server tools tests run (promtool, amtool, prometheus)."""

from __future__ import annotations

import os
import shutil

import pytest


def require_tool(name: str) -> str:
    """The tool's path. Missing: a failure under ``make test`` (which installs it), else a skip."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("PGFAILOVER_REQUIRE_TOOLS"):
            pytest.fail(f"{name} is not installed (make server-binaries installs it)")
        pytest.skip(f"{name} is not installed")
    return path
