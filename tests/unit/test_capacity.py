"""A server that refuses new sessions for lack of slots is alive: tables of cases.

The probe's message classification (SQLSTATE 53300, which libpq gives as
text only, in the server's language: checked against PostgreSQL's own message
catalogs on this machine) and what a refused probe does to a node's state.
"""

from __future__ import annotations

import gettext
import glob

import pytest

from pgfailover.config import FailoverConfig
from pgfailover.model import NodeState, Role
from pgfailover.probe import ProbeResult, refused_for_capacity

from .helpers import FULL, down, full, healthy_round, primary, run, standby

AT = 'connection failed: connection to server at "127.0.0.1", port 5432 failed: FATAL:  '


@pytest.mark.parametrize(
    ("message", "busy"),
    [
        (AT + "sorry, too many clients already", True),
        (
            AT
            + "remaining connection slots are reserved for non-replication superuser connections",
            True,
        ),
        (
            AT + "remaining connection slots are reserved for roles with the SUPERUSER attribute",
            True,
        ),
        (AT + 'too many connections for role "app"', True),
        (AT + 'too many connections for database "shop"', True),
        (AT + "the database system is shutting down", False),
        (AT + "the database system is starting up", False),
        (AT + "the database system is in recovery mode", False),
        (AT + 'password authentication failed for user "app"', False),
        (AT[: AT.index("FATAL")] + "Connection refused", False),
        ("connection timeout expired", False),
        ("terminating connection due to administrator command", False),
        (AT + "lo siento, ya tenemos demasiados clientes", True),  # lc_messages = es
        (AT + "la base de datos «shop» no existe", False),
        ("", False),
    ],
)
def test_which_refusals_say_the_server_is_full(message: str, busy: bool) -> None:
    assert refused_for_capacity(message) is busy


# What the server says in each language it was installed with (its message catalogs):
# the four refusals for lack of slots must read as a full server, and these others,
# said at connection start too, must not.
FULL_IDS = (
    "sorry, too many clients already",
    'too many connections for role "%s"',
    'too many connections for database "%s"',
    "remaining connection slots are reserved for non-replication superuser connections",
)
OTHER_IDS = (
    "the database system is shutting down",
    "the database system is starting up",
    "the database system is in recovery mode",
    'password authentication failed for user "%s"',
    'database "%s" does not exist',
    'role "%s" does not exist',
    "terminating connection due to administrator command",
    'no pg_hba.conf entry for host "%s", user "%s", database "%s", %s',
)
CATALOGS = sorted(
    glob.glob("/usr/share/locale/*/LC_MESSAGES/postgres-*.mo")
    + glob.glob("/usr/share/postgresql/*/locale/*/LC_MESSAGES/postgres-*.mo")
)


@pytest.mark.skipif(not CATALOGS, reason="no PostgreSQL message catalogs on this machine")
@pytest.mark.parametrize("catalog", CATALOGS, ids=[c.split("/")[-3] for c in CATALOGS])
def test_a_full_server_is_recognized_in_its_own_language(catalog: str) -> None:
    with open(catalog, "rb") as data:
        said = gettext.GNUTranslations(data)
    translated = [said.gettext(m) for m in FULL_IDS if said.gettext(m) != m]
    assert translated, f"{catalog} translates none of the refusals"
    for message in translated:
        assert refused_for_capacity(AT + message.replace("%s", "app")), message
    for other in OTHER_IDS:
        message = said.gettext(other).replace("%s", "x")
        assert not refused_for_capacity(AT + message), message


def _node(rounds: list[list[ProbeResult]], name: str = "node0") -> NodeState:
    snap, _ = run(rounds)
    return next(n for n in snap.nodes if n.name == name)


def test_a_full_node_shows_the_refusal_and_clears_it_when_it_answers() -> None:
    refused = _node([healthy_round(), [full("node0"), standby("node1"), standby("node2")]])
    assert (refused.up, refused.healthy, refused.role) == (True, True, Role.PRIMARY)
    assert refused.error == FULL
    assert refused.consecutive_failures == 0
    back = _node(
        [healthy_round(), [full("node0"), standby("node1"), standby("node2")], healthy_round()]
    )
    assert back.error is None


def test_a_full_standby_keeps_its_last_positions_so_its_lag_only_grows() -> None:
    rounds = [
        healthy_round(),
        [primary("node0", lsn=9_000_000), full("node1"), standby("node2", lsn=9_000_000)],
    ]
    snap, _ = run(rounds, FailoverConfig(max_read_lag_bytes=1_000_000))
    node1 = next(n for n in snap.nodes if n.name == "node1")
    assert node1.replay_lsn == 1000
    assert node1.lag_bytes is not None
    assert node1.lag_bytes > 1_000_000


def test_a_refusal_before_the_node_was_ever_seen_is_a_failure() -> None:
    node = _node([[full("node0"), standby("node1"), standby("node2")]])
    assert (node.up, node.consecutive_failures) == (False, 1)


def test_a_down_node_is_not_brought_back_by_a_refusal() -> None:
    node = _node([healthy_round(), *[[down("node0"), standby("node1"), standby("node2")]] * 3,
                  [full("node0"), standby("node1"), standby("node2")]])  # fmt: skip
    assert (node.up, node.healthy, node.consecutive_failures) == (False, False, 4)
