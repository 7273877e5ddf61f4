"""The Docker engine under the docker lab: is there one, the node image, cleaning up.

Split from :mod:`pgfailover.lab.docker` so that the image and the sweep can
be used without a lab (the tests build the image once per session and sweep
what a crashed run left). Everything goes through testcontainers' client
(the docker SDK underneath); see :mod:`pgfailover.lab.docker` for why its
reaper container is never started.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pgfailover.errors import LabError

__all__ = [
    "DEFAULT_BASE",
    "IMAGE_DIR",
    "LABEL",
    "Progress",
    "client",
    "docker_available",
    "ensure_image",
    "image_tag",
    "no_reaper",
    "quiet",
    "sweep",
]

IMAGE_DIR = Path(__file__).with_name("image")
LABEL = "org.pgfailover.lab"
DEFAULT_BASE = "debian:bookworm-slim"

Progress = Callable[[str], None]


def quiet(_: str) -> None:
    """A progress callback that says nothing."""
    return


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
        probe = docker.from_env()
    except Exception as exc:  # noqa: BLE001 - any failure means "no engine"
        return f"no Docker engine answers at {host} ({type(exc).__name__})"
    try:
        probe.ping()
    except Exception as exc:  # noqa: BLE001
        return f"the Docker engine at {host} does not answer ({type(exc).__name__})"
    finally:
        probe.close()
    return None


def client() -> Any:
    """A docker SDK client of the engine ``DOCKER_HOST`` names (testcontainers' way).

    Raises:
        LabError: no engine answers, or the docker extra is missing.
    """
    reason = docker_available()
    if reason:
        raise LabError(reason)
    from testcontainers.core.docker_client import DockerClient

    return DockerClient().client


@contextlib.contextmanager
def no_reaper() -> Iterator[None]:
    """Start containers without testcontainers' reaper (see the module docstring)."""
    from testcontainers.core.config import testcontainers_config as config

    before = config.ryuk_disabled
    config.ryuk_disabled = True
    try:
        yield
    finally:
        config.ryuk_disabled = before


def image_tag(base: str) -> str:
    """The tag of the node image built on ``base`` from :data:`IMAGE_DIR` as it is now."""
    digest = hashlib.sha256(base.encode())
    for name in ("Dockerfile", "entrypoint.sh"):
        digest.update((IMAGE_DIR / name).read_bytes())
    return f"pgfailover-lab-postgres:{digest.hexdigest()[:12]}"


def ensure_image(base: str | None = None, progress: Progress = quiet) -> str:
    """The node image: ``PGFAILOVER_LAB_IMAGE``, else built on ``base`` unless it exists.

    ``base`` defaults to ``PGFAILOVER_BASE_IMAGE``, else ``debian:bookworm-slim``.
    The build installs PostgreSQL 15 from Debian's archive (a minute or two);
    later calls find the image by its tag.

    Raises:
        LabError: no engine, or the build failed (its last output lines quoted).
    """
    given = os.environ.get("PGFAILOVER_LAB_IMAGE")
    if given:
        return given
    import docker.errors
    from testcontainers.core.image import DockerImage

    base = base or os.environ.get("PGFAILOVER_BASE_IMAGE") or DEFAULT_BASE
    tag = image_tag(base)
    docker_client = client()
    try:
        docker_client.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    finally:
        docker_client.close()
    progress(f"building {tag} on {base} (PostgreSQL 15 from Debian's packages)")
    image = DockerImage(IMAGE_DIR, tag=tag, clean_up=False, buildargs={"BASE_IMAGE": base})
    try:
        image.build()
    except docker.errors.BuildError as exc:
        tail = [
            str(line.get("stream") or line.get("error") or "").strip() for line in exc.build_log
        ]
        lines = " / ".join(t for t in tail if t)[-600:]
        raise LabError(
            f"building the lab image {tag} on {base} failed: {exc.msg}: {lines}"
        ) from None
    return tag


def _ours(labels: dict[str, str], tag: str | None) -> bool:
    """A docker lab's (``tag``'s, or any lab's without it), not the compose lab's."""
    value = labels.get(LABEL, "")
    return value == tag if tag else value.startswith("pgfailover-lab-")


def sweep(tag: str | None = None) -> int:
    """Remove the containers, volumes and networks of lab ``tag`` (every docker lab's
    without it, e.g. after a crash); how many things were removed."""
    import docker.errors

    docker_client = client()
    selector = {"label": f"{LABEL}={tag}" if tag else LABEL}
    removed = 0
    try:
        for container in docker_client.containers.list(all=True, filters=selector):
            if _ours(container.labels, tag):
                container.remove(force=True, v=True)
                removed += 1
        for kind in (docker_client.volumes, docker_client.networks):
            for item in kind.list(filters=selector):
                if _ours(item.attrs.get("Labels") or {}, tag):
                    with contextlib.suppress(docker.errors.NotFound):
                        item.remove()
                        removed += 1
    finally:
        docker_client.close()
    return removed
