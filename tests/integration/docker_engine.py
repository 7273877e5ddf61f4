"""A Docker engine for the tests, the local base image, and cleaning up after both.

No image registry is needed: the base image is Debian 12 built from Debian's
packages with ``debootstrap`` and ``docker import``, cached by tag in the
engine this module starts (its data root survives the session), and every
image the labs build starts from it. Those images stay in the engine too,
as the next session's build cache: the docker lab's node image under the
hash of what it is built from, the compose lab's under its run's tag (a
build then redoes only the steps whose inputs changed, where installing
Debian's packages again took a minute of every run). What a newer build
replaced is pruned. Python packages for the pgfailover image come from a
wheelhouse that pip fills on the host.

When no engine answers, the session starts ``dockerd`` (root only) on a
socket of its own, records its PID and stops it by that PID at the end;
then it undoes what dockerd did to the host's network (its iptables chains
and rules, the FORWARD policy it set to DROP, the docker0 bridge, IP
forwarding), which dockerd leaves behind when it stops. The
engine's environment (``DOCKER_HOST``) goes to the commands the tests run,
never into the test process's own environment, so tests that look for the
default engine are not redirected to this one.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE = "pgfailover-base:bookworm-slim"
LABEL = "org.pgfailover.lab"
RUN_DIR = Path("/run/pgfailover-docker")
DATA_ROOT = Path("/var/lib/pgfailover-docker")  # kept: the cached base image lives here
WHEELS = ROOT / "docker" / "wheels"


IPTABLES = shutil.which("iptables", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


def _iptables(*args: str) -> subprocess.CompletedProcess[str]:
    assert IPTABLES is not None  # only called when dockerd runs, which needs it
    return subprocess.run(
        [IPTABLES, "-w", *args], capture_output=True, text=True, timeout=30, check=False
    )


def _docker_lines(table: str) -> tuple[list[str], list[str]]:
    """dockerd's chains and its rules in other chains, in ``table`` (iptables-save form)."""
    saved = _iptables("-t", table, "-S").stdout.splitlines()
    chains = [line.split()[1] for line in saved if line.startswith("-N DOCKER")]
    rules = [
        line
        for line in saved
        if line.startswith("-A ")
        and not line.split()[1].startswith("DOCKER")
        and ("DOCKER" in line or "docker0" in line)
    ]
    return chains, rules


@dataclass(frozen=True)
class HostNetwork:
    """What dockerd changes on the host, as it was before dockerd started."""

    forward_policy: str
    ip_forward: str
    bridge: bool

    @classmethod
    def snapshot(cls) -> HostNetwork:
        """The state now; dockerd leftovers of a crashed run count as not there."""
        leftover = bool(_docker_lines("filter")[0])
        policy = "ACCEPT"
        for line in _iptables("-S", "FORWARD").stdout.splitlines():
            if line.startswith("-P FORWARD ") and not leftover:
                policy = line.split()[2]
        bridge = Path("/sys/class/net/docker0").exists() and not leftover
        return cls(policy, IP_FORWARD.read_text().strip(), bridge)

    def restore(self) -> None:
        """Remove dockerd's chains and rules, and put the rest back as it was.

        Raises:
            RuntimeError: a chain or rule of dockerd's could not be removed.
        """
        for table in ("filter", "nat"):
            chains, rules = _docker_lines(table)
            for rule in rules:
                _iptables("-t", table, "-D", *shlex.split(rule)[1:])
            for chain in chains:
                _iptables("-t", table, "-F", chain)
            for chain in chains:
                _iptables("-t", table, "-X", chain)
        _iptables("-P", "FORWARD", self.forward_policy)
        if not self.bridge and Path("/sys/class/net/docker0").exists():
            subprocess.run(["ip", "link", "delete", "docker0"], timeout=30, check=False)
        IP_FORWARD.write_text(self.ip_forward + "\n")
        left = []
        for table in ("filter", "nat"):
            chains, rules = _docker_lines(table)
            left += [*chains, *rules]
        if left:
            raise RuntimeError(f"dockerd's iptables entries left behind: {left}")


