"""The ``pgfailover-follower`` thread: route on a source's snapshots, probe when it is silent.

A manager with a ``source`` (see :mod:`pgfailover.topology`) runs this
thread beside its monitor. It reads the source's stream and publishes each
snapshot through :meth:`Rounds.adopt <pgfailover.rounds.Rounds.adopt>`, so
routing, events, callbacks, availability and metrics work exactly as with
the manager's own rounds, while the monitor only confirms what queries
suspect (:meth:`Rounds.confirm <pgfailover.rounds.Rounds.confirm>`): the
cluster sees no probe from this process while the source talks.

When the source falls silent for ``silence`` seconds (the manager's
``health_check_interval``, at least three of the arbiter's heartbeats),
refuses the connection, or sends something this version cannot use, the
follower hands probing back to the monitor (full rounds, from the source's
last snapshot on) and says so: a warning in the log, ``mode`` in status,
``pgfailover_source_following`` and ``pgfailover_source_fallbacks_total``
in the metrics. It keeps trying the source's URLs in turn (0.1 s, doubling
to 2 s between attempts), and the first snapshot that arrives puts it back
to following.

When it hands probing back is what keeps hundreds of followers from opening
their probe sessions (three each) in the same instant, at the moment one
arbiter dies:

- after a silence of ``silence``, at once: the allowance is spent;
- when a stream it was following breaks (closed, refused, an answer it
  cannot use, or three heartbeats of silence when there are other
  arbiters), it first tries the source's other URLs: a follower of two
  arbiters moves to the other one and never probes, whether the first died
  or hangs. It probes if none has given it a snapshot within ``silence`` of
  the first one's last word;
- when every URL has failed, after a random delay of up to half of
  ``silence`` (at most :data:`SPREAD` seconds), so that the followers of a
  dead arbiter come to the database one by one. Meanwhile it routes on the
  last snapshot, and its queries' failures are still confirmed.


Before its first snapshot a follower has nothing to route on, so it tries
the URLs once and then probes at once (or when ``wait_first`` runs out).

A follower never promotes: its configuration refuses ``promotion = "auto"``
and the manager refuses manual promotions.

Locks: ``_lock`` guards the status fields and the fallback to come (a leaf,
held for a copy or an assignment); the stream is read and snapshots are
adopted outside it.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any, Literal, Protocol

from pgfailover.model import Snapshot
from pgfailover.topology.arbiter import Hello
from pgfailover.topology.replay import SourceMismatch
from pgfailover.topology.sse import StreamError
from pgfailover.topology.urls import mask_url
from pgfailover.wire import Update

__all__ = ["Follower", "FollowerOwner", "Mode", "Source"]

logger = logging.getLogger(__name__)

Mode = Literal["connecting", "following", "probing"]
BACKOFF = (0.1, 2.0)
SPREAD = 1.0
"""The longest a follower whose every source URL failed waits before it probes (the
delay is random, up to half of ``silence``): 200 followers of a dead arbiter then
open their 600 probe sessions over a second instead of in one instant."""
REPORT_EVERY = 1.0
"""Seconds between one follower's reports of the same node: the arbiter needs one
report to probe at once; every follower repeating it at each confirmation (four a
second each) would bury the arbiter's event loop in requests just when it must
push the new primary (200 followers: 800 requests a second)."""


class Source(Protocol):
    """What the follower reads: :class:`~pgfailover.topology.arbiter.ArbiterSource`,
    :class:`~pgfailover.topology.patroni.PatroniRestSource` or
    :class:`~pgfailover.topology.patroni.PatroniEtcdSource`."""

    @property
    def urls(self) -> tuple[str, ...]:
        """The URLs to try in turn (a source that rotates itself gives one)."""
        ...

    @property
    def shown(self) -> str:
        """The setting for logs and status, passwords masked."""
        ...

    @property
    def silence(self) -> float:
        """Seconds without word after which the source is given up."""
        ...

    def messages(self, url: str) -> Iterator[Hello | Update]:
        """Snapshots from ``url`` until it fails (:class:`StreamError`) or closes."""
        ...

    def report(self, url: str, node: str) -> None:
        """A confirmation found ``node`` gone (a hint for the source)."""
        ...

    def close(self) -> None:
        """Stop reading, from any thread."""
        ...


class FollowerOwner(Protocol):
    """What the follower drives (:class:`~pgfailover.supervisor.Supervisor`)."""

    def adopt(self, snap: Snapshot, held: bool) -> None:
        """Publish the source's snapshot and act on it; from then on the monitor
        only confirms suspects (:class:`SourceMismatch`: a snapshot not to adopt)."""
        ...

    def probe_again(self) -> None:
        """The source is unusable: the monitor probes every node again, now."""
        ...


class Follower:
    """Follows ``source`` for one manager (``owner``, held weakly).

    Holding the owner weakly lets a manager that the application dropped
    without closing be garbage-collected; the thread then ends. ``rng``
    draws the delay of a fallback after every URL failed (tests seed it).

    Thread safety: :meth:`status` may be called from any thread; :meth:`start`,
    :meth:`wait_first` and :meth:`close` by the owner.

    Locks: ``_lock`` guards the status fields, counts and the fallback timer
    (a leaf, held for a copy or an assignment; the timer is started and
    cancelled outside it); snapshots are adopted outside it.
    """

    def __init__(
        self,
        source: Source,
        owner: FollowerOwner,
        *,
        name: str,
        rng: random.Random | None = None,
    ) -> None:
        self.source = source
        self._owner = weakref.ref(owner)
        self._name = name
        self.updates = 0  # guarded by self._lock: snapshots adopted
        self.fallbacks = 0  # guarded by self._lock: times the source went silent or unusable
        self._lock = threading.Lock()
        self._mode: Mode = "connecting"  # guarded by self._lock
        self._since = time.time()  # guarded by self._lock
        self._reason: str | None = None  # guarded by self._lock
        self._url: str | None = None  # guarded by self._lock: the arbiter followed (masked)
        self._raw_url: str | None = None  # guarded by self._lock: the same, to report to
        self._seq: int | None = None  # guarded by self._lock
        self._last_update: float | None = None  # guarded by self._lock (wall clock)
        self._adopting = False  # guarded by self._lock: a snapshot is being adopted
        self._reported: dict[str, float] = {}  # guarded by self._lock: node -> last report
        self._timer: threading.Timer | None = None  # guarded by self._lock: a fallback to come
        self._timer_at = 0.0  # guarded by self._lock: when it comes (monotonic)
        self._timer_spread = False  # guarded by self._lock: every URL had failed when set
        self._rng = rng or random.Random()  # noqa: S311 - a spread, not a secret
        self._first = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"pgfailover-follower-{name}")
        self._thread.daemon = True

    @property
    def mode(self) -> Mode:
        """``following`` the source, ``probing`` itself, or ``connecting`` (not yet either)."""
        return self._mode

    def start(self) -> None:
        """Start the thread (once)."""
        self._thread.start()

    def wait_first(self, timeout: float) -> bool:
        """Wait for the source's first snapshot; False if none came in time (then probe)."""
        got = self._first.wait(timeout)
        if not got:  # unless the thread said why already (or followed meanwhile)
            self._fall_back(f"no snapshot from the source within {timeout:g}s", first=True)
        return got

    def status(self) -> dict[str, Any]:
        """What status shows under ``source``."""
        with self._lock:
            return {
                "urls": self.source.shown,
                "mode": self._mode,
                "since": self._since,
                "reason": self._reason,
                "following": self._url,
                "seq": self._seq,
                "last_update": self._last_update,
                "updates": self.updates,
                "fallbacks": self.fallbacks,
            }

    def report(self, node: str) -> None:
        """A confirmation probe found ``node`` gone: tell the arbiter followed (if any),
        at most once per :data:`REPORT_EVERY` for each node."""
        now = time.monotonic()
        with self._lock:
            url = self._raw_url if self._mode == "following" else None
            if url is None or now - self._reported.get(node, -REPORT_EVERY) < REPORT_EVERY:
                return
            self._reported[node] = now
        self.source.report(url, node)

    def close(self, timeout: float = 2.0) -> None:
        """Stop following (the stream is interrupted at once)."""
        self._stop.set()
        self._cancel_fallback()
        self.source.close()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # -- the thread -------------------------------------------------------------

    def _run(self) -> None:
        urls = self.source.urls
        attempt = 0
        pause = BACKOFF[0]
        failed: set[str] = set()  # the URLs that failed since the last snapshot
        while not self._stop.is_set() and self._owner() is not None:
            url = urls[attempt % len(urls)]
            attempt += 1
            adopted = 0
            try:
                for message in self.source.messages(url):
                    if self._stop.is_set():
                        return
                    if isinstance(message, Hello):
                        continue
                    owner = self._owner()
                    if owner is None:  # the manager was garbage-collected
                        return
                    self._adopt(owner, url, message.seq, message.snapshot, message.held)
                    del owner
                    failed.clear()
                    adopted += 1
                    if adopted == 2:  # a live stream, not one snapshot and silence
                        pause = BACKOFF[0]
            except StreamError as exc:
                if self._stop.is_set():
                    return
                failed.add(url)
                self._broke(str(exc), quiet=exc.quiet, others=len(failed) < len(urls))
            except Exception as exc:
                logger.exception("follower %s: unexpected error; probing meanwhile", self._name)
                self._fall_back(f"unexpected error: {type(exc).__name__}")
            if attempt % len(urls) == 0:
                self._stop.wait(pause)
                pause = min(BACKOFF[1], pause * 2)

    def _adopt(self, owner: FollowerOwner, url: str, seq: int, snap: Snapshot, held: bool) -> None:
        with self._lock:
            was_following = self._mode == "following"
            self._adopting = True
        try:
            owner.adopt(snap, held)
        except SourceMismatch as exc:  # another cluster's nodes, an older snapshot
            raise StreamError(str(exc)) from None
        finally:
            with self._lock:
                self._adopting = False
        self._cancel_fallback()
        now = time.time()
        with self._lock:
            self._seq, self._last_update, self._url = seq, now, self._shown(url)
            self._raw_url = url
            self._reason = None  # a broken stream's grace, if any, is over
            if not was_following:
                self._mode, self._since = "following", now
            self.updates += 1
        self._first.set()
        if not was_following:
            logger.info("cluster %s: following %s", self._name, self._shown(url))

    def _shown(self, url: str) -> str:
        """``url`` masked; a source that tries its endpoints itself has one URL, the
        whole setting, which its ``shown`` masks endpoint by endpoint."""
        return self.source.shown if len(self.source.urls) == 1 else mask_url(url)

    def _broke(self, reason: str, *, quiet: float, others: bool) -> None:
        """A stream failed after ``quiet`` seconds without a word: probe now, or after a
        grace (see the module's docstring)."""
        silence = self.source.silence
        left = silence - quiet  # of the allowance, counted from the source's last word
        with self._lock:
            mode = self._mode
        if left <= 0 or mode != "following":
            if others and left > 0 and mode == "connecting":
                return  # nothing to route on yet: the next URL at once (wait_first bounds it)
            self._fall_back(reason)
            return
        grace = left if others else min(left, self._rng.uniform(0.0, min(silence / 2, SPREAD)))
        at = time.monotonic() + grace
        timer = threading.Timer(grace, self._fire, args=(reason,))
        timer.name, timer.daemon = f"pgfailover-fallback-{self._name}", True
        with self._lock:
            current = self._timer
            # Keep a fallback already set: a spread one (drawing again at each retry
            # would pull the followers' fallbacks together), or an earlier one.
            if current is not None and (self._timer_spread or others or self._timer_at <= at):
                return
            old, self._timer, self._timer_at = current, timer, at
            self._timer_spread = not others
            # Still routing on the last snapshot, but status says what is coming.
            self._reason = f"{reason}; probing in {grace:.2f}s unless a snapshot comes"
        if old is not None:
            old.cancel()
        timer.start()
        logger.info(
            "cluster %s: source %s failed (%s): %s; probing in %.2fs unless a snapshot comes",
            self._name,
            self.source.shown,
            reason,
            "trying its other URLs" if others else "retrying",
            grace,
        )

    def _fire(self, reason: str) -> None:
        """The grace ran out without a snapshot: probe (unless cancelled meanwhile)."""
        with self._lock:
            if self._timer is not threading.current_thread():
                return
            self._timer = None
        self._fall_back(reason)

    def _cancel_fallback(self) -> None:
        with self._lock:
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def _fall_back(self, reason: str, *, first: bool = False) -> None:
        with self._lock:
            if first and (self._mode != "connecting" or self._adopting):
                return
            fell = self._mode != "probing"
            self._reason = reason
            if fell:
                self._mode, self._since = "probing", time.time()
                self.fallbacks += 1
            timer, self._timer = self._timer, None  # a fallback set for later: this is it
        if timer is not None:
            timer.cancel()
        if not fell:
            return
        owner = self._owner()
        if owner is not None:
            owner.probe_again()
        logger.warning(
            "cluster %s: source %s unusable (%s): probing the cluster meanwhile",
            self._name,
            self.source.shown,
            reason,
        )
