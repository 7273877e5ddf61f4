"""Failover events: bounded history, JSON-lines persistence, callbacks."""

from __future__ import annotations

import json
import logging
import threading
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


GOOD = event(3).as_dict()
BAD_LINES = [
    pytest.param(b"5", "expected an object, got int", id="a number"),
    pytest.param(b"null", "expected an object, got NoneType", id="null"),
    pytest.param(b"[1, 2]", "expected an object, got list", id="a list"),
    pytest.param(json.dumps({**GOOD, "id": [1]}).encode(), "$.id", id="id a list"),
    pytest.param(json.dumps({**GOOD, "started": "now"}).encode(), "$.started", id="started text"),
    pytest.param(json.dumps({**GOOD, "kind": "coup"}).encode(), "$.kind", id="unknown kind"),
    pytest.param(json.dumps({**GOOD, "kind": ["watch"]}).encode(), "$.kind", id="kind a list"),
    pytest.param(json.dumps({**GOOD, "notes": [1]}).encode(), "$.notes[0]", id="notes not text"),
    pytest.param(json.dumps({**GOOD, "outcome": 1}).encode(), "$.outcome", id="outcome a number"),
    pytest.param(json.dumps({"kind": "failover"}).encode(), "missing", id="fields missing"),
    pytest.param(json.dumps({**GOOD, "started": 1e20}).encode(), "not a time", id="far future"),
    pytest.param(json.dumps({**GOOD, "started": float("nan")}).encode(), "not a time", id="NaN"),
    pytest.param(
        json.dumps({**GOOD, "completed": float("-inf")}).encode(), "not a time", id="-Infinity"
    ),
    pytest.param(
        json.dumps({**GOOD, "reason": "\ud800"}).encode(), "lone surrogate", id="lone surrogate"
    ),
    pytest.param(b'{"kind": "failover", "fr', "line", id="torn line"),
    pytest.param(b"\xff\xfe\x00binary", "utf-8", id="binary"),
    pytest.param(b"[" * 50_000, "recursion", id="nested deep"),
]


@pytest.mark.parametrize(("line", "said"), BAD_LINES)
def test_a_line_that_is_not_an_event_is_skipped_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, line: bytes, said: str
) -> None:
    path = tmp_path / "history.jsonl"
    path.write_bytes(line + b"\n" + json.dumps(GOOD).encode() + b"\n")
    with caplog.at_level(logging.WARNING):
        log = EventLog(path=path)
    assert [e.from_node for e in log.events()] == ["node3"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"{path} line 1 skipped" in warnings[0].getMessage()
    assert said in warnings[0].getMessage()
    served = [e.as_dict() for e in log.events()]  # what /failover/history answers
    assert json.loads(json.dumps(served)) == served


LEDGER_LINES = [
    {"kind": "watch", "id": "r1", "run": "r1", "started": 1.0, "until": 2.0, "reason": None},
    {"kind": "outage", "id": "o1", "run": "r1", "started": 1.5, "until": None, "reason": "x"},
    {"kind": "watch", "id": "r2"},  # malformed: pgfailover.availability says so, not EventLog
]


def test_availability_lines_are_passed_over_silently(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "history.jsonl"
    body = [json.dumps(line) for line in LEDGER_LINES]
    path.write_text("\n".join([body[0], json.dumps(GOOD), *body[1:]]) + "\n")
    with caplog.at_level(logging.WARNING):
        log = EventLog(path=path)
    assert [e.from_node for e in log.events()] == ["node3"]
    assert log.skipped == 0
    assert caplog.records == []


def test_each_event_is_one_write_so_a_kill_leaves_no_torn_line(
    tmp_path: Path, os_writes: list[bytes]
) -> None:
    writes = os_writes
    path = tmp_path / "history.jsonl"
    log = EventLog(path=path)
    long_notes = tuple("n" * 1000 for _ in range(40))  # far over a file buffer
    log.record(FailoverEvent("failover", "a", "b", "r", 1.0, notes=long_notes))
    assert len(writes) == 1
    assert writes[0].endswith(b"\n")
    assert path.read_bytes() == writes[0]


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


def append_concurrently(log: EventLog, event_id: str, threads: int, each: int) -> None:
    """``threads`` threads, started together, each appending ``each`` notes one by one."""
    start = threading.Barrier(threads)

    def work(worker: int) -> None:
        start.wait()
        for n in range(each):
            log.append_notes(event_id, (f"w{worker}-{n}",))

    workers = [threading.Thread(target=work, args=(w,)) for w in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in workers)


def test_concurrent_notes_are_never_lost() -> None:
    log = EventLog()
    first = log.record(event(1))
    append_concurrently(log, first.id, threads=8, each=200)
    final = log.get(first.id)
    assert final is not None
    assert len(final.notes) == 1600
    assert len(set(final.notes)) == 1600
    for worker in range(8):  # each thread's notes stay in the order it added them
        mine = [note for note in final.notes if note.startswith(f"w{worker}-")]
        assert mine == [f"w{worker}-{n}" for n in range(200)]


def test_concurrent_updates_and_notes_keep_each_other() -> None:
    log = EventLog()
    first = log.record(event(1))

    def update() -> None:
        for n in range(500):
            log.update(first.id, to_node=f"node{n}")

    updater = threading.Thread(target=update)
    updater.start()
    append_concurrently(log, first.id, threads=4, each=200)
    updater.join(timeout=60)
    final = log.get(first.id)
    assert final is not None
    assert len(final.notes) == 800
    assert final.to_node == "node499"


def test_the_history_file_ends_with_the_final_event_after_concurrent_notes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "history.jsonl"
    log = EventLog(path=path)
    first = log.record(event(1))
    append_concurrently(log, first.id, threads=8, each=200)
    final = log.get(first.id)
    assert final is not None
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    mine = [line for line in lines if line["id"] == first.id]
    assert len(mine) == 1 + 1600  # the record, then one line per append
    assert mine[-1] == json.loads(json.dumps(final.as_dict()))
    reopened = EventLog(path=path).get(first.id)
    assert reopened is not None
    assert len(reopened.notes) == 1600
    assert reopened == final
