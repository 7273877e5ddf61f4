"""How long a probe round waits: the deadline, the grace for failing nodes, decisive results.

The round's waiting is pure logic over futures; these cases drive it with
futures the test completes itself (no server needed).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import Future

import pytest

from pgfailover.config import Node
from pgfailover.monitor import ProbeRound
from pgfailover.probe import ProbeResult

from .helpers import primary, standby


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
