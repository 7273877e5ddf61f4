"""The docker lab backend: the local lab's cluster in containers, through testcontainers.

Selected with ``PGFAILOVER_LAB=docker`` (see :func:`pgfailover.lab.create_lab`)
or ``pgfailover lab up --backend docker``, where a Docker engine answers; it
needs the ``docker`` extra (testcontainers). No registry is needed: the node
image is built from this package's own ``image/`` directory (the Dockerfile
and entrypoint the compose lab uses) on ``PGFAILOVER_BASE_IMAGE`` (default
``debian:bookworm-slim``), with PostgreSQL 15 from Debian's packages, once,
tagged by the hash of what it is built from. ``PGFAILOVER_LAB_IMAGE`` names an
image to use instead.

Each node is a container on the lab's own network, reachable by its node
name inside the network and on a free port of 127.0.0.1 from the host, with
its data in a named volume, so that a stopped or killed node keeps its data.
The containers, volumes and network carry the label
``org.pgfailover.lab=<lab tag>``: :meth:`DockerLab.destroy` (``pgfailover lab
down``) and :func:`sweep` remove them by it. testcontainers' reaper container
is never started: a lab made by ``pgfailover lab up`` must outlive the
command that made it, which the reaper would end, and the label does its
job.

Process actions map onto the container: ``kill`` is SIGKILL to the
postmaster, the container's PID 1 (the kernel then kills every process of
the container); ``pause`` freezes the container's cgroup; ``stop`` sends the
postmaster the signal of the pg_ctl mode. ``pg_rewind`` runs in a one-off
container on the node's volume.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import uuid
from pathlib import Path
from typing import Any

from pgfailover.errors import LabError
from pgfailover.lab.base import HOST, NodeInfo, StopMode, node_infos, read_state
from pgfailover.lab.dockerengine import (
    LABEL,
    Progress,
    client,
    ensure_image,
    no_reaper,
    quiet,
    sweep,
)
from pgfailover.lab.local import SERVER_SETTINGS, STATE_FILE
from pgfailover.lab.node import upstream_conninfo
from pgfailover.lab.topology import Topology
from pgfailover.syncrep import RECORD_SETTING

__all__ = ["DockerLab"]

logger = logging.getLogger(__name__)

PGDATA = "/var/lib/postgresql/data"
_STOP_SIGNALS = {"smart": "SIGTERM", "fast": "SIGINT", "immediate": "SIGQUIT"}
_FORMAT = 1
# Not in a container: Unix sockets serve the entrypoint's own psql, and the
# server's log goes to the container's (docker logs).
_HOST_ONLY = ("unix_socket_directories", "logging_collector")
# The local lab runs on PostgreSQL's default; the compose lab sets 5s.
_SETTINGS = "\n".join(
    [f"{k} = {v}" for k, v in SERVER_SETTINGS.items() if k not in _HOST_ONLY]
    + ["wal_receiver_timeout = '60s'"]
)


class DockerLab(Topology):
    """A streaming-replication cluster of PostgreSQL containers.

    Create one with :meth:`create`, reopen one made with a directory with
    :meth:`open`. Nodes, verbs and waits are the local lab's; network faults
    (black holes, partitions) are local-lab only.

    Thread safety: not thread-safe; drive a lab from one thread at a time.
    """

    def __init__(
        self, tag: str, image: str, infos: list[NodeInfo], sync: int, directory: Path | None
    ) -> None:
        self.tag = tag
        self.image = image
        self.sync = sync
        self.directory = directory
        self._infos = infos
        self._client = client()
        self._containers: dict[str, Any] = {}

    # -- construction --------------------------------------------------

    @classmethod
    def create(
        cls,
        directory: Path | str | None = None,
        *,
        standbys: int = 2,
        sync: int = 0,
        image: str | None = None,
        progress: Progress = quiet,
    ) -> DockerLab:
        """Start a primary (``node0``) and ``standbys`` standbys in containers.

        With ``directory``, the lab's state is kept there for :meth:`open`
        (``pgfailover lab`` commands); the directory must be empty or absent.

        Raises:
            LabError: no engine, bad arguments, the image or a node failed.
        """
        if not 0 <= sync <= standbys:
            raise LabError(f"sync must be between 0 and the number of standbys ({standbys})")
        base = None
        if directory is not None:
            base = Path(directory).absolute()
            if base.exists() and any(base.iterdir()):
                raise LabError(f"lab directory {base} exists and is not empty")
            base.mkdir(parents=True, exist_ok=True)
        image = image or ensure_image(progress=progress)
        lab = cls(
            f"pgfailover-lab-{uuid.uuid4().hex[:8]}", image, node_infos(standbys), sync, base
        )
        lab._save()
        try:
            lab._build(progress)
        except BaseException:
            lab.destroy()
            raise
        return lab

    @classmethod
    def open(cls, directory: Path | str) -> DockerLab:
        """Reopen the docker lab whose state file is in ``directory``."""
        base = Path(directory).absolute()
        state = read_state(base, STATE_FILE)
        if state.get("backend") != "docker" or state.get("format") != _FORMAT:
            raise LabError(f"{base / STATE_FILE} is not a docker lab's state")
        nodes = [NodeInfo(n["name"], n["host"], int(n["port"])) for n in state["nodes"]]
        lab = cls(state["tag"], state["image"], nodes, int(state["sync"]), base)
        import docker.errors

        for info in nodes:
            with contextlib.suppress(docker.errors.NotFound):
                lab._containers[info.name] = lab._client.containers.get(lab._name(info.name))
        return lab

    def _save(self) -> None:
        if self.directory is None:
            return
        state = {
            "format": _FORMAT,
            "backend": "docker",
            "tag": self.tag,
            "image": self.image,
            "sync": self.sync,
            "nodes": [{"name": n.name, "host": n.host, "port": n.port} for n in self._infos],
        }
        (self.directory / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    def _name(self, node: str) -> str:
        return f"{self.tag}-{node}"

    def _container(self, name: str, env: dict[str, str], command: list[str], **kwargs: Any) -> Any:
        """A testcontainers container of the node image on ``name``'s volume, not started."""
        from testcontainers.core.container import DockerContainer

        return (
            DockerContainer(self.image)
            .with_command(command)
            .with_envs(**env)
            .with_volume_mapping(self._name(name), PGDATA, "rw")
            .with_kwargs(labels={LABEL: self.tag}, **kwargs)
        )

    def _build(self, progress: Progress) -> None:
        from testcontainers.core.network import Network

        network = Network(docker_network_kw={"labels": {LABEL: self.tag}})
        network.name = self.tag
        network.create()
        primary, standbys = self._infos[0], self._infos[1:]
        for info in self._infos:
            self._client.volumes.create(self._name(info.name), labels={LABEL: self.tag})
        for info in self._infos:
            env = {"AUTH": "trust", "NODE_NAME": info.name}
            if info is primary:
                env |= {
                    "ROLE": "primary",
                    "STANDBY_SLOTS": " ".join(s.name for s in standbys),
                    "PG_SETTINGS": _SETTINGS,
                }
            else:
                env |= {"ROLE": "standby", "PRIMARY_HOST": primary.name, "STANDBY_NAME": info.name}
            box = (
                self._container(info.name, env, ["postgres"], hostname=info.name)
                .with_name(self._name(info.name))
                .with_network(network)
                .with_network_aliases(info.name)
            )
            # Published on loopback only (a (host, port) pair, which docker accepts).
            box.ports["5432/tcp"] = (HOST, info.port)
            progress(f"starting {info.name} on {HOST}:{info.port}")
            with no_reaper():
                box.start()
            self._containers[info.name] = box.get_wrapped_container()
            if info is primary:
                self._wait_ready(info.name)
        for info in standbys:
            self._wait_ready(info.name)
            self.wait_streaming(info.name, primary.name, timeout=60)
        self._apply_sync(primary.name)

    def _one_off(self, name: str, script: str) -> None:
        """Run ``script`` as postgres in a throw-away container on ``name``'s volume."""
        box = self._container(name, {}, ["bash", "-c", script], network=self.tag, user="postgres")
        with no_reaper():
            box.start()
        try:
            wrapped = box.get_wrapped_container()
            code = wrapped.wait(timeout=120)["StatusCode"]
            output = wrapped.logs().decode(errors="replace").strip()
        finally:
            box.stop(delete_volume=False)
        if code:
            program = script.split(maxsplit=1)[0]
            raise LabError(f"{program} on {name} failed ({code}): {output[-500:]}")
        logger.debug("lab: one-off on %s: %s", name, output)

    def _wait_ready(self, name: str, timeout: float = 90.0) -> None:
        self.wait_for(
            lambda: self.in_recovery(name) is not None, timeout, f"{name} to accept connections"
        )

    # -- Topology hooks --------------------------------------------------

    @property
    def nodes(self) -> list[NodeInfo]:
        """Every node, in creation order."""
        return list(self._infos)

    def describe(self) -> str:
        """What runs the lab, for ``pgfailover lab`` to print."""
        return f"docker, image {self.image}"

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
        if self.process_state(name) == "paused":
            self.resume(name)
        if self.process_state(name) == "stopped":
            self._containers[name].start()
        self._wait_ready(name)

    def start_all(self, progress: Progress = quiet) -> None:
        """Start every node that is not running (``pgfailover lab up`` on an existing lab)."""
        for info in self._infos:
            progress(f"starting {info.name}")
            self.start(info.name)

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
        if self.process_state(name) != "running":
            raise LabError(f"{name} is not running: cannot pause it")
        self._containers[name].pause()

    def resume(self, name: str) -> None:
        """Thaw a paused node."""
        if self.process_state(name) == "paused":
            self._containers[name].unpause()

    def blackhole(self, name: str) -> None:
        """Not here: network faults need the local lab's loopback ports."""
        raise LabError("network faults (blackhole, partition, backlog) need the local lab")

    partition = blackhole
    backlog = blackhole

    def heal(self, name: str | None = None) -> None:
        """Nothing to heal: a docker lab has no network faults."""

    def _rejoin_node(self, name: str, upstream: str) -> None:
        if self.process_state(name) != "stopped":
            self.stop(name, "fast")
        # A newly promoted source must checkpoint once, or pg_rewind reads
        # its old timeline from the control file and finds nothing to do.
        self.run_sql(upstream, "CHECKPOINT")
        self._ensure_slot(upstream, name)
        src = f"host={upstream} port=5432 user=postgres dbname=postgres"
        conninfo = self._replication_conninfo(upstream, name)
        # A killed postmaster leaves postmaster.pid naming PID 1, which in the
        # one-off container is alive (its shell): the node's container is not
        # running, so the file is stale.
        self._one_off(
            name,
            "rm -f $PGDATA/postmaster.pid && "
            f"pg_rewind --target-pgdata=$PGDATA --source-server='{src}' && "
            "touch $PGDATA/standby.signal && "
            f"printf \"primary_conninfo = '%s'\\nprimary_slot_name = '%s'\\n"
            f"synchronous_standby_names = ''\\n{RECORD_SETTING} = ''\\n\" '{conninfo}' '{name}' "
            ">> $PGDATA/postgresql.auto.conf",
        )
        self.start(name)
        self.wait_streaming(name, upstream, timeout=60)

    def destroy(self) -> None:
        """Remove the lab's containers, volumes and network (by label) and its directory.

        The node image stays, for the next lab; ``docker rmi`` removes it.
        """
        sweep(self.tag)
        self._containers.clear()
        self._client.close()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> DockerLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def __repr__(self) -> str:
        return f"<DockerLab {self.tag} nodes={[n.name for n in self.nodes]} sync={self.sync}>"
