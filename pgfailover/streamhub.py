"""The arbiter's stream hub: each published snapshot, encoded once, for every follower.

:class:`StreamHub` turns a manager's published snapshots into server-sent
events for :mod:`pgfailover.stream`'s endpoint: at once when something a
follower routes on changed (:func:`~pgfailover.wire.routing_key`), and
otherwise the newest one at most every :data:`QUIET_GAP` seconds.

Why the quiet gap: while the primary is in doubt the arbiter probes every
50 ms, and each round's snapshot differs in its probe times. Sent whole to
200 followers, that is 4,000 decodes a second on the application hosts at
the moment they most need their CPU, and a follower that reads slowly
finds the snapshot naming the new primary behind stale ones in its socket.
A follower loses nothing by the gap: what it routes on still arrives at
once, and a read-your-writes check may see a standby's position up to the
gap late, which only sends that read to the primary.

A follower that reads slowly never makes the arbiter buffer more than one
snapshot for it: each follower has one slot holding the newest encoded
update, so a late reader skips to the newest snapshot (each one is whole,
and the sequence number shows the gap).

Locks: none. :class:`StreamHub` is touched only on its event loop's thread,
except :meth:`StreamHub.changed`, which hands the news to that loop with
``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any, Final

from pgfailover.model import Snapshot
from pgfailover.wire import FORMAT, HEARTBEAT, Update, encode, routing_key

__all__ = ["QUIET_GAP", "StreamHub", "Subscriber", "event"]

logger = logging.getLogger(__name__)

QUIET_GAP: Final = 0.2
"""Seconds between two updates that change nothing a follower routes on (at most)."""


class Subscriber:
    """One open stream (a follower, seen from the arbiter): the newest update not sent yet,
    and a flag to wake its writer."""

    __slots__ = ("pending", "ready")

    def __init__(self) -> None:
        self.pending: bytes | None = None
        self.ready = asyncio.Event()


class StreamHub:
    """Turns a manager's published snapshots into encoded updates for every follower.

    ``fresh_for``: how long after the manager's last snapshot the hub still
    sends heartbeats; beyond it the arbiter's probing has stalled and
    followers must hear silence. ``busy``: the arbiter is promoting (its
    monitor publishes nothing between the re-probe and the switch, which
    may take longer than ``fresh_for``): heartbeats go on meanwhile.

    Thread safety: only :meth:`changed` may be called from another thread
    than the loop's.
    """

    def __init__(
        self,
        cluster: str,
        snapshot: Callable[[], Snapshot],
        held: Callable[[], bool],
        *,
        fresh_for: float,
        heartbeat: float = HEARTBEAT,
        busy: Callable[[], bool] = lambda: False,
        wake: Callable[[], None] = lambda: None,
        quiet_gap: float = QUIET_GAP,
    ) -> None:
        self.cluster = cluster
        self._wake = wake
        self.heartbeat = heartbeat
        self._snapshot = snapshot
        self._held = held
        self._busy = busy
        self._fresh_for = fresh_for
        self._loop: asyncio.AbstractEventLoop | None = None
        self._followers: set[Subscriber] = set()
        self._seq = 0
        self._quiet_gap = quiet_gap
        self._newest: tuple[Snapshot, bool] | None = None  # published, maybe not sent yet
        self._sent: tuple[Snapshot, bool] | None = None
        self._sent_key: tuple[Any, ...] | None = None
        self._sent_at = 0.0  # monotonic
        self._deferred: asyncio.TimerHandle | None = None  # the newest, sent after the gap
        self._frame = b""
        self._published = time.monotonic()
        self.closing = False
        self.reports = 0  # follower reports of a failed node (POST /failover/suspect)

    @property
    def snapshot(self) -> Snapshot:
        """The manager's snapshot now."""
        return self._snapshot()

    def suspected(self, node: str) -> None:
        """A follower found ``node`` gone: the arbiter's monitor probes now."""
        self.reports += 1
        logger.debug("a follower suspects %s: probing now", node)
        self._wake()

    @property
    def followers(self) -> int:
        """Open streams now."""
        return len(self._followers)

    @property
    def seq(self) -> int:
        """The sequence number of the newest update."""
        return self._seq

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop the followers' writers run on (set once it runs)."""
        self._loop = loop
        self._update()

    def changed(self) -> None:
        """The manager published something (any thread): hand it to the loop."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._update)

    def _update(self) -> None:
        """On the loop: send the new snapshot now if it changes routing, else after the
        quiet gap (the newest one then)."""
        current = (self._snapshot(), self._held())
        if current[0].rounds == 0:
            return  # the arbiter has not probed yet: nothing worth following
        newest = self._newest
        if newest is not None and current[0] is newest[0] and current[1] == newest[1]:
            return
        now = time.monotonic()
        if newest is None or current[0] is not newest[0]:
            self._published = now
        self._newest = current
        key = routing_key(*current)
        wait = self._sent_at + self._quiet_gap - now
        if key != self._sent_key or wait <= 0:
            self._send(current, key)
        elif self._deferred is None and self._loop is not None:
            self._deferred = self._loop.call_later(wait, self._flush)

    def _flush(self) -> None:
        """On the loop, after the quiet gap: the newest snapshot, if not sent yet."""
        self._deferred = None
        newest, sent = self._newest, self._sent
        if newest is None or self.closing:
            return
        if sent is None or newest[0] is not sent[0] or newest[1] != sent[1]:
            self._send(newest, routing_key(*newest))

    def _send(self, current: tuple[Snapshot, bool], key: tuple[Any, ...]) -> None:
        """Encode ``current`` once and give it to every follower."""
        if self._deferred is not None:
            self._deferred.cancel()
            self._deferred = None
        self._sent, self._sent_key, self._sent_at = current, key, time.monotonic()
        self._seq += 1
        update = Update(self.cluster, self._seq, time.time(), current[0], held=current[1])
        self._frame = event("snapshot", encode(update), self._seq)
        for follower in self._followers:
            follower.pending = self._frame
            follower.ready.set()

    def hello(self) -> bytes:
        """The first event of every stream."""
        data = {"cluster": self.cluster, "format": FORMAT, "heartbeat": self.heartbeat}
        return event("hello", json.dumps(data).encode())

    def fresh(self) -> bool:
        """The arbiter's probe rounds still publish, or it is promoting (heartbeats are
        sent only then)."""
        return time.monotonic() - self._published <= self._fresh_for or self._busy()

    def join(self) -> Subscriber:
        """A new follower, whose first update is the current snapshot if it is fresh
        (a stalled arbiter's last snapshot may name a primary that is no more)."""
        follower = Subscriber()
        if self._frame and self.fresh():
            follower.pending = self._frame
            follower.ready.set()
        self._followers.add(follower)
        return follower

    def leave(self, follower: Subscriber) -> None:
        """A stream ended."""
        self._followers.discard(follower)

    def close(self) -> None:
        """On the loop: end every stream (the server is stopping)."""
        self.closing = True
        if self._deferred is not None:
            self._deferred.cancel()
            self._deferred = None
        for follower in self._followers:
            follower.ready.set()


def event(kind: str, data: bytes, seq: int | None = None) -> bytes:
    """One server-sent event: ``id`` (when given), ``event`` and one ``data`` line."""
    head = f"id: {seq}\n" if seq is not None else ""
    return f"{head}event: {kind}\ndata: ".encode() + data + b"\n\n"
