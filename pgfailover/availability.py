"""Availability: the fraction of observed time the cluster took writes.

One manager's view over the last hour, day and week (:data:`WINDOWS`),
surviving restarts: the ledger keeps two kinds of record, each one JSON line
in the history file that :class:`~pgfailover.events.EventLog` writes::

    {"kind": "watch"|"outage", "id": str, "run": str,
     "started": float, "until": float|null, "reason": str|null}

Times are seconds since the epoch; the last line of an ``id`` wins.

* ``watch``: one per process run (``id`` and ``run`` are the run's id), the
  period this manager was observing. Its ``until`` is rewritten at every
  checkpoint, at every change of writability and at close, so a process
  killed with ``kill -9`` leaves its last such line as the end of what it
  saw. Time that no watch covers (between runs) is *unobserved*: neither up
  nor down.
* ``outage``: a period when the cluster took no writes, from ``started`` to
  ``until`` (``null`` while it lasts), with a short ``reason``, seen by run
  ``run``. One left open by a dead run ends where that run's watch ends.

Overlapping watches (a restart, or two processes sharing the file) are
merged so no second is counted twice, and outages count only where some
watch observed. The computation is pure (:func:`spans`,
:func:`window_stats`): times are arguments, never read from a hidden clock,
and a clock that goes backwards yields empty spans, never negative ones.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, TypedDict

import msgspec

from pgfailover.historyfile import LEDGER_KINDS, append_line
from pgfailover.model import Snapshot

__all__ = [
    "KEPT",
    "WINDOWS",
    "Availability",
    "Record",
    "RecordKind",
    "Span",
    "WindowStats",
    "read_records",
    "spans",
    "window_stats",
    "writes_taken",
]

logger = logging.getLogger(__name__)

RecordKind = Literal["watch", "outage"]
Span = tuple[float, float]  # (start, end), seconds since the epoch


class WindowStats(TypedDict):
    """Availability over one window: the up fraction of the observed seconds."""

    ratio: float | None  # None when nothing was observed in the window
    observed_seconds: float
    down_seconds: float


HOUR: Final = 3600.0
WINDOWS: Final[dict[str, float]] = {"1h": HOUR, "24h": 24 * HOUR, "7d": 7 * 24 * HOUR}
KEPT: Final = max(WINDOWS.values())  # what ended before now - KEPT can no longer matter


@dataclass(frozen=True)
class Record:
    """One line of the ledger: a run's watch, or an outage it saw (see the module)."""

    kind: RecordKind
    id: str
    run: str
    started: float
    until: float | None = None
    reason: str | None = None

    def as_line(self) -> str:
        """The record as one JSON line, newline included."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: Any) -> Record:
        """The record a parsed line holds, checked field by field.

        Raises:
            ValueError: not an object, not a ledger kind, or a field of the
                wrong type or a time that is not one (the message says which).
        """
        if not isinstance(data, dict):
            raise ValueError(f"expected an object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            record = msgspec.convert(
                {k: v for k, v in data.items() if k in known}, type=cls, strict=True
            )
        except msgspec.ValidationError as exc:
            raise ValueError(str(exc)) from None
        for name in ("started", "until"):
            value = getattr(record, name)
            if value is not None and not (math.isfinite(value) and abs(value) < 1e11):
                raise ValueError(f"{name} is not a time: {value!r}")
        return record


def read_records(path: Path) -> list[Record]:
    """The ledger's records in ``path``, the last line of each id, oldest first.

    Never raises: an unreadable file is one warning and no record; a line
    that is not JSON, not an object, or a malformed ledger record is skipped
    with one warning. Objects of other kinds (failover events) are passed
    over silently: :class:`~pgfailover.events.EventLog` reads those.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        logger.warning("history file %s not read for availability: %s", path, exc)
        return []
    latest: dict[str, Record] = {}
    for number, line in enumerate(raw.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line.decode("utf-8"))
            if isinstance(data, dict):
                kind = data.get("kind")
                if not (isinstance(kind, str) and kind in LEDGER_KINDS):
                    continue  # an event, or EventLog's to judge
            record = Record.from_dict(data)
        except (ValueError, RecursionError) as exc:  # JSON, UTF-8 and schema errors
            detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            logger.warning(
                "history file %s line %d skipped for availability: %s", path, number, detail
            )
            continue
        latest.pop(record.id, None)
        latest[record.id] = record  # the last line of an id wins
    return list(latest.values())


