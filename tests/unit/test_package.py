"""The package as users get it: the sdist and the wheel build and pass ``twine
check``, and the wheel installs into a fresh virtual environment where
``pgfailover`` imports from there (not from this checkout) and its command runs.

Needs the network for the build backend and the dependencies, as ``make``
itself does; pip's cache makes repeated runs quick.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import pgfailover

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(600)


def _run(*argv: str | Path, cwd: Path | None = None) -> str:
    result = subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
        cwd=cwd,
    )
    assert result.returncode == 0, f"{argv}: {result.stdout}\n{result.stderr}"
    return result.stdout


def test_the_wheel_installs_and_runs_in_a_clean_venv(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "build", "--outdir", dist, ROOT)  # the wheel from the sdist
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")
    _run(sys.executable, "-m", "twine", "check", "--strict", wheel, sdist)
    names = zipfile.ZipFile(wheel).namelist()
    for needed in (
        "pgfailover/py.typed",
        "pgfailover/openapi.json",
        "pgfailover/cli/app.py",
        "pgfailover/lab/image/Dockerfile",  # the docker lab builds its image from these
        "pgfailover/lab/image/entrypoint.sh",
    ):
        assert needed in names
    entrypoint = zipfile.ZipFile(wheel).getinfo("pgfailover/lab/image/entrypoint.sh")
    assert (entrypoint.external_attr >> 16) & 0o111, "the entrypoint must stay executable"
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "examples/"))]

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    _run(venv / "bin" / "python", "-m", "pip", "install", "--quiet", f"{wheel}[cli]")
    version = _run(venv / "bin" / "pgfailover", "--version")
    assert pgfailover.__version__ in version
    where = _run(
        venv / "bin" / "python",
        "-c",
        "import pgfailover, pgfailover.server, pgfailover.cli.app; print(pgfailover.__file__)",
        cwd=tmp_path,
    )
    assert where.startswith(str(venv)), where
