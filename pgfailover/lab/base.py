"""What every lab backend offers: nodes, actions and a status report.

The local backend (PostgreSQL binaries on this machine) and the docker
backend (testcontainers) implement :class:`Lab`, so tests, the demo and the
benchmarks are written once against this interface.
"""

from __future__ import annotations

import json
import random
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, Literal, Protocol

from pgfailover.errors import LabError

__all__ = [
    "CLIENT_HOST",
    "HOST",
    "Lab",
    "NodeInfo",
    "NodeStatus",
    "StopMode",
    "conninfo",
    "free_port",
    "multihost_url",
    "node_infos",
    "port_free",
    "read_state",
]

StopMode = Literal["smart", "fast", "immediate"]

SUPERUSER = "postgres"
DBNAME = "postgres"

# The local lab's second loopback address. Every node also listens here;
# clients (the application, a manager) may connect through it while
# replication keeps using the node's own host, so that a network fault can
# cut the clients' path to a node and leave replication alone.
CLIENT_HOST: Final = "127.0.0.2"
HOST: Final = "127.0.0.1"  # where nodes listen and replicate


@dataclass(frozen=True)
class NodeInfo:
    """Where one lab node listens."""

    name: str
    host: str
    port: int

    @property
    def dsn(self) -> str:
        """A libpq key/value conninfo for this node (the lab uses trust auth)."""
        return conninfo(self.host, self.port)


@dataclass(frozen=True)
class NodeStatus:
    """One node as the lab sees it right now.

    ``process`` is ``running``, ``paused`` or ``stopped``; ``role`` is
    ``primary``, ``standby`` or ``None`` when the node does not answer;
    ``upstream`` names the node a standby streams from (``None`` when its WAL
    receiver is not streaming); ``fault`` is the network fault in force on
    the node (``blackhole``, ``partition``, ``backlog``) or ``None``.
    """

    name: str
    port: int
    process: str
    role: str | None = None
    timeline: int | None = None
    upstream: str | None = None
    lsn: str | None = None
    sync_state: str | None = None
    fault: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the fields."""
        return asdict(self)


def conninfo(host: str, port: int, **extra: str | int) -> str:
    """A key/value conninfo string for the lab's superuser."""
    parts = {"host": host, "port": port, "user": SUPERUSER, "dbname": DBNAME, **extra}
    return " ".join(f"{key}={value}" for key, value in parts.items())


def multihost_url(nodes: list[NodeInfo]) -> str:
    """A libpq multi-host URL naming every node (for ``from_dsn``)."""
    hosts = ",".join(f"{n.host}:{n.port}" for n in nodes)
    return f"postgresql://{SUPERUSER}@{hosts}/{DBNAME}"


class Lab(Protocol):
    """A replication cluster a test or a demo can break and repair."""

    @property
    def nodes(self) -> list[NodeInfo]:
        """Every node, in creation order (``node0`` was the first primary)."""
        ...

    def node(self, name: str) -> NodeInfo:
        """One node by name; ``KeyError`` naming it if unknown."""
        ...

    def dsn(self, name: str, client_address: bool = False) -> str:
        """The conninfo of one node (through the client address if asked)."""
        ...

    @property
    def url(self) -> str:
        """A libpq multi-host URL naming every node."""
        ...

    def start(self, name: str) -> None:
        """Start a stopped node and wait until it accepts connections."""

    def stop(self, name: str, mode: StopMode = "fast") -> None:
        """Stop a node cleanly (``pg_ctl stop -m MODE``)."""

    def kill(self, name: str) -> None:
        """Node loss: SIGKILL the postmaster and every child, one PID at a time."""

    def pause(self, name: str) -> None:
        """A hung server: SIGSTOP the postmaster and every child."""

    def resume(self, name: str) -> None:
        """Undo :meth:`pause` with SIGCONT."""

    def promote(self, name: str) -> None:
        """``pg_promote()`` a standby and wait until it leaves recovery."""

    def follow(self, name: str, upstream: str) -> None:
        """Repoint a running standby at ``upstream`` and wait until it streams."""

    def rejoin(self, name: str, upstream: str | None = None, *, sync: bool = True) -> None:
        """pg_rewind an old primary and start it as a standby of ``upstream`` (``sync``:
        then set the lab's quorum over the standbys, as its operator)."""

    def primary(self) -> str | None:
        """The name of the node out of recovery, if exactly one is."""
        ...

    def status(self) -> list[NodeStatus]:
        """Every node's process state, role, timeline and upstream."""
        ...

    def destroy(self) -> None:
        """Stop every node, leave no process behind, and remove the lab."""


def port_free(port: int) -> bool:
    """Whether a server could listen on ``port`` on both lab addresses."""
    # SO_REUSEADDR: a port with only TIME_WAIT leftovers is free for a server
    # (PostgreSQL sets it too), and must not look busy.
    for host in (HOST, CLIENT_HOST):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def free_port(taken: set[int] | None = None) -> int:
    """A TCP port free on 127.0.0.1 and 127.0.0.2, below the ephemeral range."""
    taken = taken or set()
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        if port not in taken and port_free(port):
            return port
    raise LabError("no free TCP port found on 127.0.0.1 between 20000 and 32000")


def node_infos(standbys: int, host: str = HOST) -> list[NodeInfo]:
    """``node0`` (the primary) and ``standbys`` more, each on its own free port."""
    taken: set[int] = set()
    infos = []
    for index in range(standbys + 1):
        port = free_port(taken)
        taken.add(port)
        infos.append(NodeInfo(f"node{index}", host, port))
    return infos


def read_state(directory: Path, name: str) -> dict[str, Any]:
    """The JSON state file ``name`` of the lab in ``directory``.

    Raises:
        LabError: no such file (no lab there), or not a JSON object.
    """
    path = directory / name
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        raise LabError(f"no lab in {directory} (no {name}): run 'pgfailover lab up'") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LabError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(state, dict):
        raise LabError(f"{path} is not a lab's state (not a JSON object)")
    return state
