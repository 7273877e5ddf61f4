"""The status/admin HTTP API: a WSGI application, and a server to run it.

:class:`AdminApp` is a plain WSGI application, so it mounts in any WSGI
stack (Django, Flask, gunicorn, a ``DispatcherMiddleware``) or runs on its
own with :func:`serve`, which binds 127.0.0.1 unless told otherwise and
serves it with waitress (:mod:`pgfailover.listener`: bounded workers,
timeouts, size limits)::

    server = serve(mgr, port=8008, token=os.environ["PGFAILOVER_TOKEN"])
    ...
    server.close()

With ``admin_port`` the admin endpoints move to a listener of their own
(``admin_host``, 127.0.0.1 by default): the main address can then be open
to load balancers and Prometheus while triggering a failover needs local
access *and* the token.

Endpoints (described by :func:`openapi`, also served at ``/openapi.json``):

- ``GET /failover/status``, ``/failover/metrics`` (JSON), ``/failover/history``;
- ``GET /failover/health``: 200 while a primary takes writes and its
  commits can complete, else 503 (``unavailable``, or ``commits_blocked``
  when its ``synchronous_standby_names`` names no streaming standby): a
  load-balancer check;
- ``POST /failover/trigger`` (``{"target": "node1", "force": false}``; with
  ``"dry_run": true`` only a probe round and the plan, for a confirmation),
  ``POST /failover/switchover`` (``{"target": "node1", "timeout": 30}``),
  ``POST /failover/check-health``, ``POST /failover/pause``
  (``{"reason": "..."}``, optional) and ``POST /failover/resume``: admin
  endpoints, which need
  ``Authorization: Bearer <token>``. Without a configured token they answer
  403: disabled, never open. Tokens are compared in constant time;
- ``GET /metrics``: Prometheus text format.

Errors are JSON, ``{"error": "...", ...}``, with 400 (bad request or
body), 401 (no or wrong token), 403 (admin disabled, or on another
listener), 404 (unknown path or node), 405, 409 (refused by a promotion
guard; ``guard`` names it), 411 (a chunked body the server did not
de-chunk), 413 (body over 64 KiB), 503 (no primary).
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
import re
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from pgfailover.config import check_token
from pgfailover.convergence import commits_blocked
from pgfailover.errors import (
    ManagerClosed,
    NoPrimaryAvailable,
    PgFailoverError,
    PromotionRefused,
)
from pgfailover.listener import MAX_BODY, AdminServer, Limits
from pgfailover.metrics import register
from pgfailover.report import trigger_plan

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

    from pgfailover.manager_base import ManagerBase

    AnyManager = ManagerBase[Any, Any]  # FailoverManager or AsyncFailoverManager

__all__ = ["AdminApp", "AdminServer", "HTTPError", "check_token", "openapi", "serve"]

logger = logging.getLogger(__name__)

_LIMIT_RE = re.compile(r"[0-9]{1,6}")
_LENGTH_RE = re.compile(r"[0-9]{1,12}")


class HTTPError(Exception):
    """An error answered as JSON with a status code."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.extra = extra


@functools.cache
def _openapi_text() -> str:
    return resources.files("pgfailover").joinpath("openapi.json").read_text(encoding="utf-8")


def _encodable(text: str) -> bool:
    """UTF-8 can carry it (no lone surrogates from a JSON ``\\ud800`` escape)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the API (``pgfailover/openapi.json``), a fresh copy."""
    doc: dict[str, Any] = json.loads(_openapi_text())
    return doc


Handler = Callable[["WSGIEnvironment"], tuple[int, Any]]


