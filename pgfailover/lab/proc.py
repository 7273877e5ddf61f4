"""Processes of the lab: who runs the servers, and finding them by PID.

PostgreSQL refuses to run as root. When the lab runs as root it runs every
server binary as an unprivileged OS user (``PGFAILOVER_LAB_USER``, else
``postgres`` if it exists, else a ``pgfailover`` system user it creates).

The lab never kills by name. A server is found through ``postmaster.pid`` in
its data directory, and that PID is trusted only when ``/proc/PID/cwd`` is the
data directory (the postmaster changes into it at start), so a recycled PID
of an unrelated process is never signalled. Its children are found through
``/proc/*/stat``.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pgfailover.errors import LabError

__all__ = [
    "RunAs",
    "alive",
    "children_of",
    "freeze_server",
    "kill_server",
    "postmaster_pid",
    "processes_in",
    "resolve_run_as",
    "signal_pids",
    "started",
    "survivors",
    "wait_gone",
    "wait_stopped",
]

logger = logging.getLogger(__name__)

_DEFAULT_USER = "pgfailover"


@dataclass(frozen=True)
class RunAs:
    """The OS identity server binaries run under (``None`` uid: as ourselves)."""

    name: str
    uid: int | None = None
    gid: int | None = None

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float = 120.0,
        env: dict[str, str] | None = None,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command as this user, capturing output.

        Raises:
            LabError: the command failed (its stderr is in the message) or
                timed out.
        """
        full_env = dict(os.environ)
        full_env.pop("PGPASSWORD", None)
        if env:
            full_env.update(env)
        try:
            result = subprocess.run(
                list(argv),
                check=False,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=full_env,
                cwd="/",
                stdin=subprocess.DEVNULL,
                user=self.uid,
                group=self.gid,
                extra_groups=[] if self.uid is not None else None,
            )
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"{Path(argv[0]).name} timed out after {timeout:.0f}s") from exc
        if check and result.returncode != 0:
            detail = (result.stderr or result.stdout).strip()
            raise LabError(f"{Path(argv[0]).name} failed ({result.returncode}): {detail}")
        return result

    def chown(self, path: Path) -> None:
        """Give ``path`` to this user (a no-op when not running as root)."""
        if self.uid is not None and self.gid is not None:
            os.chown(path, self.uid, self.gid)


