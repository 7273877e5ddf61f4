"""The ``pgfailover serve`` arbiter as a topology source: its snapshot stream, read.

:class:`ArbiterSource` opens ``GET /failover/stream`` (:mod:`pgfailover.stream`)
on one of the configured arbiters and yields what it says: a :class:`Hello`,
then :class:`~pgfailover.wire.Update` after update. Every read waits at most
``silence`` seconds: an arbiter that stops talking (dead host, black hole,
its probing stalled and so its heartbeats stopped) ends the stream with
:class:`~pgfailover.topology.sse.StreamError`, which is the follower's cue to
probe the cluster itself. With several arbiters a read waits only three
heartbeats (:data:`SWITCH_AFTER`), so that the follower of a hung arbiter
still has the rest of its allowance to take another one's stream.

HTTP is urllib3's, which the webhooks already use: a blocking client fits a
thread that does nothing else, it reads a chunked response as chunks arrive
(so an update is handled the moment it lands), and since 2.3 it can shut a
response's socket down from another thread, which is how :meth:`interrupt`
stops a read at once when the manager closes.

Locks: ``_lock`` guards the open response (a leaf; only swapping it and
shutting its socket down happen under it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
import threading
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import urllib3

from pgfailover.errors import first_line
from pgfailover.stream import PATH, SUSPECT_PATH
from pgfailover.tls import pool_manager, tls_failure
from pgfailover.topology.sse import EventParser, StreamError
from pgfailover.topology.urls import mask_url
from pgfailover.wire import FORMAT, HEARTBEAT, Update, WireError, decode

__all__ = ["ArbiterSource", "Hello"]

logger = logging.getLogger(__name__)

REPORT_TIMEOUT = 0.5  # seconds a follower's report of a failed node may take
SWITCH_AFTER = 3 * HEARTBEAT
"""Seconds without a byte (three of the arbiter's heartbeats) after which a follower
with another arbiter to go to gives this one up."""


@dataclass(frozen=True)
class Hello:
    """The first event of a stream: which cluster, and how often the arbiter speaks."""

    url: str
    cluster: str
    heartbeat: float


class ArbiterSource:
    """Snapshots from one of ``urls`` (tried in turn) for the cluster called ``cluster``.

    Thread safety: :meth:`messages` is read by one thread (the follower's);
    :meth:`interrupt` and :meth:`close` may be called from any thread.
    """

    def __init__(
        self,
        urls: Sequence[str],
        cluster: str,
        *,
        connect_timeout: float,
        silence: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.urls = tuple(urls)
        self.cluster = cluster
        self.silence = silence
        # One arbiter: wait out the whole allowance; several: switch after three beats.
        self._quiet_limit = silence if len(self.urls) == 1 else min(silence, SWITCH_AFTER)
        self._connect_timeout = connect_timeout
        # Two connections per arbiter: the stream's, and one kept alive for reports
        # (a new connection for each would cost the arbiter an accept and a close).
        self._http = pool_manager(
            ssl_context, num_pools=len(self.urls) + 1, maxsize=2, retries=False
        )
        self._lock = threading.Lock()
        self._response: urllib3.BaseHTTPResponse | None = None  # guarded by self._lock
        self._closed = False  # guarded by self._lock

    @property
    def shown(self) -> str:
        """The URLs for logs and status, passwords masked."""
        return ",".join(mask_url(u) for u in self.urls)

    @staticmethod
    def endpoint(url: str) -> tuple[str, dict[str, str]]:
        """The stream's URL on the arbiter given as ``url``, and the request's headers:
        credentials in the URL (for a proxy in front of the arbiter) go as HTTP basic
        authentication, never in the request line."""
        parts = urllib.parse.urlsplit(url.rstrip("/"))
        headers = {"Accept": "text/event-stream"}
        if parts.username is not None:
            user = urllib.parse.unquote(parts.username)
            password = urllib.parse.unquote(parts.password or "")
            headers.update(urllib3.util.make_headers(basic_auth=f"{user}:{password}"))
            parts = parts._replace(netloc=parts.netloc.rpartition("@")[2])
        path = parts.path if parts.path.endswith(PATH) else parts.path + PATH
        return urllib.parse.urlunsplit(parts._replace(path=path)), headers

    def messages(self, url: str) -> Iterator[Hello | Update]:
        """Open ``url``'s stream and yield its messages until it ends.

        Raises:
            StreamError: cannot connect, an HTTP error, silence longer than
                ``silence`` (with several arbiters, :data:`SWITCH_AFTER`),
                another cluster or format, a message that is not a snapshot
                update (one line each, the URL masked).
        """
        shown = mask_url(url)
        timeout = urllib3.Timeout(connect=self._connect_timeout, read=self._quiet_limit)
        target, headers = self.endpoint(url)
        try:
            response = self._http.request(
                "GET", target, headers=headers, preload_content=False, timeout=timeout
            )
        except urllib3.exceptions.HTTPError as exc:
            raise StreamError(f"{shown}: {_reason(exc)}") from None
        with self._lock:
            self._response = response
        if self._closed:
            self.interrupt()
        try:
            if response.status != 200:
                raise StreamError(f"{shown}: HTTP {response.status}")
            parser = EventParser()
            try:
                for chunk in response.stream(64 * 1024):
                    for event in parser.feed(chunk):
                        yield self._message(url, event.kind, event.data)
            except urllib3.exceptions.ReadTimeoutError:
                quiet = self._quiet_limit
                raise StreamError(f"{shown}: silent for {quiet:g}s", quiet=quiet) from None
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise StreamError(f"{shown}: {_reason(exc)}") from None
            raise StreamError(f"{shown}: the arbiter ended the stream")
        finally:
            with self._lock:
                self._response = None
            response.close()  # first: a connection with an unread body must not be reused
            response.release_conn()

    def report(self, url: str, node: str) -> None:
        """Tell the arbiter at ``url`` that ``node`` failed here (it probes at once); a
        report that does not get through is only logged: it is a hint, not a need."""
        target, headers = self.endpoint(url)
        target = target.removesuffix(PATH) + SUSPECT_PATH
        headers = {**headers, "Content-Type": "application/json", "Accept": "application/json"}
        try:
            self._http.request(
                "POST",
                target,
                body=json.dumps({"node": node}).encode(),
                headers=headers,
                timeout=urllib3.Timeout(total=REPORT_TIMEOUT),
            )
        except urllib3.exceptions.HTTPError as exc:
            logger.debug("report of %s to %s failed: %s", node, mask_url(url), _reason(exc))

    def _message(self, url: str, kind: str, data: str) -> Hello | Update:
        if kind == "snapshot":
            try:
                return decode(data, self.cluster)
            except WireError as exc:
                raise StreamError(f"{mask_url(url)}: {exc}") from None
        if kind == "hello":
            try:
                hello = json.loads(data)
                cluster, version, beat = hello["cluster"], hello["format"], hello["heartbeat"]
            except (ValueError, KeyError, TypeError):
                raise StreamError(f"{mask_url(url)}: not a pgfailover stream") from None
            if version != FORMAT:
                raise StreamError(
                    f"{mask_url(url)}: stream format {version!r}; this version reads {FORMAT}"
                )
            if cluster != self.cluster:
                raise StreamError(
                    f"{mask_url(url)}: the arbiter serves cluster {str(cluster)[:100]!r}, "
                    f"not {self.cluster!r} (give this manager the arbiter's name)"
                )
            if not isinstance(beat, int | float) or isinstance(beat, bool) or beat <= 0:
                raise StreamError(f"{mask_url(url)}: heartbeat {beat!r} is not a duration")
            return Hello(url, cluster, float(beat))
        raise StreamError(f"{mask_url(url)}: unexpected event {kind[:40]!r}")

    def interrupt(self) -> None:
        """Stop reading at once (from any thread): the stream ends with StreamError."""
        with self._lock:
            if self._response is not None:
                # Closed or released meanwhile (urllib3 raises RuntimeError or ValueError
                # then): nothing left to interrupt.
                with contextlib.suppress(OSError, RuntimeError, ValueError):
                    self._response.shutdown()

    def close(self) -> None:
        """Interrupt any read; no stream opens after this."""
        with self._lock:
            self._closed = True
        self.interrupt()
        self._http.clear()


def _reason(exc: BaseException) -> str:
    """One line for a connection failure (urllib3 wraps the OS error)."""
    said = tls_failure(exc)
    if said is not None:
        return said
    inner = getattr(exc, "reason", None) or exc
    text = first_line(inner)
    if "Failed to establish a new connection:" in text:
        text = text.split("Failed to establish a new connection:", 1)[1].strip()
    return text[:200]
