"""The HTTP API against hostile and careless clients, on a live ``serve`` on loopback.

Every row sends raw bytes and expects a status and a JSON error naming the
problem; none may reach a promotion (the manager is never opened: a request
that got through to it would fail differently). Plus: a chunked body is
read (it was once ignored, which turned a trigger for node2 into a trigger
for the best candidate), the admin endpoints can live on a listener of
their own, and a token that can never match is refused at start.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

import pytest

from pgfailover import FailoverConfig, FailoverManager, Node
from pgfailover.listener import Limits
from pgfailover.server import AdminApp, AdminServer, check_token, serve

from .fakes import GateDouble

pytestmark = pytest.mark.timeout(60)

TOKEN = "hardening-token-0123456789"
AUTH = f"Authorization: Bearer {TOKEN}\r\n".encode()


@pytest.fixture(scope="module")
def manager() -> FailoverManager:
    nodes = [Node(f"node{i}", f"host=127.0.0.1 port={i + 1} user=app") for i in range(3)]
    return FailoverManager(nodes=nodes, config=FailoverConfig(), name="app")


@pytest.fixture(scope="module")
def server(manager: FailoverManager) -> Iterator[AdminServer]:
    with serve(manager, token=TOKEN, admin_port=0) as srv:
        yield srv


def _exchange(url: str, data: bytes) -> tuple[int, dict[str, str], Any]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    return int(lines[0].split()[1]), headers, json.loads(body)


def _post(path: str, body: bytes, extra: bytes = b"") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode()
        + AUTH
        + extra
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


def _chunked(path: str, body: bytes) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode() + AUTH
    chunks = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    return head + b"Transfer-Encoding: chunked\r\n\r\n" + chunks


class Case(NamedTuple):
    id: str
    request: bytes
    status: int
    error: str  # a fragment of the JSON "error" line


BIG_HEAD = b"GET /failover/status HTTP/1.1\r\nHost: x\r\nX-Big: "
NESTED = b"[" * 100_000 + b"]" * 100_000
CASES = [
    Case(
        "chunked body is read: its unknown target is refused",
        _chunked("/failover/trigger", b'{"target": "node9"}'),
        404,
        "unknown node 'node9'",
    ),
    Case(
        "chunked body is read: a bad force is refused",
        _chunked("/failover/trigger", b'{"target": "node2", "force": "yes"}'),
        400,
        "force must be true or false",
    ),
    Case("malformed request line", b"GARBAGE\r\n\r\n", 400, "Start line is invalid"),
    Case("binary request line", b"\x00\xff\xfe\r\n\r\n", 400, "Bad Request"),
    Case(
        "negative Content-Length",
        b"POST /failover/trigger HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        400,
        "Content-Length is invalid",
    ),
    Case(
        "body over 64 KiB",
        b"POST /failover/trigger HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\n\r\n",
        413,
        "Request Entity Too Large",
    ),
    Case(
        "headers over 16 KiB",  # exactly the limit, still unfinished: all read, no RST
        BIG_HEAD + b"a" * (16 * 1024 - len(BIG_HEAD)),
        431,
        "Request Header Fields Too Large",
    ),
    Case(
        "deeply nested JSON",
        _post("/failover/trigger", NESTED[:60_000]),
        400,
        "nested too deeply",
    ),
    Case("body that is not JSON", _post("/failover/trigger", b"{target"), 400, "not valid JSON"),
    Case("body that is a list", _post("/failover/trigger", b"[1]"), 400, "must be a JSON object"),
    Case(
        "unknown field",
        _post("/failover/trigger", b'{"targt": "node1"}'),
        400,
        "unknown field(s): targt",
    ),
    Case(
        "superscript digit as a limit",
        b"GET /failover/history?limit=%C2%B2 HTTP/1.1\r\nHost: x\r\n\r\n",
        400,
        "limit must be an integer",
    ),
    Case(
        "4300-digit limit",
        b"GET /failover/history?limit=" + b"9" * 4300 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        400,
        "limit must be an integer",
    ),
    Case(
        "a trigger whose body went missing (no Content-Length)",
        b"POST /failover/trigger HTTP/1.1\r\nHost: x\r\n" + AUTH + b"\r\n",
        400,
        "send a JSON object as the body",
    ),
    Case(
        "a switchover whose body went missing (HTTP/1.0)",
        b"POST /failover/switchover HTTP/1.0\r\n" + AUTH + b"\r\n",
        400,
        "send a JSON object as the body",
    ),
    Case(
        "an integer longer than Python parses",
        _post("/failover/trigger", b'{"target": ' + b"9" * 5000 + b"}"),
        400,
        "not valid JSON",
    ),
    Case(
        "a pause reason with a lone surrogate",
        _post("/failover/pause", b'{"reason": "\\ud800"}'),
        400,
        "printable text",
    ),
    Case(
        "a pause reason on two lines",
        _post("/failover/pause", b'{"reason": "a\\nb"}'),
        400,
        "printable text",
    ),
    Case(
        "wrong token",
        b"POST /failover/trigger HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + b"x" * 26
        + b"\r\nContent-Length: 0\r\n\r\n",
        401,
        "wrong token",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_requests_get_one_json_error_and_change_nothing(
    server: AdminServer, manager: FailoverManager, case: Case
) -> None:
    status, headers, body = _exchange(server.admin_url, case.request)
    assert status == case.status, body
    assert headers["content-type"] == "application/json"
    assert case.error in body["error"], body
    assert "\n" not in body["error"]
    assert manager.history() == []


def test_head_answers_headers_without_a_body(server: AdminServer) -> None:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"HEAD /failover/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503")
    assert b"Content-Length: " in head
    assert body == b""


def test_the_main_address_refuses_admin_endpoints_when_they_have_their_own(
    server: AdminServer,
) -> None:
    assert server.url != server.admin_url
    status, _, body = _exchange(server.url, _post("/failover/trigger", b'{"target": "node1"}'))
    assert status == 403
    assert "admin address" in body["error"]
    status, _, body = _exchange(server.url, b"GET /failover/status HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 200
    assert body["cluster"] == "app"


def test_a_chunked_body_a_server_did_not_decode_is_refused(manager: FailoverManager) -> None:
    answer: list[str] = []

    def start_response(status: str, _headers: list[tuple[str, str]], _exc: Any = None) -> Any:
        answer.append(status)
        return lambda _data: None

    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/failover/trigger",
        "HTTP_AUTHORIZATION": f"Bearer {TOKEN}",
        "HTTP_TRANSFER_ENCODING": "chunked",
        "wsgi.input": None,
    }
    body = b"".join(AdminApp(manager, token=TOKEN)(environ, start_response))
    assert answer[0].startswith("411")
    assert "Content-Length" in json.loads(body)["error"]


@pytest.mark.parametrize(
    ("token", "problem"),
    [
        (TOKEN + "\n", "whitespace"),
        (" " + TOKEN, "whitespace"),
        (TOKEN + "\u00e9", "ASCII"),
        (TOKEN + "\x07", "printable"),
        ("short", "at least 16"),
    ],
)
def test_a_token_that_cannot_match_is_refused_at_start(
    manager: FailoverManager, token: str, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem) as refused:
        serve(manager, token=token)
    assert token.strip() not in str(refused.value)
    with pytest.raises(ValueError, match=problem):
        check_token(token)


def test_idle_and_half_sent_connections_hold_no_thread(manager: FailoverManager) -> None:
    with serve(manager) as srv:
        host, port = srv.url.removeprefix("http://").rsplit(":", 1)
        before = threading.active_count()
        socks = [socket.create_connection((host, int(port)), timeout=5) for _ in range(300)]
        try:
            for sock in socks[::2]:
                sock.sendall(b"POST /failover/trigger HTTP/1.1\r\nContent-Length: 10\r\n\r\n{")
            assert threading.active_count() <= before
        finally:
            for sock in socks:
                sock.close()


def test_a_slow_sender_is_cut_and_a_crowd_of_them_blocks_nothing(
    manager: FailoverManager,
) -> None:
    limits = Limits(request_timeout=1.0, cleanup_interval=0.2)
    with serve(manager, limits=limits) as srv:
        host, port = srv.url.removeprefix("http://").rsplit(":", 1)
        crowd = [socket.create_connection((host, int(port)), timeout=5) for _ in range(150)]
        try:
            for sock in crowd:
                sock.sendall(b"GET /failover/status HTTP/1.1\r\nHost: x\r\n")  # never ends
            status, _, body = _exchange(srv.url, b"GET /failover/status HTTP/1.1\r\n\r\n")
            assert (status, body["cluster"]) == (200, "app")
            slow = crowd[0]
            started = time.monotonic()
            slow.settimeout(0.1)
            closed = False
            while time.monotonic() - started < 5 and not closed:
                try:
                    slow.sendall(b"X")  # a byte at a time: never idle, never done
                    closed = slow.recv(1) == b""
                except TimeoutError:
                    continue
                except OSError:
                    closed = True
            assert closed, "a request trickling in for 5 s was not cut"
            assert time.monotonic() - started < 1.0 + 0.2 + 1.5
        finally:
            for sock in crowd:
                sock.close()


def test_a_listener_whose_wakeup_pipe_was_closed_still_stops(manager: FailoverManager) -> None:
    """close() wakes waitress's loop through its trigger; with the trigger gone (closed
    under the loop), it still empties the loop, frees the port and returns."""
    srv = serve(manager)
    listener = srv._main
    listener._server.trigger.close()
    started = time.monotonic()
    srv.close(timeout=3)
    assert not listener._thread.is_alive()
    assert time.monotonic() - started < 3
    host, port = srv.url.removeprefix("http://").rsplit(":", 1)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, int(port)), timeout=2).close()


def test_a_pause_etcd_does_not_take_is_a_503_and_changes_nothing() -> None:
    """With several arbiters the pause is written to etcd first: etcd down, the operator
    gets one line saying so, and this arbiter is not paused on its own."""
    gate = GateDouble()
    gate.failing = "etcd kv/put: no endpoint answered (http://127.0.0.1:1: NewConnectionError)"
    nodes = [Node(f"node{i}", f"host=127.0.0.1 port={i + 1} user=app") for i in range(3)]
    config = FailoverConfig(connect_timeout=1, health_check_timeout=0.5)
    with (
        FailoverManager(nodes=nodes, config=config, name="app", promotion_gate=gate) as mgr,
        serve(mgr, token=TOKEN) as srv,
    ):
        for path in ("/failover/pause", "/failover/resume"):
            status, _, body = _exchange(srv.url, _post(path, b"{}"))
            assert status == 503, body
            assert body["error"].startswith("not ")
            assert "etcd kv/put: no endpoint answered" in body["error"], body
        assert not mgr.paused
        assert [e for e in mgr.history() if e.kind == "maintenance"] == []
        gate.failing = None
        status, _, body = _exchange(srv.url, _post("/failover/pause", b'{"reason": "work"}'))
        assert status == 200, body
        assert body["maintenance"] == {
            "paused": True,
            "since": body["maintenance"]["since"],
            "reason": "work",
            "shared": "etcd",
        }
        assert gate.shared is not None
        assert gate.shared.reason == "work"
