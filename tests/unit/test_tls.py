"""The TLS files for etcd and a source, as tables: what loads, and the one line for what
does not (files made by a CA of the test's own, trustme)."""

from __future__ import annotations

import ssl
from collections.abc import Callable

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from pgfailover import FailoverManager
from pgfailover.config import FailoverConfig, Node, ServerSettings
from pgfailover.errors import ConfigurationError
from pgfailover.tls import TLSFiles
from pgfailover.topology.patroni import _as_written
from pgfailover.topology.urls import mask_url, parse_source


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A CA, a client certificate and its key, both in one file, another client's key,
    the key with a passphrase, and a file that is none of these."""
    tmp = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    client = ca.issue_cert("pgfailover@example")
    other = ca.issue_cert("someone-else@example")
    out = {
        "ca": tmp / "ca.pem",
        "cert": tmp / "client.pem",
        "key": tmp / "client.key",
        "both": tmp / "client-and-key.pem",
        "other_key": tmp / "other.key",
        "locked_key": tmp / "locked.key",
        "not_pem": tmp / "notes.txt",
    }
    ca.cert_pem.write_to_path(str(out["ca"]))
    client.cert_chain_pems[0].write_to_path(str(out["cert"]))
    client.private_key_pem.write_to_path(str(out["key"]))
    client.private_key_and_cert_chain_pem.write_to_path(str(out["both"]))
    other.private_key_pem.write_to_path(str(out["other_key"]))
    key = serialization.load_pem_private_key(client.private_key_pem.bytes(), None)
    out["locked_key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    out["not_pem"].write_text("not a certificate\n")
    return {name: str(path) for name, path in out.items()}


LOADS: list[tuple[str, Callable[[dict[str, str]], TLSFiles]]] = [
    ("a CA", lambda f: TLSFiles(ca_file=f["ca"])),
    ("a CA and a client certificate", lambda f: TLSFiles(f["ca"], f["cert"], f["key"])),
    ("the key in the certificate's file", lambda f: TLSFiles(f["ca"], f["both"])),
    ("a client certificate, the system's CAs", lambda f: TLSFiles(None, f["cert"], f["key"])),
]


@pytest.mark.parametrize("make", [m for _, m in LOADS], ids=[i for i, _ in LOADS])
def test_files_that_load(
    files: dict[str, str], make: Callable[[dict[str, str]], TLSFiles]
) -> None:
    context = make(files).context("source")
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode is ssl.CERT_REQUIRED


def test_no_files_mean_urllib3_defaults() -> None:
    assert not TLSFiles()
    assert TLSFiles().context("etcd") is None


REFUSED: list[tuple[str, Callable[[dict[str, str]], TLSFiles], str]] = [
    (
        "a key without its certificate",
        lambda f: TLSFiles(f["ca"], None, f["key"]),
        "etcd_key_file '{key}' needs etcd_cert_file",
    ),
    (
        "no such CA file",
        lambda f: TLSFiles("/nonexistent/ca.pem"),
        "etcd_ca_file '/nonexistent/ca.pem': cannot be used: No such file or directory",
    ),
    ("a CA file that is none", lambda f: TLSFiles(f["not_pem"]), "etcd_ca_file '{not_pem}'"),
    (
        "another certificate's key",
        lambda f: TLSFiles(f["ca"], f["cert"], f["other_key"]),
        "etcd_cert_file '{cert}' with etcd_key_file '{other_key}': cannot be used",
    ),
    (
        "a key with a passphrase",
        lambda f: TLSFiles(f["ca"], f["cert"], f["locked_key"]),
        "etcd_cert_file '{cert}' with etcd_key_file '{locked_key}': cannot be used",
    ),
    (
        "a certificate without its key",
        lambda f: TLSFiles(f["ca"], f["cert"]),
        "(no key in it? give etcd_key_file)",
    ),
]


@pytest.mark.parametrize(
    ("make", "says"), [(m, s) for _, m, s in REFUSED], ids=[i for i, _, _ in REFUSED]
)
def test_files_that_do_not_load_are_one_line(
    files: dict[str, str], make: Callable[[dict[str, str]], TLSFiles], says: str
) -> None:
    with pytest.raises(ConfigurationError) as refused:
        make(files).context("etcd")
    message = str(refused.value)
    assert says.format(**files) in message
    assert "\n" not in message


def test_the_files_are_read_when_the_manager_starts(files: dict[str, str]) -> None:
    """Settings that name a file are made without reading it (``status --config`` need
    not read a private key); the manager that follows the source reads it when it is
    made, and a bad one is one line then. What is wrong without reading a file (files
    without what they are for, a key without its certificate) is refused at once."""
    source = "patroni+etcds://e:2379/service/main"
    config = FailoverConfig(source=source, source_ca_file=files["ca"])
    assert config.source_tls() == TLSFiles(files["ca"])
    missing = FailoverConfig(source=source, source_ca_file="/no/ca.pem")
    with pytest.raises(ConfigurationError, match=r"source_ca_file '/no/ca\.pem': cannot be used"):
        FailoverManager(nodes=[Node("node0", "host=10.0.0.1")], config=missing)
    with pytest.raises(ConfigurationError, match="set source too"):
        FailoverConfig(source_ca_file=files["ca"])
    with pytest.raises(ConfigurationError, match="source_key_file '/k' needs source_cert_file"):
        FailoverConfig(source=source, source_key_file="/k")
    server = ServerSettings(etcd="https://e:2379", etcd_cert_file=files["both"])
    assert server.etcd_tls() == TLSFiles(None, files["both"])
    with pytest.raises(ConfigurationError, match="set etcd too"):
        ServerSettings(etcd_ca_file=files["ca"])
    with pytest.raises(ConfigurationError, match="all https:// or all http://, not") as mixed:
        ServerSettings(etcd="http://u:pw@e1:2379,https://u:pw@e2:2379")
    assert ":pw@" not in str(mixed.value)


@pytest.mark.parametrize(
    ("setting", "urls", "shown"),
    [
        (
            "patroni+etcds://e1:2379,patroni+etcds://e2/service/main",
            ("https://e1:2379", "https://e2:2379"),
            "patroni+etcds://e1:2379/service/main,patroni+etcds://e2:2379/service/main",
        ),
        (
            "patroni+etcds://u:pw@e1:2379/service/main",
            ("https://u:pw@e1:2379",),
            "patroni+etcds://u:***@e1:2379/service/main",
        ),
    ],
    ids=["etcd over TLS", "a user"],
)
def test_patroni_etcd_over_tls_is_etcds(setting: str, urls: tuple[str, ...], shown: str) -> None:
    spec = parse_source(setting)
    assert (spec.kind, spec.urls, spec.prefix) == ("patroni-etcd", urls, "/service/main/")
    shown_urls = ",".join(_as_written(mask_url(u), spec.prefix or "/") for u in spec.urls)
    assert shown_urls == shown


@pytest.mark.parametrize(
    ("setting", "says"),
    [
        (
            "patroni+etcd://u:pw@e1:2379,patroni+etcds://u:pw@e2:2379/service/main",
            "all over TLS (patroni+etcds://) or all without",
        ),
        ("patroni+etcds:/u:pw@e1:2379/service/main", "'***@e1:2379/service/main'"),
    ],
    ids=["TLS to some endpoints only", "a slash short"],
)
def test_a_bad_etcd_source_is_one_line_without_the_password(setting: str, says: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        FailoverConfig(source=setting)
    message = str(refused.value)
    assert says in message, message
    assert ":pw@" not in message
    assert "\n" not in message