def spans(records: Iterable[Record]) -> tuple[list[Span], list[Span]]:
    """The observed spans and the outage spans of past runs' records.

    A watch without ``until`` observed nothing. An open outage ends where its
    run's watch ends (the run died, or was last heard of, there); without a
    watch of its run it covers nothing.
    """
    records = list(records)
    watched_until: dict[str, float] = {}
    watches: list[Span] = []
    for record in records:
        if record.kind == "watch":
            end = _end(record)
            watches.append((record.started, end))
            watched_until[record.run] = max(end, watched_until.get(record.run, end))
    outages: list[Span] = []
    for record in records:
        if record.kind == "outage":
            if record.until is None:
                outages.append((record.started, watched_until.get(record.run, record.started)))
            else:
                outages.append((record.started, record.until))
    return watches, outages


def _end(record: Record) -> float:
    """Where a record's span ends as written (a watch without ``until`` is empty)."""
    return record.started if record.until is None else record.until


def _merged(pairs: Iterable[Span], low: float, high: float) -> list[Span]:
    """``pairs`` clipped to ``[low, high]``, empty or backward ones dropped, merged."""
    clipped = sorted((max(s, low), min(e, high)) for s, e in pairs)
    merged: list[Span] = []
    for start, end in clipped:
        if end <= start:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _overlap(a: list[Span], b: list[Span]) -> float:
    """Seconds common to two sorted lists of disjoint spans."""
    total, i, j = 0.0, 0, 0
    while i < len(a) and j < len(b):
        start, end = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if end > start:
            total += end - start
        if a[i][1] <= b[j][1]:
            i += 1
        else:
            j += 1
    return total


def window_stats(
    watches: Iterable[Span], outages: Iterable[Span], now: float, window: float
) -> WindowStats:
    """Availability over ``[now - window, now]``.

    Returns ``{"ratio", "observed_seconds", "down_seconds"}``: seconds some
    watch covered, seconds of those in an outage, and the up fraction of the
    observed seconds (``None`` when none was observed). Overlapping spans
    count once; spans ending before they start (a clock that went back)
    count nothing, so the ratio is always within [0, 1].
    """
    observed = _merged(watches, now - window, now)
    seen = sum(end - start for start, end in observed)
    # 0 <= down <= seen (min: summing in another order may round past it),
    # so the ratio is within [0, 1] with no clamp.
    down = min(seen, _overlap(observed, _merged(outages, now - window, now)))
    ratio = None if seen <= 0 else (seen - down) / seen
    return {"ratio": ratio, "observed_seconds": seen, "down_seconds": down}


def writes_taken(snap: Snapshot) -> tuple[bool, str | None, float | None]:
    """Does the cluster take writes, as of ``snap``; if not, why and since when.

    Writes are taken while there is a primary that is healthy (thresholds
    counted: one missed probe is not an outage) and no split brain. An
    outage is dated from the lost primary's first failed probe.
    """
    name = snap.primary or snap.last_primary
    node = snap.node(name) if name is not None else None
    if snap.primary is not None and node is not None and node.healthy and not snap.split_brain:
        return True, None, None
    since = node.down_since if node is not None and not snap.split_brain else None
    return False, snap.state.value, since