@dataclass
class Engine:
    """A Docker engine the tests may use: its environment and compose command."""

    env: dict[str, str]
    compose: list[str]
    pid: int | None = None  # dockerd started by this session
    log: Path | None = None
    built: list[str] = field(default_factory=list)

    def run(
        self, *args: str, timeout: float = 120, check: bool = True, input: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a command (``docker ...``) against this engine."""
        return subprocess.run(
            list(args),
            env=self.env,
            capture_output=True,
            timeout=timeout,
            check=check,
            input=input,
        )


def _answers(env: dict[str, str]) -> bool:
    try:
        proc = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"],
            env=env,
            capture_output=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def _compose_command(env: dict[str, str]) -> list[str] | None:
    """``docker compose`` where the plugin exists, else ``docker-compose``."""
    plugin = subprocess.run(
        ["docker", "compose", "version"], env=env, capture_output=True, timeout=30, check=False
    )
    if plugin.returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def why_not() -> str | None:
    """Why this machine cannot give the tests an engine, or ``None``."""
    if shutil.which("docker") is None:
        return "no docker CLI (make server-binaries installs docker.io as root)"
    if _answers(dict(os.environ)):
        return None
    if os.geteuid() != 0:
        return "no Docker engine answers, and starting dockerd needs root"
    if shutil.which("dockerd") is None:
        return "no dockerd (make server-binaries installs docker.io as root)"
    if IPTABLES is None:
        return "no iptables (dockerd needs it; make server-binaries installs it)"
    if shutil.which("debootstrap") is None:
        return "no debootstrap to build the base image (make server-binaries installs it)"
    return None


@contextlib.contextmanager
def engine() -> Iterator[Engine]:
    """An engine for the session: the one that answers, else a dockerd started here."""
    env = dict(os.environ)
    pid = None
    log = None
    proc: subprocess.Popen[bytes] | None = None
    network: HostNetwork | None = None
    if not _answers(env):
        network = HostNetwork.snapshot()
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        DATA_ROOT.mkdir(parents=True, exist_ok=True)
        socket = RUN_DIR / "docker.sock"
        log = RUN_DIR / "dockerd.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    "dockerd",
                    "--host",
                    f"unix://{socket}",
                    "--data-root",
                    str(DATA_ROOT),
                    "--exec-root",
                    str(RUN_DIR / "exec"),
                    "--pidfile",
                    str(RUN_DIR / "dockerd.pid"),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        pid = proc.pid
        env["DOCKER_HOST"] = f"unix://{socket}"
        deadline = time.monotonic() + 60
        while not _answers(env):
            if proc.poll() is not None or time.monotonic() > deadline:
                _stop(proc)
                network.restore()
                raise RuntimeError(f"dockerd did not start: see {log}")
            time.sleep(0.2)  # polling the engine's readiness, with a deadline
    compose = _compose_command(env)
    if compose is None:
        if proc is not None and network is not None:
            _stop(proc)
            network.restore()
        raise RuntimeError("neither the docker compose plugin nor docker-compose is installed")
    try:
        yield Engine(env=env, compose=compose, pid=pid, log=log)
    finally:
        if proc is not None and network is not None:
            _stop(proc)
            network.restore()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the dockerd this session started, by its PID (it stops its containerd)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def base_image(eng: Engine) -> str:
    """The Debian 12 base image, built with debootstrap when the engine lacks it."""
    if eng.run("docker", "image", "inspect", BASE_IMAGE, check=False).returncode == 0:
        return BASE_IMAGE
    with tempfile.TemporaryDirectory(prefix="pgfailover-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        subprocess.run(
            ["debootstrap", "--variant=minbase", "bookworm", str(rootfs)],
            capture_output=True,
            timeout=600,
            check=True,
        )
        tar = subprocess.run(
            ["tar", "-C", str(rootfs), "-c", "."], capture_output=True, timeout=300, check=True
        )
        eng.run(
            "docker",
            "import",
            "--change",
            f"LABEL {LABEL}=base",
            "-",
            BASE_IMAGE,
            input=tar.stdout,
            timeout=300,
        )
    return BASE_IMAGE


def wheelhouse() -> None:
    """Fill docker/wheels with what the pgfailover image installs (pip on the host).

    The image then builds with ``--no-index``: no container needs to reach PyPI.
    """
    WHEELS.mkdir(exist_ok=True)
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(
        [*pip, "wheel", "-q", "--wheel-dir", str(WHEELS), f"{ROOT}[binary,cli]"],
        capture_output=True,
        timeout=600,
        check=True,
    )
    subprocess.run(
        [*pip, "download", "-q", "--dest", str(WHEELS), "setuptools>=69"],
        capture_output=True,
        timeout=600,
        check=True,
    )
    for own in WHEELS.glob("pgfailover-*.whl"):  # the image builds the source it copies
        own.unlink()


def sweep(eng: Engine, value: str) -> None:
    """Remove what carries ``LABEL=value``: containers, volumes, networks (a crashed run's too)."""
    selector = f"label={LABEL}={value}"
    containers = eng.run("docker", "ps", "-aq", "--filter", selector).stdout.split()
    if containers:
        eng.run("docker", "rm", "-f", "-v", *(c.decode() for c in containers), check=False)
    for kind in ("volume", "network"):
        names = eng.run("docker", kind, "ls", "-q", "--filter", selector).stdout.split()
        if names:
            eng.run("docker", kind, "rm", *(n.decode() for n in names), check=False)


def prune_images(eng: Engine, keep: str | None = None) -> None:
    """Remove the labs' images no build uses any more: docker lab node images under
    another hash than ``keep``, and the layers newer builds replaced (dangling)."""
    listed = eng.run(
        "docker",
        "images",
        "--filter",
        f"label={LABEL}=image",
        "--format",
        "{{.Repository}}:{{.Tag}}",
    ).stdout.decode()
    stale = [
        image
        for image in listed.split()
        if image.startswith("pgfailover-lab-postgres:")
        and len(image.rpartition(":")[2]) == 12  # a hash: the compose lab's tags are words
        and image != keep
    ]
    if stale:
        eng.run("docker", "rmi", *stale, check=False)
    eng.run("docker", "image", "prune", "-f", "--filter", f"label={LABEL}=image", check=False)


@contextlib.contextmanager
def lab_environment(eng: Engine) -> Iterator[None]:
    """This process's environment pointed at ``eng`` and its base image, for the docker lab.

    The lab (testcontainers, the docker SDK) reads ``DOCKER_HOST`` and
    ``PGFAILOVER_BASE_IMAGE`` from the environment; both are put back as
    they were at the end.
    """
    wanted = {"PGFAILOVER_BASE_IMAGE": base_image(eng), "PGFAILOVER_LAB_IMAGE": None}
    if "DOCKER_HOST" in eng.env:
        wanted["DOCKER_HOST"] = eng.env["DOCKER_HOST"]
    with pytest.MonkeyPatch.context() as patch:
        for key, value in wanted.items():
            if value is None:
                patch.delenv(key, raising=False)
            else:
                patch.setenv(key, value)
        yield


def lab_image(eng: Engine) -> Iterator[str]:
    """The docker lab's node image, built on the base image unless it exists, and kept
    for the next session (older ones are pruned). A generator for a session fixture."""
    from pgfailover.lab.dockerengine import ensure_image, image_tag

    tag = image_tag(base_image(eng))
    with lab_environment(eng):
        assert ensure_image() == tag
    try:
        yield tag
    finally:
        prune_images(eng, keep=tag)
