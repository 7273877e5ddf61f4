"""The local replication lab: real clusters from this machine's binaries.

``LocalLab.create(dir, standbys=2, sync=1)`` builds a primary (``node0``) and
standbys (``node1``...) streaming from it through physical replication slots,
with ``wal_log_hints`` on so that ``pg_rewind`` works, each standby's
``application_name`` set to its node name. Its layout on disk::

    DIR/lab.json       names, ports, binaries, sync setting: what `open` reads
    DIR/node0/         data directory of node0
    DIR/node0.log      its server log

Only loopback addresses are used: each node listens on 127.0.0.1 (the lab
itself and replication) and on the client address 127.0.0.2 (see
:data:`CLIENT_HOST`), on one port picked free at creation time. Unix sockets
are off (their paths are limited to 107 bytes; TCP has no such limit).
Servers are started as an unprivileged user when the lab runs as root.

Failure detection runs on PostgreSQL's defaults (``wal_sender_timeout``,
``wal_receiver_timeout``, ``wal_receiver_status_interval`` are not set):
pgfailover must detect a lost primary in seconds without shorter timeouts,
tuning what it needs itself, so the lab must not hide that behind its own
settings. ``fsync = off`` makes the lab fast: a killed process loses
nothing, only an OS crash would.

:meth:`LocalLab.blackhole`, :meth:`LocalLab.partition` and
:meth:`LocalLab.heal` add and remove network faults with iptables (root
only; see :mod:`pgfailover.lab.netfault`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from pgfailover.errors import LabError
from pgfailover.lab import netfault
from pgfailover.lab.base import (
    CLIENT_HOST,
    HOST,
    NodeInfo,
    StopMode,
    node_infos,
    port_free,
    read_state,
)
from pgfailover.lab.binaries import PgBinaries, find_binaries
from pgfailover.lab.netfault import NetFaults
from pgfailover.lab.node import LocalNode, upstream_conninfo
from pgfailover.lab.proc import RunAs, resolve_run_as
from pgfailover.lab.topology import Topology
from pgfailover.rejoin import rejoin as rejoin_node

__all__ = ["LocalLab", "default_lab_dir"]

logger = logging.getLogger(__name__)

STATE_FILE = "lab.json"
_FORMAT = 1

SERVER_SETTINGS: dict[str, str] = {
    "unix_socket_directories": "''",
    "wal_level": "replica",
    "max_wal_senders": "16",
    "max_replication_slots": "16",
    "wal_log_hints": "on",
    "hot_standby": "on",
    "hot_standby_feedback": "on",
    "wal_keep_size": "'256MB'",
    "max_connections": "200",
    "shared_buffers": "'32MB'",
    "fsync": "off",
    "logging_collector": "off",
    "log_line_prefix": "'%m [%p] %q%a '",
    "log_min_messages": "warning",
}

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


def default_lab_dir() -> Path:
    """Where ``pgfailover lab`` keeps its cluster unless told otherwise."""
    env = os.environ.get("PGFAILOVER_LAB_DIR")
    if env:
        return Path(env)
    return Path(tempfile.gettempdir()) / f"pgfailover-lab-{os.geteuid()}"


class LocalLab(Topology):
    """A streaming-replication cluster of local PostgreSQL servers.

    Create one with :meth:`create`, reopen an existing one with :meth:`open`.
    Every action waits until it has taken effect (a promoted node is out of
    recovery, a repointed standby streams) or raises :class:`LabError`.
    Nodes also listen on :data:`CLIENT_HOST`: ``dsn(name, client_address=True)``
    and ``manager_nodes(client_address=True)`` connect through it.

    Thread safety: not thread-safe; drive a lab from one thread at a time.
    """

    client_host = CLIENT_HOST

    def __init__(
        self, directory: Path, bins: PgBinaries, run_as: RunAs, nodes: list[NodeInfo], sync: int
    ) -> None:
        self.directory = directory
        self.net = NetFaults(netfault.lab_id(directory), CLIENT_HOST)
        self.bins = bins
        self.run_as = run_as
        self.sync = sync
        self._nodes = {
            info.name: LocalNode(info, directory / info.name, bins, run_as) for info in nodes
        }

    # -- construction --------------------------------------------------

    @classmethod
    def create(
        cls,
        directory: Path | str | None = None,
        *,
        standbys: int = 2,
        sync: int = 0,
        version: int | None = None,
        progress: Progress = _quiet,
    ) -> LocalLab:
        """Build and start a new cluster of one primary and ``standbys`` standbys.

        ``sync`` > 0 turns on quorum synchronous replication:
        ``synchronous_standby_names = 'ANY sync (node1, ...)'``.

        Raises:
            LabError: ``directory`` exists and is not empty, no binaries, a
                server failed to start (the message quotes its log).
        """
        if standbys < 0:
            raise LabError(f"standbys must be >= 0, got {standbys}")
        if not 0 <= sync <= standbys:
            raise LabError(
                f"sync must be between 0 and the number of standbys ({standbys}), got {sync}"
            )
        bins = find_binaries(version)
        run_as = resolve_run_as()
        if directory is None:
            base = Path(tempfile.mkdtemp(prefix="pgfl-", dir=tempfile.gettempdir()))
        else:
            base = Path(directory).absolute()
            if base.exists() and any(base.iterdir()):
                raise LabError(
                    f"lab directory {base} exists and is not empty: remove it or pick another"
                )
            base.mkdir(parents=True, exist_ok=True)
        base.chmod(0o755)
        run_as.chown(base)
        if (
            not os.access(base, os.W_OK)
            or run_as.run(["test", "-w", str(base)], check=False).returncode
        ):
            raise LabError(
                f"lab directory {base} is not writable by OS user {run_as.name!r} "
                "(under /root it cannot be reached): pick a directory under /tmp"
            )
        lab = cls(base, bins, run_as, node_infos(standbys), sync)
        lab._save()
        try:
            lab._build(progress)
        except BaseException:
            lab.destroy()
            raise
        return lab

    @classmethod
    def open(cls, directory: Path | str) -> LocalLab:
        """Reopen the lab whose state file is in ``directory``."""
        base = Path(directory).absolute()
        state = read_state(base, STATE_FILE)
        if state.get("backend", "local") != "local":
            raise LabError(f"{base} holds a {state['backend']} lab, not a local one")
        if state.get("format") != _FORMAT:
            raise LabError(f"{base / STATE_FILE} has unknown format {state.get('format')!r}")
        bins = PgBinaries(Path(state["bindir"]), int(state["version"]))
        nodes = [NodeInfo(n["name"], n["host"], int(n["port"])) for n in state["nodes"]]
        return cls(base, bins, resolve_run_as(), nodes, int(state["sync"]))

    def _save(self) -> None:
        state = {
            "format": _FORMAT,
            "backend": "local",
            "bindir": str(self.bins.bindir),
            "version": self.bins.version,
            "sync": self.sync,
            "nodes": [{"name": n.name, "host": n.host, "port": n.port} for n in self.nodes],
        }
        (self.directory / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    def _build(self, progress: Progress) -> None:
        primary = self._nodes["node0"]
        progress(f"initdb {primary.name} (PostgreSQL {self.bins.version})")
        self.run_as.run(
            [
                self.bins.path("initdb"),
                "-D",
                str(primary.datadir),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]
        )
        conf = primary.datadir / "postgresql.conf"
        with conf.open("a") as fh:
            fh.write("\n# pgfailover lab\n")
            fh.writelines(f"{key} = {value}\n" for key, value in SERVER_SETTINGS.items())
        hba = primary.datadir / "pg_hba.conf"
        hba.write_text(
            "local all all trust\n"
            f"host all all {HOST}/32 trust\n"
            f"host all all {CLIENT_HOST}/32 trust\n"
            f"host replication all {HOST}/32 trust\n"
        )
        progress(f"start {primary.name} on port {primary.info.port}")
        self._start_checked(primary)
        standbys = [n for n in self._nodes.values() if n is not primary]
        for node in standbys:
            self.run_sql(
                primary.name, "SELECT pg_create_physical_replication_slot(%s, true)", (node.name,)
            )
        if standbys:
            first = standbys[0]
            progress(f"pg_basebackup {first.name} from {primary.name}")
            self.run_as.run(
                [
                    self.bins.path("pg_basebackup"),
                    "-d",
                    primary.info.dsn,
                    "-D",
                    str(first.datadir),
                    "-X",
                    "stream",
                    "-c",
                    "fast",
                    "--no-sync",
                ]
            )
            # The same backup for the others, copied before a standby starts from it. (The
            # primary's own initdb is never copied: each lab needs a system identifier of
            # its own, which a manager checks to refuse another cluster's node.)
            for node in standbys[1:]:
                progress(f"{node.name}: a copy of {first.name}'s base backup")
                self.run_as.run(["cp", "-a", "--", str(first.datadir), str(node.datadir)])
        for node in standbys:
            node.make_standby(primary.info)
            progress(f"start {node.name} on port {node.info.port}")
            self._start_checked(node)
        for node in standbys:
            self.wait_streaming(node.name, primary.name)
        if self.sync:
            progress(f"quorum sync: ANY {self.sync} of {len(standbys)} standbys")
        self._apply_sync(primary.name)
        progress("ready")

    # -- node processes --------------------------------------------------

    @property
    def nodes(self) -> list[NodeInfo]:
        """Every node, in creation order."""
        return [node.info for node in self._nodes.values()]

    def describe(self) -> str:
        """What runs the lab, for ``pgfailover lab`` to print."""
        return f"PostgreSQL {self.bins.version}"

    def local_node(self, name: str) -> LocalNode:
        """The :class:`LocalNode` (data directory, PIDs) of one node."""
        self.node(name)  # raises a LabError naming the known nodes
        return self._nodes[name]

    def process_state(self, name: str) -> str:
        """``running``, ``paused`` or ``stopped``."""
        return self.local_node(name).process_state()

    def pid(self, name: str) -> int | None:
        """The verified postmaster PID of one node."""
        return self.local_node(name).pid()

    def _start_checked(self, node: LocalNode) -> None:
        if node.process_state() == "stopped" and not port_free(node.info.port):
            raise LabError(
                f"{node.name}: port {node.info.port} on {HOST} or {CLIENT_HOST}"
                " is taken by another process"
            )
        try:
            node.start()
        except LabError as exc:
            tail = ""
            if node.logfile.exists():
                tail = "\n".join(node.logfile.read_text(errors="replace").splitlines()[-15:])
            raise LabError(f"{node.name} failed to start: {exc}\n{tail}".rstrip()) from None

    def start(self, name: str) -> None:
        """Start a stopped node and wait until it accepts connections."""
        self._start_checked(self.local_node(name))

    def start_all(self, progress: Progress = _quiet) -> None:
        """Start every stopped node (``lab up`` on an existing lab)."""
        for node in self._nodes.values():
            if node.process_state() == "paused":
                node.resume()
            if node.process_state() == "stopped":
                progress(f"start {node.name} on port {node.info.port}")
                self._start_checked(node)
        progress("ready")

    def stop(self, name: str, mode: StopMode = "fast") -> None:
        """Stop a node cleanly (``pg_ctl stop -m MODE``)."""
        self.local_node(name).stop(mode)

    def kill(self, name: str) -> None:
        """Node loss: SIGKILL the postmaster and every child."""
        self.local_node(name).kill()

    def pause(self, name: str) -> None:
        """A hung server: SIGSTOP the postmaster and every child."""
        self.local_node(name).pause()

    def resume(self, name: str) -> None:
        """SIGCONT a paused node."""
        self.local_node(name).resume()

    def _rejoin_node(self, name: str, upstream: str) -> None:
        """:func:`pgfailover.rejoin.rejoin` (``pgfailover rejoin``'s code), as the server user."""
        node = self.local_node(name)

        def stop() -> None:
            if self.process_state(name) != "stopped":
                self.stop(name, "fast")

        rejoin_node(
            node.datadir,
            self.dsn(upstream),
            name=name,
            bindir=self.bins.bindir,
            run=lambda argv: self.run_as.run(argv, timeout=300).stdout,
            stop=stop,
            start=lambda: self.start(name),
            conninfo=upstream_conninfo(self.node(upstream), name),
            progress=lambda line: logger.info("lab: rejoin %s: %s", name, line),
            own=self.run_as.chown,
        )

    # -- network faults (iptables, root only) ------------------------------

    def blackhole(self, name: str) -> None:
        """The node vanishes: drop every TCP packet to or from its port, no RST.

        New connections hang, open ones (standbys' WAL receivers streaming
        from it too) go silent; its own outgoing connections (its WAL
        receiver) are not cut. Replaces the node's earlier fault.
        """
        self.net.apply(name, self.node(name).port, "blackhole")

    def partition(self, name: str) -> None:
        """Cut clients off the node: drop its TCP traffic on the client address only.

        Connections through :data:`CLIENT_HOST` (``client_address=True``)
        hang; replication and the lab's own connections over 127.0.0.1 go on.
        """
        self.net.apply(name, self.node(name).port, "partition")

    def backlog(self, name: str) -> None:
        """A full listen backlog: drop new connections' first packet (SYN) to its port.

        New connections hang until their timeout; open ones go on.
        """
        self.net.apply(name, self.node(name).port, "backlog")

    def heal(self, name: str | None = None) -> None:
        """Remove one node's network fault, or every fault of this lab; idempotent."""
        self.net.heal(self.node(name).name if name else None)

    def faults(self) -> dict[str, str]:
        """The network fault on each node that has one, read back from iptables.

        Empty when iptables cannot be used here (not root, not installed).
        """
        if netfault.unavailable_reason():
            return {}
        return dict(self.net.active())

    # -- teardown --------------------------------------------------------

    def stop_all(self) -> None:
        """Stop every node (``immediate``), killing any that resists for 5 s.

        An immediate stop ends in well under a second. Twice in full test runs
        a chaos test's teardown (a network fault healed, then this) took 31 s,
        which looks like ``pg_ctl``'s 30 s wait run out; alone it took 0.4 s.
        The lab is going away: waiting longer buys nothing.
        """
        for node in self._nodes.values():
            try:
                node.stop("immediate", wait=5)
            except LabError:
                node.kill()
            if node.leftovers():
                node.kill()

    def leftovers(self) -> list[int]:
        """PIDs of any process still working in one of the lab's data dirs."""
        return [pid for node in self._nodes.values() for pid in node.leftovers()]

    def destroy(self) -> None:
        """Heal its network faults, stop every node, remove the directory.

        Leaves no process behind. Nodes are stopped and the directory removed
        even when healing fails; that failure is raised afterwards.
        """
        heal_error: LabError | None = None
        if not netfault.unavailable_reason():
            try:
                self.heal()
            except LabError as exc:
                heal_error = exc
        self.stop_all()
        remaining = self.leftovers()
        if remaining:
            raise LabError(f"lab processes {remaining} survived; {self.directory} kept")
        shutil.rmtree(self.directory, ignore_errors=True)
        if heal_error is not None:
            raise LabError(f"lab removed, but its network faults were not: {heal_error}")

    def __enter__(self) -> LocalLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def __repr__(self) -> str:
        return f"<LocalLab {self.directory} nodes={[n.name for n in self.nodes]} sync={self.sync}>"
