"""Synchronous replication planning as tables: parse, satisfy, rewrite, plan."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import pytest

from pgfailover.syncrep import (
    SyncRecord,
    SyncSpec,
    format_sync,
    parse_record,
    parse_sync,
    plan_sync,
    rewrite_sync_names,
)

MEMBERS = frozenset({"node1", "node2"})
ATTACH = 5.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("", None, id="empty is async"),
        pytest.param("  ", None, id="blank is async"),
        pytest.param("ANY 1 (a, b)", SyncSpec("ANY", 1, ("a", "b")), id="quorum"),
        pytest.param("FIRST 2 (a,b,c)", SyncSpec("FIRST", 2, ("a", "b", "c")), id="priority"),
        pytest.param("any 1 (a)", SyncSpec("ANY", 1, ("a",)), id="method is case-insensitive"),
        pytest.param("2 (a, b)", SyncSpec("FIRST", 2, ("a", "b")), id="count alone means FIRST"),
        pytest.param("a, b", SyncSpec("FIRST", 1, ("a", "b")), id="old list form is FIRST 1"),
        pytest.param(
            '"Node-1", b', SyncSpec("FIRST", 1, ("Node-1", "b")), id="quoted names are unquoted"
        ),
        pytest.param(
            'FIRST 1 ("say ""hi""")',
            SyncSpec("FIRST", 1, ('say "hi"',)),
            id="doubled quotes inside a quoted name",
        ),
        pytest.param("*", SyncSpec("FIRST", 1, ("*",)), id="star"),
    ],
)
def test_parse_sync(text: str, expected: SyncSpec | None) -> None:
    assert parse_sync(text) == expected


def test_star_spec_says_so_and_a_named_one_does_not() -> None:
    star, named = parse_sync("*"), parse_sync("ANY 1 (a)")
    assert star is not None
    assert named is not None
    assert star.star
    assert not named.star


@pytest.mark.parametrize(
    ("setting", "streaming", "expected"),
    [
        pytest.param("ANY 1 (a, b)", ("a",), True, id="quorum met by one listed standby"),
        pytest.param(
            "ANY 1 (a, b)", ("c", "pg_basebackup"), False, id="unlisted standbys do not count"
        ),
        pytest.param("FIRST 2 (a, b, c)", ("a",), False, id="two needed, one streams"),
        pytest.param("FIRST 2 (a, b, c)", ("a", "c"), True, id="two needed, two stream"),
        pytest.param("*", (), False, id="star with nobody streaming"),
        pytest.param("*", ("anyone",), True, id="star with any standby streaming"),
    ],
)
def test_sync_spec_satisfied(setting: str, streaming: tuple[str, ...], expected: bool) -> None:
    spec = parse_sync(setting)
    assert spec is not None
    assert spec.satisfied(streaming) is expected


@pytest.mark.parametrize(
    ("original", "survivors", "expected", "note"),
    [
        pytest.param(
            "ANY 1 (node0, node1)",
            ["node2"],
            SyncSpec("ANY", 1, ("node2",)),
            None,
            id="method and count kept over the survivors",
        ),
        pytest.param(
            "FIRST 2 (node0, node1, node2)",
            ["node1", "node2"],
            SyncSpec("FIRST", 2, ("node1", "node2")),
            None,
            id="count kept when enough survive",
        ),
        pytest.param(
            "ANY 2 (node0, node1, node2)",
            ["node2"],
            SyncSpec("ANY", 1, ("node2",)),
            "quorum lowered from 2 to 1",
            id="count capped at the survivors, with a note",
        ),
        pytest.param(
            "ANY 1 (node0, node1)",
            [],
            None,
            "synchronous replication off",
            id="no survivor: async, with a note",
        ),
        pytest.param("*", ["node2"], SyncSpec("FIRST", 1, ("*",)), None, id="star kept"),
        pytest.param("", ["node2"], None, None, id="async kept"),
    ],
)
def test_rewrite_sync_names(
    original: str, survivors: Sequence[str], expected: SyncSpec | None, note: str | None
) -> None:
    value, got_note = rewrite_sync_names(original, survivors)
    assert parse_sync(value) == expected
    if expected is None:
        assert value == ""
    if note is None:
        assert got_note is None
    else:
        assert got_note is not None
        assert note in got_note


UNCHANGED = None


class PlanCase(NamedTuple):
    """One row: what the primary shows, and what plan_sync should write."""

    id: str
    current: str
    streaming: tuple[str, ...]
    policy: str | None
    unsatisfied_for: float
    expected: SyncSpec | str | None  # UNCHANGED, "" (async) or the setting to write
    lowered: bool = False
    managed: bool = False  # the manager wrote ``current``


