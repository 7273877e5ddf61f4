"""Which lab fault rules a test session's sweep removes: only those of labs that are gone.

No iptables: the listing is text as ``iptables -S`` prints it, and the labs
are directories with a ``postmaster.pid`` naming a real process working in
them (as :func:`~pgfailover.lab.proc.postmaster_pid` checks) or a PID that
works elsewhere.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgfailover.lab.netfault import lab_id, live_labs, stale, tagged_rules

LIVE, GONE = "0123456789ab", "ba9876543210"
LISTING = "\n".join(
    [
        "-P INPUT ACCEPT",
        f'-A INPUT -p tcp -m tcp --dport 25433 -m comment --comment "pgfailover-lab:{LIVE}:node1:'
        'blackhole" -j DROP',
        f'-A INPUT -p tcp -m tcp --sport 25433 -m comment --comment "pgfailover-lab:{LIVE}:node1:'
        'blackhole" -j DROP',
        f"-A INPUT -d 127.0.0.2/32 -p tcp -m tcp --dport 25440 -m comment --comment "
        f"pgfailover-lab:{GONE}:node0:partition -j DROP",
        "-A OUTPUT -p tcp -m tcp --dport 9 -m comment --comment pgfailover-lab:old -j DROP",
        "",
    ]
)


@pytest.mark.parametrize(
    ("keep", "stale_tags"),
    [
        pytest.param(
            set(),
            [f"{LIVE}:node1:blackhole"] * 2 + [f"{GONE}:node0:partition", "old"],
            id="no live lab: every rule goes",
        ),
        pytest.param(
            {LIVE}, [f"{GONE}:node0:partition", "old"], id="a live lab's rules stay, both"
        ),
        pytest.param({LIVE, GONE}, ["old"], id="a tag that names no lab goes"),
    ],
)
def test_stale_rules_are_those_of_no_live_lab(keep: set[str], stale_tags: list[str]) -> None:
    found = stale(tagged_rules(LISTING, "pgfailover-lab"), keep)
    assert [r.tag.removeprefix("pgfailover-lab:") for r in found] == stale_tags


def _sleeper(cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], cwd=cwd)


@pytest.fixture
def labs(tmp_path: Path) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """Lab-like directories under ``tmp_path``, each with one "server" (a sleeper)."""
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name in ("pgfl-live", "pgfl-other-cwd", "elsewhere"):
            datadir = tmp_path / name / "node0"
            datadir.mkdir(parents=True)
            procs[name] = _sleeper(datadir)
        # A lab whose PID is alive but works in another directory (a PID the
        # system gave to another process after a crash): not its server.
        other = procs["pgfl-live"].pid
        (tmp_path / "pgfl-other-cwd" / "node0" / "postmaster.pid").write_text(f"{other}\n")
        for name in ("pgfl-live", "elsewhere"):
            datadir = tmp_path / name / "node0"
            (datadir / "postmaster.pid").write_text(f"{procs[name].pid}\n{datadir}\n")
        (tmp_path / "pgfl-no-pid" / "node0").mkdir(parents=True)
        (tmp_path / "pgfl-empty").mkdir()
        (tmp_path / "pgfl-a-file").write_text("")
        yield procs
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()


def test_live_labs_are_the_lab_directories_with_a_server_running(
    tmp_path: Path, labs: dict[str, subprocess.Popen[bytes]]
) -> None:
    # "elsewhere" has a running server too, but it is not a lab's pgfl-* directory.
    assert live_labs(tmp_path) == {lab_id(tmp_path / "pgfl-live")}
    labs["pgfl-live"].kill()
    labs["pgfl-live"].wait()
    assert live_labs(tmp_path) == set()  # its server is gone: its rules are stale


def test_no_lab_directory_no_live_lab(tmp_path: Path) -> None:
    assert live_labs(tmp_path / "missing") == frozenset()
