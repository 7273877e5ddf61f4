"""The arbiter's snapshot stream: every snapshot, pushed to the managers that follow it.

``pgfailover serve --stream-port 8009`` serves ``GET /failover/stream`` as
server-sent events (``text/event-stream``). Managers built with
``source="http://arbiter:8009"`` (:mod:`pgfailover.topology`) route on the
arbiter's snapshots instead of probing every node themselves, so that
hundreds of application processes cost the cluster what one costs. The
stream, in order::

    event: hello
    data: {"cluster": "main", "format": 1, "heartbeat": 0.25}

    id: 41
    event: snapshot
    data: {"cluster": "main", "seq": 41, "sent_at": ..., "snapshot": {...}, ...}

    :

- ``hello`` once, then the current snapshot at once, then the snapshots
  the arbiter publishes as :class:`~pgfailover.wire.Update`: at once when
  something a follower routes on changed (:func:`~pgfailover.wire.routing_key`:
  the state, the primary, a node's role, health, read block or timeline,
  writes held), and otherwise (positions, lag, probe times) the newest one
  at most every ``QUIET_GAP`` seconds;
- a comment line (``:``) every ``heartbeat`` seconds between snapshots,
  *only while the arbiter's own probe rounds are fresh*: a follower that
  hears nothing for its ``health_check_interval`` (at least three
  heartbeats) probes the cluster itself, whether the arbiter died, hangs,
  is cut off, or its monitor thread stopped.

The quiet gap and the one-slot buffer per follower are
:mod:`pgfailover.streamhub`'s.

Why uvicorn: the stream holds a response open per follower, which waitress
(:mod:`pgfailover.listener`) pays for with a worker thread each; 200
followers would need 200 threads. uvicorn serves them as coroutines on one
thread, is the best-kept ASGI server, and parses HTTP (h11) with the limits
and timeouts this port needs; ``limit_concurrency`` caps the open streams.
The application below is plain ASGI: one endpoint needs no framework.

Locks: none of its own. :class:`StreamServer` runs uvicorn and the hub on
one event loop thread; see :class:`~pgfailover.streamhub.StreamHub`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any, Final

from pgfailover.streamhub import QUIET_GAP, StreamHub

if TYPE_CHECKING:
    from pgfailover.manager_base import ManagerBase

__all__ = ["PATH", "QUIET_GAP", "StreamApp", "StreamHub", "StreamServer"]

logger = logging.getLogger(__name__)

PATH: Final = "/failover/stream"
SUSPECT_PATH: Final = "/failover/suspect"
MAX_REPORT: Final = 1024
MAX_FOLLOWERS: Final = 2000
"""Open streams one arbiter serves at most (more are answered 503 by uvicorn)."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class StreamApp:
    """The ASGI application: ``GET /failover/stream``, ``POST /failover/suspect``; anything
    else is a JSON 404/405.

    Thread safety: runs on the server's event loop only.
    """

    def __init__(self, hub: StreamHub) -> None:
        self.hub = hub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path = scope.get("path", "/")
        if len(path) > 1:
            path = path.rstrip("/")
        if path == SUSPECT_PATH:
            await self._suspect(scope, receive, send)
            return
        if path != PATH:
            await _json(send, 404, {"error": f"no such endpoint: {path[:100]}"})
            return
        if scope.get("method") not in ("GET", "HEAD"):
            await _json(send, 405, {"error": f"only GET on {PATH}"}, [(b"allow", b"GET")])
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    (b"cache-control", b"no-store"),
                    (b"x-accel-buffering", b"no"),  # a proxy in between must not buffer it
                ],
            }
        )
        if scope.get("method") == "HEAD":
            await send({"type": "http.response.body", "body": b""})
            return
        await self._stream(receive, send)

    async def _suspect(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``POST /failover/suspect`` ``{"node": "node0"}``: a follower's query failed there
        and its own probe too; the arbiter probes now instead of at its next interval.

        It only hurries the arbiter's next round (a report is no evidence: the
        arbiter's own probes decide), so a follower cut off alone changes nothing.
        """
        if scope.get("method") != "POST":
            await _json(
                send, 405, {"error": f"only POST on {SUSPECT_PATH}"}, [(b"allow", b"POST")]
            )
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > MAX_REPORT:
                await _json(send, 413, {"error": f"body larger than {MAX_REPORT} bytes"})
                return
            if not message.get("more_body"):
                break
        try:
            node = json.loads(body)["node"]
        except (ValueError, KeyError, TypeError):
            await _json(send, 400, {"error": 'send {"node": "<name>"}'})
            return
        names = [n.name for n in self.hub.snapshot.nodes]
        if not isinstance(node, str) or node not in names:
            await _json(send, 404, {"error": f"unknown node {str(node)[:100]!r}", "nodes": names})
            return
        self.hub.suspected(node)
        await _json(send, 202, {"probing": True})

    async def _stream(self, receive: Receive, send: Send) -> None:
        hub = self.hub
        follower = hub.join()
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            await _chunk(send, hub.hello())
            while not hub.closing and not gone.done():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(follower.ready.wait(), hub.heartbeat)
                if hub.closing or gone.done():
                    break
                if follower.ready.is_set():
                    follower.ready.clear()
                    frame, follower.pending = follower.pending, None
                    if frame:
                        await _chunk(send, frame)
                elif hub.fresh():
                    await _chunk(send, b":\n\n")
            if not gone.done():
                await send({"type": "http.response.body", "body": b""})
        except OSError:
            pass  # the follower went away mid-write
        finally:
            hub.leave(follower)
            gone.cancel()


async def _chunk(send: Send, data: bytes) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": True})


async def _disconnected(receive: Receive) -> None:
    """Returns when the client has gone (the only message left to receive)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _json(
    send: Send, status: int, data: dict[str, Any], extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = (json.dumps(data) + "\n").encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class StreamServer:
    """The stream on ``host:port`` (0: a free port), served by uvicorn on its own thread.

    Raises (from the constructor):
        OSError: the address cannot be bound, or the server did not start.

    Thread safety: :meth:`close` may be called from any thread (once is enough).
    """

    def __init__(self, mgr: ManagerBase[Any, Any], host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn  # the cli/server extra; imported here so the library does not need it

        cfg = mgr.config
        self.hub = StreamHub(
            mgr.name,
            lambda: mgr.snapshot,
            mgr.writes_held,
            fresh_for=2 * cfg.health_check_interval + cfg.health_check_timeout,
            busy=lambda: mgr.promoting,
            wake=mgr.probe_soon,
        )
        self._mgr = mgr
        self._listener = mgr.listen(self.hub.changed)  # before the loop's first look
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.create_server((host, port), family=family, backlog=1024)
        self.host = host
        self.port = int(self._sock.getsockname()[1])
        config = uvicorn.Config(
            StreamApp(self.hub),
            log_config=None,
            access_log=False,
            lifespan="off",
            http="h11",
            ws="none",
            limit_concurrency=MAX_FOLLOWERS,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=1,
            h11_max_incomplete_event_size=16 * 1024,
        )
        self._server = uvicorn.Server(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="pgfailover-stream", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started and self._thread.is_alive():
            if time.monotonic() > deadline:
                break
            time.sleep(0.005)
        if not self._server.started:
            self.close()
            raise OSError(f"the stream server on {host}:{self.port} did not start")

    @property
    def url(self) -> str:
        """What followers are given as ``source``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self.hub.bind(self._loop)
            await self._server.serve(sockets=[self._sock])

        try:
            asyncio.run(main())
        except Exception:
            logger.exception("stream server stopped")

    def close(self, timeout: float = 2.0) -> None:
        """End every stream, stop listening, end the thread; idempotent."""
        self._mgr.unlisten(self._listener)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self.hub.close)
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout)
        with contextlib.suppress(OSError):
            self._sock.close()

    def __enter__(self) -> StreamServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
