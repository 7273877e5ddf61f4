"""The lab's initdb template (pgfailover.lab.template), with the machine's real initdb.

The template lives in the system's temporary directory; here that directory
is one the test makes (readable by the servers' OS user) and removes.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgfailover.lab import template
from pgfailover.lab.binaries import find_binaries
from pgfailover.lab.proc import resolve_run_as

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def temp_root(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A temporary directory of the test's own, as the template module sees it."""
    base = Path(tempfile.mkdtemp(prefix="pgfl-template-"))
    base.chmod(0o755)
    resolve_run_as().chown(base)
    monkeypatch.setattr(tempfile, "tempdir", str(base))
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_the_template_is_copied_and_built_again_when_part_of_it_is_gone(
    temp_root: Path,
) -> None:
    bins, run_as = find_binaries(), resolve_run_as()
    first = temp_root / "first"
    template.initdb(bins, run_as, first)
    (place,) = temp_root.glob("pgfailover-initdb-*")
    assert (place / template.MANIFEST).exists()
    made = template._files(first)
    assert "PG_VERSION" in made
    assert made == template._files(place / "data")  # the copy is the template's
    assert not list(temp_root.glob("pgfailover-initdb-*.*"))  # nothing left aside

    # A cleaner of the temporary directory took a file: the template is rebuilt.
    victim = place / "data" / "PG_VERSION"
    victim.unlink()
    assert not template._whole(place)
    second = temp_root / "second"
    template.initdb(bins, run_as, second)
    assert template._whole(place)
    assert template._files(second) == made
