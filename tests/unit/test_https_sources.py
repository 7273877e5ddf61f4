"""Sources served over HTTPS with a CA of the site's own: Patroni's REST API
(``patroni+https://``) and an arbiter's stream behind a TLS proxy (``https://``), read
through the manager's ``source_ca_file``; without it, one line says why.

The server is Python's own HTTP server on loopback, wrapped in TLS with a
certificate from a test CA (trustme): real TLS, real HTTP, canned answers.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import trustme

from pgfailover.config import FailoverConfig, Node
from pgfailover.topology.arbiter import ArbiterSource, Hello
from pgfailover.topology.build import build_source
from pgfailover.topology.members import PatroniReader
from pgfailover.topology.patroni import PatroniRestSource
from pgfailover.topology.sse import StreamError
from pgfailover.wire import Update, encode

from .followdoubles import HEALTHY

pytestmark = pytest.mark.timeout(30)

NODES = [Node(f"node{i}", f"host=10.0.0.{i + 1} port=5432") for i in range(3)]
CLUSTER = {
    "scope": "app",
    "members": [
        {"name": "a", "role": "leader", "state": "running", "host": "10.0.0.1", "port": 5432,
         "timeline": 1},
        {"name": "b", "role": "replica", "state": "streaming", "host": "10.0.0.2", "port": 5432,
         "timeline": 1},
    ],
}  # fmt: skip


class _Canned(BaseHTTPRequestHandler):
    """``GET /cluster`` as Patroni answers it; ``GET /failover/stream`` as an arbiter
    begins its stream (hello, one snapshot; chunked, as uvicorn sends it), then holds it
    open."""

    protocol_version = "HTTP/1.1"

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def do_GET(self) -> None:
        if self.path == "/cluster":
            body = json.dumps(CLUSTER).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if self.path == "/failover/stream":
            hello = json.dumps({"cluster": "app", "format": 1, "heartbeat": 0.25})
            update = encode(Update(cluster="app", seq=1, sent_at=time.time(), snapshot=HEALTHY))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self._chunk(f"event: hello\ndata: {hello}\n\n".encode())
            self._chunk(b"id: 1\nevent: snapshot\ndata: " + update + b"\n\n")
            time.sleep(2)  # open, silent: the reader has what it needs
            self.close_connection = True
            return
        self.send_error(404)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def https(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """The server's URL (a certificate for 127.0.0.1 from a test CA) and the CA's file."""
    ca = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Canned)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", str(ca_file)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_patroni_rest_over_https_with_the_sites_ca(https: tuple[str, str]) -> None:
    url, ca_file = https
    config = FailoverConfig(source=f"patroni+{url}", source_ca_file=ca_file)
    source = build_source(config, NODES, "app")
    try:
        assert isinstance(source, PatroniRestSource)
        first = next(iter(source.messages(source.urls[0])))
        assert first.snapshot.node("node0").up
        assert first.snapshot.node("node1").up
    finally:
        source.close()


def test_without_the_sites_ca_patroni_rest_says_why_in_one_line(https: tuple[str, str]) -> None:
    url, _ = https
    reader = PatroniReader(NODES, FailoverConfig(), "app")
    source = PatroniRestSource([url], reader, connect_timeout=0.5, silence=0.5, poll=0.05)
    try:
        with pytest.raises(StreamError) as refused:
            next(iter(source.messages(source.urls[0])))
        message = str(refused.value)
        assert "TLS: unable to get local issuer certificate" in message, message
        assert "\n" not in message
    finally:
        source.close()


def test_an_arbiter_behind_tls_is_followed_with_the_sites_ca(https: tuple[str, str]) -> None:
    url, ca_file = https
    config = FailoverConfig(source=url, source_ca_file=ca_file)
    source = build_source(config, NODES, "app")
    try:
        assert isinstance(source, ArbiterSource)
        messages = source.messages(url)
        assert isinstance(next(messages), Hello)
        update = next(messages)
        assert isinstance(update, Update)
        assert update.snapshot.primary == HEALTHY.primary
    finally:
        source.close()
    plain = ArbiterSource([url], "app", connect_timeout=1.0, silence=1.0)
    with pytest.raises(StreamError, match="TLS: unable to get local issuer certificate"):
        next(plain.messages(url))
    plain.close()
