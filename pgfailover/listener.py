"""Serving the HTTP API on waitress: bounded, with timeouts, errors as JSON.

The arbiter's HTTP port is reachable by whoever can reach the host, and
nothing a client does there may slow a failover: not 500 idle connections,
not requests sent a byte a minute, not a chunked body or a malformed request
line. waitress fits that: one I/O thread reads every request completely
(headers and body, chunked or not, within size limits) before a request
reaches one of a fixed number of worker threads, so slow or idle clients
hold a socket, never a thread; connections beyond ``connection_limit``
wait in the kernel's backlog, so they cost no descriptor either; idle ones
are closed after ``channel_timeout``, and a request still incomplete
``request_timeout`` after its first byte (a slow sender) is cut. It is pure Python, has no
dependencies, is maintained by the Pylons project and runs embedded in a
thread, which ``serve()`` inside an application needs. (An asyncio server
such as uvicorn would need an event loop per process of a WSGI app.)

Errors waitress answers itself (malformed request line, invalid
``Content-Length``, a body or header over its limit) are JSON too, like the
application's.

Locks: none of its own; waitress's loop thread owns the sockets and
:meth:`Listener.close` hands the shutdown to that thread through waitress's
trigger.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.server import create_server
from waitress.task import ErrorTask

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

__all__ = ["AdminServer", "Limits", "Listener"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """What one listener allows; the defaults suit a status and admin API.

    ``channel_timeout`` closes a connection idle that long; ``request_timeout``
    one whose request is not complete that long after its first byte, however
    slowly it trickles in (waitress itself only knows the idle timeout).
    Both are enforced every ``cleanup_interval``.
    """

    threads: int = 4
    connection_limit: int = 1000
    channel_timeout: float = 10.0
    request_timeout: float = 10.0
    cleanup_interval: float = 1.0
    max_request_header_size: int = 16 * 1024
    max_request_body_size: int = 64 * 1024


MAX_BODY: Final = Limits.max_request_body_size


class _JsonErrorTask(ErrorTask):  # type: ignore[misc]
    """waitress's own error responses (400, 413, 431, 500) as JSON."""

    def execute(self) -> None:
        error = self.request.error
        body = (
            json.dumps({"error": f"{error.reason}: {str(error.body).strip()}"}, indent=1) + "\n"
        ).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.extend(
            [("Content-Type", "application/json"), ("Cache-Control", "no-store")]
        )
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class _JsonErrorChannel(HTTPChannel):  # type: ignore[misc]
    """waitress's channel, answering its errors as JSON and dating each request."""

    error_task_class = _JsonErrorTask
    request_began: float | None = None  # when the request being read began

    def received(self, data: bytes) -> bool:
        if self.request is None and data:
            self.request_began = time.time()
        result: bool = super().received(data)
        if self.request is None:  # complete and queued, or nothing pending
            self.request_began = None
        return result


def _with_request_deadline(server: Any, timeout: float) -> None:
    """Make ``server.maintenance`` also close channels whose request is too slow."""
    idle_only = server.maintenance

    def maintenance(now: float) -> None:
        idle_only(now)
        for channel in list(server.active_channels.values()):
            began = getattr(channel, "request_began", None)
            if began is not None and now - began > timeout:
                channel.will_close = True

    server.maintenance = maintenance


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


class Listener:
    """One WSGI application on ``host:port``, served by waitress on its own thread.

    Raises ``OSError`` when the address cannot be bound (taken, not local).
    """

    def __init__(
        self,
        app: WSGIApplication,
        host: str,
        port: int,
        *,
        name: str = "pgfailover-http",
        limits: Limits | None = None,
    ) -> None:
        lim = limits or Limits()
        sock = _bind(host, port)
        self._map: dict[int, Any] = {}
        try:
            self._server = create_server(
                app,
                map=self._map,
                sockets=[sock],
                threads=lim.threads,
                connection_limit=lim.connection_limit,
                channel_timeout=lim.channel_timeout,
                cleanup_interval=lim.cleanup_interval,
                max_request_header_size=lim.max_request_header_size,
                max_request_body_size=lim.max_request_body_size,
                asyncore_use_poll=True,  # select() stops at descriptor 1024
                asyncore_loop_timeout=1,
                ident="pgfailover",
                expose_tracebacks=False,
                clear_untrusted_proxy_headers=True,
            )
        except BaseException:
            sock.close()
            raise
        self._server.channel_class = _JsonErrorChannel
        _with_request_deadline(self._server, lim.request_timeout)
        self.host = host
        self.port = int(sock.getsockname()[1])
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._server.run()
        except Exception:  # pragma: no cover - waitress handles its own errors
            logger.exception("HTTP listener on %s:%d stopped", self.host, self.port)

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8008``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def close(self, timeout: float = 2.0) -> None:
        """Close every connection and the port, stop the workers; idempotent."""
        if not self._thread.is_alive():
            return
        done = threading.Event()

        def shut() -> None:
            wasyncore.close_all(self._map)
            done.set()

        pull: Callable[[Callable[[], None]], None] = self._server.trigger.pull_trigger
        try:
            pull(shut)
        except OSError as exc:
            # The loop's wake-up pipe is gone (closed under the loop): the loop
            # still wakes every ``asyncore_loop_timeout`` and stops once its map
            # is empty, so empty it from here.
            logger.warning(
                "HTTP listener on %s:%d: closing without its trigger (%s)",
                self.host,
                self.port,
                exc,
            )
            shut()
        done.wait(timeout)
        self._thread.join(timeout)
        self._server.task_dispatcher.shutdown(cancel_pending=True, timeout=timeout)


class AdminServer:
    """The API served on one address, or two (``admin_port``).

    ``url`` serves everything unless the admin endpoints have their own
    listener (``admin_url``). :meth:`close` stops both.
    """

    def __init__(
        self,
        app: WSGIApplication,
        host: str,
        port: int,
        *,
        admin_app: WSGIApplication | None = None,
        admin_host: str = "127.0.0.1",
        admin_port: int | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.app = app
        self._main = Listener(app, host, port, limits=limits)
        self._admin: Listener | None = None
        if admin_app is not None and admin_port is not None:
            try:
                self._admin = Listener(
                    admin_app, admin_host, admin_port, name="pgfailover-admin", limits=limits
                )
            except BaseException:
                self._main.close()
                raise
        self.host = host
        self.port = self._main.port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8008``."""
        return self._main.url

    @property
    def admin_url(self) -> str:
        """Where the admin endpoints are (``url`` without an admin listener)."""
        return self._admin.url if self._admin is not None else self._main.url

    def close(self, timeout: float = 2.0) -> None:
        """Stop serving and release the port(s)."""
        self._main.close(timeout)
        if self._admin is not None:
            self._admin.close(timeout)

    def __enter__(self) -> AdminServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