class Availability:
    """The ledger of one run: its watch, its outages, and past runs' spans.

    Built with the history file (or ``None``: memory only, from now on),
    it loads past runs' records (never raising on a bad file), keeps their
    spans that can still matter for the week, and writes this run's watch.
    :meth:`observe` is called once per probe round and writes only when
    writability changes or a checkpoint is due; :meth:`report` computes the
    windows. An ``OSError`` writing the file is logged once per kind of
    failure (type and errno) and never raised: the figures go on in memory.

    Locks: ``_lock`` guards the run's state, the kept spans and the file
    appends; it is a leaf (nothing else is locked under it). :meth:`report`
    copies under it and computes outside.

    Thread safety: :meth:`observe` runs on the monitor thread; :meth:`report`
    and :meth:`close` may be called from any thread.
    """

    def __init__(self, path: str | Path | None, *, now: float, checkpoint: float = 300.0) -> None:
        if not (math.isfinite(checkpoint) and checkpoint > 0):
            raise ValueError(f"checkpoint must be a positive number of seconds: {checkpoint!r}")
        self._lock = threading.Lock()
        self._path = Path(path) if path else None
        self._checkpoint = checkpoint
        self._failures: set[tuple[str, int | None]] = set()  # guarded by self._lock
        self.run = uuid.uuid4().hex[:12]
        past: list[Record] = []
        if self._path is not None and self._path.exists():
            past = read_records(self._path)
        watches, outages = spans(past)
        # Guarded by self._lock: past runs' spans, and this run's closed outages.
        self._past_watches = [s for s in watches if s[1] >= now - KEPT]
        self._outages = [s for s in outages if s[1] >= now - KEPT]
        self._watch = Record("watch", self.run, self.run, now, now)  # guarded by self._lock
        self._down: Record | None = None  # this run's open outage; guarded by self._lock
        self._checkpointed = now  # guarded by self._lock
        self._closed = False  # guarded by self._lock
        with self._lock:
            self._write(self._watch)

    def observe(
        self, writable: bool, now: float, reason: str | None = None, since: float | None = None
    ) -> None:
        """Note one probe round's writability at ``now``; cheap when nothing changed.

        A change writes the watch (up to ``now``) then the outage's line; a
        due checkpoint writes the watch. ``reason`` names an outage that
        begins here, ``since`` when it began if that was before ``now`` (the
        primary's first failed probe; both are ignored otherwise). After
        :meth:`close`, nothing.
        """
        with self._lock:
            if self._closed:
                return
            changed = writable == (self._down is not None)
            if not changed and self._checkpointed <= now < self._checkpointed + self._checkpoint:
                return
            self._extend_watch(now)
            if not changed:
                return
            if self._down is None:
                began = now if since is None else min(since, now)
                self._down = Record("outage", uuid.uuid4().hex[:12], self.run, began, None, reason)
                self._write(self._down)
            else:
                self._end_outage(self._down, now)

    def close(self, now: float) -> None:
        """End this run's watch, and its open outage, at ``now`` (final lines)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._extend_watch(now)
            if self._down is not None:
                self._end_outage(self._down, now)

    def report(self, now: float) -> dict[str, WindowStats]:
        """Availability over each of :data:`WINDOWS`, as seen at ``now``.

        This run's watch counts up to ``now`` (up to its close once closed),
        and so does its open outage. See :func:`window_stats` for the figures.
        """
        with self._lock:
            watch_end = _end(self._watch)
            if not self._closed:
                watch_end = max(watch_end, now)
            watches = [*self._past_watches, (self._watch.started, watch_end)]
            outages = list(self._outages)
            if self._down is not None:
                outages.append((self._down.started, now))
        return {name: window_stats(watches, outages, now, w) for name, w in WINDOWS.items()}

    def _extend_watch(self, now: float) -> None:
        """Write the watch up to ``now`` and restart the checkpoint timer (under ``_lock``).

        ``until`` never moves back, so a clock stepping back shortens
        nothing; the timer restarts from the new time all the same.
        """
        self._checkpointed = now
        if now > _end(self._watch):
            self._watch = dataclasses.replace(self._watch, until=now)
            self._write(self._watch)
        self._prune(now)

    def _end_outage(self, down: Record, now: float) -> None:
        """Close the open outage ``down`` at ``now``, never before it began (under ``_lock``)."""
        ended = dataclasses.replace(down, until=max(now, down.started))
        self._down = None
        self._write(ended)
        self._outages.append((ended.started, _end(ended)))

    def _prune(self, now: float) -> None:
        """Forget spans that ended over a week before ``now`` (under ``_lock``).

        Linear, but run only with a write (a change or a checkpoint).
        """
        horizon = now - KEPT
        self._past_watches = [s for s in self._past_watches if s[1] >= horizon]
        self._outages = [s for s in self._outages if s[1] >= horizon]

    def _write(self, record: Record) -> None:
        """Append ``record``'s line, if there is a file; log a failure once per kind."""
        if self._path is None:
            return
        try:
            append_line(self._path, record.as_line())
        except OSError as exc:
            kind = (type(exc).__name__, exc.errno)
            if kind not in self._failures:
                self._failures.add(kind)
                logger.error(
                    "cannot append availability to history file %s: %s"
                    " (said once; figures go on in memory)",
                    self._path,
                    exc,
                )
