"""Maintenance mode read back from the history file: a restarted arbiter stays paused.

Each case writes what a first process did to a history file, then builds
the :class:`Maintenance` a restarted process would (a new
:class:`EventLog` over the same file) and checks whether it is paused, and
since when. No PostgreSQL.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pgfailover.events import EventLog, FailoverEvent
from pgfailover.maintenance import Maintenance

pytestmark = pytest.mark.timeout(10)


def _failover(events: EventLog) -> None:
    now = time.time()
    events.record(FailoverEvent("failover", "node0", "node1", "lost", now, now, "completed"))


Step = Callable[[Maintenance, EventLog], object]

# (case, what the first process did, paused after the restart)
CASES: list[tuple[str, list[Step], bool]] = [
    ("nothing", [], False),
    ("paused", [lambda m, e: m.pause("kernel upgrade")], True),
    ("paused then resumed", [lambda m, e: m.pause(), lambda m, e: m.resume()], False),
    (
        "resumed, paused again",
        [lambda m, e: m.pause(), lambda m, e: m.resume(), lambda m, e: m.pause("again")],
        True,
    ),
    ("paused, then other events", [lambda m, e: m.pause(), lambda m, e: _failover(e)], True),
    ("only other events", [lambda m, e: _failover(e)], False),
]


@pytest.mark.parametrize(("steps", "paused"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_restarted_process_reads_its_pause_back(
    tmp_path: Path, steps: list[Step], paused: bool, caplog: pytest.LogCaptureFixture
) -> None:
    history = tmp_path / "history.jsonl"
    first_events = EventLog(path=history)
    first = Maintenance(first_events, "app", wake=lambda: None)
    for step in steps:
        step(first, first_events)
    caplog.set_level(logging.WARNING, logger="pgfailover.maintenance")
    caplog.clear()
    again = Maintenance(EventLog(path=history), "app", wake=lambda: None)
    assert (again.paused_since is not None) is paused
    if paused:
        assert again.paused_since == first.paused_since  # since the pause, not the restart
        assert "maintenance mode still on" in caplog.text
        assert again.resume()  # and it can be resumed as any pause
        third = Maintenance(EventLog(path=history), "app", wake=lambda: None)
        assert third.paused_since is None
    else:
        assert "still on" not in caplog.text


def test_without_a_history_file_a_pause_lasts_for_the_process() -> None:
    first = Maintenance(EventLog(), "app", wake=lambda: None)
    assert first.pause()
    assert Maintenance(EventLog(), "app", wake=lambda: None).paused_since is None