def resolve_run_as() -> RunAs:
    """Decide which OS user runs the servers, creating one when needed."""
    if os.geteuid() != 0:
        return RunAs(pwd.getpwuid(os.geteuid()).pw_name)
    wanted = os.environ.get("PGFAILOVER_LAB_USER")
    names = [wanted] if wanted else ["postgres", _DEFAULT_USER]
    for name in names:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        if entry.pw_uid == 0:
            raise LabError(
                f"PGFAILOVER_LAB_USER={name!r} is root: PostgreSQL refuses to run as root"
            )
        return RunAs(name, entry.pw_uid, entry.pw_gid)
    name = wanted or _DEFAULT_USER
    useradd = shutil.which("useradd")
    if useradd is None:
        raise LabError(
            f"running as root and no unprivileged user {name!r} exists; "
            "create one or set PGFAILOVER_LAB_USER"
        )
    logger.info("lab: creating OS user %s to run PostgreSQL (it refuses to run as root)", name)
    subprocess.run(
        [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
        timeout=30,
    )
    entry = pwd.getpwnam(name)
    return RunAs(name, entry.pw_uid, entry.pw_gid)


def _proc_cwd(pid: int) -> Path | None:
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None


def _fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (from the state on)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may itself contain spaces.
    return raw[raw.rindex(")") + 2 :].split()


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, parent PID) of a process, or None if it is gone."""
    fields = _fields(pid)
    return None if fields is None else (fields[0], int(fields[1]))


def started(pid: int) -> int | None:
    """When ``pid`` started (clock ticks after boot), or None if it is gone: with the
    PID, it names one process, where a PID alone may be reused once it has died."""
    fields = _fields(pid)
    return None if fields is None else int(fields[19])


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def postmaster_pid(datadir: Path) -> int | None:
    """The live postmaster of ``datadir``, verified through ``/proc/PID/cwd``."""
    try:
        first = (datadir / "postmaster.pid").read_text().split("\n", 1)[0].strip()
        pid = int(first)
    except (OSError, ValueError):
        return None
    if not alive(pid):
        return None
    cwd = _proc_cwd(pid)
    if cwd is None or cwd.resolve() != datadir.resolve():
        return None
    return pid


def _all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def children_of(pid: int) -> list[int]:
    """Live direct children of ``pid``."""
    result = []
    for candidate in _all_pids():
        st = _stat(candidate)
        if st is not None and st[1] == pid and st[0] not in ("Z", "X"):
            result.append(candidate)
    return result


def _children_now(pid: int) -> list[int]:
    """Direct children of ``pid`` in one read (``/proc/PID/task/PID/children``: the
    postmaster has one thread), else by scanning ``/proc``."""
    try:
        raw = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return children_of(pid)
    return [int(field) for field in raw.split()]


def _hold_postmaster(datadir: Path) -> list[int]:
    """SIGSTOP the postmaster of ``datadir`` (it forks no child from then on) and read its
    children; ``[postmaster, *children]``, or ``[]`` when none runs."""
    pid = postmaster_pid(datadir)
    if pid is None:
        return []
    signal_pids([pid], signal.SIGSTOP)
    return [pid, *_children_now(pid)]


def kill_server(datadir: Path) -> list[int]:
    """SIGKILL the postmaster of ``datadir`` and all its children in one sweep; the PIDs
    signalled (none when no postmaster runs).

    A lost host takes every process of its server at one moment. The
    postmaster is stopped first, so that it forks no new child; the children
    are read in one system call and killed with nothing in between. A kill
    that scanned ``/proc`` first took up to a quarter of a second on a busy
    machine with 400 backends, and in that time backends kept acknowledging
    commits whose WAL senders were already dead (``benchmarks/scale.py``):
    a loss no real crash causes.
    """
    pids = _hold_postmaster(datadir)
    signal_pids([*pids[1:], *pids[:1]], signal.SIGKILL)
    return pids


def freeze_server(datadir: Path) -> list[int]:
    """SIGSTOP the postmaster of ``datadir``, then all its children in one sweep (a hung
    server, as :func:`kill_server` does it); the PIDs stopped."""
    pids = _hold_postmaster(datadir)
    signal_pids(pids[1:], signal.SIGSTOP)
    return pids


def processes_in(datadir: Path) -> list[int]:
    """Every live process whose working directory is ``datadir``.

    All PostgreSQL server processes of a data directory run in it, so this
    finds leftovers even after their postmaster is gone.
    """
    target = datadir.resolve()
    found = []
    for pid in _all_pids():
        cwd = _proc_cwd(pid)
        if cwd is not None and cwd == target and alive(pid):
            found.append(pid)
    return found


def signal_pids(pids: Sequence[int], sig: signal.Signals) -> None:
    """Send ``sig`` to each PID, one at a time, ignoring ones already gone."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            continue


def process_letter(pid: int) -> str | None:
    """The state letter of a process (``R``, ``S``, ``T``...), None if gone."""
    st = _stat(pid)
    return None if st is None else st[0]


def wait_stopped(pids: Sequence[int], stopped: bool, timeout: float = 5.0) -> bool:
    """Wait until every PID is (or is no longer) stopped by a signal.

    Signals are delivered asynchronously: right after ``kill(SIGSTOP)`` a
    process may still be running for a moment. A process that has exited
    counts as done: a backend that ends just after its postmaster was
    stopped stays a zombie (nobody reaps it until the postmaster resumes).
    """
    deadline = time.monotonic() + timeout
    while True:
        letters = [process_letter(pid) for pid in pids]
        if all(
            letter is None or letter in ("Z", "X") or (letter in ("T", "t")) == stopped
            for letter in letters
        ):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)


def wait_gone(
    pids: Sequence[int], timeout: float, births: dict[int, int | None] | None = None
) -> bool:
    """Wait until no PID is alive (zombies count as gone); True on success.

    ``births`` (:func:`started` of each, taken before they were signalled):
    a PID that a new process took meanwhile counts as gone. Hundreds of
    backends and thousands of client threads can cycle through the PID
    space (32,768 by default) within the wait.
    """
    deadline = time.monotonic() + timeout
    while True:
        if not survivors(pids, births):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def survivors(pids: Sequence[int], births: dict[int, int | None] | None = None) -> list[int]:
    """The PIDs still alive (and, given ``births``, still the same processes: one
    gone before its birth was taken, ``None``, and alive now is another)."""
    left = []
    for pid in pids:
        fields = _fields(pid)  # one read: state and start time
        if fields is None or fields[0] in ("Z", "X"):
            continue
        if births is None or pid not in births or int(fields[19]) == births[pid]:
            left.append(pid)
    return left
