"""The docker lab backend: the same cluster on the official ``postgres`` image.

Selected with ``PGFAILOVER_LAB=docker`` (see :func:`pgfailover.lab.create_lab`)
where a Docker engine answers; it needs the ``docker`` extra (testcontainers).
Each node is a container on a private network, reachable by its node name
inside the network and on a free port of 127.0.0.1 from the host, with its
data in a named volume so that a stopped or killed node keeps its data.

Process actions map onto the container: ``kill`` is SIGKILL to the
postmaster, which is the container's PID 1 (the kernel then kills every
process of the container); ``pause`` freezes the container's cgroup;
``stop`` sends the postmaster the signal of the pg_ctl mode. ``pg_rewind``
and standby configuration run in one-off containers on the node's volume.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from typing import Any

from pgfailover.errors import LabError
from pgfailover.lab.base import HOST, NodeInfo, StopMode, node_infos
from pgfailover.lab.local import SERVER_SETTINGS
from pgfailover.lab.node import upstream_conninfo
from pgfailover.lab.topology import Topology

__all__ = ["DEFAULT_IMAGE", "DockerLab", "docker_available"]

logger = logging.getLogger(__name__)

DEFAULT_IMAGE = "postgres:16.4-bookworm"
PGDATA = "/var/lib/postgresql/data"
_STOP_SIGNALS = {"smart": "SIGTERM", "fast": "SIGINT", "immediate": "SIGQUIT"}


def docker_available() -> str | None:
    """``None`` when a Docker engine answers, else the reason it does not."""
    try:
        import docker
    except ImportError:
        return "the docker extra is not installed: pip install 'pgfailover[docker]'"
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if host.startswith("unix://") and not os.path.exists(host[len("unix://") :]):
        return f"no Docker engine: {host} does not exist"
    try:
        client = docker.from_env()
    except Exception as exc:  # noqa: BLE001 - any failure means "no engine"
        return f"no Docker engine answers at {host} ({type(exc).__name__})"
    try:
        client.ping()
    except Exception as exc:  # noqa: BLE001
        return f"the Docker engine at {host} does not answer ({type(exc).__name__})"
    finally:
        client.close()
    return None


def _server_args() -> list[str]:
    args = ["postgres"]
    for key, value in SERVER_SETTINGS.items():
        if key in ("unix_socket_directories", "logging_collector"):
            continue
        args += ["-c", f"{key}={value.strip(chr(39))}"]
    return args


class DockerLab(Topology):
    """A streaming-replication cluster of ``postgres`` containers.

    Thread safety: not thread-safe; drive a lab from one thread at a time.
    """

    def __init__(self, client: Any, network: Any, image: str, infos: list[NodeInfo], sync: int):
        self._client = client
        self._network = network
        self._image = image
        self._infos = infos
        self.sync = sync
        self._tag = network.name
        self._containers: dict[str, Any] = {}

    @classmethod
    def create(cls, *, standbys: int = 2, sync: int = 0, image: str | None = None) -> DockerLab:
        """Start a primary and ``standbys`` standbys in containers."""
        reason = docker_available()
        if reason:
            raise LabError(reason)
        import docker

        client = docker.from_env()
        tag = f"pgfailover-lab-{uuid.uuid4().hex[:8]}"
        network = client.networks.create(tag, driver="bridge")
        infos = node_infos(standbys)
        lab = cls(
            client,
            network,
            image or os.environ.get("PGFAILOVER_LAB_IMAGE", DEFAULT_IMAGE),
            infos,
            sync,
        )
        try:
            lab._build()
        except BaseException:
            lab.destroy()
            raise
        return lab

    # -- containers ------------------------------------------------------

    def _volume(self, name: str) -> str:
        return f"{self._tag}-{name}"

    def _run_container(self, name: str, script: str) -> Any:
        container = self._client.containers.run(
            self._image,
            command=["bash", "-c", script],
            name=f"{self._tag}-{name}",
            hostname=name,
            network=self._network.name,
            environment={"POSTGRES_HOST_AUTH_METHOD": "trust", "PGDATA": PGDATA},
            volumes={self._volume(name): {"bind": PGDATA, "mode": "rw"}},
            ports={"5432/tcp": (HOST, self.node(name).port)},
            detach=True,
        )
        self._containers[name] = container
        return container

    def _one_off(self, name: str, script: str) -> None:
        """Run ``script`` as postgres in a throw-away container on ``name``'s volume."""
        output = self._client.containers.run(
            self._image,
            command=["bash", "-c", script],
            user="postgres",
            network=self._network.name,
            environment={"PGDATA": PGDATA},
            volumes={self._volume(name): {"bind": PGDATA, "mode": "rw"}},
            remove=True,
        )
        logger.debug("lab: one-off on %s: %s", name, output)

    def _wait_ready(self, name: str, timeout: float = 90.0) -> None:
        self.wait_for(
            lambda: self.in_recovery(name) is not None, timeout, f"{name} to accept connections"
        )

    def _build(self) -> None:
        args = " ".join(f"'{a}'" for a in _server_args())
        hba = "echo 'host replication all all trust' >> \"$PGDATA/pg_hba.conf\""
        init = (
            "mkdir -p /docker-entrypoint-initdb.d && "
            f"printf '%s\\n' \"{hba}\" > /docker-entrypoint-initdb.d/10-replication.sh"
        )
        self._run_container("node0", f"{init} && exec docker-entrypoint.sh {args}")
        self._wait_ready("node0")
        for info in self._infos[1:]:
            self.run_sql(
                "node0", "SELECT pg_create_physical_replication_slot(%s, true)", (info.name,)
            )
            conninfo = self._replication_conninfo("node0", info.name)
            script = (
                f"mkdir -p $PGDATA && chown postgres $PGDATA && chmod 700 $PGDATA && "
                f"if [ ! -s $PGDATA/PG_VERSION ]; then "
                "gosu postgres pg_basebackup -h node0 -U postgres -D $PGDATA "
                "-X stream -c fast && "
                f"gosu postgres touch $PGDATA/standby.signal && "
                f"printf \"primary_conninfo = '%s'\\nprimary_slot_name = '%s'\\n\" "
                f"'{conninfo}' '{info.name}' >> $PGDATA/postgresql.auto.conf; fi && "
                f"exec docker-entrypoint.sh {args}"
            )
            self._run_container(info.name, script)
        for info in self._infos[1:]:
            self._wait_ready(info.name)
            self.wait_streaming(info.name, "node0", timeout=60)
        self._apply_sync("node0")

    # -- Topology hooks --------------------------------------------------

    @property
    def nodes(self) -> list[NodeInfo]:
        """Every node, in creation order."""
        return list(self._infos)

    def _replication_conninfo(self, upstream: str, name: str) -> str:
        return upstream_conninfo(NodeInfo(upstream, upstream, 5432), name)

    def _sender_name(self, host: str | None, port: int | None) -> str | None:
        return host if host in self._containers else None

    def process_state(self, name: str) -> str:
        """``running``, ``paused`` or ``stopped`` from the container's status."""
        self.node(name)
        container = self._containers.get(name)
        if container is None:
            return "stopped"
        container.reload()
        return {"running": "running", "paused": "paused"}.get(container.status, "stopped")

    def start(self, name: str) -> None:
        """Start the node's container and wait until it accepts connections."""
        if self.process_state(name) == "stopped":
            self._containers[name].start()
        self._wait_ready(name)

    def stop(self, name: str, mode: StopMode = "fast") -> None:
        """Signal the postmaster as ``pg_ctl stop -m MODE`` would; wait for exit."""
        if self.process_state(name) == "paused":
            self.resume(name)
        if self.process_state(name) == "running":
            container = self._containers[name]
            container.kill(signal=_STOP_SIGNALS[mode])
            container.wait(timeout=60)

    def kill(self, name: str) -> None:
        """SIGKILL the postmaster (PID 1): every process of the node dies."""
        if self.process_state(name) == "paused":
            self._containers[name].unpause()
        if self.process_state(name) == "running":
            self._containers[name].kill(signal="SIGKILL")
            self._containers[name].wait(timeout=30)

    def pause(self, name: str) -> None:
        """Freeze every process of the node."""
        self._containers[name].pause()

    def resume(self, name: str) -> None:
        """Thaw a paused node."""
        self._containers[name].unpause()

    def _rejoin_node(self, name: str, upstream: str) -> None:
        if self.process_state(name) != "stopped":
            self.stop(name, "fast")
        # A newly promoted source must checkpoint once, or pg_rewind reads
        # its old timeline from the control file and finds nothing to do.
        self.run_sql(upstream, "CHECKPOINT")
        self._ensure_slot(upstream, name)
        src = f"host={upstream} port=5432 user=postgres dbname=postgres"
        self._one_off(name, f"pg_rewind --target-pgdata=$PGDATA --source-server='{src}'")
        conninfo = self._replication_conninfo(upstream, name)
        self._one_off(
            name,
            f"touch $PGDATA/standby.signal && "
            f"printf \"primary_conninfo = '%s'\\nprimary_slot_name = '%s'\\n"
            f"synchronous_standby_names = ''\\n\" '{conninfo}' '{name}' "
            f">> $PGDATA/postgresql.auto.conf",
        )
        self.start(name)
        self.wait_streaming(name, upstream, timeout=60)

    def destroy(self) -> None:
        """Remove every container, volume and the network."""
        for name, container in list(self._containers.items()):
            try:
                container.remove(force=True, v=False)
            except Exception as exc:  # noqa: BLE001 - keep tearing down
                logger.warning("lab: removing %s failed: %s", name, exc)
        deadline = time.monotonic() + 30
        for info in self._infos:
            while time.monotonic() < deadline:
                try:
                    self._client.volumes.get(self._volume(info.name)).remove(force=True)
                    break
                except Exception:  # noqa: BLE001 - gone already, or still in use
                    if not self._client.volumes.list(filters={"name": self._volume(info.name)}):
                        break
                    time.sleep(0.2)
        self._network.remove()
        self._containers.clear()
