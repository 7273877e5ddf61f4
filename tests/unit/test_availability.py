"""Availability over 1 h / 24 h / 7 d: the pure window computation and the ledger."""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from pgfailover.availability import (
    Availability,
    Record,
    Span,
    read_records,
    spans,
    window_stats,
    writes_taken,
)
from pgfailover.events import EventLog, FailoverEvent

from .helpers import down, healthy_round, primary, run, standby

T = 1_700_000_000.0  # a plausible epoch time
HOUR = 3600.0
DAY = 24 * HOUR


def watch(run: str, started: float, until: float | None) -> Record:
    return Record("watch", run, run, started, until)


def outage(run: str, started: float, until: float | None, n: int = 0) -> Record:
    return Record("outage", f"{run}-o{n}", run, started, until, "no_primary")


# (watches, outages, now, window, (ratio, observed_seconds, down_seconds))
PAIRS = [
    pytest.param([], [], T, HOUR, (None, 0.0, 0.0), id="nothing observed"),
    pytest.param(
        [(T - 3 * HOUR, T - 2 * HOUR)], [], T, HOUR, (None, 0.0, 0.0), id="observed only before"
    ),
    pytest.param([(T - DAY, T)], [], T, HOUR, (1.0, HOUR, 0.0), id="always up"),
    pytest.param(
        [(T - DAY, T)], [(T - 1000, T - 964)], T, HOUR, (0.99, HOUR, 36.0), id="outage inside"
    ),
    pytest.param(
        [(T - 2 * HOUR, T)],
        [(T - HOUR - 600, T - HOUR + 360)],
        T,
        HOUR,
        (0.9, HOUR, 360.0),
        id="outage straddling the window start",
    ),
    pytest.param(
        [(T - HOUR, T), (T - 1800, T)],
        [(T - 1800, T - 1440), (T - 1800, T - 1440)],
        T,
        HOUR,
        (0.9, HOUR, 360.0),
        id="two runs overlapping count once",
    ),
    pytest.param(
        [(T - 3600, T - 2600), (T - 1600, T)],
        [],
        T,
        HOUR,
        (1.0, 2600.0, 0.0),
        id="gap between runs is unobserved",
    ),
    pytest.param(
        [(T - 3600, T - 2600), (T - 1600, T)],
        [(T - 2700, T - 2000)],
        T,
        HOUR,
        (2500 / 2600, 2600.0, 100.0),
        id="outage into the gap counts only while observed",
    ),
    pytest.param(
        [(T - HOUR, T)], [(T - 2 * DAY, T - DAY)], T, HOUR, (1.0, HOUR, 0.0), id="old outage"
    ),
    pytest.param(
        [(T - HOUR, T)], [(T + 10, T + 20)], T, HOUR, (1.0, HOUR, 0.0), id="future outage"
    ),
    pytest.param(
        [(T, T - 1000)], [(T - 500, T - 900)], T, HOUR, (None, 0.0, 0.0), id="clock back: spans"
    ),
    pytest.param(
        [(T + 100, T + 200)], [], T, HOUR, (None, 0.0, 0.0), id="clock back: now before all"
    ),
    pytest.param(
        [(T - HOUR, T)],
        [(T - 100, T - 200), (T - 50, T + 50)],
        T,
        HOUR,
        (3550 / 3600, HOUR, 50.0),
        id="clock back: backward outage ignored",
    ),
    pytest.param(
        [(T - 7 * DAY - HOUR, T)],
        [(T - 8 * DAY, T - 7 * DAY + 6048)],
        T,
        7 * DAY,
        (0.99, 7 * DAY, 6048.0),
        id="week window clips an outage",
    ),
]


@pytest.mark.parametrize(("watches", "outages", "now", "window", "expected"), PAIRS)
def test_window_stats(
    watches: list[Span],
    outages: list[Span],
    now: float,
    window: float,
    expected: tuple[float | None, float, float],
) -> None:
    stats = window_stats(watches, outages, now, window)
    ratio, observed, down = expected
    assert stats["observed_seconds"] == pytest.approx(observed)
    assert stats["down_seconds"] == pytest.approx(down)
    got = stats["ratio"]
    if ratio is None:
        assert got is None
    else:
        assert got == pytest.approx(ratio)
        assert got is not None
        assert 0.0 <= got <= 1.0


