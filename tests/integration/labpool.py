"""The next lab of each kind, built in the background while a test runs.

A 3-node lab takes about two seconds to build (``initdb``, a base backup,
three starts), and the integration suite uses about a hundred of them, one
per test that breaks its cluster: that was a quarter of the suite's time.
Most of it is waiting on subprocesses, so while a test runs on its lab, one
thread builds the lab the next test of the same kind (standbys, quorum sync)
will take. A lab built ahead is checked before it is handed out (every
server still running) and replaced by a fresh build if not; what is still
built ahead when the session ends is destroyed with the rest.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
from collections.abc import Callable

from pgfailover.errors import LabError
from pgfailover.lab import LocalLab

Kind = tuple[int, int]  # standbys, sync


class LabPool:
    """Hands out labs of a kind, one built ahead per kind once that kind was asked for.

    Locks: ``_lock`` guards the builds ahead (a leaf, held for a lookup or an update;
    never while waiting for a build).
    """

    def __init__(self, build: Callable[[int, int], LocalLab]) -> None:
        self._build = build
        self._lock = threading.Lock()
        self._ahead: dict[Kind, concurrent.futures.Future[LocalLab]] = {}  # under _lock
        self._workers = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="lab-ahead"
        )

    def take(self, standbys: int, sync: int) -> LocalLab:
        """A running lab of this kind: the one built ahead if it is ready and sound."""
        kind = (standbys, sync)
        with self._lock:
            ahead = self._ahead.pop(kind, None)
        lab = _ready(ahead)
        if lab is None:
            lab = self._build(standbys, sync)
        with self._lock:
            self._ahead[kind] = self._workers.submit(self._build, standbys, sync)
        return lab

    def close(self) -> None:
        """Wait for the builds under way and destroy the labs built ahead."""
        with self._lock:
            pending, self._ahead = list(self._ahead.values()), {}
        self._workers.shutdown(wait=True)
        for future in pending:
            with contextlib.suppress(Exception):
                future.result().destroy()


def _ready(future: concurrent.futures.Future[LocalLab] | None) -> LocalLab | None:
    """The lab ``future`` built, if it did and every server of it still runs."""
    if future is None:
        return None
    try:
        lab = future.result(timeout=120)
    except Exception:  # noqa: BLE001 - the caller builds one now, which says what fails
        return None
    if all(lab.local_node(n.name).process_state() == "running" for n in lab.nodes):
        return lab
    with contextlib.suppress(LabError):
        lab.destroy()
    return None
