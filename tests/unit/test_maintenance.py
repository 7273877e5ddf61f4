"""Maintenance mode read back from the history file (a restarted arbiter stays paused),
and shared in etcd between arbiters.

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

from pgfailover.etcd import EtcdError
from pgfailover.events import EventLog, FailoverEvent
from pgfailover.maintenance import Maintenance, SharedPause

from .fakes import GateDouble

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


# -- a pause shared in etcd (several arbiters) -------------------------------------------


def _shared(tmp_path: Path | None = None) -> tuple[Maintenance, GateDouble, EventLog]:
    gate = GateDouble()
    events = EventLog(path=None if tmp_path is None else tmp_path / "history.jsonl")
    maintenance = Maintenance(events, "app", lambda: None, shared=gate, identity="a:1")
    gate.watch_pause(maintenance.adopt)  # as FailoverActions does with the lease
    return maintenance, gate, events


def _reasons(events: EventLog) -> list[str]:
    return [e.reason for e in events.events() if e.kind == "maintenance"]


def test_a_pause_is_written_to_etcd_before_it_takes_effect() -> None:
    maintenance, gate, events = _shared()
    assert maintenance.pause("kernel upgrade")
    assert gate.shared is not None
    assert (gate.shared.reason, gate.shared.by) == ("kernel upgrade", "a:1")
    assert gate.shared.since == maintenance.paused_since
    gate.look()  # the lease reads its own pause back: nothing more happens
    assert _reasons(events) == ["paused: kernel upgrade"]
    assert maintenance.resume()
    assert gate.shared is not None
    assert (gate.shared.paused, gate.shared.by) == (False, "a:1")  # written as resumed
    assert _reasons(events) == ["paused: kernel upgrade", "resumed"]


def test_a_pause_etcd_does_not_take_changes_nothing() -> None:
    maintenance, gate, events = _shared()
    gate.failing = "etcd kv/put: no endpoint answered"
    with pytest.raises(EtcdError, match="no endpoint answered"):
        maintenance.pause()
    assert maintenance.paused_since is None
    assert _reasons(events) == []


def test_pauses_and_resumes_through_other_arbiters_are_adopted() -> None:
    maintenance, gate, events = _shared()
    gate.shared = SharedPause(1_700_000_000.0, "network change", "b:2")
    gate.look()
    assert maintenance.paused_since == 1_700_000_000.0
    assert maintenance.holds("node1")
    gate.shared = SharedPause(1_700_000_100.0, "resumed", "c:3", paused=False)
    gate.look()
    assert maintenance.paused_since is None
    assert _reasons(events) == [
        "paused: network change (by b:2, shared in etcd)",
        "resumed (by c:3, shared in etcd)",
    ]


def test_a_resume_here_removes_a_pause_not_heard_of_yet() -> None:
    maintenance, gate, _ = _shared()
    gate.shared = SharedPause(time.time(), "work", "b:2")  # taken elsewhere, not looked at
    assert not maintenance.resume()  # not paused here, but the cluster is no more
    assert gate.shared is not None
    assert not gate.shared.paused


def test_a_read_older_than_this_process_s_last_write_is_dropped() -> None:
    """The lease thread read the pause just before an operator's resume was written: that
    read, applied after it, must not pause the cluster again."""
    maintenance, gate, _ = _shared()
    maintenance.pause()
    before = gate.revision
    stale = gate.shared
    assert maintenance.resume()
    maintenance.adopt(stale, before)  # read at the pause's revision, handed over late
    assert maintenance.paused_since is None
    maintenance.adopt(stale, gate.revision + 1)  # a pause written again since: taken
    assert maintenance.paused_since is not None


def test_a_pause_read_back_from_the_history_file_is_shared_not_dropped(
    tmp_path: Path,
) -> None:
    first, _, _ = _shared(tmp_path)
    first.pause("kernel upgrade")
    again, gate, _ = _shared(tmp_path)  # restarted; the key was never written (an upgrade)
    assert again.paused_since == first.paused_since
    gate.failing = "etcd kv/put: no endpoint answered"
    gate.look()  # cannot share it yet: stays paused
    assert again.paused_since == first.paused_since
    gate.failing = None
    gate.look()
    assert gate.shared is not None
    assert (gate.shared.since, gate.shared.reason) == (first.paused_since, "kernel upgrade")
    gate.shared = SharedPause(time.time(), "resumed", "b:2", paused=False)  # then resumed
    gate.look()
    assert again.paused_since is None


def test_a_resume_made_while_this_arbiter_was_down_is_not_undone(tmp_path: Path) -> None:
    """Its history file still says paused; etcd says resumed since: resumed, not
    paused again for the whole cluster."""
    first, _, _ = _shared(tmp_path)
    first.pause("kernel upgrade")
    again, gate, events = _shared(tmp_path)
    assert again.paused_since is not None
    gate.shared = SharedPause(time.time(), "resumed", "b:2", paused=False)
    gate.look()
    assert again.paused_since is None
    assert not gate.shared.paused
    assert _reasons(events)[-1] == "resumed (by b:2, shared in etcd)"


def test_an_unreadable_shared_value_is_still_a_pause() -> None:
    pause = SharedPause.decode("paused!", written=5.0)
    assert pause.since == 5.0
    assert "unreadable value" in pause.reason
    assert SharedPause.decode(SharedPause(1.0, "x", "b").encode(), 9.0) == SharedPause(
        1.0, "x", "b"
    )
