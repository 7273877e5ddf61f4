"""A manager open when its process forks: what the child's copy becomes.

No PostgreSQL: the managers are built over addresses nothing answers on
and never opened; the fork hook is called as the child would call it.
``tests/integration/test_fork.py`` forks a real process over a lab.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from pgfailover import forking
from pgfailover.aio.manager import AsyncFailoverManager
from pgfailover.config import FailoverConfig, Node
from pgfailover.errors import ManagerClosed
from pgfailover.manager import FailoverManager
from pgfailover.model import ClusterState

from .fakes import GateDouble

NODES = [
    Node("node0", "host=10.0.0.1 port=5432 dbname=app"),
    Node("node1", "host=10.0.0.2 port=5432 dbname=app"),
]


class _Recorder:
    def __init__(self, fails: bool = False) -> None:
        self.parents: list[int] = []
        self.fails = fails

    def _after_fork(self, parent: int) -> None:
        self.parents.append(parent)
        if self.fails:
            raise RuntimeError("cannot")


def test_the_hook_renews_each_open_manager_once_and_forgets_closed_ones(
    caplog: pytest.LogCaptureFixture,
) -> None:
    first, broken, closed, last = _Recorder(), _Recorder(fails=True), _Recorder(), _Recorder()
    for m in (first, broken, closed, last):
        forking.watch(m)
    forking.unwatch(closed)
    with caplog.at_level(logging.ERROR, logger="pgfailover.forking"):
        forking._in_child()
    assert len(first.parents) == len(broken.parents) == len(last.parents) == 1
    assert closed.parents == []
    assert "renewing a manager after fork failed" in caplog.text  # and the others went on
    forking._in_child()  # a grandchild: nothing was open in the child
    assert len(first.parents) == 1


def test_a_forked_manager_gets_new_parts_and_keeps_its_callbacks_and_strategy() -> None:
    mgr = FailoverManager(nodes=NODES, config=FailoverConfig(read_strategy="least_connections"))
    states: list[ClusterState] = []
    heard: list[int] = []
    mgr.on_state_change(lambda _old, new, _snap: states.append(new))
    dropped = mgr.listen(lambda: heard.append(0))
    kept = mgr.listen(lambda: heard.append(1))
    mgr.unlisten(dropped)
    mgr.read_strategy = "priority"
    mgr._sup.actions.maintenance.pause("upgrade")  # an auto manager paused before the fork
    since = mgr._sup.actions.maintenance.paused_since
    old = (mgr._pools, mgr._sup, mgr._executor, mgr._view)
    try:
        mgr._after_fork(4242)
        assert all(
            new is not was
            for new, was in zip((mgr._pools, mgr._sup, mgr._executor, mgr._view), old, strict=True)
        )
        assert mgr.counters is mgr._sup.counters
        assert mgr.events is mgr._sup.events
        assert any(part is old[1] for parts in forking._graveyard for part in parts)
        assert mgr._forked
        assert not mgr._opened
        assert not mgr.closed
        assert mgr in forking._open  # a grandchild forked before its first use renews it
        # Still paused: a child must not promote in the middle of announced work.
        assert since is not None
        assert mgr._sup.actions.maintenance.paused_since == since
        # The callback registered before the fork is called by the new parts.
        mgr._sup.callbacks.emit("state_change", ClusterState.UNKNOWN, ClusterState.HEALTHY, None)
        assert states == [ClusterState.HEALTHY]
        mgr._view.publish(mgr._view.snapshot, 0.0)
        assert heard == [1]
        assert kept in mgr._listeners
        # The strategy set by name is made again, over the new pools.
        assert type(mgr.read_strategy).__name__ == type(old[2].strategy).__name__
        assert mgr.read_strategy is not old[2].strategy
    finally:
        mgr.close(timeout=1.0)


@pytest.mark.parametrize(
    ("build", "why"),
    [
        (
            lambda: AsyncFailoverManager(nodes=NODES),
            "an asyncio manager's pools belong to the parent's event loop",
        ),
        (
            lambda: FailoverManager(
                nodes=NODES, config=FailoverConfig(promotion="auto"), promotion_gate=_Gate()
            ),
            "an arbiter holding a lease in etcd is not carried over a fork",
        ),
    ],
    ids=["asyncio", "lease"],
)
def test_a_manager_that_cannot_follow_a_fork_refuses_use_saying_why(
    build: Any, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    mgr = build()
    with caplog.at_level(logging.WARNING):
        mgr._after_fork(4242)
        assert mgr.closed
        assert caplog.text == ""  # said on use: a forked worker that never uses it is quiet
        for _ in range(3):
            with pytest.raises(ManagerClosed) as refused:
                mgr._check_open()
    message = str(refused.value)
    assert why in message
    assert "process 4242" in message
    assert caplog.text.count(message) == 1  # logged once, raised every time
    assert mgr not in forking._open  # nothing to renew in a grandchild


class _Gate(GateDouble):
    identity = "arbiter-a"


class _Interrupt(BaseException):
    """What a signal handler raises (Celery's soft time limit)."""


def test_a_first_use_that_fails_in_a_forked_child_is_tried_again_on_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mgr = FailoverManager(nodes=NODES)
    mgr._after_fork(4242)

    def interrupted() -> None:
        raise _Interrupt

    def failing() -> None:
        raise RuntimeError("cannot open")

    first = mgr._pools
    monkeypatch.setattr(first, "open", interrupted)
    with pytest.raises(_Interrupt):
        mgr._check_open()
    # Not closed for good: new parts, still to open, renewed in a grandchild too.
    assert not mgr.closed
    assert mgr._forked
    assert mgr._pools is not first
    assert mgr in forking._open
    monkeypatch.setattr(mgr._pools, "open", failing)
    with pytest.raises(RuntimeError, match="cannot open"):  # it tried again
        mgr._check_open()
    assert not mgr.closed
    mgr.close(timeout=1.0)  # the application's close is for good
    with pytest.raises(ManagerClosed, match="is closed"):
        mgr._check_open()
    assert mgr not in forking._open
