"""What every lab backend offers: nodes, actions and a status report.

The local backend (PostgreSQL binaries on this machine) and the docker
backend (testcontainers) implement :class:`Lab`, so tests, the demo and the
benchmarks are written once against this interface.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Final, Literal, Protocol

__all__ = [
    "CLIENT_HOST",
    "Lab",
    "NodeInfo",
    "NodeStatus",
    "StopMode",
    "conninfo",
    "multihost_url",
]

StopMode = Literal["smart", "fast", "immediate"]

SUPERUSER = "postgres"
DBNAME = "postgres"

# The local lab's second loopback address. Every node also listens here;
# clients (the application, a manager) may connect through it while
# replication keeps using the node's own host, so that a network fault can
# cut the clients' path to a node and leave replication alone.
CLIENT_HOST: Final = "127.0.0.2"


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
    the node (``blackhole``, ``partition``) or ``None``.
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

    def rejoin(self, name: str, upstream: str | None = None) -> None:
        """pg_rewind an old primary and start it as a standby of ``upstream``."""

    def primary(self) -> str | None:
        """The name of the node out of recovery, if exactly one is."""
        ...

    def status(self) -> list[NodeStatus]:
        """Every node's process state, role, timeline and upstream."""
        ...

    def destroy(self) -> None:
        """Stop every node, leave no process behind, and remove the lab."""
