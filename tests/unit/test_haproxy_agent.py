"""HAProxy's agent answers, as a table: snapshots in, ``up``/``down`` out.

The answers must agree with the manager's own routing: ``rw`` is up only on
the writable primary outside split brain, ``ro`` only on a standby that
serves reads. Plus the agent itself on loopback: one line in, one out, and
a client that sends nothing or too much gets nothing.
"""

from __future__ import annotations

import socket
from typing import NamedTuple

import pytest

from pgfailover.haproxy import MAX_LINE, AgentServer, agent_answer
from pgfailover.model import Snapshot

from .helpers import down, healthy_round, primary, run, standby

pytestmark = pytest.mark.timeout(30)


def _snap(*rounds: list) -> Snapshot:  # type: ignore[type-arg]
    snap, _ = run(list(rounds))
    return snap


HEALTHY = _snap(healthy_round(), healthy_round(), healthy_round())
PRIMARY_DOWN = _snap(healthy_round(), *[[down("node0"), standby("node1"), standby("node2")]] * 4)
LAGGING = _snap(
    healthy_round(),
    [primary("node0", lsn=10**9), standby("node1", lsn=10**9), standby("node2", lsn=1)],
)
SPLIT = _snap(healthy_round(), [primary("node0"), primary("node1"), standby("node2")])


class Case(NamedTuple):
    id: str
    snap: Snapshot
    line: str
    answer: str  # the answer's first word


CASES = [
    Case("the primary, for writes", HEALTHY, "node0 rw", "up"),
    Case("a standby, for writes", HEALTHY, "node1 rw", "down"),
    Case("a standby, for reads", HEALTHY, "node1 ro", "up"),
    Case("the primary, for reads", HEALTHY, "node0 ro", "down"),
    Case("the primary down, for writes", PRIMARY_DOWN, "node0 rw", "down"),
    Case("no primary: no standby takes writes", PRIMARY_DOWN, "node1 rw", "down"),
    Case("a standby past the lag limit, for reads", LAGGING, "node2 ro", "down"),
    Case("a standby within it, for reads", LAGGING, "node1 ro", "up"),
    Case("split brain: nobody takes writes", SPLIT, "node0 rw", "down"),
    Case("an unknown node", HEALTHY, "node9 rw", "down"),
    Case("an unknown role", HEALTHY, "node0 admin", "down"),
    Case("an empty line", HEALTHY, "", "down"),
    Case("too many words", HEALTHY, "node0 rw extra", "down"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_agent_answers(case: Case) -> None:
    answer = agent_answer(case.snap, case.line)
    assert answer.split()[0] == case.answer, answer
    assert "\n" not in answer
    if case.answer == "up":
        assert answer == "up"


def test_the_answers_agree_with_routing() -> None:
    for snap in (HEALTHY, PRIMARY_DOWN, LAGGING, SPLIT):
        for node in snap.nodes:
            reads = agent_answer(snap, f"{node.name} ro") == "up"
            assert reads == node.serves_reads
            writes = agent_answer(snap, f"{node.name} rw") == "up"
            primary_node = snap.writable_primary
            assert writes == (
                not snap.split_brain
                and primary_node is not None
                and primary_node.name == node.name
            )


def _ask(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        raw = b""
        while chunk := sock.recv(1024):
            raw += chunk
    return raw


def test_the_agent_on_loopback_answers_one_line_and_ignores_garbage() -> None:
    with AgentServer(lambda: HEALTHY, "127.0.0.1", 0) as agent:
        assert _ask(agent.port, b"node0 rw\n") == b"up\n"
        assert _ask(agent.port, b"node1 rw\n").startswith(b"down")
        assert _ask(agent.port, b"x" * (MAX_LINE * 4) + b"\n") == b""
        assert _ask(agent.port, b"\xff\xfe\n").startswith(b"down")
        assert _ask(agent.port, b"").startswith(b"down")
