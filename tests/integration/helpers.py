"""Helpers for integration tests: waiting with deadlines, managers over labs."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from pgfailover import FailoverConfig, FailoverManager
from pgfailover.lab import LocalLab

FAST = FailoverConfig(
    health_check_interval=0.2,
    fast_interval=0.05,
    health_check_timeout=1.0,
    failover_cooldown=0,
    failover_wait_timeout=15.0,
)


def wait_until(check: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll ``check()`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - keep polling, report the last one
            last = exc
        time.sleep(0.02)
    pytest.fail(
        f"timed out after {timeout}s waiting for {what}"
        + (f" (last error: {last})" if last else "")
    )


def manager_for(lab: LocalLab, config: FailoverConfig = FAST, **kwargs: Any) -> FailoverManager:
    """An open manager over every node of ``lab``."""
    nodes = lab.manager_nodes()
    return FailoverManager(nodes=nodes, config=config, **kwargs).open()


def port_of(lab: LocalLab, port: int) -> str:
    """The node name listening on ``port``."""
    return next(n.name for n in lab.nodes if n.port == port)
