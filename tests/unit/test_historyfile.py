"""The history file: compaction keeps what events and availability need, and loses no append."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pgfailover import historyfile
from pgfailover.availability import WINDOWS, WindowStats, read_records, spans, window_stats
from pgfailover.events import EventLog, FailoverEvent
from pgfailover.historyfile import append_line, compact

pytestmark = pytest.mark.timeout(30)

T = 1_700_000_000.0
DAY = 86400.0


def line(**fields: object) -> str:
    return json.dumps(fields, sort_keys=True) + "\n"


def event(n: int, started: float) -> str:
    return (
        json.dumps(
            FailoverEvent("failover", "node0", "node1", f"lost {n}", started, id=f"e{n}").as_dict()
        )
        + "\n"
    )


def figures(path: Path) -> dict[str, WindowStats]:
    watches, outages = spans(read_records(path))
    return {name: window_stats(watches, outages, T, w) for name, w in WINDOWS.items()}


def test_compaction_keeps_the_last_line_of_what_still_matters(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    lines = []
    for n in range(8):  # 8 events, each written twice (in progress, then completed)
        lines += [event(n, T - 10 * DAY + n), event(n, T - 10 * DAY + n)]
    for run in range(3):  # an old run (ended 9 days ago) and two recent ones, checkpointed
        base = T - 9 * DAY if run == 0 else T - run * 3600
        for k in range(200):
            lines.append(
                line(kind="watch", id=f"r{run}", run=f"r{run}", started=base, until=base + k * 300)
            )
    lines.append(line(kind="outage", id="o-old", run="r0", started=T - 9 * DAY, until=T - 9 * DAY))
    lines.append(line(kind="outage", id="o-new", run="r1", started=T - 600, until=T - 590))
    lines.append("{torn\n")
    path.write_text("".join(lines))
    os.chmod(path, 0o600)
    before = figures(path)
    assert compact(path, keep_events=5, keep_since=T - 7 * DAY, limit=1000)
    kept = [json.loads(x) for x in path.read_text().splitlines()]
    assert sorted(k["id"] for k in kept) == ["e3", "e4", "e5", "e6", "e7", "o-new", "r1", "r2"]
    watch = next(k for k in kept if k["id"] == "r1")
    assert watch["until"] == T - 3600 + 199 * 300  # its last line
    assert path.stat().st_mode & 0o777 == 0o600
    assert [e.id for e in EventLog(100, path).events()] == ["e3", "e4", "e5", "e6", "e7"]
    assert figures(path) == before  # the figures do not change
    assert not compact(path, keep_events=5, keep_since=T - 7 * DAY, limit=10**6)  # small now
    assert list(tmp_path.iterdir()) == [path]  # no temporary left


def test_no_append_is_lost_to_a_concurrent_compaction(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    path.write_text(
        "".join(line(kind="watch", id=f"w{i}", run="x", started=T, until=T) for i in range(3000))
    )
    stop = threading.Event()
    written: list[str] = []

    def appender() -> None:
        n = 0
        while not stop.is_set() or n < 200:
            ident = f"a{n}"
            append_line(path, line(kind="outage", id=ident, run="y", started=T, until=T + 1))
            written.append(ident)
            n += 1

    thread = threading.Thread(target=appender)
    thread.start()
    rewrites = 0
    try:
        for _ in range(20):
            rewrites += compact(path, keep_events=0, keep_since=T, limit=0)
    finally:
        stop.set()
        thread.join(20)
    assert rewrites >= 2
    ids = {json.loads(x)["id"] for x in path.read_text().splitlines()}
    assert set(written) <= ids


def test_a_history_file_not_written_yet_is_left_alone_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A first start has no file yet: nothing to compact, and nothing to complain about."""
    path = tmp_path / "history.jsonl"
    with caplog.at_level("DEBUG", logger="pgfailover.historyfile"):
        assert compact(path, keep_events=10, keep_since=T, limit=0) is False
    assert not path.exists()
    assert caplog.records == []


def test_a_compaction_gives_up_on_a_lock_held_for_good_and_changes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shared lock that is never released (an appender stopped mid-append, or the
    descriptor a forked child inherited from a thread that was appending) must not
    hold up a manager's start: the compaction waits ``LOCK_WAIT``, then skips."""
    path = tmp_path / "history.jsonl"
    path.write_text("".join(event(n, T + n) for n in range(50)))
    before = path.read_bytes()
    monkeypatch.setattr(historyfile, "LOCK_WAIT", 0.2)
    holder = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(holder, fcntl.LOCK_SH)
        started = time.monotonic()
        with caplog.at_level("WARNING", logger="pgfailover.historyfile"):
            assert compact(path, keep_events=5, keep_since=T, limit=0) is False
        assert 0.2 <= time.monotonic() - started < 5.0
        assert "still locked" in caplog.text
        assert path.read_bytes() == before
    finally:
        os.close(holder)
    assert compact(path, keep_events=5, keep_since=T, limit=0)  # released: it compacts


FORKED_COMPACTION = """
import json, os, sys, threading, time
from pgfailover import historyfile
path = sys.argv[1]
holding, done = threading.Event(), threading.Event()
write = os.write

def stalled_write(fd, data):  # the appender stops in the middle of its append, lock held
    if threading.current_thread().name == "appender":
        holding.set()
        done.wait()
    return write(fd, data)

os.write = stalled_write
line = json.dumps({"id": "late", "kind": "watch", "started": 0}) + "\\n"
appending = threading.Thread(
    target=historyfile.append_line, args=(path, line), name="appender", daemon=True
)
appending.start()
holding.wait(5)
released, tell = os.pipe()
pid = os.fork()
if pid == 0:
    os.read(released, 1)  # the parent's append is over: its descriptor is closed
    started = time.monotonic()
    ok = historyfile.compact(path, keep_events=5, keep_since=0, limit=0)
    os._exit(0 if ok and time.monotonic() - started < 1.0 else 1)
done.set()
appending.join(5)
os.write(tell, b"x")
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_a_forked_child_does_not_keep_the_lock_of_an_append_its_parent_was_making(
    tmp_path: Path,
) -> None:
    """The appending thread is not in the child, so nothing there would ever close its
    descriptor: the child closes it, and compacts at once instead of waiting it out."""
    path = tmp_path / "history.jsonl"
    path.write_text("".join(event(n, T + n) for n in range(50)))
    script = tmp_path / "forked.py"
    script.write_text(FORKED_COMPACTION)
    done = subprocess.run(  # our own script
        [sys.executable, str(script), str(path)], capture_output=True, timeout=20, check=False
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    kept = path.read_text().splitlines()
    assert len(kept) == 6  # the child compacted it: 5 events, and the parent's append
    assert '"late"' in kept[-1]
