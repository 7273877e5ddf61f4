"""The CLI's status table says why a standby serves no reads and when commits are blocked."""

from __future__ import annotations

from typing import Any

import pytest

from pgfailover.report import render


def _node(name: str, role: str, **extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": name,
        "address": f"10.0.0.{name[-1]}:5432",
        "role": role,
        "is_primary": role == "primary",
        "healthy": True,
        "up": True,
        "stale": False,
        "timeline": 2,
        "lag_bytes": 0,
        "lag_seconds": 0.0,
        "response_time_ms": 1.0,
        "error": None,
        "read_block": None,
    }
    base.update(extra)
    return base


def _status(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "cluster": "app",
        "state": "degraded",
        "current_primary": "node1",
        "timeline": 2,
        "promotion": "auto",
        "split_brain": [],
        "nodes": [
            _node("node1", "primary"),
            _node("node2", "standby", timeline=1, read_block="orphaned: on timeline 1"),
        ],
        "promotion_blocked": None,
        "failover_reason": None,
    }
    base.update(extra)
    return base


CASES = [
    ("an orphan says why it serves no reads", _status(), "no reads: orphaned: on timeline 1"),
    (
        "blocked commits are shouted",
        _status(
            synchronous_replication={
                "commits_blocked": True,
                "synchronous_standby_names": "ANY 1 (node0)",
                "streaming": ["node2"],
            }
        ),
        "COMMITS BLOCKED: synchronous_standby_names 'ANY 1 (node0)' names no streaming standby",
    ),
    (
        "a slow hang failover is a warning",
        _status(failure_detection={"warning": "a hung primary is failed over only after 31s"}),
        "warning: a hung primary is failed over only after 31s",
    ),
]


@pytest.mark.parametrize(("status", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_status_table_explains(status: dict[str, Any], expected: str) -> None:
    assert expected in render(status)


def test_a_healthy_cluster_has_no_extra_lines() -> None:
    status = _status(nodes=[_node("node1", "primary"), _node("node2", "standby")])
    out = render(status)
    assert "no reads" not in out
    assert "COMMITS BLOCKED" not in out
    assert "warning" not in out


def test_colour_only_when_asked() -> None:
    status = _status(nodes=[_node("node1", "primary"), _node("node2", "standby", healthy=False)])
    plain = render(status)
    coloured = render(status, colour=True)
    assert "\x1b[" not in plain
    assert "\x1b[1;" in coloured  # the state in the header line
    assert "\x1b[31m" in coloured  # the unhealthy node's row
