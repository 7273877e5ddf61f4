"""A one-member etcd (Debian's ``etcd-server``) on loopback, for the labs and the tests.

The arbiters' lease (:mod:`pgfailover.lease`) and Patroni
(:mod:`pgfailover.lab.patroni`) keep their keys in etcd. This starts the
machine's ``etcd`` binary with its data in a directory of the caller's,
listening for clients on 127.0.0.1 and on the lab's second loopback address
127.0.0.2 (same port, so that a test can cut one client's path to etcd
with iptables on 127.0.0.2 and leave the others'), and stops it by its PID.
With :class:`ServerTLS` it serves its clients over TLS only, and asks them
for a certificate signed by a CA of the caller's (``--client-cert-auth``).
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from pgfailover.errors import LabError
from pgfailover.etcd import Etcd, EtcdError
from pgfailover.lab.base import CLIENT_HOST, HOST, free_port

__all__ = ["EtcdServer", "ServerTLS"]


@dataclass(frozen=True)
class ServerTLS:
    """etcd's certificate and key for its client port, the CA its clients' certificates
    must be signed by, and what :meth:`EtcdServer.wait_ready` connects with."""

    cert_file: str
    key_file: str
    client_ca_file: str
    client: ssl.SSLContext


class EtcdServer:
    """One etcd process with its data in ``directory``; :meth:`stop` ends it.

    Thread safety: none needed; the lab or test that started it stops it.
    """

    def __init__(
        self, directory: Path, *, port: int | None = None, tls: ServerTLS | None = None
    ) -> None:
        binary = shutil.which("etcd")
        if binary is None:
            raise LabError("no etcd binary on PATH: install Debian's etcd-server (make does)")
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.port = port or free_port()
        self.tls = tls
        scheme = "https" if tls else "http"
        peer = free_port({self.port})
        self.log_path = directory / "etcd.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [
                binary,
                "--name=lab",
                f"--data-dir={directory / 'etcd'}",
                f"--listen-client-urls={scheme}://{HOST}:{self.port},"
                f"{scheme}://{CLIENT_HOST}:{self.port}",
                f"--advertise-client-urls={self.url}",
                f"--listen-peer-urls=http://{HOST}:{peer}",
                f"--initial-advertise-peer-urls=http://{HOST}:{peer}",
                f"--initial-cluster=lab=http://{HOST}:{peer}",
                *(
                    [
                        f"--cert-file={tls.cert_file}",
                        f"--key-file={tls.key_file}",
                        "--client-cert-auth",
                        f"--trusted-ca-file={tls.client_ca_file}",
                    ]
                    if tls
                    else []
                ),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    @property
    def url(self) -> str:
        """The client URL on 127.0.0.1."""
        return f"{'https' if self.tls else 'http'}://{HOST}:{self.port}"

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Return once etcd answers (polling its status).

        Raises:
            LabError: it exited or did not answer in time (the end of its log says why).
        """
        client = Etcd([self.url], timeout=1.0, ssl_context=self.tls.client if self.tls else None)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    client.call("maintenance/status", {})
                    return
                except EtcdError:
                    if time.monotonic() > deadline or self.proc.poll() is not None:
                        tail = self.log_path.read_text(errors="replace")[-2000:]
                        self.stop()
                        raise LabError(f"etcd did not start: {tail}") from None
                    time.sleep(0.05)
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop etcd (SIGTERM, then SIGKILL after ``timeout``), by its PID."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self._log.close()
