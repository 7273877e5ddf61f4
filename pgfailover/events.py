"""Failover events, their bounded history, and user callbacks.

A :class:`FailoverEvent` records one failover from detection to the first
primary that takes writes: who was lost, who took over, why, when, how long
it took, how it ended and how much WAL the new primary may lack. The
:class:`EventLog` keeps the newest ``history_size`` events in memory and,
when given a file, appends each finished or updated event to it as one JSON
line, so history survives restarts. The same file may hold the records of
:mod:`pgfailover.availability` (kinds in :data:`LEDGER_KINDS`); they are not
events and the log passes over them silently.

Callbacks run on the thread that produced the event, never under a lock; one
that raises is logged and never stops the monitor.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec

from pgfailover.historyfile import LEDGER_KINDS, append_line

__all__ = [
    "LEDGER_KINDS",
    "CallbackQueue",
    "Callbacks",
    "EventKind",
    "EventLog",
    "FailoverEvent",
    "Outcome",
    "append_line",
    "run_callbacks",
]

logger = logging.getLogger(__name__)

C = TypeVar("C", bound=Callable[..., object])

EventKind = Literal["failover", "switchover", "split_brain", "fence", "replication", "maintenance"]
Outcome = Literal["in_progress", "completed", "failed", "refused", "detected"]


@dataclass(frozen=True)
class FailoverEvent:
    """One failover (or related incident), as recorded.

    Times are seconds since the epoch. ``duration`` runs from detection
    (the first failed probe of the lost primary) to the switch of writes;
    ``first_write_after`` from detection to the first acknowledged write on
    the new primary, when one happened through this manager.
    ``data_loss_bytes`` estimates the WAL the new primary lacks compared with
    the last position seen on the old one (``0`` with quorum sync when the
    most advanced standby was promoted). ``fencing_revision``: the etcd
    revision of the arbiter lease the promotion was made under (several
    arbiters, :mod:`pgfailover.lease`), ``None`` without one.
    """

    kind: EventKind
    from_node: str | None
    to_node: str | None
    reason: str
    started: float
    completed: float | None = None
    outcome: Outcome = "in_progress"
    data_loss_bytes: int | None = None
    promoted_by: str | None = None  # "pgfailover", or None when an orchestrator did it
    first_write_after: float | None = None
    notes: tuple[str, ...] = ()
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    fencing_revision: int | None = None  # the arbiter lease's revision it promoted under

    @property
    def duration(self) -> float | None:
        """Seconds from detection to completion (``None`` while in progress)."""
        return None if self.completed is None else max(0.0, self.completed - self.started)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict, including ``duration``."""
        data = dataclasses.asdict(self)
        data["notes"] = list(self.notes)
        data["duration"] = self.duration
        data["from"] = data.pop("from_node")
        data["to"] = data.pop("to_node")
        return data

    @classmethod
    def from_dict(cls, data: Any) -> FailoverEvent:
        """Inverse of :meth:`as_dict` (unknown keys ignored), checked field by field.

        Raises:
            ValueError: not an object, or a field of the wrong type (the
                message names it).
        """
        if not isinstance(data, dict):
            raise ValueError(f"expected an object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["from_node"] = data.get("from")
        values["to_node"] = data.get("to")
        values["notes"] = data.get("notes") or []
        try:
            event = msgspec.convert(values, type=cls, strict=True)
        except msgspec.ValidationError as exc:
            raise ValueError(str(exc)) from None
        for name in ("started", "completed", "first_write_after"):
            value = getattr(event, name)
            if value is not None and not (math.isfinite(value) and abs(value) < 1e11):
                raise ValueError(f"{name} is not a time: {value!r}")
        texts = [
            event.reason,
            event.id,
            *(event.notes),
            event.from_node or "",
            event.to_node or "",
        ]
        for text in texts:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("text that UTF-8 cannot carry (a lone surrogate)") from None
        return event


class EventLog:
    """The newest events, optionally mirrored to a JSON-lines file.

    Locks: ``_lock`` guards the events and the file; it is a leaf (nothing
    else is locked under it).

    Thread safety: all methods may be called from any thread.
    """

    def __init__(self, size: int = 100, path: str | Path | None = None) -> None:
        self._lock = threading.Lock()
        self._events: deque[FailoverEvent] = deque(maxlen=size)  # guarded by self._lock
        self._path = Path(path) if path else None
        self.skipped = 0  # lines of the file that were not events (set once, at load)
        if self._path is not None and self._path.exists():
            self._load(self._path)

    def _load(self, path: Path) -> None:
        """Read the file; a line that is not an event is skipped with a warning.

        Lines of the availability ledger (:data:`LEDGER_KINDS`) are passed
        over silently: they belong in the file, so they are not ``skipped``.
        """
        latest: dict[str, FailoverEvent] = {}
        try:
            raw = path.read_bytes()
        except OSError as exc:
            logger.warning("history file %s not read: %s", path, exc)
            return
        for number, line in enumerate(raw.split(b"\n"), 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line.decode("utf-8"))
                if isinstance(data, dict) and _is_ledger_kind(data.get("kind")):
                    continue
                event = FailoverEvent.from_dict(data)
            except (ValueError, RecursionError) as exc:  # JSON, UTF-8 and schema errors
                detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
                logger.warning("history file %s line %d skipped: %s", path, number, detail)
                self.skipped += 1
                continue
            latest.pop(event.id, None)
            latest[event.id] = event  # the last line of an event wins
        self._events.extend(latest.values())

    def record(self, event: FailoverEvent) -> FailoverEvent:
        """Add or update (by ``id``) an event; mirror it to the file."""
        with self._lock:
            self._store(event)
        return event

    def _store(self, event: FailoverEvent) -> None:
        """Keep ``event`` and append its line to the file (caller holds ``_lock``).

        The file line is written under the lock, so the file's last line of
        an event is always its latest state, in the order updates happened.
        """
        for index, existing in enumerate(self._events):
            if existing.id == event.id:
                self._events[index] = event
                break
        else:
            self._events.append(event)
        if self._path is not None:
            try:
                append_line(self._path, json.dumps(event.as_dict(), sort_keys=True) + "\n")
            except OSError as exc:
                logger.error("cannot append to history file %s: %s", self._path, exc)

    def update(self, event_id: str, **changes: Any) -> FailoverEvent | None:
        """Apply ``changes`` to the event with ``event_id`` and record it, atomically."""
        with self._lock:
            current = next((e for e in self._events if e.id == event_id), None)
            if current is None:
                return None
            updated = dataclasses.replace(current, **changes)
            self._store(updated)
            return updated

    def append_notes(self, event_id: str, notes: tuple[str, ...]) -> FailoverEvent | None:
        """Add ``notes`` to an event's notes, atomically (no update is lost)."""
        with self._lock:
            current = next((e for e in self._events if e.id == event_id), None)
            if current is None:
                return None
            updated = dataclasses.replace(current, notes=(*current.notes, *notes))
            self._store(updated)
            return updated

    def get(self, event_id: str) -> FailoverEvent | None:
        """The event with ``event_id``, if still kept."""
        with self._lock:
            return next((e for e in self._events if e.id == event_id), None)

    def events(self) -> list[FailoverEvent]:
        """Every kept event, oldest first."""
        with self._lock:
            return list(self._events)

    def latest(self, kind: EventKind | None = None) -> FailoverEvent | None:
        """The newest event (of ``kind``)."""
        with self._lock:
            for event in reversed(self._events):
                if kind is None or event.kind == kind:
                    return event
        return None


def _is_ledger_kind(kind: object) -> bool:
    """Whether a line's ``kind`` is one of the ledger's (an unhashable kind is not)."""
    return isinstance(kind, str) and kind in LEDGER_KINDS


def run_callbacks(callbacks: list[Callable[..., object]], *args: object) -> None:
    """Call each callback; log and swallow what one raises."""
    for callback in list(callbacks):
        started = time.monotonic()
        try:
            callback(*args)
        except Exception:
            logger.exception("callback %r raised; ignored", callback)
        elapsed = time.monotonic() - started
        if elapsed > 1.0:
            logger.warning("callback %r took %.1fs: keep callbacks short", callback, elapsed)


class Callbacks:
    """The application's callbacks, by kind (``failover``, ``state_change``, ``recovery``,
    ``writable_change``).

    Registering is expected at start-up; :meth:`emit` iterates over a copy,
    so a callback registered while another kind runs is safe. The caller
    runs :meth:`emit` with no lock held (see ``FailoverActions``).
    """

    KINDS = ("failover", "state_change", "recovery", "writable_change")

    def __init__(self) -> None:
        self._by_kind: dict[str, list[Callable[..., object]]] = {k: [] for k in self.KINDS}

    def add(self, kind: str, callback: C) -> C:
        """Call ``callback`` on every event of ``kind``; returns it (decorator use)."""
        self._by_kind[kind].append(callback)
        return callback

    def emit(self, kind: str, *args: object) -> None:
        """Run every callback of ``kind`` (see :func:`run_callbacks`)."""
        run_callbacks(self._by_kind[kind], *args)


class CallbackQueue:
    """Callbacks decided under locks, run later with none held (``flush``).

    Also remembers whether the cluster was last reported writable, so that
    ``writable_change`` is queued only when that changes.

    Locks: ``_lock`` guards the queue and the last report; a leaf.

    Thread safety: every method may be called from any thread.
    """

    def __init__(self, run: Callable[..., None]) -> None:
        self._run = run  # run(kind, *args): the application's callbacks of one kind
        self._lock = threading.Lock()
        self._pending: list[tuple[str, tuple[object, ...]]] = []  # guarded by self._lock
        self._writable = True  # guarded by self._lock: last reported (on_writable_change)

    def add(self, kind: str, *args: object) -> None:
        """Queue ``kind``'s callbacks with ``args``."""
        with self._lock:
            self._pending.append((kind, args))

    def writable(self, reason: str | None) -> bool:
        """Queue ``writable_change`` if writability changed (``reason``: why read-only,
        ``None``: writable); True when it did."""
        with self._lock:
            changed, self._writable = self._writable != (reason is None), reason is None
            if changed:
                self._pending.append(("writable_change", (reason is None, reason)))
        return changed

    def flush(self) -> None:
        """Run the queued callbacks; call only with no lock held."""
        with self._lock:
            pending, self._pending = self._pending, []
        for kind, args in pending:
            self._run(kind, *args)
