"""The arbiter's lease: of several ``pgfailover serve --etcd``, only the holder promotes.

Two or more arbiters watch one cluster; each probes, publishes and streams
its snapshots, but a promotion (automatic, a trigger, a switchover) needs
the lease: the key ``<prefix>/<cluster>/arbiter`` in etcd, created in a
transaction only if absent (``create_revision == 0``) and attached to an
etcd lease of ``ttl`` seconds that the holder keeps alive every third of
it. When the holder dies, hangs or is cut off from etcd, its lease expires
within ``ttl`` and the next arbiter to look (every ``poll`` seconds) takes
the key; a clean shutdown revokes it, so the handover is at once.

The key's ``create_revision`` is the fencing token: it only grows, it names
one holding, and it is written into the failover event of every promotion
made under it. Before ``pg_promote`` the holder reads the key from etcd
again (a linearizable read) and promotes only if it is still its own and
its lease has at least ``margin`` seconds left by its own clock (the clock
starts when the renewal was *sent*, so it runs out before etcd's); after
``pg_promote`` it checks again and notes the answer in the event. Two
arbiters therefore never promote concurrently: the second can hold the key
only after the first's lease has expired in etcd, after which the first
refuses by its own clock.

The cluster's maintenance pause lives beside the key
(``<prefix>/<cluster>/maintenance``, see :mod:`pgfailover.maintenance`):
every look (every ``poll`` seconds, holder or not) reads both keys in one
etcd transaction and hands the pause to the watcher, and the read before an
automatic ``pg_promote`` refuses while it is set.

Locks: ``_lock`` guards the holding's state and the pause last read (a
leaf; no etcd call is made under it).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pgfailover.etcd import Etcd, EtcdError, KeyValue
from pgfailover.maintenance import SharedPause

__all__ = ["ArbiterLease", "Holding"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Holding:
    """This arbiter's lease: etcd's lease ID, the key's fencing revision, until when it holds."""

    lease: int
    revision: int
    valid_until: float  # monotonic: the lease cannot have expired in etcd before this


def default_identity() -> str:
    """``host:pid``: which arbiter holds the lease, for status and the events."""
    return f"{socket.gethostname()}:{os.getpid()}"


