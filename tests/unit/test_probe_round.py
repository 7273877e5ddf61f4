"""How long a probe round waits: the deadline, the grace for failing nodes, decisive results.

The round's waiting is pure logic over futures; these cases drive it with
futures the test completes itself (no server needed).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import replace

import pytest

from pgfailover.cluster import ClusterView
from pgfailover.config import FailoverConfig, Node
from pgfailover.counters import Counters
from pgfailover.monitor import Monitor, ProbeRound
from pgfailover.probe import ProbeResult
from pgfailover.rounds import Rounds
from pgfailover.transition import initial_snapshot

from .helpers import NODES, down, healthy_round, primary, run, standby


def _done(result: ProbeResult) -> Future[ProbeResult]:
    future: Future[ProbeResult] = Future()
    future.set_result(result)
    return future


@pytest.fixture
def probe_round() -> Iterator[ProbeRound]:
    nodes = [Node("node0", "host=127.0.0.1 port=1"), Node("node1", "host=127.0.0.1 port=2")]
    rnd = ProbeRound(nodes, timeout=0.6, grace=0.02)
    yield rnd
    rnd.close()


@pytest.mark.parametrize(
    ("decisive_result", "expect_early"),
    [
        (primary("node1", tl=2), True),  # a promoted standby: stop waiting for the hung primary
        (standby("node1"), False),  # an ordinary standby: wait for the deadline
    ],
)
def test_decisive_result_cuts_the_wait_short(
    probe_round: ProbeRound, decisive_result: ProbeResult, expect_early: bool
) -> None:
    hung: Future[ProbeResult] = Future()  # never completes: a stopped server
    started = time.monotonic()
    probe_round._wait(
        [hung, _done(decisive_result)],
        started + 0.6,
        lambda r: r.writable and r.node == "node1",
    )
    elapsed = time.monotonic() - started
    if expect_early:
        assert elapsed < 0.3
    else:
        assert elapsed >= 0.55
    assert not hung.done()


def test_wait_returns_when_everything_answered(probe_round: ProbeRound) -> None:
    started = time.monotonic()
    probe_round._wait([_done(standby("node0")), _done(standby("node1"))], started + 5, None)
    assert time.monotonic() - started < 0.5


def test_an_answer_that_arrives_between_rounds_is_reported(
    probe_round: ProbeRound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node answering slower than the monitor's patience still gets its results."""
    first_answer, later_answers = threading.Event(), threading.Event()
    calls: list[int] = []

    def slow_probe(_wait: float | None = None) -> ProbeResult:
        calls.append(1)
        (first_answer if len(calls) == 1 else later_answers).wait(10)
        return standby("node0")

    monkeypatch.setattr(probe_round._probers["node0"], "probe", slow_probe)
    monkeypatch.setattr(
        probe_round._probers["node1"], "probe", lambda _wait=None: standby("node1")
    )
    try:
        first = probe_round.run(patience=0.05)
        assert "node0" not in first  # no news yet: still within the timeout
        assert first["node1"].ok
        first_answer.set()
        deadline = time.monotonic() + 5
        while "node0" in probe_round.pending():
            assert time.monotonic() < deadline, "the first probe never finished"
            time.sleep(0.01)
        second = probe_round.run(patience=0.05)  # its own probe of node0 hangs
        assert second["node0"].ok
        assert len(calls) == 2
        third = probe_round.run(patience=0.05)
        assert "node0" not in third  # that answer is not reported twice
    finally:
        later_answers.set()


