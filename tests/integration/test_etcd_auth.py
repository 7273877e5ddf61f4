"""etcd with authentication on (Debian's etcd on loopback): the arbiter lease, the shared
pause and the Patroni source's reads and watch, through a user and password in the URL.

No PostgreSQL: what is tested is pgfailover's etcd client against a real
etcd that refuses calls without a valid token. What must hold: with the
right user the lease is taken and confirmed, the pause is written and read
back, a token etcd no longer takes is replaced, Patroni's keys are read and
their changes pushed by the watch; without a user, or with a wrong password,
one line says why; the password is in no status, error or log line.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgfailover.config import FailoverConfig
from pgfailover.etcd import Etcd, EtcdError
from pgfailover.lease import ArbiterLease
from pgfailover.maintenance import SharedPause
from pgfailover.topology.patroni import PatroniEtcdSource

from .etcd import PATRONI, etcd_server, read_and_watch

pytestmark = pytest.mark.timeout(60)

USER = "pgfailover"
PASSWORD = "s3cret/p@ss:word#1"  # characters a URL must percent-encode


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _enable_auth(port: int) -> None:
    """A root user (etcd needs one to turn authentication on) and a user that may read
    and write the arbiter's and Patroni's keys, nothing else."""
    admin = Etcd([f"http://127.0.0.1:{port}"])
    try:
        admin.call("auth/user/add", {"name": "root", "password": "root-pw-0123"})
        admin.call("auth/role/add", {"name": "root"})
        admin.call("auth/user/grant", {"user": "root", "role": "root"})
        admin.call("auth/user/add", {"name": USER, "password": PASSWORD})
        admin.call("auth/role/add", {"name": "pgfailover"})
        for prefix in ("/pgfailover/", PATRONI):
            end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
            perm = {"permType": "READWRITE", "key": _b64(prefix), "range_end": _b64(end)}
            admin.call("auth/role/grant", {"name": "pgfailover", "perm": perm})
        admin.call("auth/user/grant", {"user": USER, "role": "pgfailover"})
        admin.call("auth/enable", {})
    finally:
        admin.close()


@pytest.fixture
def port(tmp_path: Path) -> Iterator[int]:
    with etcd_server(tmp_path) as etcd_port:
        _enable_auth(etcd_port)
        yield etcd_port


def _url(port: int, password: str = PASSWORD) -> str:
    return f"http://{USER}:{urllib.parse.quote(password, safe='')}@127.0.0.1:{port}"


def test_the_lease_and_the_pause_work_with_a_user_and_never_show_its_password(
    port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    lease = ArbiterLease(Etcd([_url(port)]), "main", identity="a:1", ttl=3)
    try:
        lease._step()  # one look: takes the free key
        assert lease.holding is not None
        assert lease.may_promote(automatic=True) is None
        lease.share_pause(SharedPause(time.time(), "kernel upgrade", "a:1"))
        assert lease.may_promote(automatic=True) is not None  # read back through the token
        lease.etcd._token = "no-longer-valid"  # expired (etcd's --auth-token-ttl), restarted
        assert lease.may_promote() is None  # a new token was asked for, the call made again
        status = json.dumps(lease.status())
        assert "***" in status
    finally:
        lease.close()
    for text in (status, caplog.text):
        assert PASSWORD not in text
        assert urllib.parse.quote(PASSWORD, safe="") not in text


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://127.0.0.1:{port}", "user name is empty"),
        (_url(0, "wrong-password").replace(":0", ":{port}"), "authentication failed"),
    ],
    ids=["no user", "wrong password"],
)
def test_without_the_right_user_one_line_says_why(port: int, url: str, says: str) -> None:
    etcd = Etcd([url.format(port=port)])
    try:
        with pytest.raises(EtcdError, match=says) as refused:
            etcd.get_many(["/pgfailover/main/arbiter"])
        assert "\n" not in str(refused.value)
        assert "wrong-password" not in str(refused.value)
    finally:
        etcd.close()


def test_the_patroni_source_reads_and_watches_through_the_token(port: int) -> None:
    writer = Etcd([_url(port)])
    try:
        shown = read_and_watch(
            writer,
            FailoverConfig(unhealthy_threshold=1),
            lambda reader: PatroniEtcdSource(
                [_url(port)], PATRONI, reader, connect_timeout=1.0, silence=5.0, poll=30.0
            ),
        )
        assert PASSWORD not in shown
    finally:
        writer.close()
