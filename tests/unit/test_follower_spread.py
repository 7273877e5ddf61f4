"""When a follower whose stream broke probes: not all at once, not while another source answers.

Real :class:`StreamServer` arbiters on loopback, real :class:`Follower` and
:class:`ArbiterSource`, over real :class:`Rounds` (their probes never open).
What must hold:

- a follower of two arbiters whose arbiter dies, or hangs (three
  heartbeats of silence), moves to the other and never probes (no
  fallback, no probe round asked for);
- when no other source gives it a snapshot, it probes within ``silence``
  of the break, not before the other source had its chance;
- the followers of one dead arbiter probe at their own random moments
  within half of ``silence`` (at most ``SPREAD``), not in the same instant;
- a silence spends the allowance: the follower probes at once.

Every wait polls against a deadline.
"""

from __future__ import annotations

import random
import socket
import threading
import time

import pytest

from pgfailover.stream import StreamServer
from pgfailover.topology.arbiter import ArbiterSource
from pgfailover.topology.follower import SPREAD, Follower

from .followdoubles import HEALTHY, Arbiter, Owner, wait_for

pytestmark = pytest.mark.timeout(60)


def _follower(urls: list[str], owner: Owner, silence: float, seed: int = 0) -> Follower:
    source = ArbiterSource(urls, "app", connect_timeout=1.0, silence=silence)
    follower = Follower(source, owner, name="app", rng=random.Random(seed))  # noqa: S311
    follower.start()
    return follower


@pytest.mark.parametrize("fault", ["dies", "hangs"])
def test_a_follower_of_two_arbiters_moves_to_the_other_and_never_probes(fault: str) -> None:
    """The first arbiter dies (its stream ends) or hangs (its rounds stall, so its
    heartbeats stop: three missed are enough to go, the 2 s allowance far from spent)."""
    first = Arbiter(interval=5.0 if fault == "dies" else 0.05)  # 0.05: beats stop at 0.15 s
    second = Arbiter(interval=5.0)
    first.publish(HEALTHY)
    second.publish(HEALTHY)
    owner = Owner()
    with StreamServer(first) as one, StreamServer(second) as two:  # type: ignore[arg-type]
        follower = _follower([one.url, two.url], owner, silence=2.0)
        try:
            assert follower.wait_first(5.0)
            assert follower.status()["following"] == one.url
            broke = time.monotonic()
            if fault == "dies":
                one.close()
            wait_for(lambda: follower.status()["following"] == two.url, what="the other one")
            assert time.monotonic() - broke < 1.5  # not the 2 s allowance
            assert follower.mode == "following"
            assert follower.status()["fallbacks"] == 0
            assert owner.probed_again == 0
            assert owner.rounds.following
        finally:
            follower.close()


def test_with_no_other_source_answering_the_follower_probes_after_the_silence() -> None:
    """The other URL accepts the connection and says nothing (a hung arbiter)."""
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)  # never accepted: connects, then silence
    arb = Arbiter(interval=5.0)
    arb.publish(HEALTHY)
    owner = Owner()
    try:
        with StreamServer(arb) as server:  # type: ignore[arg-type]
            mute = f"http://127.0.0.1:{hung.getsockname()[1]}"
            follower = _follower([server.url, mute], owner, silence=0.8)
            try:
                assert follower.wait_first(5.0)
                # The stream may break as soon as close() begins, which may take a while
                # on a busy machine: the bounds are taken on each side of it.
                before = time.monotonic()
                server.close()
                after = time.monotonic()
                wait_for(lambda: follower.mode == "probing", what="the fall back")
                fell = time.monotonic()
                assert fell - before > 0.6, (before, after, fell)  # the other had its chance
                assert fell - after < 1.6, (before, after, fell)  # then no longer
                assert follower.status()["fallbacks"] == 1
                assert owner.probed_again == 1
            finally:
                follower.close()
    finally:
        hung.close()


def test_the_followers_of_a_dead_arbiter_probe_at_their_own_moments() -> None:
    silence = 1.0
    spread = min(silence / 2, SPREAD)
    arb = Arbiter(interval=5.0)
    arb.publish(HEALTHY)
    owners = [Owner() for _ in range(8)]
    server = StreamServer(arb)  # type: ignore[arg-type]
    followers = [_follower([server.url], o, silence, seed=i) for i, o in enumerate(owners)]
    fell: dict[int, float] = {}
    graced: set[int] = set()  # seen still following, its status saying it will probe
    lock = threading.Lock()
    try:
        for follower in followers:
            assert follower.wait_first(5.0)
        # Each follower's delay is its generator's first draw.
        drawn = [random.Random(i).uniform(0.0, spread) for i in range(len(followers))]  # noqa: S311
        server.close()
        broke = time.monotonic()

        def all_fell() -> bool:
            now = time.monotonic()
            with lock:
                for i, follower in enumerate(followers):
                    status = follower.status()
                    announced = "probing in" in (status["reason"] or "")
                    if status["mode"] == "probing" and i not in fell:
                        fell[i] = now - broke
                    elif status["mode"] == "following" and announced:
                        graced.add(i)
                return len(fell) == len(followers)

        wait_for(all_fell, timeout=5.0, what="every follower to probe")
        assert max(fell.values()) < spread + 0.5, fell
        # Spread out as drawn: the first and the last fall back apart.
        first, last = drawn.index(min(drawn)), drawn.index(max(drawn))
        assert fell[last] - fell[first] > (drawn[last] - drawn[first]) - 0.15, (fell, drawn)
        assert max(drawn) - min(drawn) > spread / 2  # the seeds spread them: the test can fail
        assert last in graced  # the longest grace was seen: routing on, the fallback announced
        assert all(o.probed_again == 1 for o in owners)
    finally:
        for follower in followers:
            follower.close()
        server.close()


def test_a_silence_spends_the_allowance_and_the_follower_probes_at_once() -> None:
    """An arbiter whose rounds stalled goes silent: no spread is added after it."""
    arb = Arbiter(interval=0.05)  # heartbeats stop 0.15 s after its last snapshot
    arb.publish(HEALTHY)
    owner = Owner()
    with StreamServer(arb) as server:  # type: ignore[arg-type]
        follower = _follower([server.url], owner, silence=0.6, seed=1)
        try:
            assert follower.wait_first(5.0)
            published = time.monotonic()
            wait_for(lambda: follower.mode == "probing", what="the fall back")
            took = time.monotonic() - published
            assert took < 0.6 + 0.15 + 0.3, took  # heartbeats, silence, no spread
            assert "silent for" in follower.status()["reason"]
        finally:
            follower.close()
