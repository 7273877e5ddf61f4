"""The pieces of following, without a cluster: source settings, the event-stream reader."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pgfailover.config import FailoverConfig
from pgfailover.errors import ConfigurationError
from pgfailover.sources import load_env, load_toml
from pgfailover.topology import sse
from pgfailover.topology.sse import _LINE_END, Event, EventParser, StreamError
from pgfailover.topology.urls import mask_url, source_urls

GOOD_SOURCES = [
    ("http://arbiter:8009", ("http://arbiter:8009",)),
    ("https://a:1, http://b:2/", ("https://a:1", "http://b:2/")),
    ("http://[::1]:8009/failover/stream", ("http://[::1]:8009/failover/stream",)),
    ("http://u:secret@proxy:80", ("http://u:secret@proxy:80",)),
]


@pytest.mark.parametrize(("text", "urls"), GOOD_SOURCES, ids=[g[0] for g in GOOD_SOURCES])
def test_a_source_setting_is_a_list_of_urls(text: str, urls: tuple[str, ...]) -> None:
    assert source_urls(text) == urls


BAD_SOURCES = [
    (" , ", "give one or more arbiter URLs"),
    ("arbiter:8009", "expected http://host:port"),
    ("ftp://arbiter:8009", "expected http://host:port"),
    ("http://:8009", "expected http://host:port"),
    ("http://arbiter:0", "no blanks, query or fragment"),
    ("http://arbiter:99999", "source 'http://arbiter:99999'"),
    ("http://arbiter:8009/?x=1", "no blanks, query or fragment"),
    ("http://u:hunter2@arbiter:bad", "source 'http://u:***@arbiter:bad'"),
]


@pytest.mark.parametrize(("text", "message"), BAD_SOURCES, ids=[b[0] for b in BAD_SOURCES])
def test_a_bad_source_is_one_line_without_the_password(text: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match="source") as info:
        FailoverConfig(source=text)
    assert message in str(info.value)
    assert "hunter2" not in str(info.value)
    assert "\n" not in str(info.value)


def test_a_follower_never_promotes() -> None:
    with pytest.raises(ConfigurationError, match="never promotes"):
        FailoverConfig(source="http://arbiter:8009", promotion="auto")
    assert FailoverConfig(source="http://arbiter:8009", promotion="manual").source


def test_the_source_comes_from_the_environment_and_hides_in_repr() -> None:
    _, config = load_env(
        {"PGFAILOVER_DSN": "host=a,b", "PGFAILOVER_SOURCE": "http://u:hunter2@arb:8009"}
    )
    assert config.source == "http://u:hunter2@arb:8009"
    assert "hunter2" not in repr(config)
    assert mask_url(config.source) == "http://u:***@arb:8009"


def _events(chunks: list[bytes]) -> list[Event]:
    parser = EventParser()
    return [event for chunk in chunks for event in parser.feed(chunk)]


SSE = [
    ("one event", [b"event: snapshot\ndata: {}\n\n"], [Event("snapshot", "{}")]),
    ("id kept", [b"id: 7\nevent: snapshot\ndata: x\n\n"], [Event("snapshot", "x", "7")]),
    ("unnamed", [b"data: x\n\n"], [Event("message", "x")]),
    ("data lines joined", [b"data: a\ndata: b\n\n"], [Event("message", "a\nb")]),
    ("heartbeat comments only", [b":\n\n", b":\n\n"], []),
    ("split anywhere", [b"ev", b"ent: a\nda", b"ta: 1\n", b"\n"], [Event("a", "1")]),
    ("CRLF", [b"event: a\r\ndata: 1\r\n\r\n"], [Event("a", "1")]),
    ("CR split from its LF", [b"event: a\r", b"\ndata: 1\r\n\r", b"\n"], [Event("a", "1")]),
    ("no space after the colon", [b"event:a\ndata:1\n\n"], [Event("a", "1")]),
    ("unknown fields ignored", [b"retry: 10\nfoo: bar\ndata: 1\n\n"], [Event("message", "1")]),
    ("no data, no event", [b"event: a\n\n"], []),
    ("incomplete waits", [b"event: a\ndata: 1\n"], []),
]


@pytest.mark.parametrize(("chunks", "events"), [s[1:] for s in SSE], ids=[s[0] for s in SSE])
def test_the_event_stream_is_read_as_it_arrives(chunks: list[bytes], events: list[Event]) -> None:
    assert _events(chunks) == events


def test_every_chunking_reads_the_same_events_and_each_byte_is_searched_once() -> None:
    """A snapshot that arrives in many small chunks (a slow network) is searched for line
    ends once, not from its start at every chunk."""
    stream = b"event: snapshot\r\ndata: " + b"x" * 5000 + b"\r\n\r\n:\n\ndata: 2\r\r\n"
    expected = [Event("snapshot", "x" * 5000), Event("message", "2")]
    searched = 0

    def counting(text: bytes, pos: int = 0) -> Any:
        nonlocal searched
        searched += len(text) - pos
        return _LINE_END.finditer(text, pos)

    for size in (1, 2, 3, 7, 64, len(stream)):
        parser = EventParser()
        searched = 0
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(sse, "_LINE_END", SimpleNamespace(finditer=counting))
            got = [
                e for i in range(0, len(stream), size) for e in parser.feed(stream[i : i + size])
            ]
        assert got == expected, size
        assert searched <= 2 * len(stream), (size, searched)


@pytest.mark.parametrize(
    ("chunks", "message"),
    [
        ([b"data: " + b"x" * 200 + b"\n"], "larger than 100 bytes"),
        ([b"x" * 101], "larger than 100 bytes"),  # one line that never ends
        ([b"data: 1\n" * 20], "larger than 100 bytes"),  # many lines, no blank one
        ([b"data: \xff\n\n"], "not UTF-8"),
    ],
    ids=["a long line", "no line end", "no event end", "not UTF-8"],
)
def test_a_stream_over_its_limits_ends(chunks: list[bytes], message: str) -> None:
    parser = EventParser(max_event=100)
    with pytest.raises(StreamError, match=message):
        _feed(parser, chunks)


def _feed(parser: EventParser, chunks: list[bytes]) -> None:
    for chunk in chunks:
        parser.feed(chunk)


def test_the_readme_follower_settings_are_a_valid_config(tmp_path: Path) -> None:
    from tests.readme import block

    nodes = '[[nodes]]\nname = "a"\ndsn = "host=a"\n'
    (tmp_path / "app.toml").write_text(nodes + block("follower-config"))
    _, config = load_toml(tmp_path / "app.toml")
    assert config.promotion == "external"
    assert source_urls(config.source or "") == (
        "http://arbiter-a:8009",
        "http://arbiter-b:8009",
    )


def test_the_readme_patroni_follower_settings_are_a_valid_config(tmp_path: Path) -> None:
    from pgfailover.topology.urls import parse_source
    from tests.readme import block

    nodes = '[[nodes]]\nname = "a"\ndsn = "host=db1"\n'
    (tmp_path / "app.toml").write_text(nodes + block("patroni-follower-config"))
    _, config = load_toml(tmp_path / "app.toml")
    spec = parse_source(config.source or "")
    assert (spec.kind, len(spec.urls)) == ("patroni", 3)


WATCHED = [
    ("leader", "PUT", True),
    ("leader", "DELETE", True),
    ("failover", "PUT", True),
    ("members/node1", "PUT", True),
    ("status", "PUT", False),  # the leader's optime, every loop
    ("history", "PUT", False),
    ("config", "PUT", False),
    ("sync", "PUT", False),
]


@pytest.mark.parametrize(
    ("key", "kind", "snapshot"), WATCHED, ids=[f"{w[1]} {w[0]}" for w in WATCHED]
)
def test_a_watched_change_makes_a_snapshot_only_where_snapshots_read(
    key: str, kind: str, snapshot: bool
) -> None:
    """Every change is kept (the keys stay whole), but only a change to a key the
    members are read from wakes the source for a new snapshot."""
    import base64
    import json

    from pgfailover.config import Node
    from pgfailover.topology.build import build_source
    from pgfailover.topology.patroni import PatroniEtcdSource

    nodes = [Node("node0", "host=10.0.0.1"), Node("node1", "host=10.0.0.2")]
    source = build_source(FailoverConfig(source="patroni+etcd://e:2379/service/main"), nodes, "x")
    assert isinstance(source, PatroniEtcdSource)
    try:
        full = f"/service/main/{key}"
        kv = {"key": base64.b64encode(full.encode()).decode(), "mod_revision": 5,
              "value": base64.b64encode(json.dumps({"a": 1}).encode()).decode()}  # fmt: skip
        source._apply({"result": {"events": [{"type": kind, "kv": kv}]}})
        assert source._changed.is_set() is snapshot
        assert (full in source._keys) is (kind == "PUT")
    finally:
        source.close()
