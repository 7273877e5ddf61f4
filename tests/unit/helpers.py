"""Builders of probe results and snapshots for the pure-logic tables."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from pgfailover.config import FailoverConfig, Node
from pgfailover.guards import Candidate, Refusal
from pgfailover.model import Decision, Snapshot
from pgfailover.probe import ProbeResult
from pgfailover.transition import initial_snapshot, transition

NODES = [
    Node("node0", "host=10.0.0.1 port=5432", priority=0),
    Node("node1", "host=10.0.0.2 port=5432", priority=1),
    Node("node2", "host=10.0.0.3 port=5432", priority=2),
]
ADDRESS = {"node0": "10.0.0.1", "node1": "10.0.0.2", "node2": "10.0.0.3"}


def primary(
    name: str,
    *,
    tl: int = 1,
    lsn: int = 1000,
    read_only: bool = False,
    streaming: tuple[str, ...] | None = None,
    sync: str = "",
    system_id: str | None = None,
    record: str | None = None,
) -> ProbeResult:
    """A node that answers out of recovery (``streaming``: who streams from it;
    ``record``: the manager's record of ``sync``, as ``pgfailover.sync`` holds it)."""
    return ProbeResult(
        name,
        True,
        0.0,
        0.001,
        in_recovery=False,
        timeline=tl,
        wal_lsn=lsn,
        receiver_visible=True,
        read_only=read_only,
        streaming_names=streaming,
        sync_standby_names=sync,
        system_identifier=system_id,
        receiver_timeout=4.0,
        app_name=name,
        sync_record=record,
    )


def standby(
    name: str,
    *,
    tl: int = 1,
    lsn: int = 1000,
    replay: int | None = None,
    upstream: str | None = "node0",
    visible: bool = True,
    silence: float | None = 0.1,
    receiver_timeout: float | None = 4.0,
    replay_age: float = 0.0,
    system_id: str | None = None,
    end_lsn: int | None = None,
) -> ProbeResult:
    """A node in recovery, streaming from ``upstream`` (None: receiver down).

    ``silence``: seconds since its WAL receiver last heard the upstream;
    ``end_lsn``: the upstream's WAL end as of that message (None: unknown).
    """
    return ProbeResult(
        name,
        True,
        0.0,
        0.001,
        in_recovery=True,
        timeline=tl,
        receive_lsn=lsn,
        replay_lsn=lsn if replay is None else replay,
        replay_age=replay_age,
        receiver_visible=visible,
        receiver_status="streaming" if upstream else None,
        sender_host=ADDRESS[upstream] if upstream else None,
        sender_port=5432 if upstream else None,
        read_only=True,
        receiver_silence=silence if upstream else None,
        upstream_end_lsn=end_lsn,
        receiver_timeout=receiver_timeout,
        app_name=name,
        system_identifier=system_id,
    )


def down(name: str) -> ProbeResult:
    """A node that did not answer."""
    return ProbeResult(name, False, 0.0, 1.0, error="connection refused")


FULL = (
    'connection failed: connection to server at "10.0.0.1", port 5432 failed: '
    "FATAL:  sorry, too many clients already"
)


def full(name: str) -> ProbeResult:
    """A live node that refused the probe's new session: no connection slot free."""
    return ProbeResult(name, False, 0.0, 0.002, error=FULL, busy=True)


def healthy_round() -> list[ProbeResult]:
    return [primary("node0"), standby("node1"), standby("node2")]


def run(
    rounds: Iterable[Sequence[ProbeResult]],
    config: FailoverConfig | None = None,
    *,
    start: Snapshot | None = None,
    t0: float = 1000.0,
    step: float = 0.05,
) -> tuple[Snapshot, list[list[Decision]]]:
    """Feed rounds of probe results through the state machine."""
    cfg = config or FailoverConfig()
    snap = start or initial_snapshot(NODES, t0)
    all_decisions = []
    now = t0
    for results in rounds:
        now += step
        by_node: Mapping[str, ProbeResult] = {r.node: r for r in results}
        snap, decisions = transition(snap, by_node, now, cfg)
        all_decisions.append(decisions)
    return snap, all_decisions


def kinds(decisions: Iterable[Decision]) -> list[str]:
    return [type(d).__name__ for d in decisions]


def assert_choice(choice: Candidate | Refusal, expected: str) -> Refusal | None:
    """``expected`` is a node name (a Candidate) or a guard name (a Refusal, returned)."""
    if expected.startswith("node"):
        assert isinstance(choice, Candidate), choice
        assert choice.node == expected
        return None
    assert isinstance(choice, Refusal), choice
    assert choice.guard == expected
    return choice
