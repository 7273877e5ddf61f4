"""The probing thread: parallel probes under one deadline, fast mode, wake-up.

:class:`ProbeRound` probes every node at once, each on its own worker thread
and dedicated connection, and gives up on the stragglers at one deadline: a
hung node (SIGSTOP, black-holed network) costs one timeout, not one per node.
A straggler's socket is shut down so its thread returns; while it is still
busy the next round reports that node failed at once instead of queueing.

:class:`Monitor` runs rounds on a timer: ``health_check_interval`` while the
primary is fine, ``fast_interval`` while it is in doubt, and at once when
:meth:`Monitor.wake` is called (a query failed with a connection error or
hit a read-only node). It holds only a weak reference to its owner (the
manager's rounds), so a manager that is garbage-collected stops its thread;
the loop logs and survives any error.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Protocol

from pgfailover.config import Node
from pgfailover.probe import NodeProber, ProbeResult, failed

__all__ = ["Monitor", "ProbeRound", "RoundOwner"]

logger = logging.getLogger(__name__)


class ProbeRound:
    """Probes all nodes in parallel under one deadline.

    A full round (:meth:`run` without ``patience``: ``check_health()``, the
    re-probe before a promotion) waits up to ``timeout`` for the nodes that
    answered last time and reports every node. A node that already failed
    last time gets only ``grace`` more once the others are in: a hung node
    costs one timeout in the first round, then nothing.

    The monitor's rounds pass ``patience``: such a round returns once the
    others are in and a straggler has had ``patience``, leaving the
    straggler's probe running and reporting nothing for it (no news, its
    state stays) until it answers or its probe is ``timeout`` old (or the
    hold it was started with, see :meth:`run`), when it is reported
    failed. So a hung primary never blinds the monitor to the rest of the
    cluster: a standby promoted a moment after the hang is seen within
    one fast interval, not after the hung node's timeout. :meth:`pending`
    names the stragglers, and the monitor probes fast while the primary is
    one of them.

    A probe left running (a hung server may wake up and answer it) is
    aborted after ``abort_after`` seconds, so that a connection lost in a
    black hole is replaced instead of waiting on TCP retransmissions.

    Locks: ``_lock`` guards the in-flight probes and their ages, the failing
    set and the closed flag; under it a straggler's prober may be aborted, which takes
    that prober's own lock (``ProbeRound._lock`` → ``NodeProber._lock``,
    never the other way). No probe is waited for under it.

    Thread safety: :meth:`run` may be called from several threads; rounds
    share the per-node probers, and a node still busy from an earlier round
    is never probed twice at once.
    """

    def __init__(self, nodes: Sequence[Node], timeout: float, *, grace: float = 0.02) -> None:
        self.timeout = timeout
        self.grace = grace
        self.abort_after = 3 * timeout
        self._probers = {n.name: NodeProber(n.name, n.dsn, timeout=timeout) for n in nodes}
        self._executor = ThreadPoolExecutor(
            max_workers=max(1, 2 * len(nodes)), thread_name_prefix="pgfailover-probe"
        )
        self._lock = threading.Lock()
        self._busy: dict[str, tuple[Future[ProbeResult], float]] = {}  # guarded by self._lock
        # How old each running probe may grow before a patient round reports it
        # failed: the timeout, or the hold it was started with.
        self._ages: dict[str, float] = {}  # guarded by self._lock
        self._failing: set[str] = set()  # guarded by self._lock
        # The probe whose answer each node's last result came from: an answer
        # that arrives between two rounds is reported by the next one.
        self._reported: dict[str, Future[ProbeResult]] = {}  # guarded by self._lock
        self._closed = False  # guarded by self._lock

    def pending(self) -> frozenset[str]:
        """Nodes whose latest probe has not answered yet."""
        with self._lock:
            return frozenset(name for name, (f, _) in self._busy.items() if not f.done())

    def run(
        self,
        timeout: float | None = None,
        *,
        patience: float | None = None,
        decisive: Callable[[ProbeResult], bool] | None = None,
        only: Collection[str] | None = None,
        holds: Mapping[str, float] | None = None,
    ) -> dict[str, ProbeResult]:
        """Probe every node once; return within ``timeout`` (default: the probe timeout).

        ``only``: probe these nodes, no other (a follower confirming a
        query's failure). Without ``patience`` every node probed gets a
        result (failed if silent).
        With it, the round ends ``patience`` after it started (or when all
        answered) and a straggler younger than the timeout gets no result.
        ``decisive`` marks a result that must not wait for slower nodes (a
        standby that has been promoted while the old primary hangs): once one
        is in, the others get only ``grace`` more. ``holds``, per node, when
        longer than the timeout: the probe this round starts there may take
        that long to open a session, and a patient round reports it failed
        only once it is that old, whichever round asks (a follower that just
        fell back, a node already given up: see :class:`~pgfailover.rounds.Rounds`).
        """
        limit = self.timeout if timeout is None else timeout
        ages: dict[str, float] = {}  # a straggler's age at which it is reported
        started = time.monotonic()
        deadline = started + limit
        wait_end = deadline if patience is None else min(deadline, started + patience)
        futures: dict[str, Future[ProbeResult]] = {}
        inflight: dict[str, tuple[Future[ProbeResult], float]] = {}
        late: dict[str, Future[ProbeResult]] = {}  # answered after its round ended
        with self._lock:
            if self._closed:
                return {name: failed(name, started, "monitor closed") for name in self._probers}
            failing = set(self._failing)
            for name, prober in self._probers.items():
                if only is not None and name not in only:
                    continue
                busy = self._busy.get(name)
                if busy is not None and not busy[0].done():
                    ages[name] = self._ages.get(name, self.timeout)
                    if started - busy[1] > self.abort_after + ages[name] - self.timeout:
                        prober.abort()  # replaced by a fresh connection next round
                    inflight[name] = busy
                    continue
                if busy is not None and self._reported.get(name) is not busy[0]:
                    late[name] = busy[0]
                hold = (holds or {}).get(name)
                future = self._executor.submit(prober.probe, hold)
                self._busy[name] = (future, started)
                self._ages[name] = ages[name] = max(self.timeout, hold or 0.0)
                futures[name] = future
                inflight[name] = (future, started)
        # A probe still running from an earlier round is waited for like a new one: a
        # slow answer is an answer (a full round reporting it failed at once made a
        # standby busy for 0.1 s an unreachable witness).
        self._wait([f for n, (f, _) in inflight.items() if n not in failing], wait_end, decisive)
        rest = [f for name, f in futures.items() if name in failing]
        if rest:
            grace_end = min(wait_end, time.monotonic() + self.grace)
            wait_futures(rest, timeout=max(0.0, grace_end - time.monotonic()))
        opening = frozenset(n for n in inflight if self._probers[n].opening)
        results, answered = _verdicts(
            inflight, late, fresh=futures.keys(), failing=failing, started=started,
            limit=limit, ages=ages if patience is not None else None, opening=opening,
        )  # fmt: skip
        with self._lock:
            self._reported.update(answered)
            silent = self._failing - results.keys()
            self._failing = silent | {name for name, result in results.items() if not result.ok}
        return results

    def _wait(
        self,
        futures: list[Future[ProbeResult]],
        deadline: float,
        decisive: Callable[[ProbeResult], bool] | None,
    ) -> None:
        """Wait for ``futures`` until the deadline, or shortly after a decisive result."""
        pending = set(futures)
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            done, pending = wait_futures(pending, timeout=left, return_when=FIRST_COMPLETED)
            if decisive is not None and any(decisive(f.result()) for f in done):
                wait_futures(pending, timeout=max(0.0, min(left, self.grace)))
                return

    def release(self, names: Collection[str]) -> None:
        """Close these nodes' probe connections (the next probe opens a new one).

        A follower probes a node only now and then; it keeps no backend open for it.
        """
        for name in names:
            prober = self._probers.get(name)
            if prober is not None:
                prober.release()

    def close(self) -> None:
        """Abort running probes, close probe connections, stop the workers."""
        with self._lock:
            self._closed = True
        for prober in self._probers.values():
            prober.close()
        self._executor.shutdown(wait=False, cancel_futures=True)


def _verdicts(
    inflight: dict[str, tuple[Future[ProbeResult], float]],
    late: dict[str, Future[ProbeResult]],
    *,
    fresh: Collection[str],
    failing: Collection[str],
    started: float,
    limit: float,
    ages: Mapping[str, float] | None,
    opening: Collection[str] = (),
) -> tuple[dict[str, ProbeResult], dict[str, Future[ProbeResult]]]:
    """A round's results, and the probes they came from (answered ones).

    A probe that answered gives its result; one still running is no news
    while it is younger than its age in ``ages`` (a patient round), and failed otherwise:
    ``fresh`` names the probes this round started, ``failing`` the nodes
    that failed last time, ``opening`` those still opening a session.
    """
    results: dict[str, ProbeResult] = {}
    answered: dict[str, Future[ProbeResult]] = {}
    now = time.monotonic()
    for name, (future, since) in inflight.items():
        if future.done():
            answered[name] = future
        elif name in late:
            answered[name] = late[name]
        elif ages is not None and now - since < ages[name]:
            continue  # no news yet: the probe keeps running into later rounds
        else:
            if name not in fresh:
                at, why = since, f"no answer for {now - since:.1f}s"
            elif name in failing:
                at, why = started, "no answer (still failing)"
            else:
                at, why = started, f"probe timed out after {limit:g}s"
            results[name] = failed(name, at, why, opening=name in opening)
    results.update((name, future.result()) for name, future in answered.items())
    return results, answered


class RoundOwner(Protocol):
    """What the monitor drives (:class:`~pgfailover.rounds.Rounds`)."""

    def monitor_round(self) -> bool:
        """Run one probe round and apply it; True while the primary is in doubt."""
        ...


_EXITING = "after interpreter shutdown"
"""What concurrent.futures refuses a probe with once the interpreter is exiting (before
``atexit``: a process that exits without closing its manager gets there first)."""


class Monitor:
    """The ``pgfailover-monitor`` thread.

    Thread safety: :meth:`wake` and :meth:`stop` may be called from any thread.
    """

    def __init__(
        self,
        owner: RoundOwner,
        *,
        interval: float,
        fast_interval: float,
        name: str = "pgfailover-monitor",
    ) -> None:
        self._owner = weakref.ref(owner)
        self._interval = interval
        self._fast_interval = fast_interval
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def running(self) -> bool:
        """True while the thread runs."""
        return self._thread.is_alive()

    def start(self) -> None:
        """Start the thread (once)."""
        self._thread.start()

    def wake(self) -> None:
        """Run a round now instead of at the end of the interval."""
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> bool:
        """Ask the thread to stop and wait up to ``timeout``; False if it did not."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("monitor thread did not stop within %.1fs", timeout)
            return False
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            owner = self._owner()
            if owner is None:
                return
            in_doubt = True
            try:
                in_doubt = owner.monitor_round()
            except RuntimeError as exc:
                if _EXITING in str(exc):
                    return  # a process exiting without close(): no traceback at its exit
                logger.exception("monitor round failed; continuing")
            except Exception:
                logger.exception("monitor round failed; continuing")
            del owner  # do not keep the manager alive while sleeping
            self._wake.wait(self._fast_interval if in_doubt else self._interval)
            self._wake.clear()
