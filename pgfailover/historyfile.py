"""The history file on disk: appending whole lines, and compacting it now and then.

The file (``FailoverConfig.history_file``) holds JSON lines: failover
events (:mod:`pgfailover.events`) and the availability ledger's ``watch``
and ``outage`` records (:mod:`pgfailover.availability`), each identified by
an ``id`` whose last line wins. Every update appends a line, and several
processes (gunicorn workers, a restarted ``serve``) may share the file, so
it only grows: a week of one process's 5-minute checkpoints is about 2,000
lines. :func:`compact` rewrites it, once it is over ``COMPACT_BYTES``, with
the last line of each id it still needs.

Appends and the rewrite exclude each other with ``flock(2)`` on the file
(shared for an append, exclusive for the rewrite), and an append that
finds it opened the file just before a rewrite replaced it opens the new
one: no line is lost. Without ``fcntl`` (Windows) there is no locking and
no compaction.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["COMPACT_BYTES", "LEDGER_KINDS", "append_line", "compact"]

logger = logging.getLogger(__name__)

LEDGER_KINDS: Final = frozenset({"watch", "outage"})
"""Kinds of the availability ledger's lines: not events, and not bad lines either."""

COMPACT_BYTES: Final = 1024 * 1024
"""A history file larger than this is compacted when a manager opens it."""

_ATTEMPTS: Final = 100  # a rewrite happens once per process start: this is plenty
LOCK_WAIT: Final = 2.0  # seconds a rewrite waits for appends to finish, then gives up


_locking: set[int] = set()  # descriptors that hold (or are taking) a lock now, any thread


def _same_file(fd: int, path: str | Path) -> bool:
    """``fd`` is still the file at ``path`` (no rewrite replaced it since it was opened)."""
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def append_line(path: str | Path, line: str) -> None:
    """Append one line with one ``write(2)`` on an ``O_APPEND`` descriptor.

    A process killed at any point leaves the line whole or absent, never
    torn (a buffered file may split a long line over several writes); a
    torn line from elsewhere is skipped when the file is read. Several
    writers (threads, processes) may share the file: each line lands whole,
    and none is lost to a concurrent :func:`compact`.

    Raises:
        OSError: the file cannot be opened or written; the caller decides
            how loudly to say so.
    """
    data = line.encode()
    for _ in range(_ATTEMPTS):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        _locking.add(fd)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_SH)
                if not _same_file(fd, path):
                    continue  # compacted meanwhile: append to the new file
            written = os.write(fd, data)
            while written < len(data):  # only on a full disk or a signal
                written += os.write(fd, data[written:])
            return
        finally:
            _locking.discard(fd)
            os.close(fd)  # releases the lock
    raise OSError(f"{path}: replaced {_ATTEMPTS} times while appending")


@contextlib.contextmanager
def _held(fd: int) -> Iterator[None]:
    _locking.add(fd)
    try:
        yield
    finally:
        _locking.discard(fd)


def _forget_inherited_locks() -> None:
    """In a forked child: close the descriptors the parent's threads held locks on.

    Those threads are not in the child, so nothing here would ever close them,
    and a descriptor shares its lock with the parent's: the file could not be
    compacted (nor, for a rewrite's exclusive lock, appended to) by anyone
    until the child exits. The parent keeps its own descriptors and locks.
    """
    for fd in list(_locking):
        with contextlib.suppress(OSError):
            os.close(fd)
    _locking.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_inherited_locks)


def _lock_exclusive(fd: int, wait: float) -> bool:
    """Take ``flock(LOCK_EX)`` on ``fd`` within ``wait`` seconds; False if it stays held.

    Bounded, because compacting is only tidying: a writer stopped in the middle
    of an append (SIGSTOP) holds its shared lock for as long as it is stopped,
    and a manager must open all the same.
    """
    assert fcntl is not None  # noqa: S101 - the caller checked
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)


def _end(record: dict[str, Any]) -> float:
    """The last moment a ledger record covers (``until``, else ``started``)."""
    for key in ("until", "started"):
        value = record.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return float("-inf")


def compact(
    path: str | Path, *, keep_events: int, keep_since: float, limit: int = COMPACT_BYTES
) -> bool:
    """Rewrite the file at ``path`` if it is over ``limit`` bytes; True when rewritten.

    Kept: the last line of each id, for the newest ``keep_events`` events
    and the ledger records that end at ``keep_since`` or later (epoch
    seconds); lines that are not records (torn, foreign) go. The new file
    replaces the old one atomically (``os.replace``) under an exclusive
    lock, with the old one's permissions. Never raises: a failure is logged
    and the file is left as it was.
    """
    if fcntl is None:  # pragma: no cover - Windows
        return False
    try:
        if os.stat(path).st_size <= limit:
            return False
    except FileNotFoundError:
        return False  # nothing recorded yet
    except OSError as exc:
        logger.error("history file %s not compacted: %s", path, exc)
        return False
    try:
        with open(path, "rb") as handle, _held(handle.fileno()):
            if not _lock_exclusive(handle.fileno(), LOCK_WAIT):
                logger.warning(
                    "history file %s not compacted: still locked after %.0fs", path, LOCK_WAIT
                )
                return False
            if not _same_file(handle.fileno(), path):
                return False  # another process compacted it first
            kept = _kept(handle.read(), keep_events, keep_since)
            mode = os.fstat(handle.fileno()).st_mode & 0o777
            temporary = Path(f"{path}.compact-{os.getpid()}")
            try:
                with open(temporary, "wb") as out:
                    os.fchmod(out.fileno(), mode)
                    out.write(b"".join(line + b"\n" for line in kept))
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temporary, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    temporary.unlink()
    except OSError as exc:
        logger.error("history file %s not compacted: %s", path, exc)
        return False
    logger.info("history file %s compacted to %d lines", path, len(kept))
    return True


def _kept(raw: bytes, keep_events: int, keep_since: float) -> list[bytes]:
    """The lines :func:`compact` keeps, in the order of their last occurrence."""
    latest: dict[str, tuple[dict[str, Any], bytes]] = {}
    for line in raw.split(b"\n"):
        try:
            data = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            continue
        latest.pop(data["id"], None)
        latest[data["id"]] = (data, line.strip())
    events = [i for i, (d, _) in latest.items() if d.get("kind") not in LEDGER_KINDS]
    wanted = set(events[-keep_events:]) if keep_events > 0 else set()
    return [
        line
        for i, (data, line) in latest.items()
        if i in wanted or (data.get("kind") in LEDGER_KINDS and _end(data) >= keep_since)
    ]
