"""Patroni as a topology source: its REST API, or its keys in etcd, watched.

``source = "patroni+http://db1:8008,patroni+http://db2:8008"`` reads
``GET /cluster`` from the first member's REST API that answers, every
``fast_interval`` (0.05 s by default): the manager learns of a leader change
within one interval, at the cost of ``managers / fast_interval`` requests a
second on Patroni's REST API (a thread per request in Patroni), which suits
a few dozen processes.

``source = "patroni+etcd://etcd1:2379,patroni+etcd://etcd2:2379/service/<scope>"``
reads Patroni's keys (its leader key and member keys under
``<namespace>/<scope>/``) from etcd's JSON gateway and *watches* them
(``/v3/watch``, one streaming request per manager): etcd pushes the leader
key's change the moment Patroni writes it, and a member's new state (the new
leader's promotion done) the moment it lands. It also reads the keys every
``health_check_interval / 2`` (at most every 0.5 s), which is how it notices
etcd going silent. It needs Patroni's ``etcd3`` DCS (the v3 API; Patroni's
``etcd`` DCS keeps v2 keys, which the v3 API does not show).
This is the one for hundreds of processes: etcd serves watchers by the
thousand, and Patroni's REST API sees nothing of them.

Both turn what Patroni says into probe results run through ``transition``
(:class:`~pgfailover.topology.members.PatroniReader`), and both give up (the
follower then probes the cluster itself) when no endpoint has answered for
``silence`` seconds (the manager's ``health_check_interval``). A follower of
Patroni never promotes: Patroni does.

Locks: :class:`PatroniEtcdSource` has ``_lock`` over the keys, their revision
and the open watch (a leaf, held to copy or apply, never across I/O);
:class:`PatroniRestSource` has none (one thread reads; :meth:`close` only
sets an event).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from typing import Any

import urllib3

from pgfailover.etcd import Etcd, EtcdError
from pgfailover.tls import pool_manager, tls_failure
from pgfailover.topology.members import (
    PatroniReader,
    announced_candidate,
    from_cluster,
    from_keys,
)
from pgfailover.topology.replay import SourceMismatch
from pgfailover.topology.sse import StreamError
from pgfailover.topology.urls import mask_url
from pgfailover.wire import Update

__all__ = ["PatroniEtcdSource", "PatroniRestSource"]

logger = logging.getLogger(__name__)

WATCH_BACKOFF = (0.1, 2.0)
WATCH_IDLE = 30.0  # seconds a watch may stay quiet before it is opened again


def _auth(url: str) -> tuple[str, dict[str, str]]:
    """``url`` without credentials, and the basic-auth header they make (if any)."""
    parts = urllib.parse.urlsplit(url.rstrip("/"))
    if parts.username is None:
        return urllib.parse.urlunsplit(parts), {}
    user = urllib.parse.unquote(parts.username)
    password = urllib.parse.unquote(parts.password or "")
    headers = urllib3.util.make_headers(basic_auth=f"{user}:{password}")
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2])), headers


class PatroniRestSource:
    """Polls ``GET /cluster`` on Patroni's REST APIs ``apis`` (``http://host:8008``).

    The follower sees one URL (the whole setting): this source tries the
    APIs itself, the one that answered last first, so one member's REST API
    going away costs no fallback.

    Thread safety: :meth:`messages` is read by the follower's thread;
    :meth:`close` may be called from any thread.
    """

    def __init__(
        self,
        apis: Sequence[str],
        reader: PatroniReader,
        *,
        connect_timeout: float,
        silence: float,
        poll: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.apis = tuple(apis)
        self.urls = (",".join(f"patroni+{a}" for a in self.apis),)
        self.silence = silence
        self._reader = reader
        self._poll = poll
        # One read may take half the silence, over every API: a black hole is given
        # up on in time to try the others, and to fall back within `silence`.
        self._budget = max(0.1, min(connect_timeout, silence / 2))
        self._http = pool_manager(
            ssl_context, num_pools=len(self.apis) + 1, maxsize=1, retries=False
        )
        self._stop = threading.Event()

    @property
    def shown(self) -> str:
        """The setting for logs and status, passwords masked."""
        return ",".join(f"patroni+{mask_url(a)}" for a in self.apis)

    def messages(self, url: str) -> Iterator[Update]:
        """A snapshot per read of ``/cluster``, every ``poll`` seconds, until closed.

        Raises:
            StreamError: no REST API answered for ``silence`` seconds, or
                Patroni's members are not this manager's nodes.
        """
        try:
            yield from self._poll_cluster()
        finally:
            self._reader.release()

    def _poll_cluster(self) -> Iterator[Update]:
        last_ok = time.monotonic()
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                members = from_cluster(self._read())
                yield self._reader.update(members, time.time(), time.monotonic() - started)
                last_ok = time.monotonic()
            except _NoAnswer as exc:
                if time.monotonic() - last_ok >= self.silence:
                    raise StreamError(
                        f"{self.shown}: {exc} for {self.silence:g}s", quiet=self.silence
                    ) from None
            except (ValueError, SourceMismatch) as exc:
                raise StreamError(f"{self.shown}: {exc}") from None
            self._stop.wait(max(0.0, self._poll - (time.monotonic() - started)))

    def _read(self) -> Any:
        """``/cluster`` from the API that answered last, else the next; one that fails
        goes to the back, so that the next read starts with another."""
        failures = []
        deadline = time.monotonic() + self._budget
        each = max(0.1, self._budget / len(self.apis))  # a black hole cannot eat it all
        for api in self.apis:
            left = deadline - time.monotonic()
            if left <= 0:
                failures.append("out of time")
                break
            target, headers = _auth(api)
            data = None
            try:
                response = self._http.request(
                    "GET",
                    f"{target}/cluster",
                    headers=headers,
                    timeout=urllib3.Timeout(min(left, each)),
                )
                failure = None if response.status == 200 else f"HTTP {response.status}"
                data = json.loads(response.data) if failure is None else None
            except urllib3.exceptions.HTTPError as exc:
                failure = tls_failure(exc) or type(exc).__name__
            except ValueError:
                failure = "not JSON"
            if failure is not None:
                failures.append(f"{mask_url(api)} {failure}")
                self.apis = (*(a for a in self.apis if a != api), api)
                continue
            if api != self.apis[0]:  # prefer the one that answered
                self.apis = (api, *(a for a in self.apis if a != api))
            return data
        raise _NoAnswer(f"no Patroni REST API answered ({'; '.join(failures)})")

    def report(self, url: str, node: str) -> None:
        """Nothing to tell: Patroni checks its members itself."""

    def close(self) -> None:
        """Stop polling: the loop ends after the read in flight (within its budget,
        half of ``silence``)."""
        self._stop.set()
        self._http.clear()


class _NoAnswer(Exception):
    """No endpoint answered this time (the source gives up after ``silence``)."""


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _text(data: object) -> str:
    return base64.b64decode(str(data or "")).decode(errors="replace")


def _as_written(endpoint: str, prefix: str) -> str:
    """An etcd endpoint as the setting wrote it: ``patroni+etcd://host:port/<prefix>``
    (``patroni+etcds://`` for ``https``)."""
    scheme, _, rest = endpoint.partition("://")
    return f"patroni+etcd{'s' if scheme == 'https' else ''}://" + rest + prefix.rstrip("/")


class PatroniEtcdSource:
    """Patroni's keys under ``prefix`` in etcd (``endpoints``): read, then watched.

    The keys are read whole every ``poll`` seconds (a linearizable range,
    which is also how etcd going silent is noticed) and watched in between
    (``/v3/watch`` from the read's revision on, one streaming request on a
    ``pgfailover-patroni-watch`` thread): a snapshot follows each change
    pushed to a key snapshots are made of (the leader, failover and member
    keys; not ``status``, ``history``, ``config``...). An event no newer
    than the last read is skipped (the read has it). A watch that misses a
    change a read saw, twice in a row, is on a stalled etcd member: it is
    cut and opened again on the next endpoint.

    Thread safety: :meth:`messages` is read by the follower's thread;
    :meth:`close` may be called from any thread.

    Locks: ``_lock`` guards the keys, their revisions and the open watch
    response (a leaf; never held across a call to etcd).
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        prefix: str,
        reader: PatroniReader,
        *,
        connect_timeout: float,
        silence: float,
        poll: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.endpoints = tuple(endpoints)
        self.prefix = prefix
        self.urls = (",".join(_as_written(e, prefix) for e in self.endpoints),)
        self.silence = silence
        self._reader = reader
        self._poll = poll
        self._connect_timeout = connect_timeout
        self._etcd = Etcd(
            self.endpoints,
            timeout=max(0.1, min(connect_timeout, silence / 2)),
            ssl_context=ssl_context,
        )
        self._http = pool_manager(ssl_context, num_pools=len(self.endpoints) + 1, retries=False)
        self._lock = threading.Lock()
        self._keys: dict[str, str] = {}  # guarded by self._lock
        self._revision = 0  # guarded by self._lock: the newest revision applied
        self._read_revision = 0  # guarded by self._lock: the last whole read's
        self._pushed = 0  # guarded by self._lock: the newest change the watch brought
        self._behind = 0  # guarded by self._lock: reads in a row the watch was behind
        self._response: urllib3.BaseHTTPResponse | None = None  # guarded by self._lock
        self._changed = threading.Event()
        self._stop = threading.Event()

    @property
    def shown(self) -> str:
        """The setting for logs and status, passwords masked."""
        return ",".join(_as_written(mask_url(e), self.prefix) for e in self.endpoints)

    def messages(self, url: str) -> Iterator[Update]:
        """A snapshot after each read of the keys and after each change etcd pushes.

        Raises:
            StreamError: etcd did not answer for ``silence`` seconds, or
                Patroni's members are not this manager's nodes.
        """
        done = threading.Event()
        watcher = threading.Thread(
            target=self._watch, args=(done,), name="pgfailover-patroni-watch", daemon=True
        )
        last_ok = last_read = time.monotonic()
        first = True
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                if first or started - last_read >= self._poll:
                    try:
                        self._range()
                    except EtcdError as exc:
                        if time.monotonic() - last_ok >= self.silence:
                            raise StreamError(f"{self.shown}: {exc}", quiet=self.silence) from None
                        self._stop.wait(min(self._poll, 0.1))
                        continue
                    last_ok = last_read = time.monotonic()
                    if first:  # watch from the first read's revision on
                        first = False
                        watcher.start()
                with self._lock:
                    keys = dict(self._keys)
                try:
                    members = from_keys(keys, self.prefix)
                    announced = announced_candidate(keys, self.prefix)
                    took = time.monotonic() - started
                    yield self._reader.update(members, time.time(), took, announced)
                except SourceMismatch as exc:
                    raise StreamError(f"{self.shown}: {exc}") from None
                # The next snapshot: after a change pushed, else at the next read. While
                # a new leader is pending, the confirmation (up to fast_interval, waited
                # on the server) paces the loop instead.
                if self._reader.pending is None:
                    self._changed.wait(max(0.0, self._poll - (time.monotonic() - last_read)))
                self._changed.clear()
        finally:
            done.set()
            self._interrupt()
            if watcher.is_alive():
                watcher.join(1.0)
            self._reader.release()

    def _range(self) -> None:
        end = self.prefix[:-1] + chr(ord(self.prefix[-1]) + 1)
        data = self._etcd.call("kv/range", {"key": _b64(self.prefix), "range_end": _b64(end)})
        revision = int(data.get("header", {}).get("revision", 0))
        kvs = data.get("kvs", [])
        keys = {_text(kv.get("key")): _text(kv.get("value")) for kv in kvs}
        newest = max((int(kv.get("mod_revision", 0)) for kv in kvs), default=0)
        with self._lock:
            if revision < self._revision:  # the watch already applied newer changes
                return
            self._keys, self._revision, self._read_revision = keys, revision, revision
            behind = self._response is not None and newest > self._pushed
            self._behind = self._behind + 1 if behind else 0
            stalled = self._behind >= 2
        if stalled:  # a change the watch never brought, for two reads: another endpoint
            logger.info("patroni watch on %s is behind its reads: reopening", self.shown)
            self._interrupt()

    def _watch(self, done: threading.Event) -> None:
        """The watch thread: apply each change etcd pushes; reopen after an error."""
        pause = WATCH_BACKOFF[0]
        attempt = 0
        while not (done.is_set() or self._stop.is_set()):
            order = self._etcd.endpoints  # the one that answered last first
            endpoint = order[attempt % len(order)]
            attempt += 1
            try:
                self._stream(endpoint, done)
                pause = WATCH_BACKOFF[0]
            except (urllib3.exceptions.HTTPError, OSError, ValueError, EtcdError) as exc:
                if done.is_set() or self._stop.is_set():
                    return
                logger.debug("patroni watch on %s: %s", mask_url(endpoint), exc)
            done.wait(pause)
            pause = min(WATCH_BACKOFF[1], pause * 2)

    def _stream(self, endpoint: str, done: threading.Event) -> None:
        end = self.prefix[:-1] + chr(ord(self.prefix[-1]) + 1)
        with self._lock:
            start = self._revision + 1
        target, headers = endpoint, self._etcd.auth_headers()  # etcd's token, if a user
        body = {"create_request": {"key": _b64(self.prefix), "range_end": _b64(end),
                                   "start_revision": start}}  # fmt: skip
        # etcd answers a watch at once; a quiet one is opened again after WATCH_IDLE.
        response = self._http.request(
            "POST",
            f"{target}/v3/watch",
            body=json.dumps(body).encode(),
            headers={**headers, "Content-Type": "application/json"},
            preload_content=False,
            timeout=urllib3.Timeout(connect=self._connect_timeout, read=WATCH_IDLE),
        )
        with self._lock:
            self._response, self._pushed, self._behind = response, start - 1, 0
        try:
            if response.status != 200:
                if response.status == 401:  # the token expired: the next attempt asks anew
                    self._etcd.forget_token()
                raise ValueError(f"HTTP {response.status}")
            buffer = b""
            for chunk in response.stream(64 * 1024):
                if done.is_set() or self._stop.is_set():
                    return
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        self._apply(json.loads(line))
            raise ValueError("etcd ended the watch")
        finally:
            with self._lock:
                if self._response is response:
                    self._response = None
            response.close()
            response.release_conn()

    def _apply(self, message: Any) -> None:
        result = message.get("result") if isinstance(message, dict) else None
        if not isinstance(result, dict):
            raise ValueError(f"not a watch response: {str(message)[:100]}")
        if result.get("canceled") or result.get("compact_revision"):
            if "auth token" in str(result.get("cancel_reason", "")):
                self._etcd.forget_token()  # the next watch asks for a new one
            # Events before etcd's compaction are gone: watch again from there on;
            # the keys' next whole read brings what was missed.
            compacted = int(result.get("compact_revision") or 0)
            with self._lock:
                self._revision = max(self._revision, compacted - 1)
            raise ValueError(f"etcd cancelled the watch (compacted at {compacted})")
        events = result.get("events") or []
        changed = False
        with self._lock:
            for event in events:
                kv = event.get("kv", {})
                key, revision = _text(kv.get("key")), int(kv.get("mod_revision", 0))
                self._pushed = max(self._pushed, revision)
                if revision <= self._read_revision:
                    continue  # the last whole read has it already
                if event.get("type") == "DELETE":
                    self._keys.pop(key, None)
                else:
                    self._keys[key] = _text(kv.get("value"))
                self._revision = max(self._revision, revision)
                changed = changed or self._read_by_members(key)
        if changed:
            self._changed.set()

    def _read_by_members(self, key: str) -> bool:
        """Whether a change of ``key`` can change a snapshot: the leader, failover and
        member keys can; Patroni's ``status``, ``history``, ``config``, ``sync``... cannot
        (a snapshot per follower for each would be CPU spent at a switchover for nothing)."""
        name = key[len(self.prefix) :] if key.startswith(self.prefix) else ""
        return name in ("leader", "failover") or name.startswith("members/")

    def _interrupt(self) -> None:
        with self._lock:
            if self._response is not None:
                with contextlib.suppress(OSError, RuntimeError, ValueError):
                    self._response.shutdown()

    def report(self, url: str, node: str) -> None:
        """Nothing to tell: Patroni checks its members itself."""

    def close(self) -> None:
        """Stop reading and watching: the watch is cut at once, a read in flight ends
        within its budget (half of ``silence``)."""
        self._stop.set()
        self._changed.set()
        self._interrupt()
        self._etcd.close()
        self._http.clear()
