"""Circuit breakers as tables: each step's phase, counts and cooldown; then the executor.

A case is a sequence of steps on one breaker, each with the phase (and
details) it must leave: ``fail`` (a read connection failure), ``ok`` (a read
succeeded), ``admit`` / ``refuse`` (a request let through or not), at a
given time. The jitter draw is fixed, so cooldowns are exact.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Sequence
from typing import cast

import psycopg
import pytest
from psycopg import errors as pgerrors

from pgfailover.breaker import (
    JITTER,
    Breaker,
    BreakerPhase,
    BreakerPolicy,
    Breakers,
    admit,
    failed,
    released,
    routable,
    stale,
    succeeded,
)
from pgfailover.errors import ManagerClosed
from pgfailover.model import NodeState

from .executors import KINDS, Harness, Kind
from .fakes import FakeConn
from .helpers import down, healthy_round, primary, run, standby

pytestmark = pytest.mark.timeout(10)

POLICY = BreakerPolicy(failures=3, successes=2, cooldown=1.0, max_cooldown=4.0, trial_timeout=10.0)
SLOW = BreakerPolicy(failures=3, successes=2, cooldown=600.0, max_cooldown=600.0)
DRAW = 0.5  # jitter: a cooldown is (1 - 0.2 * 0.5) = 0.9 of its base
C, OP, H = BreakerPhase.CLOSED, BreakerPhase.OPEN, BreakerPhase.HALF_OPEN

Step = tuple[str, float, BreakerPhase]


def play(steps: list[Step], policy: BreakerPolicy = POLICY) -> list[Breaker]:
    """Run the steps; the breaker after each one.

    ``admit``/``refuse``: a request asks (and must be let through or not);
    ``ok``: the last request let through succeeded; ``ok-other``: a request
    that is not the trial succeeded (it began before the breaker opened);
    ``release``: the last request let through ended saying nothing.
    """
    b = Breaker()
    seen = []
    token = 0
    for number, (action, now, _phase) in enumerate(steps, 1):
        if action == "fail":
            b = failed(b, policy, now, f"error at {now}", DRAW)
        elif action == "ok":
            b = succeeded(b, policy, now, token)
        elif action == "ok-other":
            b = succeeded(b, policy, now, 0)
        elif action == "release":
            b = released(b, token)
        else:
            allowed, b = admit(b, policy, now, number)
            assert allowed is (action == "admit"), f"{action} at {now}"
            token = number if allowed else token
        seen.append(b)
    return seen


CASES: list[tuple[str, list[Step]]] = [
    (
        "fewer failures than the threshold stay closed; a success resets the count",
        [("fail", 0, C), ("fail", 1, C), ("ok", 2, C), ("fail", 3, C), ("fail", 4, C)],
    ),
    (
        "N failures in a row open it; no request goes through before the cooldown",
        [
            ("fail", 0, C),
            ("fail", 0, C),
            ("fail", 0, OP),
            ("refuse", 0.5, OP),
            ("refuse", 0.89, OP),
        ],
    ),
    (
        "after the cooldown one trial goes, a second waits; M successes close it",
        [
            *[("fail", 0, C)] * 2,
            ("fail", 0, OP),
            ("admit", 0.9, H),
            ("refuse", 0.95, H),
            ("ok", 1.0, H),
            ("admit", 1.1, H),
            ("ok", 1.2, C),
            ("admit", 1.3, C),
        ],
    ),
    (
        "a failed trial reopens with the cooldown doubled, then capped",
        [
            *[("fail", 0, C)] * 2,
            ("fail", 0, OP),  # cooldown 1 * 0.9
            ("admit", 0.9, H),
            ("fail", 1.0, OP),  # 2 * 0.9 -> retry at 2.8
            ("refuse", 2.7, OP),
            ("admit", 2.8, H),
            ("fail", 3.0, OP),  # 4 * 0.9 -> 6.6
            ("admit", 6.6, H),
            ("fail", 7.0, OP),  # capped: 4 * 0.9 -> 10.6
            ("refuse", 10.5, OP),
            ("admit", 10.6, H),
        ],
    ),
    (
        "a trial that never reports back frees the slot after trial_timeout",
        [
            *[("fail", 0, C)] * 2,
            ("fail", 0, OP),
            ("admit", 1, H),
            ("refuse", 10.9, H),
            ("admit", 11, H),
        ],
    ),
    (
        "while half-open only the trial's success counts",
        [
            *[("fail", 0, C)] * 2,
            ("fail", 0, OP),
            ("admit", 1, H),
            ("ok-other", 1.1, H),
            ("ok-other", 1.2, H),
            ("refuse", 1.3, H),
            ("ok", 1.4, H),
            ("admit", 1.5, H),
            ("ok", 1.6, C),
        ],
    ),
    (
        "a trial that ends saying nothing lets the next one try",
        [
            *[("fail", 0, C)] * 2,
            ("fail", 0, OP),
            ("admit", 1, H),
            ("release", 1.1, H),
            ("admit", 1.2, H),
        ],
    ),
    (
        "results of requests in flight when it opened change nothing",
        [
            *[("fail", 0, C)] * 2,
            ("fail", 0, OP),
            ("ok", 0.1, OP),
            ("fail", 0.2, OP),
            ("refuse", 0.5, OP),
        ],
    ),
]


@pytest.mark.parametrize("steps", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_breaker_steps(steps: list[Step]) -> None:
    seen = play(steps)
    assert [b.phase for b in seen] == [phase for _, _, phase in steps]


def test_cooldowns_and_counts() -> None:
    seen = play(CASES[3][1])
    opened = [b for b in seen if b.phase is OP and b.retry_at is not None]
    assert sorted({round(cast(float, b.retry_at), 6) for b in opened}) == [0.9, 2.8, 6.6, 10.6]
    assert seen[-1].opened_total == 4
    assert seen[-1].opens == 4
    closed = play(CASES[2][1])[-1]
    assert closed.opens == 0
    assert closed.failures == 0
    assert closed.opened_total == 1


@pytest.mark.parametrize(
    ("opens", "draw", "expected"),
    [(1, 0.0, 1.0), (1, 0.999, 1.0 - JITTER * 0.999), (2, 0.0, 2.0), (3, 0.0, 4.0), (9, 0.0, 4.0)],
)
def test_cooldown_backoff_and_jitter(opens: int, draw: float, expected: float) -> None:
    assert POLICY.cooldown_for(opens, draw) == pytest.approx(expected)


def test_zero_failures_turns_breakers_off() -> None:
    off = BreakerPolicy(failures=0)
    b = Breaker()
    for now in range(50):
        b = failed(b, off, now, "x", 0.0)
    assert b.phase is C
    assert b.failures == 0
    assert routable(b, off, 100)


def test_breakers_track_only_what_is_not_clean() -> None:
    breakers = Breakers(["a", "b"], POLICY, rng=random.Random(3))  # noqa: S311 - jitter
    breakers.failure("a", "refused", healthy=False, now=0)  # probe failing: not the breaker's
    assert breakers.state("a").failures == 0
    for _ in range(3):
        breakers.failure("a", "too many clients", healthy=True, now=0)
    assert breakers.tripped == {"a"}
    assert breakers.arrange(["a", "b"], 0.1) == ["b"]
    retry = cast(float, breakers.state("a").retry_at)
    assert 1.0 - JITTER <= retry <= 1.0
    assert breakers.arrange(["b", "a"], retry) == ["a", "b"]  # a trial is due: it goes first
    assert breakers.report(retry)["a"]["state"] == "half_open"  # due: shown half-open
    allowed, token = breakers.admit("a", retry)
    assert allowed
    assert token > 0
    assert breakers.admit("a", retry) == (False, 0)
    assert breakers.arrange(["a"], retry) == ["a"]  # held out, but the only node: kept
    assert breakers.state("a").phase is H
    breakers.success("a", retry + 0.1, token)
    _, second = breakers.admit("a", retry + 0.2)
    breakers.success("a", retry + 0.2, 0)  # not the trial: does not count
    assert breakers.state("a").phase is H
    breakers.success("a", retry + 0.3, second)
    assert breakers.tripped == frozenset()
    assert breakers.state("a").phase is C
    report = breakers.report(retry)
    assert report["a"]["state"] == "closed"
    assert report["a"]["opened_total"] == 1


class ByName:
    def order(self, candidates: Sequence[NodeState]) -> list[NodeState]:
        return sorted(candidates, key=lambda n: n.name)


@pytest.mark.parametrize("kind", KINDS)
def test_failing_reads_open_the_breaker_and_reads_go_elsewhere(kind: Kind) -> None:
    """node1's connections fail while its probe passes: after 3 failed reads it is held
    out and reads go to node2 without touching node1; when every node is held out, reads
    still go somewhere (in order) rather than fail."""
    lost = psycopg.OperationalError("consuming input failed: server closed the connection")
    script: dict[str, list[FakeConn | str]] = {
        "node1": [FakeConn("node1", lost) for _ in range(3)]
    }
    h = Harness(script, breaker=SLOW, kind=kind, strategy=ByName())
    for _ in range(3):
        assert h.read() == [(1,)]
        h.view.publish(h.view.snapshot, probed_since=2e9)  # the probe clears the suspect
    assert h.breakers.state("node1").phase is OP
    assert h.attempts() == ["node1", "node2"] * 3
    before = len(h.attempts())
    assert h.read() == [(1,)]
    assert h.attempts()[before:] == ["node2"]
    status = h.breakers.report(0.0)["node1"]
    assert status["state"] == "open"
    assert "server closed" in status["last_error"]
    for node in ("node0", "node2"):
        for _ in range(3):
            h.breakers.failure(node, "x", healthy=True, now=time.monotonic())
    before = len(h.attempts())
    assert h.read() == [(1,)]  # all held out: tried anyway
    assert h.attempts()[before:] == ["node1"]
    assert h.breakers.state("node1").phase is OP  # a success outside a trial


@pytest.mark.parametrize("kind", KINDS)
def test_a_pool_full_of_the_applications_own_connections_is_not_a_node_failure(
    kind: Kind,
) -> None:
    h = Harness({"node1": ["timeout"] * 10}, breaker=SLOW, kind=kind, strategy=ByName())
    h.pools.saturated = lambda node: node == "node1"  # type: ignore[method-assign]
    for _ in range(5):
        assert h.read() == [(1,)]
        h.view.publish(h.view.snapshot, probed_since=2e9)
    assert h.breakers.state("node1").failures == 0


@pytest.mark.parametrize(
    ("raised", "closes"),
    [
        (None, True),  # the trial succeeded
        (
            pgerrors.ReadOnlySqlTransaction("cannot execute INSERT in a read-only transaction"),
            True,
        ),
        (ValueError("the application's own"), False),  # says nothing: released, not counted
    ],
    ids=["ok", "server error: the node answered", "application exception"],
)
@pytest.mark.parametrize("kind", KINDS)
def test_a_get_client_trial_reports_back_however_it_ends(
    raised: Exception | None, closes: bool, kind: Kind
) -> None:
    policy = BreakerPolicy(failures=1, successes=1, cooldown=0.001)
    h = Harness({}, breaker=policy, kind=kind, strategy=ByName())
    breakers = h.breakers
    breakers.failure("node1", "x", healthy=True, now=time.monotonic() - 1)
    assert breakers.state("node1").phase is OP  # due a trial already
    expected: list[type[BaseException]] = [] if raised is None else [type(raised)]
    with contextlib.suppress(*expected):
        h.block(readonly=True, sql="SELECT 1", fail=raised)
    assert h.attempts() == ["node1"]
    state = breakers.state("node1")
    assert (state.phase is C) is closes
    if not closes:
        assert state.phase is H
        assert state.trial == 0  # released: the next request may be the trial


@pytest.mark.parametrize("kind", KINDS)
def test_a_trial_refused_by_a_closing_manager_is_released(kind: Kind) -> None:
    policy = BreakerPolicy(failures=1, successes=1, cooldown=0.001)
    h = Harness({}, breaker=policy, kind=kind, strategy=ByName())
    h.breakers.failure("node1", "x", healthy=True, now=time.monotonic() - 1)

    def closed(node: str, timeout: float) -> FakeConn:
        raise ManagerClosed("manager test is closed")

    h.pools.checkout = closed  # type: ignore[method-assign]
    with pytest.raises(ManagerClosed):
        h.read()
    state = h.breakers.state("node1")
    assert state.phase is H  # the read was the trial...
    assert state.trial == 0  # ...and is released, not held until it times out


def test_sync_resets_unhealthy_and_stale_breakers() -> None:
    snap = run([healthy_round()] * 3)[0]
    breakers = Breakers([n.name for n in snap.nodes], POLICY, rng=random.Random(2))  # noqa: S311
    for node in ("node1", "node2"):
        for _ in range(3):
            breakers.failure(node, "x", healthy=True, now=0.0)
    retry = cast(float, breakers.state("node2").retry_at)
    assert not stale(breakers.state("node2"), POLICY, retry + POLICY.max_cooldown - 0.01)
    breakers.sync(snap, retry + 1.0)
    assert breakers.tripped == {"node1", "node2"}
    lost = run([healthy_round(), *[[primary("node0"), down("node1"), standby("node2")]] * 3])[0]
    breakers.sync(lost, retry + 1.0)  # node1 unhealthy: the thresholds take over
    assert breakers.tripped == {"node2"}
    breakers.sync(lost, retry + POLICY.max_cooldown + 0.01)  # no request since: stale
    assert breakers.tripped == frozenset()
    assert breakers.state("node2").opened_total == 1


def test_status_shows_the_breaker_per_node() -> None:
    from pgfailover import FailoverConfig
    from pgfailover.report import failover_status, render
    from pgfailover.upkeep import UpkeepStatus

    snap = run([healthy_round()] * 3)[0]
    breakers = Breakers([n.name for n in snap.nodes], POLICY, rng=random.Random(1))  # noqa: S311
    for _ in range(3):
        breakers.failure("node2", "FATAL: sorry, too many clients already", healthy=True, now=10.0)
    status = failover_status(
        "app", snap, FailoverConfig(), UpkeepStatus(), breakers=breakers.report(10.5)
    )
    node2 = next(n for n in status["nodes"] if n["name"] == "node2")
    assert node2["breaker"]["state"] == "open"
    assert 0.0 < node2["breaker"]["retry_in_seconds"] <= 0.5
    assert "too many clients" in node2["breaker"]["last_error"]
    table = render(status)
    row = next(line for line in table.splitlines() if line.startswith("node2"))
    assert "BREAKER OPEN (retry in 0." in row
    assert "BREAKER" not in next(line for line in table.splitlines() if line.startswith("node1"))
