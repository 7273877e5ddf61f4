"""A Patroni lab: PostgreSQL members run by real Patroni on a real etcd, on loopback.

Teams that already run Patroni follow it with ``source =
"patroni+http://..."`` (:mod:`pgfailover.topology.patroni`); this lab is
what the tests and ``benchmarks/scale_patroni.py`` follow. It shares the local
lab's parts: the machine's PostgreSQL binaries (:func:`find_binaries`), the
unprivileged OS user servers run as when we are root (:func:`resolve_run_as`)
and free ports; etcd is :class:`~pgfailover.lab.etcdserver.EtcdServer`.

Each member is a ``python -m patroni`` process (Patroni from PyPI, in the
project's dev extras) with its own YAML file (written as JSON, which YAML
reads), its REST API on 127.0.0.1, and PostgreSQL listening on 127.0.0.1
and 127.0.0.2 with trust authentication (the lab's rule). ``loop_wait`` is
1 s; Patroni refuses a ``ttl`` under 20 s, so a crashed leader is replaced
after about 20 s, while a switchover takes about a second.

Processes are stopped by their PIDs: Patroni's own, and the postmaster's
found through its data directory (:func:`~pgfailover.lab.proc.processes_in`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import urllib3

from pgfailover.config import Node
from pgfailover.errors import LabError
from pgfailover.lab.base import CLIENT_HOST, DBNAME, HOST, SUPERUSER, NodeInfo, free_port
from pgfailover.lab.binaries import find_binaries
from pgfailover.lab.etcdserver import EtcdServer
from pgfailover.lab.proc import (
    RunAs,
    kill_server,
    processes_in,
    resolve_run_as,
    signal_pids,
    wait_gone,
)

__all__ = ["PatroniLab", "PatroniMember"]

LOOP_WAIT = 1
TTL = 20  # Patroni's minimum


@dataclass(frozen=True)
class PatroniMember:
    """One member: its PostgreSQL (``node``) and its REST API."""

    node: NodeInfo
    api_port: int

    @property
    def name(self) -> str:
        """The member's (and the node's) name."""
        return self.node.name

    @property
    def api_url(self) -> str:
        """Its REST API."""
        return f"http://{HOST}:{self.api_port}"


class PatroniLab:
    """``members`` Patroni members of cluster ``scope`` on their own etcd, in ``directory``.

    Thread safety: the lab's methods are called by one thread (the test's);
    :meth:`cluster` and :meth:`leader` only read over HTTP.
    """

    def __init__(self, directory: Path, members: list[PatroniMember], scope: str) -> None:
        self.directory = directory
        self.members = members
        self.scope = scope
        self.run_as: RunAs = resolve_run_as()
        self.etcd: EtcdServer | None = None
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._patroni: tuple[list[str], dict[str, str]] | None = None
        self.max_connections = 300
        self._http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=5.0))

    @classmethod
    def create(
        cls, members: int = 3, scope: str = "lab", max_connections: int = 300
    ) -> PatroniLab:
        """Start etcd and ``members`` Patroni members; return once one leads and all stream.

        Raises:
            LabError: no PostgreSQL binaries, Patroni or etcd, or the cluster
                did not come up (the member's log says why).
        """
        base = Path(tempfile.mkdtemp(prefix="pgfl-patroni-", dir=tempfile.gettempdir()))
        taken: set[int] = set()
        infos = []
        for index in range(members):
            port, api = free_port(taken), free_port(taken | {0})
            taken.update((port, api))
            infos.append(PatroniMember(NodeInfo(f"node{index}", HOST, port), api))
        lab = cls(base, infos, scope)
        lab.max_connections = max_connections
        try:
            lab._start()
        except BaseException:
            lab.destroy()
            raise
        return lab

    # -- reading ----------------------------------------------------------------

    @property
    def nodes(self) -> list[NodeInfo]:
        """The members' PostgreSQL servers, in order."""
        return [m.node for m in self.members]

    @property
    def source(self) -> str:
        """The ``source`` setting that follows this lab over Patroni's REST API."""
        return ",".join(f"patroni+{m.api_url}" for m in self.members)

    @property
    def etcd_source(self) -> str:
        """The ``source`` setting that watches this lab's keys in etcd."""
        if self.etcd is None:
            raise LabError("the Patroni lab's etcd is not running")
        return f"patroni+etcd://{HOST}:{self.etcd.port}/service/{self.scope}"

    def manager_nodes(self) -> list[Node]:
        """The members as a manager's nodes (the DSNs match Patroni's connect_address)."""
        return [Node(m.name, m.node.dsn, priority=i) for i, m in enumerate(self.members)]

    def run_sql(self, name: str, sql: str) -> list[tuple[Any, ...]]:
        """Run ``sql`` on member ``name`` (autocommit); its rows."""
        with psycopg.connect(
            self.member(name).node.dsn, autocommit=True, connect_timeout=10
        ) as conn:
            cur = conn.execute(sql.encode())
            return cur.fetchall() if cur.description is not None else []

    def node(self, name: str) -> NodeInfo:
        """Member ``name``'s PostgreSQL."""
        return self.member(name).node

    def member(self, name: str) -> PatroniMember:
        """The member called ``name``."""
        for m in self.members:
            if m.name == name:
                return m
        raise LabError(f"no member {name!r} in the Patroni lab")

    def cluster(self) -> dict[str, Any]:
        """``GET /cluster`` from the first member that answers.

        Raises:
            LabError: no member's REST API answered.
        """
        for m in self.members:
            try:
                response = self._http.request("GET", f"{m.api_url}/cluster")
            except urllib3.exceptions.HTTPError:
                continue
            if response.status == 200:
                data = response.json()
                if isinstance(data, dict):
                    return data
        raise LabError("no Patroni REST API answered")

    def leader(self) -> str | None:
        """The member holding the leader key with PostgreSQL running, if any."""
        try:
            members = self.cluster().get("members", [])
        except LabError:
            return None
        for m in members:
            if m.get("role") == "leader" and m.get("state") == "running":
                return str(m["name"])
        return None

    def wait(self, *, leader: str | None = None, streaming: int, timeout: float = 90.0) -> str:
        """Wait until a leader (``leader`` if given) runs and ``streaming`` replicas stream.

        Raises:
            LabError: not within ``timeout`` (the cluster as last seen is in the message).
        """
        deadline = time.monotonic() + timeout
        seen: Any = None
        while time.monotonic() < deadline:
            try:
                seen = self.cluster().get("members", [])
            except LabError:
                seen = None
            if seen:
                leaders = [m["name"] for m in seen if m.get("role") == "leader"]
                running = [m for m in seen if m.get("state") == "running"]
                replicas = [m for m in seen if m.get("state") == "streaming"]
                if (
                    leaders
                    and (leader is None or leaders[0] == leader)
                    and any(m["name"] == leaders[0] for m in running)
                    and len(replicas) >= streaming
                ):
                    return str(leaders[0])
            time.sleep(0.1)
        raise LabError(
            f"Patroni cluster not ready within {timeout:g}s: {seen}; {self._log_tails()}"
        )

    def _log_tails(self) -> str:
        """The end of each member's log, for an error message."""
        tails = []
        for m in self.members:
            path = self.directory / m.name / "patroni.log"
            if path.exists():
                tails.append(f"{m.name}: ...{path.read_text(errors='replace')[-800:]}")
        return "\n".join(tails)

    # -- acting -----------------------------------------------------------------

    def switchover(self, candidate: str, timeout: float = 60.0) -> None:
        """Ask Patroni to hand the leader role to ``candidate`` now (``POST /switchover``).

        Raises:
            LabError: Patroni refused or did not finish in time.
        """
        leader = self.leader()
        if leader is None:
            raise LabError("no leader to switch over from")
        body = json.dumps({"leader": leader, "candidate": candidate}).encode()
        response = self._http.request(
            "POST",
            f"{self.member(leader).api_url}/switchover",
            body=body,
            headers={"Content-Type": "application/json"},
            timeout=urllib3.Timeout(total=timeout),
        )
        if response.status != 200:
            raise LabError(f"switchover to {candidate} refused: {response.data.decode()[:300]}")

    def start(self, name: str) -> None:
        """Start the member's Patroni (which starts or rejoins its PostgreSQL)."""
        member = self.member(name)
        proc = self._procs.get(name)
        if proc is not None and proc.poll() is None:
            return
        config = self.directory / name / "patroni.yml"
        log = (self.directory / name / "patroni.log").open("ab")
        command, extra = self._command()
        env = {k: v for k, v in os.environ.items() if k != "PGPASSWORD"}
        env.update(extra)
        try:
            self._procs[name] = subprocess.Popen(
                [*command, str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=str(self.directory / member.name),
                env=env,
                user=self.run_as.uid,
                group=self.run_as.gid,
                extra_groups=[] if self.run_as.uid is not None else None,
            )
        finally:
            log.close()

    def patroni_pids(self) -> list[int]:
        """The running members' Patroni PIDs (each one's PostgreSQL runs as its child)."""
        return [proc.pid for proc in self._procs.values() if proc.poll() is None]

    def freeze(self, name: str) -> None:
        """SIGSTOP the member's Patroni (its REST API hangs; PostgreSQL runs on)."""
        proc = self._procs.get(name)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGSTOP)

    def thaw(self, name: str) -> None:
        """SIGCONT the member's Patroni."""
        proc = self._procs.get(name)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)

    def kill(self, name: str) -> None:
        """kill -9 the member's Patroni and its PostgreSQL (a crashed host): Patroni is
        stopped first (it must not start PostgreSQL again meanwhile), then the server's
        processes die at one moment (:func:`~pgfailover.lab.proc.kill_server`), then
        Patroni."""
        datadir = self.directory / name / "data"
        proc = self._procs.get(name)
        running = proc is not None and proc.poll() is None
        if proc is not None and running:
            proc.send_signal(signal.SIGSTOP)
        killed = kill_server(datadir)
        if proc is not None and running:
            proc.kill()
            proc.wait(10)
        leftovers = [p for p in processes_in(datadir) if p not in killed]
        signal_pids(leftovers, signal.SIGKILL)
        pids = [*killed, *leftovers]
        wait_gone(pids, 10)

    def stop(self, name: str) -> None:
        """Stop the member: Patroni (SIGTERM stops its PostgreSQL too), then any leftover."""
        proc = self._procs.get(name)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # a frozen one could not stop
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        pids = processes_in(self.directory / name / "data")
        if pids:
            signal_pids(pids, signal.SIGQUIT)
            if not wait_gone(pids, 10):
                signal_pids(pids, signal.SIGKILL)
                wait_gone(pids, 10)

    def destroy(self) -> None:
        """Stop every member and etcd, and remove the lab's directory."""
        for proc in self._procs.values():  # all at once: each waits for its PostgreSQL
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    proc.send_signal(signal.SIGCONT)
                    proc.terminate()
        for m in self.members:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                self.stop(m.name)
        if self.etcd is not None:
            self.etcd.stop()
        self._http.clear()
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- setting up -------------------------------------------------------------

    def _command(self) -> tuple[list[str], dict[str, str]]:
        """How to run Patroni as the lab's OS user: this interpreter, or, when that
        user cannot reach it (a Python under root's home), the system's Python of the
        same version with this environment's packages alone on its path (-S: none of the
        system's, which may not fit this environment's)."""
        if self._patroni is not None:
            return self._patroni
        own = [sys.executable, "-m", "patroni"]
        if self.run_as.uid is None or self._runnable(sys.executable):
            self._patroni = own, {}
            return self._patroni
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        other = shutil.which(version, path="/usr/local/bin:/usr/bin:/bin")
        if other is None or not self._runnable(other):
            raise LabError(
                f"OS user {self.run_as.name!r} cannot run {sys.executable} and there is no "
                f"system {version}: run the lab from a Python that user can execute"
            )
        paths = [p for p in site.getsitepackages() if Path(p).is_dir()]
        self._patroni = [other, "-S", "-m", "patroni"], {"PYTHONPATH": os.pathsep.join(paths)}
        return self._patroni

    def _runnable(self, path: str) -> bool:
        return self.run_as.run(["test", "-x", path], check=False).returncode == 0

    def _start(self) -> None:
        bins = find_binaries()
        self.run_as.chown(self.directory)
        self.etcd = EtcdServer(self.directory / "etcd")
        self.etcd.wait_ready()
        for m in self.members:
            home = self.directory / m.name
            home.mkdir()
            self.run_as.chown(home)
            (home / "patroni.yml").write_text(json.dumps(self._config(m, str(bins.bindir))))
        first, rest = self.members[0], self.members[1:]
        self.start(first.name)
        self.wait(leader=first.name, streaming=0)
        for m in rest:
            self.start(m.name)
        self.wait(leader=first.name, streaming=len(rest))

    def _config(self, m: PatroniMember, bindir: str) -> dict[str, Any]:
        if self.etcd is None:
            raise LabError("the Patroni lab's etcd is not running")
        home = self.directory / m.name
        hba = ["local all all trust"] + [
            f"host {db} all {addr}/32 trust"
            for db in ("all", "replication")
            for addr in (HOST, CLIENT_HOST)
        ]
        return {
            "scope": self.scope,
            "namespace": "/service/",
            "name": m.name,
            "restapi": {
                "listen": f"{HOST}:{m.api_port}",
                "connect_address": f"{HOST}:{m.api_port}",
            },
            "etcd3": {"hosts": [f"{HOST}:{self.etcd.port}"]},
            "bootstrap": {
                "dcs": {
                    "ttl": TTL,
                    "loop_wait": LOOP_WAIT,
                    "retry_timeout": 5,
                    "maximum_lag_on_failover": 16 * 1024 * 1024,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "parameters": {
                            "wal_level": "replica",
                            "hot_standby": "on",
                            "wal_log_hints": "on",
                            "max_wal_senders": 10,
                            "max_replication_slots": 10,
                            "wal_keep_size": "128MB",
                            # Patroni keeps this one in etcd, the same on every member.
                            "max_connections": self.max_connections,
                        },
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"locale": "C"}],
            },
            "postgresql": {
                "listen": f"{HOST},{CLIENT_HOST}:{m.node.port}",
                "connect_address": f"{HOST}:{m.node.port}",
                "data_dir": str(home / "data"),
                "bin_dir": bindir,
                "pgpass": str(home / "pgpass"),
                "authentication": {
                    "superuser": {"username": SUPERUSER},
                    "replication": {"username": "replicator"},
                    "rewind": {"username": SUPERUSER},
                },
                "database": DBNAME,
                "pg_hba": hba,
                "parameters": {
                    "unix_socket_directories": str(home),
                    "fsync": "off",
                    "synchronous_commit": "on",
                },
            },
        }