class ArbiterLease:
    """Takes and keeps the arbiter key of ``cluster`` in ``etcd`` (the ``pgfailover-lease``
    thread); :meth:`may_promote` says whether this arbiter may promote now.

    Thread safety: every public method may be called from any thread.
    """

    def __init__(
        self,
        etcd: Etcd,
        cluster: str,
        *,
        identity: str | None = None,
        ttl: int = 5,
        prefix: str = "/pgfailover",
    ) -> None:
        if ttl < 2:
            raise ValueError(f"the lease TTL must be at least 2 seconds, got {ttl}")
        self.etcd = etcd
        self.key = f"{prefix.rstrip('/')}/{cluster}/arbiter"
        self.pause_key = f"{prefix.rstrip('/')}/{cluster}/maintenance"
        self.identity = identity or default_identity()
        self.ttl = ttl
        self.margin = ttl / 3
        # A handover takes up to the TTL, plus etcd's sweep of expired leases
        # (every 0.5 s), plus one look: 0.2 s keeps it within TTL + 1 s with room.
        self.poll = min(0.2, ttl / 4)
        self._lock = threading.Lock()
        self._holding: Holding | None = None  # guarded by self._lock
        self._holder: str | None = None  # guarded by self._lock: who holds it, as last read
        self._holder_revision: int | None = None  # guarded by self._lock
        self._error: str | None = None  # guarded by self._lock: the last etcd failure
        self._verified: int | None = None  # guarded by self._lock: may_promote's last yes
        self._renew_at = 0.0  # guarded by self._lock: monotonic, when the holding is renewed
        self._pause: SharedPause | None = None  # guarded by self._lock: as last read
        self._pause_read = False  # guarded by self._lock: the pause key was read once
        self._watcher: Callable[[SharedPause | None, int], None] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"pgfailover-lease-{cluster}")
        self._thread.daemon = True

    # -- what the promotion path asks --------------------------------------------

    @property
    def holding(self) -> Holding | None:
        """This arbiter's holding while its lease lasts by its own clock, else ``None``."""
        with self._lock:
            held = self._holding
        if held is None or time.monotonic() >= held.valid_until:
            return None
        return held

    def may_promote(self, automatic: bool = False) -> str | None:
        """``None`` when this arbiter holds the lease now, checked in etcd; else why not.

        Called right before ``pg_promote`` and right after it (one etcd
        read each): the key must still carry this holding's revision and
        lease, and the lease at least ``margin`` seconds left; an
        ``automatic`` promotion also needs the cluster not paused (the same
        read).
        """
        held = self.holding
        if held is None:
            with self._lock:
                holder, error = self._holder, self._error
            if error:
                return f"this arbiter does not hold the lease ({error})"
            who = f"arbiter {holder} holds it" if holder else "nobody holds it yet"
            return f"this arbiter ({self.identity}) does not hold the lease: {who}"
        left = held.valid_until - time.monotonic()
        if left < self.margin:
            return f"the lease has {left:.1f}s left, under the {self.margin:.1f}s margin"
        try:
            kv, pause = self._look()
        except EtcdError as exc:
            return f"cannot confirm the lease: {exc}"
        if kv is None or kv.create_revision != held.revision or kv.lease != held.lease:
            return "the lease was lost: the arbiter key is no longer this arbiter's"
        if automatic and pause is not None and pause.paused:
            return f"maintenance mode is on for the cluster ({pause.describe()}; in etcd)"
        left = held.valid_until - time.monotonic()  # the read took time too
        if left < self.margin:
            return f"the lease has {left:.1f}s left, under the {self.margin:.1f}s margin"
        with self._lock:
            self._verified = held.revision
        return None

    def fencing_revision(self) -> int | None:
        """The revision (the fencing token) :meth:`may_promote` last confirmed, or ``None``."""
        with self._lock:
            return self._verified

    # -- the shared maintenance pause --------------------------------------------

    def watch_pause(self, watcher: Callable[[SharedPause | None, int], None]) -> None:
        """Hand every read of the pause key to ``watcher`` (what it holds, ``None`` if it
        was never written, and the etcd revision read at), on the lease thread; set
        before :meth:`start`."""
        self._watcher = watcher

    def share_pause(self, pause: SharedPause) -> int:
        """Write the cluster's pause to etcd; the revision of the write.

        Raises:
            EtcdError: etcd did not take it.
        """
        return self._write_pause(pause)

    def share_resume(self, resume: SharedPause) -> int:
        """Write the cluster's resume to etcd (the key stays, not paused); the revision.

        Raises:
            EtcdError: etcd did not take it.
        """
        return self._write_pause(resume)

    def _write_pause(self, state: SharedPause) -> int:
        revision = self.etcd.put(self.pause_key, state.encode())
        with self._lock:
            self._pause, self._pause_read = state, True
        return revision

    def _look(self) -> tuple[KeyValue | None, SharedPause | None]:
        """Both keys in one read; the pause (``None``: never written) goes to the watcher.

        Raises:
            EtcdError: etcd did not answer.
        """
        revision, (kv, raw) = self.etcd.get_many([self.key, self.pause_key])
        pause = None if raw is None else SharedPause.decode(raw.value, time.time())
        with self._lock:
            self._pause, self._pause_read = pause, True
        if self._watcher is not None:
            self._watcher(pause, revision)
        return kv, pause

    def _pause_status(self) -> dict[str, Any] | None:
        with self._lock:
            pause, read = self._pause, self._pause_read
        if not read:
            return None
        return {"paused": False} if pause is None else pause.as_dict()

    def status(self) -> dict[str, Any]:
        """What status shows under ``lease``; ``maintenance``: the cluster's pause as
        last read from etcd (``None`` before the first read)."""
        held = self.holding
        with self._lock:
            holder, revision, error = self._holder, self._holder_revision, self._error
        return {
            "key": self.key,
            "identity": self.identity,
            "held": held is not None,
            "holder": self.identity if held is not None else holder,
            "revision": held.revision if held is not None else revision,
            "seconds_left": round(held.valid_until - time.monotonic(), 2) if held else None,
            "ttl": self.ttl,
            "error": error,
            "etcd": self.etcd.shown,
            "maintenance": self._pause_status(),
        }

    # -- the thread ---------------------------------------------------------------

    def start(self) -> None:
        """Start taking and keeping the lease."""
        self._thread.start()

    def close(self, timeout: float = 2.0, *, revoke: bool = True) -> None:
        """Stop; revoke the lease if held, so that another arbiter takes over at once.

        ``revoke=False`` (a promotion of this arbiter's may still be running)
        lets the lease expire instead: no other arbiter acts before the TTL.
        """
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        with self._lock:
            held, self._holding = self._holding, None
        if held is not None and revoke:
            try:
                self.etcd.revoke(held.lease)
                logger.info("arbiter lease %s released (revision %d)", self.key, held.revision)
            except EtcdError as exc:
                logger.warning("arbiter lease %s not released: %s", self.key, exc)
        self.etcd.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                raw = self._holding
            if raw is not None and time.monotonic() >= raw.valid_until:
                self._lost("not renewed within its TTL")
            try:
                pause = self._step()
                with self._lock:
                    self._error = None
            except EtcdError as exc:
                pause = self.poll
                self._failed(str(exc))
            except Exception as exc:
                logger.exception("arbiter lease %s: unexpected error", self.key)
                pause = self.poll
                self._failed(f"unexpected error: {type(exc).__name__}")
            self._stop.wait(pause)

    def _step(self) -> float:
        """One look (both keys), and a renewal when due or a take when the key is free;
        the seconds until the next."""
        if self.holding is None:
            return self._try_take()
        self._look()
        with self._lock:
            due = time.monotonic() >= self._renew_at
        return self._renew() if due else self.poll

    def _try_take(self) -> float:
        kv, _ = self._look()
        if kv is not None:
            self._seen(kv.value, kv.create_revision)
            return self.poll
        sent = time.monotonic()
        lease = self.etcd.grant(self.ttl)
        created, kv = self.etcd.create(self.key, self.identity, lease)
        if not created or kv is None:
            self.etcd.revoke(lease)  # another arbiter was quicker: leak nothing
            if kv is not None:
                self._seen(kv.value, kv.create_revision)
            return self.poll
        with self._lock:
            self._holding = Holding(lease, kv.create_revision, sent + self.ttl)
            self._holder, self._holder_revision = self.identity, kv.create_revision
            self._renew_at = sent + self.ttl / 3
        logger.warning(
            "arbiter %s took the lease %s (revision %d): it promotes from now",
            self.identity,
            self.key,
            kv.create_revision,
        )
        return self.poll

    def _renew(self) -> float:
        held = self.holding
        if held is None:
            return 0.0
        sent = time.monotonic()
        left = self.etcd.keepalive(held.lease)
        if left <= 0:
            self._lost("etcd says the lease expired")
            return 0.0
        with self._lock:
            if self._holding is not None and self._holding.lease == held.lease:
                self._holding = Holding(held.lease, held.revision, sent + left)
            self._renew_at = sent + self.ttl / 3
        return self.poll

    def _seen(self, holder: str, revision: int) -> None:
        with self._lock:
            changed = self._holder != holder or self._holder_revision != revision
            self._holder, self._holder_revision = holder, revision
        if changed:
            logger.info("arbiter lease %s is held by %s (revision %d)", self.key, holder, revision)

    def _failed(self, error: str) -> None:
        with self._lock:
            first = self._error is None
            self._error = error
        if first:
            logger.warning("arbiter lease %s: %s", self.key, error)

    def _lost(self, why: str) -> None:
        with self._lock:
            held, self._holding = self._holding, None
            if held is not None:
                self._holder = None  # unknown until read again
        if held is not None:
            logger.error(
                "arbiter %s lost the lease %s (revision %d): %s; it promotes no more",
                self.identity,
                self.key,
                held.revision,
                why,
            )
