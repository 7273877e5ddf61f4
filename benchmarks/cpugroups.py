"""One CPU cgroup per role of a benchmark run, as separate hosts or containers would give.

A run puts the database servers, the arbiter, etcd and hundreds of
application threads on one 2-CPU machine. In one cgroup the kernel shares
the CPUs thread by thread: 20 worker processes with 2,800 threads between
them leave the arbiter's one event-loop thread a few per cent of a CPU,
which no deployment does (the arbiter, the database and the applications
run on their own hosts, pods or systemd units, each a cgroup). With
``--cpu-groups`` (the default where it can), each role gets its own cgroup
with the same CPU weight: the CPUs are still shared, and still saturated
when the workers write fast enough, but role by role instead of thread by
thread.

cgroup v1 (the ``cpu`` hierarchy) and v2 (``cpu`` in the root's
controllers) are supported; it needs root. Groups are named
``pgfl-bench-<pid>-<role>``: :meth:`CpuGroups.close` moves every process
back to the root and removes them, and :func:`sweep` removes what a killed
run left (a group whose benchmark process is gone).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from pathlib import Path

PREFIX = "pgfl-bench-"
V1 = Path("/sys/fs/cgroup/cpu")
V2 = Path("/sys/fs/cgroup")


def hierarchy() -> tuple[Path, str] | None:
    """Where CPU cgroups can be made here (path, ``v1`` or ``v2``), or ``None``."""
    if os.geteuid() != 0:
        return None
    if (V1 / "cpu.shares").exists() or (V1 / "cgroup.procs").exists():
        return V1, "v1"
    controllers = V2 / "cgroup.controllers"
    if controllers.exists() and "cpu" in controllers.read_text().split():
        return V2, "v2"
    return None


def descendants(pid: int) -> list[int]:
    """``pid`` and every process under it (from ``/proc``; gone ones are skipped)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                with contextlib.suppress(OSError):
                    todo += [int(c) for c in (task / "children").read_text().split()]
    return out


def sweep() -> None:
    """Remove the groups of benchmark runs that were killed (their process is gone)."""
    found = hierarchy()
    if found is None:
        return
    root, _ = found
    for group in root.glob(PREFIX + "*"):
        owner = group.name[len(PREFIX) :].split("-", 1)[0]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            _remove(root, group)


def _remove(root: Path, group: Path) -> None:
    """Move what is left in ``group`` to the root and remove it (a few tries: a process
    may fork into it meanwhile)."""
    for _ in range(5):
        with contextlib.suppress(OSError):
            for pid in (group / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):
                    (root / "cgroup.procs").write_text(pid)
            group.rmdir()
            return
        time.sleep(0.1)


class CpuGroups:
    """The cgroups of one run, made on first use; :meth:`close` undoes everything.

    ``enabled`` False (or no cgroup hierarchy here): :meth:`put` does nothing
    and :attr:`kind` is ``None``.
    """

    def __init__(self, enabled: bool) -> None:
        found = hierarchy() if enabled else None
        self.kind = None if found is None else found[1]
        self._root = None if found is None else found[0]
        self._groups: dict[str, Path] = {}
        if self._root is not None and self.kind == "v2":
            with contextlib.suppress(OSError):
                (self._root / "cgroup.subtree_control").write_text("+cpu")

    def put(self, role: str, pids: Iterable[int]) -> None:
        """Move each process (its threads and future children too) into ``role``'s group."""
        if self._root is None:
            return
        group = self._groups.get(role)
        if group is None:
            group = self._root / f"{PREFIX}{os.getpid()}-{role}"
            group.mkdir(exist_ok=True)
            self._groups[role] = group
        for pid in pids:
            with contextlib.suppress(OSError):  # gone meanwhile
                (group / "cgroup.procs").write_text(str(pid))

    def release(self, pids: Iterable[int]) -> None:
        """Move processes back to the root group: a node about to be killed, whose
        hundreds of dying backends must not queue for their group's share (some stayed
        runnable, or waiting on a kernel lock, for more than 30 s after SIGKILL)."""
        if self._root is None:
            return
        for pid in pids:
            with contextlib.suppress(OSError):
                (self._root / "cgroup.procs").write_text(str(pid))

    def close(self) -> None:
        """Every process back to the root group, the groups removed."""
        if self._root is None:
            return
        for group in self._groups.values():
            _remove(self._root, group)
        self._groups.clear()
