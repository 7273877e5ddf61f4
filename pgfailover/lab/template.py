"""``initdb`` once, copied for every new lab: the first node's data directory from a template.

``initdb`` takes about a second on a 2-CPU machine, nearly half of building a
three-node lab, and its output depends only on the binaries and its options:
the test suite builds about a hundred labs, the benchmarks one per run. So the
first build keeps a template in the system's temporary directory,
``pgfailover-initdb-<user>-<key>`` (owned by the servers' OS user), and every
later one copies it with ``cp -a`` (a tenth of the time). The key hashes the
binaries' directory, the ``postgres`` binary's size and modification time (a
minor upgrade changes them), the OS user and the options.

A template is used only when it is whole: its manifest (every file's path and
size, written after ``initdb`` succeeded) must match the disk, since a cleaner
of the temporary directory may have taken part of it; a template that does not
match is built again. Concurrent builders each build aside and rename into
place (atomic); the one that finds the place taken removes its own. Whatever
goes wrong with the template, the lab runs ``initdb`` itself instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Final

from pgfailover.errors import LabError
from pgfailover.lab.binaries import PgBinaries
from pgfailover.lab.proc import RunAs

__all__ = ["INITDB_OPTIONS", "initdb"]

logger = logging.getLogger(__name__)

INITDB_OPTIONS: Final = (
    "-U",
    "postgres",
    "--auth=trust",
    "-E",
    "UTF8",
    "--locale=C",
    "--no-sync",
)
MANIFEST: Final = "manifest.json"


def initdb(bins: PgBinaries, run_as: RunAs, datadir: Path) -> None:
    """Make ``datadir`` (not existing yet) what ``initdb`` would, from the template.

    Raises:
        LabError: ``initdb`` itself failed.
    """
    try:
        template = _template(bins, run_as)
        run_as.run(["cp", "-a", "--", str(template / "data"), str(datadir)])
        return
    except (OSError, LabError, ValueError) as exc:
        logger.debug("lab: no initdb template (%s): running initdb", exc)
        if datadir.exists():
            shutil.rmtree(datadir, ignore_errors=True)
    run_as.run([bins.path("initdb"), "-D", str(datadir), *INITDB_OPTIONS])


def _template(bins: PgBinaries, run_as: RunAs) -> Path:
    """The template's directory, built first if it is missing or not whole."""
    postgres = Path(bins.path("postgres")).stat()
    key = hashlib.sha256(
        json.dumps(
            [str(bins.bindir), postgres.st_size, postgres.st_mtime_ns, run_as.uid, INITDB_OPTIONS]
        ).encode()
    ).hexdigest()[:16]
    place = Path(tempfile.gettempdir()) / f"pgfailover-initdb-{run_as.name}-{key}"
    if (place / MANIFEST).exists():
        if _whole(place):
            return place
        logger.info("lab: initdb template %s is not whole: building it again", place)
        shutil.rmtree(place, ignore_errors=True)
    aside = Path(tempfile.mkdtemp(prefix=f"{place.name}.", dir=place.parent))
    try:
        aside.chmod(0o755)
        run_as.chown(aside)
        run_as.run([bins.path("initdb"), "-D", str(aside / "data"), *INITDB_OPTIONS])
        (aside / MANIFEST).write_text(json.dumps(_files(aside / "data")))
        os.rename(aside, place)  # atomic; fails if another builder was first
    except OSError:
        if not (place / MANIFEST).exists():
            raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            if aside.exists():
                shutil.rmtree(aside, ignore_errors=True)
    return place


def _files(data: Path) -> dict[str, int]:
    """Every file under ``data`` (relative path) and its size."""
    out: dict[str, int] = {}
    for root, _, names in os.walk(data):
        for name in names:
            path = Path(root) / name
            out[str(path.relative_to(data))] = path.stat().st_size
    return out


def _whole(place: Path) -> bool:
    """The template's files are those its manifest lists, with the same sizes."""
    try:
        manifest = json.loads((place / MANIFEST).read_text())
        return isinstance(manifest, dict) and manifest == _files(place / "data")
    except (OSError, ValueError):
        return False
