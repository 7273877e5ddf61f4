"""Failover events: bounded history, JSON-lines persistence, callbacks."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from pgfailover.events import EventLog, FailoverEvent, run_callbacks


def event(n: int) -> FailoverEvent:
    return FailoverEvent("failover", f"node{n}", None, f"reason {n}", 1000.0 + n)


def test_history_is_bounded_and_oldest_first() -> None:
    log = EventLog(size=3)
    for n in range(5):
        log.record(event(n))
    assert [e.from_node for e in log.events()] == ["node2", "node3", "node4"]


def test_updates_replace_by_id_and_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    log = EventLog(size=10, path=path)
    first = log.record(event(1))
    log.update(first.id, to_node="node2", completed=1003.5, outcome="completed")
    log.record(event(7))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 3
    reopened = EventLog(size=10, path=path)
    events = reopened.events()
    assert [(e.from_node, e.to_node, e.outcome) for e in events] == [
        ("node1", "node2", "completed"),
        ("node7", None, "in_progress"),
    ]
    assert events[0].duration == pytest.approx(2.5)
    assert events[0].as_dict()["from"] == "node1"


def test_a_corrupt_history_line_is_skipped_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "history.jsonl"
    path.write_text("{not json\n" + json.dumps(event(3).as_dict()) + "\n")
    with caplog.at_level(logging.WARNING):
        log = EventLog(path=path)
    assert [e.from_node for e in log.events()] == ["node3"]
    assert "line 1 skipped" in caplog.text


def test_a_raising_callback_is_logged_and_the_rest_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[str] = []

    def bad(name: str) -> None:
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR):
        run_callbacks([bad, calls.append], "node1")
    assert calls == ["node1"]
    assert "boom" in caplog.text
