"""The CLI's status table says why a standby serves no reads and when commits are blocked."""

from __future__ import annotations

from typing import Any

import pytest

from pgfailover.model import NodeState, Role
from pgfailover.report import node_dict, render


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
        "a full primary (up, its probe's session refused) says so",
        _status(
            nodes=[
                _node("node1", "primary", error="FATAL: too many clients"),
                _node("node2", "standby"),
            ]
        ),
        "FULL, refusing new sessions: FATAL: too many clients",
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


REFUSED = (
    'connection failed: connection to server at "127.0.0.1", port 20282 failed: Connection refused'
)


def test_a_dead_old_primary_reads_down_and_its_whole_error_is_wrapped_in() -> None:
    old = NodeState(
        "node0", "127.0.0.1:20282", 0, role=Role.PRIMARY, up=False, checked=True, error=REFUSED
    )
    row = node_dict(old, primary="node1")
    assert (row["role"], row["last_role"], row["error"]) == ("down", "primary", REFUSED)
    out = render(_status(nodes=[row, _node("node1", "primary")]))
    rows = [line.split() for line in out.splitlines() if line.startswith(("node0", "node1"))]
    assert [(r[0], r[2]) for r in rows] == [("node0", "down"), ("node1", "primary")]
    assert "Connection refused" in out  # past the first 60 characters, on a continuation line
    assert max(len(line) for line in out.splitlines()) < 160


def test_a_full_standby_that_serves_no_reads_shows_both_marks() -> None:
    node2 = _node("node2", "standby", read_block="lag", error="x")
    table = render(_status(nodes=[_node("node1", "primary"), node2]))
    assert "no reads: lag" in table
    assert "FULL, refusing new sessions: x" in table