class AdminApp:
    """The WSGI application serving one manager's status and admin endpoints.

    ``token``: the bearer token the admin endpoints require (``None``: they
    are disabled). ``registry``: where ``/metrics`` reads from (default: a
    private registry exporting this manager only). ``admin=False``: the
    admin endpoints are served elsewhere and answer 403 here.
    """

    def __init__(
        self,
        mgr: AnyManager,
        *,
        token: str | None = None,
        registry: CollectorRegistry | None = None,
        admin: bool = True,
    ) -> None:
        check_token(token)
        self.mgr = mgr
        self._admin = admin
        self._token = token.encode() if token is not None else None
        self.registry = registry if registry is not None else _private_registry(mgr)
        self.routes: dict[tuple[str, str], tuple[Handler, bool]] = {
            ("GET", "/failover/status"): (self._status, False),
            ("GET", "/failover/metrics"): (self._metrics_json, False),
            ("GET", "/failover/health"): (self._health, False),
            ("GET", "/failover/history"): (self._history, False),
            ("POST", "/failover/trigger"): (self._trigger, True),
            ("POST", "/failover/check-health"): (self._check_health, True),
            ("POST", "/failover/switchover"): (self._switchover, True),
            ("POST", "/failover/pause"): (self._pause, True),
            ("POST", "/failover/resume"): (self._resume, True),
            ("GET", "/openapi.json"): (lambda _env: (200, openapi()), False),
        }

    # -- WSGI ----------------------------------------------------------

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Answer one request (HEAD: the headers of the GET, no body)."""
        answer = self._answer(environ, start_response)
        return [] if environ.get("REQUEST_METHOD", "GET").upper() == "HEAD" else answer

    def _answer(self, environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        method = environ.get("REQUEST_METHOD", "GET").upper()
        path = environ.get("PATH_INFO", "") or "/"
        if len(path) > 1:
            path = path.rstrip("/")
        try:
            if path == "/metrics":
                if method not in ("GET", "HEAD"):
                    raise HTTPError(405, f"{method} not allowed on {path}", allow="GET")
                body = generate_latest(self.registry)
                return self._send(start_response, 200, body, CONTENT_TYPE_LATEST)
            handler, admin = self._route(method, path)
            if admin:
                self._authorize(environ)
            status, data = handler(environ)
        except HTTPError as exc:
            status, data = exc.status, {"error": str(exc), **exc.extra}
        except ManagerClosed as exc:  # mounted in an app whose manager is closed
            status, data = 503, {"error": str(exc)}
        except Exception:
            logger.exception("admin API: %s %s failed", method, path)
            status, data = 500, {"error": "internal error (see the server log)"}
        body = (json.dumps(data, default=str, indent=1) + "\n").encode()
        headers = [("WWW-Authenticate", 'Bearer realm="pgfailover"')] if status == 401 else []
        if status == 405 and isinstance(data, dict) and "allow" in data:
            headers.append(("Allow", str(data["allow"])))
        return self._send(start_response, status, body, "application/json", headers)

    @staticmethod
    def _send(
        start_response: StartResponse,
        status: int,
        body: bytes,
        content_type: str,
        extra: list[tuple[str, str]] | None = None,
    ) -> list[bytes]:
        phrase = HTTPStatus(status).phrase
        headers = [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
            *(extra or []),
        ]
        start_response(f"{status} {phrase}", headers)
        return [body]

    def _route(self, method: str, path: str) -> tuple[Handler, bool]:
        found = self.routes.get((method, path))
        if found is not None:
            return found
        if method == "HEAD" and ("GET", path) in self.routes:
            return self.routes[("GET", path)]
        allowed = sorted(m for m, p in self.routes if p == path)
        if allowed:
            raise HTTPError(405, f"{method} not allowed on {path}", allow=", ".join(allowed))
        raise HTTPError(404, f"no such endpoint: {path}")

    def _authorize(self, environ: WSGIEnvironment) -> None:
        if not self._admin:
            raise HTTPError(403, "admin endpoints are served on the admin address, not here")
        if self._token is None:
            raise HTTPError(
                403, "admin endpoints are disabled: start the API with a token to enable them"
            )
        header = environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise HTTPError(401, "this endpoint needs 'Authorization: Bearer <token>'")
        if not hmac.compare_digest(given.strip().encode(), self._token):
            raise HTTPError(401, "wrong token")

    @staticmethod
    def _body(environ: WSGIEnvironment, *, required: bool = False) -> dict[str, Any]:
        """The request's JSON object; ``required``: an empty body is refused.

        Trigger and switchover act on their defaults (the best candidate)
        when given ``{}``; a body that went missing on the way (sent without
        a Content-Length, say) must not mean the same.
        """
        declared = str(environ.get("CONTENT_LENGTH") or "").strip()
        if not declared and environ.get("HTTP_TRANSFER_ENCODING"):
            # A server that passes a chunked body on undecoded: reading
            # nothing would act on an empty body (trigger without its target).
            raise HTTPError(411, "send the body with a Content-Length")
        if not _LENGTH_RE.fullmatch(declared or "0"):
            raise HTTPError(400, "bad Content-Length")
        length = int(declared or 0)
        if length > MAX_BODY:
            raise HTTPError(413, f"body larger than {MAX_BODY} bytes")
        raw = environ["wsgi.input"].read(length) if length else b""
        if len(raw) != length:
            raise HTTPError(400, "body shorter than its Content-Length")
        if not raw.strip():
            if required:
                raise HTTPError(400, "send a JSON object as the body ({} for the defaults)")
            return {}
        try:
            data = json.loads(raw)
        except ValueError as exc:  # not JSON, not UTF-8, an integer over Python's limit
            raise HTTPError(400, f"body is not valid JSON: {str(exc)[:200]}") from None
        except RecursionError:
            raise HTTPError(400, "body is nested too deeply") from None
        if not isinstance(data, dict):
            raise HTTPError(400, "body must be a JSON object")
        return data

    # -- endpoints -----------------------------------------------------

    def _status(self, _environ: WSGIEnvironment) -> tuple[int, Any]:
        return 200, self.mgr.get_failover_status()

    def _metrics_json(self, _environ: WSGIEnvironment) -> tuple[int, Any]:
        return 200, self.mgr.get_metrics()

    def _health(self, _environ: WSGIEnvironment) -> tuple[int, Any]:
        snap = self.mgr.snapshot
        writable = snap.primary is not None and snap.node(snap.primary).up
        blocked = writable and commits_blocked(snap)
        body = {
            "status": "commits_blocked" if blocked else "ok" if writable else "unavailable",
            "state": snap.state.value,
            "primary": snap.primary if writable else None,
        }
        if blocked:
            body["reason"] = (
                f"synchronous_standby_names on {snap.primary} names no streaming standby: "
                "every COMMIT waits"
            )
        return (200 if writable and not blocked else 503), body

    def _history(self, environ: WSGIEnvironment) -> tuple[int, Any]:
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        limit = None
        if "limit" in query:
            value = query["limit"][-1]
            if not _LIMIT_RE.fullmatch(value) or int(value) < 1:
                raise HTTPError(
                    400, f"limit must be an integer from 1 to 999999, not {value[:20]!r}"
                )
            limit = int(value)
        events = [e.as_dict() for e in self.mgr.history()]
        if limit is not None:
            events = events[-limit:]
        return 200, {"cluster": self.mgr.name, "events": events}

    def _trigger(self, environ: WSGIEnvironment) -> tuple[int, Any]:
        body = self._body(environ, required=True)
        unknown = sorted(set(body) - {"target", "force", "dry_run"})
        if unknown:
            raise HTTPError(400, f"unknown field(s): {', '.join(unknown)}")
        target = body.get("target")
        force = body.get("force", False)
        dry_run = body.get("dry_run", False)
        if target is not None and not isinstance(target, str):
            raise HTTPError(400, "target must be a node name (a string) or null")
        if not isinstance(force, bool):
            raise HTTPError(400, "force must be true or false")
        if not isinstance(dry_run, bool):
            raise HTTPError(400, "dry_run must be true or false")
        names = [n.name for n in self.mgr.nodes]
        if target is not None and target not in names:
            raise HTTPError(404, f"unknown node {target!r}", nodes=names)
        if dry_run:  # what the trigger would find and do, for the operator to confirm
            plan = trigger_plan(
                self.mgr.check_health_blocking(), self.mgr.config, time.time(), target, force
            )
            return 200, {"allowed": plan.allowed, "plan": plan.lines, "guard": plan.guard}
        try:
            event = self.mgr.perform_failover_blocking(target, force=force)
        except PromotionRefused as exc:
            raise HTTPError(409, str(exc), guard=exc.guard) from None
        except NoPrimaryAvailable as exc:
            raise HTTPError(503, str(exc)) from None
        except PgFailoverError as exc:
            raise HTTPError(409, str(exc)) from None
        status = 200 if event.outcome == "completed" else 502
        return status, {"event": event.as_dict()}

    def _switchover(self, environ: WSGIEnvironment) -> tuple[int, Any]:
        body = self._body(environ, required=True)
        unknown = sorted(set(body) - {"target", "force", "timeout"})
        if unknown:
            raise HTTPError(400, f"unknown field(s): {', '.join(unknown)}")
        target = body.get("target")
        force = body.get("force", False)
        timeout = body.get("timeout", 30.0)
        if target is not None and not isinstance(target, str):
            raise HTTPError(400, "target must be a node name (a string) or null")
        if not isinstance(force, bool):
            raise HTTPError(400, "force must be true or false")
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 < timeout <= 600
        ):
            raise HTTPError(400, "timeout must be a number of seconds in (0, 600]")
        names = [n.name for n in self.mgr.nodes]
        if target is not None and target not in names:
            raise HTTPError(404, f"unknown node {target!r}", nodes=names)
        try:
            event = self.mgr.switchover_blocking(target, force=force, timeout=float(timeout))
        except PromotionRefused as exc:
            raise HTTPError(409, str(exc), guard=exc.guard) from None
        except PgFailoverError as exc:
            raise HTTPError(502, str(exc)) from None
        return 200 if event.outcome == "completed" else 502, {"event": event.as_dict()}

    def _check_health(self, _environ: WSGIEnvironment) -> tuple[int, Any]:
        self.mgr.check_health_blocking()
        return 200, self.mgr.get_failover_status()

    def _pause(self, environ: WSGIEnvironment) -> tuple[int, Any]:
        body = self._body(environ)
        unknown = sorted(set(body) - {"reason"})
        if unknown:
            raise HTTPError(400, f"unknown field(s): {', '.join(unknown)}")
        reason = body.get("reason", "maintenance")
        if (
            not isinstance(reason, str)
            or not reason.strip()
            or len(reason) > 200
            or not reason.isprintable()
            or not _encodable(reason)
        ):
            raise HTTPError(
                400, "reason must be printable text of at most 200 characters, on one line"
            )
        try:
            self.mgr.pause(reason.strip())
        except PgFailoverError as exc:  # the pause could not be shared (etcd): nothing changed
            raise HTTPError(503, f"not paused: {exc}") from None
        return 200, self.mgr.get_failover_status()

    def _resume(self, environ: WSGIEnvironment) -> tuple[int, Any]:
        if self._body(environ):
            raise HTTPError(400, "resume takes no fields")
        try:
            self.mgr.resume()
        except PgFailoverError as exc:
            raise HTTPError(503, f"not resumed: {exc}") from None
        return 200, self.mgr.get_failover_status()


def serve(
    mgr: AnyManager,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    token: str | None = None,
    registry: CollectorRegistry | None = None,
    admin_host: str = "127.0.0.1",
    admin_port: int | None = None,
    limits: Limits | None = None,
) -> AdminServer:
    """Serve ``mgr``'s API on ``host:port`` (port 0: a free one) in a thread.

    With ``admin_port`` (0: a free one) the admin endpoints are served only
    on ``admin_host:admin_port``; ``host:port`` answers them with 403.

    Raises:
        ValueError: a token that cannot work (too short, whitespace, not ASCII).
        OSError: an address that cannot be bound.
    """
    check_token(token)
    if admin_port is None:
        app = AdminApp(mgr, token=token, registry=registry)
        return AdminServer(app, host, port, limits=limits)
    registry = registry if registry is not None else _private_registry(mgr)
    return AdminServer(
        AdminApp(mgr, token=token, registry=registry, admin=False),
        host,
        port,
        admin_app=AdminApp(mgr, token=token, registry=registry),
        admin_host=admin_host,
        admin_port=admin_port,
        limits=limits,
    )


def _private_registry(mgr: AnyManager) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    register(mgr, registry)
    return registry
