"""etcd over TLS that asks for client certificates (Debian's etcd on loopback, a CA of the
test's own): the arbiter lease and the shared pause through ``serve``'s settings, and the
Patroni source (``patroni+etcds://``) reading and watching.

No PostgreSQL: what is tested is pgfailover's TLS to a real etcd run with
``--client-cert-auth``. What must hold: with the CA and a client certificate
the lease is taken and the pause read back, and Patroni's keys are read and
their changes pushed by the watch; without the client certificate, with the
system's CAs only, or with a host name the certificate does not name, one
line says why.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from pgfailover.cli.serve import _lease
from pgfailover.config import FailoverConfig, ServerSettings
from pgfailover.errors import LabError
from pgfailover.etcd import Etcd, EtcdError
from pgfailover.lab.etcdserver import EtcdServer, ServerTLS
from pgfailover.maintenance import SharedPause
from pgfailover.tls import TLSFiles
from pgfailover.topology.build import build_source
from pgfailover.topology.patroni import PatroniEtcdSource
from pgfailover.topology.urls import parse_source
from pgfailover.wire import Update
from tests.tools import require_tool

from .etcd import PATRONI_NODES, read_and_watch

pytestmark = pytest.mark.timeout(60)


@dataclass(frozen=True)
class Site:
    """A TLS etcd and the files its clients are given."""

    port: int
    ca: str
    cert: str
    key: str

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def client(self) -> Etcd:
        return Etcd([self.url], ssl_context=TLSFiles(self.ca, self.cert, self.key).context("etcd"))


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    require_tool("etcd")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "127.0.0.2")  # not "localhost"
    client = ca.issue_cert("pgfailover")
    files = {name: str(tmp_path / name) for name in ("ca.pem", "server.pem", "server.key")}
    files |= {name: str(tmp_path / name) for name in ("client.pem", "client.key")}
    ca.cert_pem.write_to_path(files["ca.pem"])
    server.cert_chain_pems[0].write_to_path(files["server.pem"])
    server.private_key_pem.write_to_path(files["server.key"])
    client.cert_chain_pems[0].write_to_path(files["client.pem"])
    client.private_key_pem.write_to_path(files["client.key"])
    tls = TLSFiles(files["ca.pem"], files["client.pem"], files["client.key"]).context("etcd")
    assert tls is not None
    etcd = EtcdServer(
        tmp_path / "etcd",
        tls=ServerTLS(files["server.pem"], files["server.key"], files["ca.pem"], tls),
    )
    try:
        try:
            etcd.wait_ready()
        except LabError as exc:
            pytest.fail(str(exc))
        yield Site(etcd.port, files["ca.pem"], files["client.pem"], files["client.key"])
    finally:
        etcd.stop()


def test_the_arbiter_lease_and_pause_over_mutual_tls(site: Site) -> None:
    """``serve --etcd https://... --etcd-cacert --etcd-cert --etcd-key``, as its
    settings reach the lease."""
    server = ServerSettings(
        etcd=site.url,
        etcd_ca_file=site.ca,
        etcd_cert_file=site.cert,
        etcd_key_file=site.key,
        name="main",
    )
    lease = _lease(server)
    assert lease is not None
    try:
        lease._step()  # one look: takes the free key
        assert lease.holding is not None
        assert lease.may_promote(automatic=True) is None
        lease.share_pause(SharedPause(time.time(), "certificate rotation", lease.identity))
        assert lease.may_promote(automatic=True) is not None  # read back over TLS
    finally:
        lease.close()


@pytest.mark.parametrize(
    ("files", "host", "says"),
    [
        (("ca",), "127.0.0.1", "client certificate"),  # refused, or the handshake ended
        ((), "127.0.0.1", "TLS: unable to get local issuer certificate"),
        (("ca", "cert", "key"), "localhost", "TLS: Hostname mismatch"),
    ],
    ids=["no client certificate", "the system's CAs only", "a host the certificate lacks"],
)
def test_without_what_etcd_asks_one_line_says_why(
    site: Site, files: tuple[str, ...], host: str, says: str
) -> None:
    given = {name: getattr(site, name) for name in files}
    tls = TLSFiles(given.get("ca"), given.get("cert"), given.get("key")).context("etcd")
    etcd = Etcd([f"https://{host}:{site.port}"], timeout=2.0, ssl_context=tls)
    try:
        with pytest.raises(EtcdError) as refused:
            etcd.get_many(["/pgfailover/main/arbiter"])
        message = str(refused.value)
        assert says in message, message
        assert "TLS: " in message, message
        assert "\n" not in message
    finally:
        etcd.close()


def test_the_patroni_source_reads_and_watches_over_mutual_tls(site: Site) -> None:
    writer = site.client()
    config = FailoverConfig(
        unhealthy_threshold=1,
        source=f"patroni+etcds://127.0.0.1:{site.port}/service/main",
        source_ca_file=site.ca,
        source_cert_file=site.cert,
        source_key_file=site.key,
    )
    spec = parse_source(config.source or "")
    tls = config.source_tls().context("source")
    try:
        shown = read_and_watch(
            writer,
            config,
            lambda reader: PatroniEtcdSource(
                spec.urls,
                spec.prefix or "/",
                reader,
                connect_timeout=1.0,
                silence=5.0,
                poll=30.0,
                ssl_context=tls,
            ),
        )
        assert shown == f"patroni+etcds://127.0.0.1:{site.port}/service/main"
        # The manager's way to the same source: its first read over TLS (the leader
        # takes writes only once confirmed on it, which these made-up members cannot
        # be), the members as the watch test left them.
        built = build_source(config, PATRONI_NODES, "main")
        try:
            seen = next(iter(built.messages(built.urls[0])))
            assert isinstance(seen, Update)
            assert seen.snapshot.node("node0").up
            assert seen.snapshot.node("node1").serves_reads is False  # stopped
        finally:
            built.close()
    finally:
        writer.close()