def test_a_full_round_waits_for_a_probe_still_running_from_an_earlier_round(
    probe_round: ProbeRound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The re-probe before a promotion must not call a standby that is merely slow
    (its probe begun a round earlier, answering 0.15 s later) unreachable."""
    answer = threading.Event()

    def slow_probe(_wait: float | None = None) -> ProbeResult:
        answer.wait(10)
        return standby("node1")

    monkeypatch.setattr(
        probe_round._probers["node0"], "probe", lambda _wait=None: primary("node0")
    )
    monkeypatch.setattr(probe_round._probers["node1"], "probe", slow_probe)
    try:
        first = probe_round.run(patience=0.05)
        assert "node1" not in first  # still running: no news
        timer = threading.Timer(0.15, answer.set)
        timer.start()
        full = probe_round.run()  # no patience: every node gets a result
        timer.join()
        assert full["node1"].ok, full["node1"]
    finally:
        answer.set()


def test_a_held_round_leaves_a_session_still_opening_as_no_news_until_the_hold(
    probe_round: ProbeRound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node's hold (a follower that just fell back): a probe older than the timeout but
    younger than the hold it was started with is no news, in any later round; older
    than that, it fails. The prober is given the hold to open its session in."""
    answer = threading.Event()
    waits: list[float | None] = []

    def slow_probe(wait: float | None = None) -> ProbeResult:
        waits.append(wait)
        answer.wait(10)
        return primary("node0")

    monkeypatch.setattr(probe_round._probers["node0"], "probe", slow_probe)
    monkeypatch.setattr(
        probe_round._probers["node1"], "probe", lambda _wait=None: standby("node1")
    )
    try:
        first = probe_round.run(patience=0.05, holds={"node0": 1.5})
        assert "node0" not in first
        assert waits == [1.5]

        def aged(seconds: float) -> None:  # the straggler's probe began this long ago
            future, _ = probe_round._busy["node0"]
            probe_round._busy["node0"] = (future, time.monotonic() - seconds)

        aged(1.0)  # past the timeout (0.6 s), within the hold
        assert "node0" not in probe_round.run(patience=0.05, holds={"node0": 1.5})
        assert "node0" not in probe_round.run(patience=0.05)  # the probe's own hold counts
        aged(2.0)  # past the hold
        assert not probe_round.run(patience=0.05)["node0"].ok
    finally:
        answer.set()


class _RecordedRounds:
    """Stands in for a ProbeRound: records each run's holds, answers nothing."""

    def __init__(self) -> None:
        self.holds: list[object] = []

    def run(self, timeout: float | None = None, **kwargs: object) -> dict[str, ProbeResult]:
        self.holds.append(kwargs.get("holds"))
        return {}

    def pending(self) -> frozenset[str]:
        return frozenset()

    def release(self, names: object) -> None:
        return None


def test_rounds_hold_every_node_after_a_fallback_and_a_node_given_up_always() -> None:
    config = FailoverConfig(health_check_interval=0.5, fast_interval=0.05, unhealthy_threshold=3)
    view = ClusterView("app", initial_snapshot(NODES, 0.0), 1.0)
    rounds = Rounds(NODES, config, view, Counters(), lambda _d: None)
    recorded = _RecordedRounds()
    rounds._probes = recorded  # type: ignore[assignment]
    every = {"node0": 1.5, "node1": 1.5, "node2": 1.5}
    rounds.monitor_round()  # a manager that never followed a source
    rounds.following = True
    rounds.stop_following()  # its source went away
    rounds.monitor_round()
    rounds.monitor_round(full=True)  # check_health(): a verdict for every node, as ever
    rounds._fell_back_at -= 1.6  # the window (3 x 0.5 s) has passed
    rounds.monitor_round()
    rounds.stop_following()  # not following: nothing to fall back from
    rounds.monitor_round()
    lost, _ = run([healthy_round(), *[[down("node1"), primary("node0"), standby("node2")]] * 3])
    view.publish(lost, time.time())  # node1 given up
    rounds.monitor_round()
    assert recorded.holds == [{}, every, None, {}, {}, {"node1": 1.5}]


class _Answers(_RecordedRounds):
    """Stands in for a ProbeRound: answers the given results."""

    def __init__(self, results: dict[str, ProbeResult]) -> None:
        super().__init__()
        self.results = results

    def run(self, timeout: float | None = None, **kwargs: object) -> dict[str, ProbeResult]:
        super().run(timeout, **kwargs)
        return dict(self.results)


AGO, LATER = -1.0, 1.0  # a probe begun before the statement, or after it
REFUSED = "connection refused"


@pytest.mark.parametrize(
    ("result", "served", "failures"),
    [
        pytest.param(
            ProbeResult("node0", False, AGO, 1.0, error="timeout", opening=True),
            True,
            0,
            id="opening a session failed, a statement served after it began: no news",
        ),
        pytest.param(
            ProbeResult("node0", False, LATER, 1.0, error="timeout", opening=True),
            True,
            1,
            id="the statement served before the probe began: a failure",
        ),
        pytest.param(
            ProbeResult("node0", False, AGO, 1.0, error="timeout", opening=True),
            False,
            1,
            id="no statement served: a failure",
        ),
        pytest.param(
            ProbeResult("node0", False, AGO, 1.0, error="timed out on its session"),
            True,
            1,
            id="a probe of an open session failed (a hang): a failure",
        ),
        pytest.param(
            ProbeResult("node0", False, AGO, 0.01, error=REFUSED, opening=True),
            False,
            1,
            id="refused with no statement served: a failure",
        ),
    ],
)
def test_a_probe_that_cannot_open_a_session_where_statements_succeed_is_no_news(
    result: ProbeResult, served: bool, failures: int
) -> None:
    view = ClusterView("app", initial_snapshot(NODES, 0.0), 1.0)
    counters = Counters()
    rounds = Rounds(NODES, FailoverConfig(), view, counters, lambda _d: None)
    rounds._probes = _Answers({"node0": primary("node0"), "node1": standby("node1")})  # type: ignore[assignment]
    rounds.advance()
    rounds.advance()  # node0 is the primary, up, with no failure
    now = time.monotonic()
    if served:
        counters.query("node0", "write", "ok")
    probe = replace(result, started=now + result.started)
    rounds._probes = _Answers({"node0": probe, "node1": standby("node1")})  # type: ignore[assignment]
    rounds.advance()
    node0 = next(n for n in view.snapshot.nodes if n.name == "node0")
    assert node0.consecutive_failures == failures
    assert view.snapshot.primary == "node0"


class _Owner:
    def __init__(self, error: Exception) -> None:
        self.error = error
        self.rounds = 0

    def monitor_round(self) -> bool:
        self.rounds += 1
        raise self.error


@pytest.mark.parametrize(
    ("error", "stops"),
    [
        (RuntimeError("cannot schedule new futures after interpreter shutdown"), True),
        (RuntimeError("something else"), False),
        (ValueError("a bug"), False),
    ],
    ids=["interpreter-exiting", "other-runtime-error", "other-error"],
)
def test_the_monitor_stops_quietly_only_when_the_interpreter_is_exiting(
    error: Exception, stops: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A process that exits without closing its manager: concurrent.futures refuses
    the next round's probes before atexit runs; that is no failure to log at exit."""
    owner = _Owner(error)
    monitor = Monitor(owner, interval=0.01, fast_interval=0.01)
    with caplog.at_level(logging.ERROR, logger="pgfailover.monitor"):
        monitor.start()
        deadline = time.monotonic() + 5
        while owner.rounds < 3 and monitor.running and time.monotonic() < deadline:
            time.sleep(0.01)
        if stops:
            monitor._thread.join(5)
        running = monitor.running
        monitor.stop(5)
    assert running is not stops
    assert owner.rounds == 1 if stops else owner.rounds >= 3
    assert ("monitor round failed" in caplog.text) is not stops
