"""Notifications: the manager's events posted as JSON to webhooks, never in a failover's way.

``Webhooks(urls, cluster=...).attach(mgr)`` registers the manager's
callbacks. Each callback only appends one JSON document to a bounded queue
per URL (when it is full the oldest waiting document is dropped, counted
and logged): nothing a receiver does (down, slow, answering 500) can delay
a probe round or a promotion. One thread per URL posts its queue in order,
with urllib3's retries (exponential backoff with jitter on connection
errors and 429/5xx), so a receiver gets every event of a failover in the
order it happened, numbered by ``seq``; a receiver that is down costs only
its own thread.

Documents: ``{"cluster", "seq", "at", "type", ...}`` with ``type``
``state_change`` (``old``, ``new``, ``primary``), ``failover`` (``event``:
the history record), ``recovery`` (``node``) or ``writable_change``
(``writable``, ``reason``). DSN passwords are masked in the document, and
a URL is logged as its scheme and host only (webhook URLs often hold a
token).

urllib3 (maintained, no dependencies, already under every HTTP client in
Python) gives connection pooling, timeouts and a tested retry-with-backoff
policy instead of a hand-written loop.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import threading
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

import urllib3

from pgfailover.dsn import mask_dsn
from pgfailover.events import FailoverEvent
from pgfailover.manager import FailoverManager
from pgfailover.model import ClusterState, Snapshot
from pgfailover.report import iso

__all__ = ["Webhooks"]

logger = logging.getLogger(__name__)

RETRY_STATUSES = (429, 500, 502, 503, 504)


def shown(url: str) -> str:
    """A webhook URL as logs may show it: scheme and host (the path may be a secret)."""
    try:
        parts = urllib.parse.urlsplit(url)
        return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    except ValueError:
        return "(not a valid URL)"


def encode(cluster: str, seq: int, kind: str, fields: dict[str, Any]) -> bytes:
    """One document, as posted: JSON, DSN passwords masked."""
    document = {"cluster": cluster, "seq": seq, "at": iso(time.time()), "type": kind, **fields}
    return mask_dsn(json.dumps(document, default=str)).encode()


class _Sink:
    """One URL: a bounded queue and the thread that posts it, in order.

    Locks: ``_cond`` guards the queue, the counters and the stop flag; a
    leaf (nothing is posted under it).
    """

    def __init__(self, url: str, http: urllib3.PoolManager, queue_size: int) -> None:
        self.url = url
        self._http = http
        self._cond = threading.Condition()
        self._queue: collections.deque[bytes] = collections.deque(maxlen=queue_size)
        self.sent = self.failed = self.dropped = 0  # guarded by _cond
        self._stopping = False  # guarded by _cond
        self._thread = threading.Thread(
            target=self._run, name=f"pgfailover-webhook-{shown(url)}", daemon=True
        )
        self._thread.start()

    def submit(self, body: bytes) -> None:
        with self._cond:
            if len(self._queue) == self._queue.maxlen:
                self.dropped += 1
                logger.warning("webhook %s: queue full, oldest event dropped", shown(self.url))
            self._queue.append(body)
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return
                body = self._queue.popleft()
            ok = self._post(body)
            with self._cond:
                if ok:
                    self.sent += 1
                else:
                    self.failed += 1

    def _post(self, body: bytes) -> bool:
        try:
            response = self._http.request(
                "POST", self.url, body=body, headers={"Content-Type": "application/json"}
            )
        except urllib3.exceptions.HTTPError as exc:
            logger.warning("webhook %s: not delivered: %s", shown(self.url), type(exc).__name__)
            return False
        if response.status >= 300:
            logger.warning("webhook %s: answered HTTP %d", shown(self.url), response.status)
            return False
        return True

    def close(self, deadline: float) -> None:
        """Post what is queued until ``deadline`` (monotonic), then stop."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(max(0.0, deadline - time.monotonic()))


class Webhooks:
    """POST the manager's events to ``urls`` (see the module docstring).

    ``timeout`` bounds one attempt; ``retries`` more attempts follow a
    failed one, ``backoff`` seconds doubling each time (with jitter).
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        cluster: str,
        timeout: float = 5.0,
        retries: int = 5,
        backoff: float = 0.5,
        queue_size: int = 1000,
    ) -> None:
        self.cluster = cluster
        retry = urllib3.Retry(
            total=retries,
            backoff_factor=backoff,
            backoff_jitter=backoff / 2,
            backoff_max=30.0,
            status_forcelist=RETRY_STATUSES,
            allowed_methods=None,  # POST too: a receiver dedupes by seq
            raise_on_status=False,
        )
        http = urllib3.PoolManager(retries=retry, timeout=urllib3.Timeout(total=timeout))
        self._sinks = [_Sink(url, http, queue_size) for url in urls]
        self._seq = itertools.count(1)
        self._lock = threading.Lock()  # a leaf: numbers and queues documents in one order

    def attach(self, mgr: FailoverManager) -> Webhooks:
        """Send ``mgr``'s state changes, failover events, recoveries and read-only mode."""
        mgr.on_state_change(self._state_change)
        mgr.on_failover(self._failover)
        mgr.on_recovery(lambda node: self.send("recovery", node=node))
        mgr.on_writable_change(
            lambda writable, reason: self.send("writable_change", writable=writable, reason=reason)
        )
        return self

    def _state_change(self, old: ClusterState, new: ClusterState, snap: Snapshot) -> None:
        self.send("state_change", old=old.value, new=new.value, primary=snap.primary)

    def _failover(self, event: FailoverEvent) -> None:
        self.send("failover", event=event.as_dict())

    def send(self, kind: str, **fields: Any) -> None:
        """Queue one document for every URL (never blocks on the network)."""
        with self._lock:
            body = encode(self.cluster, next(self._seq), kind, fields)
            for sink in self._sinks:
                sink.submit(body)

    def stats(self) -> list[dict[str, Any]]:
        """Per URL (shown as scheme and host): sent, failed and dropped documents."""
        return [
            {"url": shown(s.url), "sent": s.sent, "failed": s.failed, "dropped": s.dropped}
            for s in self._sinks
        ]

    def close(self, timeout: float = 5.0) -> None:
        """Post what is queued, for at most ``timeout`` seconds in all, then stop."""
        deadline = time.monotonic() + timeout
        for sink in self._sinks:
            sink.close(deadline)
