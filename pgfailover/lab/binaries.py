"""Find the PostgreSQL server binaries the local lab runs.

The lab needs ``initdb``, ``pg_ctl``, ``postgres``, ``pg_basebackup`` and
``pg_rewind``. They are looked for, in order, in the directory named by
``PGFAILOVER_PG_BINDIR``, in ``pg_config --bindir``, on ``PATH`` and under
``/usr/lib/postgresql/*/bin`` (Debian and Ubuntu) and ``/usr/pgsql-*/bin``
(RPM systems). The newest major version wins unless one is asked for.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pgfailover.errors import BinariesNotFound

__all__ = ["REQUIRED", "PgBinaries", "find_binaries"]

REQUIRED = ("initdb", "pg_ctl", "postgres", "pg_basebackup", "pg_rewind")

_INSTALL_HINT = (
    "install the PostgreSQL server (Debian/Ubuntu: 'apt-get install postgresql'; "
    "Fedora/RHEL: 'dnf install postgresql-server'; macOS: 'brew install postgresql') "
    "or point PGFAILOVER_PG_BINDIR at the directory holding initdb and pg_ctl"
)


@dataclass(frozen=True)
class PgBinaries:
    """A directory of PostgreSQL server binaries and their major version."""

    bindir: Path
    version: int

    def path(self, tool: str) -> str:
        """The absolute path of one tool in this directory."""
        return str(self.bindir / tool)


def _major_version(bindir: Path) -> int | None:
    try:
        out = subprocess.run(
            [str(bindir / "postgres"), "--version"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\b(\d+)(?:\.\d+)?", out)
    return int(match.group(1)) if match else None


def _complete(bindir: Path) -> bool:
    return all(os.access(bindir / tool, os.X_OK) for tool in REQUIRED)


def _candidates() -> list[Path]:
    found: list[Path] = []
    env = os.environ.get("PGFAILOVER_PG_BINDIR")
    if env:
        found.append(Path(env))
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            if out:
                found.append(Path(out))
        except (OSError, subprocess.SubprocessError):
            pass
    on_path = shutil.which("pg_ctl")
    if on_path:
        found.append(Path(on_path).resolve().parent)
    for pattern in ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/usr/local/pgsql/bin"):
        found.extend(Path(p) for p in glob.glob(pattern))
    unique: list[Path] = []
    for path in found:
        if path not in unique:
            unique.append(path)
    return unique


def find_binaries(version: int | None = None) -> PgBinaries:
    """Return the newest complete set of server binaries (or ``version``'s).

    ``PGFAILOVER_PG_BINDIR``, when set, must hold a complete set: a wrong
    explicit setting is an error, not something to silently work around.

    Raises:
        BinariesNotFound: nothing suitable is installed; the message says how
            to install it.
    """
    env = os.environ.get("PGFAILOVER_PG_BINDIR")
    if env and not _complete(Path(env)):
        missing = [t for t in REQUIRED if not os.access(Path(env) / t, os.X_OK)]
        raise BinariesNotFound(
            f"PGFAILOVER_PG_BINDIR={env!r} lacks {', '.join(missing)}: {_INSTALL_HINT}"
        )
    usable: list[PgBinaries] = []
    for bindir in _candidates():
        if not _complete(bindir):
            continue
        major = _major_version(bindir)
        if major is None:
            continue
        if env and bindir == Path(env) and version in (None, major):
            return PgBinaries(bindir, major)
        usable.append(PgBinaries(bindir, major))
    if version is not None:
        usable = [b for b in usable if b.version == version]
        if not usable:
            raise BinariesNotFound(
                f"no PostgreSQL {version} server binaries found: {_INSTALL_HINT}"
            )
    if not usable:
        raise BinariesNotFound(f"no PostgreSQL server binaries found: {_INSTALL_HINT}")
    return max(usable, key=lambda b: b.version)