PLAN_CASES = [
    PlanCase(
        "satisfied: no change",
        "ANY 1 (node1, node2)",
        ("node1",),
        "ANY 1 (node1, node2)",
        0.0,
        UNCHANGED,
    ),
    PlanCase(
        "unsatisfied for less than the attach timeout: wait",
        "ANY 1 (node0)",
        ("node1",),
        "ANY 1 (node0)",
        ATTACH - 0.1,
        UNCHANGED,
    ),
    PlanCase(
        "unsatisfied for longer: the streaming member is listed",
        "ANY 1 (node0)",
        ("node1",),
        "ANY 1 (node0)",
        ATTACH + 1,
        SyncSpec("ANY", 1, ("node1",)),
    ),
    PlanCase(
        "unsatisfied for longer, nobody streams: async, lowered",
        "ANY 1 (node0)",
        (),
        "ANY 1 (node0)",
        ATTACH + 1,
        "",
        lowered=True,
    ),
    PlanCase(
        "unsatisfied, fewer streaming than the policy's count: capped and lowered",
        "FIRST 2 (node0, node1)",
        ("node1",),
        "FIRST 2 (node0, node1)",
        ATTACH + 1,
        SyncSpec("FIRST", 1, ("node1",)),
        lowered=True,
    ),
    PlanCase(
        "async with a known policy and a member streaming again: restored",
        "",
        ("node1",),
        "ANY 1 (node1, node2)",
        0.0,
        SyncSpec("ANY", 1, ("node1",)),
    ),
    PlanCase(
        "lowered count with two streaming: policy count restored",
        "ANY 1 (node1)",
        ("node1", "node2"),
        "ANY 2 (node1, node2)",
        0.0,
        SyncSpec("ANY", 2, ("node1", "node2")),
    ),
    PlanCase(
        "a stranger streaming is never made synchronous (unsatisfied)",
        "ANY 1 (node0)",
        ("pg_basebackup",),
        "ANY 1 (node0)",
        ATTACH + 1,
        "",
        lowered=True,
    ),
    PlanCase(
        "a stranger streaming beside a member is left out",
        "ANY 1 (node0)",
        ("pg_basebackup", "node2"),
        "ANY 1 (node0)",
        ATTACH + 1,
        SyncSpec("ANY", 1, ("node2",)),
    ),
    PlanCase(
        "a stranger streaming is never made synchronous (async restore)",
        "",
        ("pg_basebackup",),
        "ANY 1 (node1)",
        0.0,
        UNCHANGED,
    ),
    PlanCase(
        "the manager's list: a rejoined member that streams is added",
        "ANY 1 (node2)",
        ("node2", "node1"),
        "ANY 1 (node1, node2)",
        0.0,
        SyncSpec("ANY", 1, ("node2", "node1")),
        managed=True,
    ),
    PlanCase(
        "the manager's FIRST list: a rejoined member goes last",
        "FIRST 1 (node2)",
        ("node1", "node2"),
        "FIRST 1 (node1, node2)",
        0.0,
        SyncSpec("FIRST", 1, ("node2", "node1")),
        managed=True,
    ),
    PlanCase(
        "the operator's list: a member they left out stays out",
        "ANY 1 (node2)",
        ("node2", "node1"),
        "ANY 1 (node2)",
        0.0,
        UNCHANGED,
    ),
    PlanCase(
        "the manager's list: a stranger streaming is not added",
        "ANY 1 (node2)",
        ("node2", "pg_basebackup"),
        "ANY 1 (node1, node2)",
        0.0,
        UNCHANGED,
        managed=True,
    ),
    PlanCase(
        "the manager's list, all members listed: no change",
        "ANY 1 (node1, node2)",
        ("node2", "node1"),
        "ANY 1 (node1, node2)",
        0.0,
        UNCHANGED,
        managed=True,
    ),
    PlanCase("star is left alone", "*", (), "ANY 1 (node1)", 100.0, UNCHANGED),
    PlanCase("async without a policy stays async", "", ("node1",), None, 0.0, UNCHANGED),
]


@pytest.mark.parametrize("case", PLAN_CASES, ids=[c.id for c in PLAN_CASES])
def test_plan_sync(case: PlanCase) -> None:
    plan = plan_sync(
        case.current,
        case.streaming,
        members=MEMBERS,
        policy=parse_sync(case.policy) if case.policy is not None else None,
        unsatisfied_for=case.unsatisfied_for,
        attach_timeout=ATTACH,
        managed=case.managed,
    )
    if case.expected is UNCHANGED:
        assert plan.value is None
    elif case.expected == "":
        assert plan.value == ""
    else:
        assert plan.value is not None
        assert parse_sync(plan.value) == case.expected
    assert plan.lowered is case.lowered
    assert (plan.note is not None) is (plan.value is not None)  # every change says why


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(None, None, id="unset"),
        pytest.param("", None, id="reset (a removed placeholder reads empty)"),
        pytest.param(
            '{"written":"ANY 1 (\\"node2\\")","policy":"ANY 2 (node1, node2)"}',
            SyncRecord('ANY 1 ("node2")', SyncSpec("ANY", 2, ("node1", "node2"))),
            id="a lowered list and the policy kept",
        ),
        pytest.param(
            '{"written":"","policy":"FIRST 1 (a)"}',
            SyncRecord("", SyncSpec("FIRST", 1, ("a",))),
            id="lowered to async",
        ),
        pytest.param(
            '{"written":"ANY 1 (a)","policy":null}', SyncRecord("ANY 1 (a)", None), id="no policy"
        ),
        pytest.param('{"written":"x","policy":"*"}', SyncRecord("x", None), id="a star is none"),
        pytest.param("not json", None, id="not JSON"),
        pytest.param('["written"]', None, id="not an object"),
        pytest.param('{"policy":"ANY 1 (a)"}', None, id="nothing written"),
        pytest.param('{"written":1,"policy":null}', None, id="written not text"),
        pytest.param('{"written":"a","policy":2}', None, id="policy not text"),
    ],
)
def test_parse_record(text: str | None, expected: SyncRecord | None) -> None:
    assert parse_record(text) == expected
    if expected is not None:
        assert parse_record(expected.encode()) == expected  # what is written reads back


@pytest.mark.parametrize(
    "names",
    [("node1", "node2"), ("db-node2", "Node 3"), ('we"ird', "a,b")],
    ids=["plain", "quoted", "quotes and commas"],
)
def test_a_record_reads_back_whatever_the_names(names: tuple[str, ...]) -> None:
    record = SyncRecord(format_sync("ANY", 1, names[:1]), SyncSpec("ANY", 2, names))
    assert parse_record(record.encode()) == record