# Records of past runs, as read from the file: (records, now, window, expected).
RECORDS = [
    pytest.param(
        [watch("a", T - HOUR, T - 1800), outage("a", T - 2100, None), watch("b", T - 1200, T)],
        T,
        HOUR,
        (2700 / 3000, 3000.0, 300.0),
        id="outage left open by a killed run ends at its last checkpoint",
    ),
    pytest.param(
        [watch("a", T - HOUR, T - 1800), outage("a", T - 1700, None), watch("b", T - 1200, T)],
        T,
        HOUR,
        (1.0, 3000.0, 0.0),
        id="an open outage after its run's checkpoint covers nothing",
    ),
    pytest.param(
        [outage("ghost", T - 1000, None), watch("b", T - HOUR, T)],
        T,
        HOUR,
        (1.0, HOUR, 0.0),
        id="an open outage of a run without a watch covers nothing",
    ),
    pytest.param(
        [watch("a", T - HOUR, None), watch("b", T - 600, T)],
        T,
        HOUR,
        (1.0, 600.0, 0.0),
        id="a watch without until observed nothing",
    ),
    pytest.param(
        [
            watch("a", T - HOUR, T),
            watch("b", T - HOUR, T),
            outage("a", T - 1000, T - 964),
            outage("b", T - 1001, T - 965),
        ],
        T,
        HOUR,
        (1 - 37 / 3600, HOUR, 37.0),
        id="two processes sharing a file see one outage",
    ),
]


@pytest.mark.parametrize(("records", "now", "window", "expected"), RECORDS)
def test_records_to_window(
    records: list[Record], now: float, window: float, expected: tuple[float, float, float]
) -> None:
    watches, outages = spans(records)
    stats = window_stats(watches, outages, now, window)
    assert (stats["ratio"], stats["observed_seconds"], stats["down_seconds"]) == pytest.approx(
        expected
    )


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_transitions_write_lines(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    ledger = Availability(path, now=T)
    run = ledger.run
    assert lines(path) == [
        {"kind": "watch", "id": run, "run": run, "started": T, "until": T, "reason": None}
    ]
    ledger.observe(True, T + 1)
    ledger.observe(False, T + 10, "no_primary")
    ledger.observe(False, T + 20, "still nothing")  # no change, no checkpoint due
    ledger.observe(True, T + 46)
    ledger.close(T + 100)
    got = lines(path)
    assert [(g["kind"], g["started"], g["until"], g["reason"]) for g in got] == [
        ("watch", T, T, None),
        ("watch", T, T + 10, None),
        ("outage", T + 10, None, "no_primary"),
        ("watch", T, T + 46, None),
        ("outage", T + 10, T + 46, "no_primary"),
        ("watch", T, T + 100, None),
    ]
    assert got[2]["id"] == got[4]["id"] != run
    assert {g["run"] for g in got} == {run}
    stats = ledger.report(T + 100)["1h"]
    assert stats == {"ratio": pytest.approx(0.64), "observed_seconds": 100.0, "down_seconds": 36.0}


def test_a_restart_continues_the_figures(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    first = Availability(path, now=T)
    first.observe(True, T)
    first.observe(False, T + 1000, "no_primary")
    first.observe(True, T + 1036)
    del first  # killed: no close
    second = Availability(path, now=T + 1036)
    second.observe(True, T + 1036)
    report = second.report(T + HOUR)
    assert report["1h"] == {
        "ratio": pytest.approx(0.99),
        "observed_seconds": HOUR,
        "down_seconds": 36.0,
    }
    assert report["24h"] == report["1h"]
    assert report["7d"] == report["1h"]
    later = second.report(T + 2 * HOUR)["1h"]  # the outage left the hour
    assert later == {"ratio": 1.0, "observed_seconds": HOUR, "down_seconds": 0.0}


def test_a_killed_run_with_an_open_outage_ends_at_its_last_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    first = Availability(path, now=T, checkpoint=300)
    first.observe(False, T + 1000, "no_primary")
    first.observe(False, T + 1300)  # a checkpoint: watch until T + 1300
    first.observe(False, T + 1500)  # none due; killed here
    second = Availability(path, now=T + 2000)
    second.observe(True, T + 2000)
    stats = second.report(T + HOUR)["1h"]
    assert stats["observed_seconds"] == pytest.approx(1300 + 1600)
    assert stats["down_seconds"] == pytest.approx(300)
    assert stats["ratio"] == pytest.approx(2600 / 2900)


def test_this_runs_open_outage_counts_up_to_now() -> None:
    ledger = Availability(None, now=T)
    ledger.observe(True, T)
    ledger.observe(False, T + 600, "no_primary")
    stats = ledger.report(T + 900)["1h"]
    assert stats == {
        "ratio": pytest.approx(600 / 900),
        "observed_seconds": 900.0,
        "down_seconds": 300.0,
    }
    ledger.close(T + 1000)
    assert ledger.report(T + 2000)["1h"]["observed_seconds"] == 1000.0  # ends at close
    assert ledger.report(T + 2000)["1h"]["down_seconds"] == 400.0
    ledger.observe(True, T + 2000)  # after close: nothing
    assert ledger.report(T + 2000)["1h"]["down_seconds"] == 400.0


def test_checkpoint_lines_only_when_due(tmp_path: Path, os_writes: list[bytes]) -> None:
    writes = os_writes
    path = tmp_path / "history.jsonl"
    ledger = Availability(path, now=T, checkpoint=300)
    assert len(writes) == 1
    for second in range(1, 300):
        ledger.observe(True, T + second)
    assert len(writes) == 1
    ledger.observe(True, T + 300)
    for second in range(301, 600):
        ledger.observe(True, T + second)
    ledger.observe(True, T + 600)
    assert len(writes) == 3
    assert [g["until"] for g in lines(path)] == [T, T + 300, T + 600]
    assert all(w.endswith(b"\n") and w.count(b"\n") == 1 for w in writes)


def test_a_bad_file_loads_what_it_can(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "history.jsonl"
    event = FailoverEvent("failover", "node1", "node2", "primary lost", T - 1000, T - 990)
    good = [
        watch("a", T - HOUR, T - 100).as_line(),
        json.dumps(event.as_dict()) + "\n",
        outage("a", T - 1000, T - 964).as_line(),
    ]
    garbage = [
        "{not json\n",
        "5\n",
        json.dumps({"kind": "watch", "id": "x", "run": "x", "started": "then"}) + "\n",
        json.dumps({"kind": "outage", "id": "y", "run": "y", "started": float("nan")}) + "\n",
    ]
    torn = outage("a", T - 500, T - 400, n=1).as_line()[:30]
    path.write_text(
        good[0] + garbage[0] + good[1] + garbage[1] + garbage[2] + good[2] + garbage[3] + torn
    )
    with caplog.at_level(logging.WARNING):
        ledger = Availability(path, now=T - 100)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 5  # four garbage lines and the torn last one, not the event
    assert [w.split(" skipped")[0].rsplit(" ", 1)[-1] for w in warnings] == [
        "2",
        "4",
        "5",
        "7",
        "8",
    ]
    assert "$.started" in warnings[2]
    assert "not a time" in warnings[3]
    stats = ledger.report(T)["1h"]  # past watch to T - 100, this run's from T - 100
    assert stats == {"ratio": pytest.approx(0.99), "observed_seconds": HOUR, "down_seconds": 36.0}


def test_reading_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert read_records(tmp_path) == []  # a directory
        assert read_records(tmp_path / "absent") == []
    assert "not read for availability" in caplog.text
    (tmp_path / "deep").write_bytes(b"[" * 50_000 + b"\n\xff\xfe\n")
    assert read_records(tmp_path / "deep") == []


def test_event_log_on_the_same_file_lists_only_events(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "history.jsonl"
    log = EventLog(path=path)
    ledger = Availability(path, now=T)
    ledger.observe(False, T + 5, "no_primary")
    first = log.record(FailoverEvent("failover", "node1", None, "primary lost", T + 5))
    ledger.observe(True, T + 20)
    log.update(first.id, to_node="node2", completed=T + 20, outcome="completed")
    ledger.close(T + 30)
    assert {g["kind"] for g in lines(path)} == {"watch", "outage", "failover"}
    with caplog.at_level(logging.WARNING):
        reopened = EventLog(path=path)
    assert [(e.id, e.to_node, e.outcome) for e in reopened.events()] == [
        (first.id, "node2", "completed")
    ]
    assert reopened.skipped == 0
    assert caplog.records == []


def test_an_unwritable_file_logs_once_per_kind_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "no such directory" / "history.jsonl"
    with caplog.at_level(logging.ERROR):
        ledger = Availability(path, now=T)
        ledger.observe(False, T + 10, "no_primary")
        ledger.observe(True, T + 20)
        path.parent.mkdir()

        def full(fd: int, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "write", full)
        ledger.observe(False, T + 30, "no_primary")  # a new kind of failure
        ledger.observe(True, T + 40)
        monkeypatch.undo()
        ledger.close(T + 50)  # writes again
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    assert "No such file or directory" in errors[0]
    assert "No space left on device" in errors[1]
    assert [(g["kind"], g["until"]) for g in lines(path)] == [("watch", T + 50)]
    stats = ledger.report(T + 50)["1h"]  # the figures went on in memory
    assert stats == {"ratio": pytest.approx(0.6), "observed_seconds": 50.0, "down_seconds": 20.0}


def test_the_week_keeps_only_what_can_matter(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    path.write_text(
        watch("old", T - 9 * DAY, T - 8 * DAY).as_line()
        + outage("old", T - 8 * DAY - 10, T - 8 * DAY).as_line()
        + watch("recent", T - 6 * DAY, T - 5 * DAY).as_line()
        + outage("recent", T - 5 * DAY - 10, None).as_line()
    )
    ledger = Availability(path, now=T)
    assert ledger._past_watches == [(T - 6 * DAY, T - 5 * DAY)]
    assert ledger._outages == [(T - 5 * DAY - 10, T - 5 * DAY)]
    ledger.observe(True, T + 2 * DAY)  # a checkpoint: all still within the week
    assert len(ledger._past_watches) == len(ledger._outages) == 1
    ledger.observe(True, T + 3 * DAY)  # a checkpoint prunes what left the week
    assert ledger._past_watches == []
    assert ledger._outages == []
    week = ledger.report(T + 3 * DAY)["7d"]
    assert week == {"ratio": 1.0, "observed_seconds": 3 * DAY, "down_seconds": 0.0}


def test_a_clock_going_backwards_keeps_figures_sane(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    ledger = Availability(path, now=T)
    ledger.observe(False, T + 100, "no_primary")
    ledger.observe(True, T + 40)  # the clock stepped back 60 s
    ledger.observe(False, T + 50)
    for now in (T + 10, T + 60, T - 100, T + 200):
        for stats in ledger.report(now).values():
            assert stats["observed_seconds"] is not None
            assert stats["observed_seconds"] >= 0
            assert stats["down_seconds"] is not None
            assert 0 <= stats["down_seconds"] <= stats["observed_seconds"]
            assert stats["ratio"] is None or 0.0 <= stats["ratio"] <= 1.0
    got = lines(path)
    assert all(g["until"] is None or g["until"] >= g["started"] for g in got)
    assert [g["until"] for g in got if g["kind"] == "watch"] == [T, T + 100]  # never moves back
    assert ledger.report(T - 100)["1h"]["ratio"] is None  # nothing observed before T
    stats = ledger.report(T + 200)["1h"]
    assert stats["observed_seconds"] == 200.0
    assert stats["down_seconds"] == 150.0  # the open outage from T + 50; the first is empty


def test_observe_and_report_from_several_threads(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    ledger = Availability(path, now=T, checkpoint=50)
    failures: list[AssertionError] = []
    start = threading.Barrier(4)

    def monitor() -> None:
        start.wait()
        for n in range(2000):
            ledger.observe(n % 100 < 90, T + n, "flap")

    def reader() -> None:
        start.wait()
        try:
            for n in range(300):
                for stats in ledger.report(T + n * 7).values():
                    assert stats["ratio"] is None or 0.0 <= stats["ratio"] <= 1.0
        except AssertionError as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=monitor)] + [
        threading.Thread(target=reader) for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    ledger.close(T + 2000)
    stats = ledger.report(T + 2000)["1h"]
    assert stats == {
        "ratio": pytest.approx(0.9),
        "observed_seconds": 2000.0,
        "down_seconds": 200.0,
    }
    reopened = Availability(path, now=T + 2000)
    assert reopened.report(T + 2000)["1h"] == stats


def test_an_outage_is_dated_from_when_it_began() -> None:
    ledger = Availability(None, now=T)
    ledger.observe(True, T + 10)
    ledger.observe(False, T + 20, "failover_in_progress", since=T + 19.5)
    ledger.observe(True, T + 21)
    assert ledger.report(T + 100)["1h"]["down_seconds"] == pytest.approx(1.5)


ROUNDS_HEALTHY = [healthy_round()] * 3
ONE_MISSED = [*ROUNDS_HEALTHY, [down("node0"), standby("node1"), standby("node2")]]
LOST = [*ROUNDS_HEALTHY, *[[down("node0"), standby("node1"), standby("node2")]] * 3]
SPLIT = [*ROUNDS_HEALTHY, [primary("node0"), primary("node1"), standby("node2")]]


@pytest.mark.parametrize(
    ("rounds", "writable", "dated_back"),
    [
        (ROUNDS_HEALTHY, True, False),
        (ONE_MISSED, True, False),  # one missed probe is not an outage (thresholds)
        (LOST, False, True),  # from the lost primary's first failed probe
        (SPLIT, False, False),
    ],
    ids=["healthy", "one missed probe", "primary lost", "split brain"],
)
def test_what_the_supervisor_counts_as_taking_writes(
    rounds: list[list[Any]], writable: bool, dated_back: bool
) -> None:
    now = T + 1000
    snap = run(rounds, t0=now - 10)[0]  # the rounds happened in the last 10 s
    ledger = Availability(None, now=T)
    takes, reason, since = writes_taken(snap)
    assert takes is writable
    ledger.observe(takes, now, reason, since)
    down = ledger.report(now + 1)["1h"]["down_seconds"]
    if writable:
        assert down == 0.0
        return
    lost = snap.node("node0").down_since
    began = lost if dated_back and lost is not None else now
    assert down == pytest.approx(now + 1 - began)
    assert (began < now) is dated_back
