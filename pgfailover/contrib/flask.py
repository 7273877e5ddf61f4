"""Flask integration: a manager per app, read-your-writes per request, the admin API.

::

    from pgfailover.contrib.flask import PgFailover

    failover = PgFailover()
    failover.init_app(app)   # app.config["PGFAILOVER_SOURCE"] = "pgfailover.toml" (or a DSN)

    @app.post("/orders")
    def create():
        failover.manager.query("INSERT INTO orders ...", (...))

Configuration (``app.config``): ``PGFAILOVER_SOURCE`` (a TOML path, a DSN,
or Nodes), ``PGFAILOVER_NAME``, ``PGFAILOVER_SETTINGS`` (FailoverConfig
overrides), ``PGFAILOVER_ENGINE_OPTIONS`` (for :meth:`PgFailover.engines`),
``PGFAILOVER_ADMIN_TOKEN`` (enables the admin endpoints),
``PGFAILOVER_API`` (mount the status/admin API and ``/metrics``; default
True), ``PGFAILOVER_COOKIE`` (carry the read-your-writes token to the next
request; default True) and ``PGFAILOVER_COOKIE_MAX_AGE`` (seconds, default 60).

Each request runs in a read-your-writes unit: :meth:`PgFailover.query` with
``readonly=True`` reads a standby only once it has replayed what this
client wrote (and within the request, after a write, the primary); the
:mod:`pgfailover.contrib.sqlalchemy` session follows the same unit. The
manager is closed by :meth:`PgFailover.close` or at interpreter exit.
``g.pgfailover_writable`` and the template variable ``pgfailover_writable``
are False in read-only mode (no primary and none coming: writes raise
``ReadOnlyMode`` at once), for a banner instead of an error page.

With Flask-SQLAlchemy, one manager serves both::

    failover = PgFailover(app)   # sets SQLALCHEMY_DATABASE_URI (the cluster) if unset
    db = SQLAlchemy(app, session_options={"class_": FailoverSession})
"""

from __future__ import annotations

import atexit
from contextlib import ExitStack
from typing import Any

from flask import Blueprint, Flask, Response, g, request
from werkzeug.wrappers import Response as BaseResponse

from pgfailover.contrib.causality import (
    COOKIE_NAME,
    Causality,
    current,
    manager_from,
    parse_token,
    read_node,
    read_your_writes,
    report_error,
    set_token_cookie,
    write_node,
)
from pgfailover.contrib.urls import sqlalchemy_url
from pgfailover.manager import FailoverManager
from pgfailover.server import AdminApp

__all__ = ["PgFailover"]

EXTENSION = "pgfailover"


class PgFailover:
    """The Flask extension (``init_app`` style)."""

    def __init__(self, app: Flask | None = None) -> None:
        self._manager: FailoverManager | None = None
        self._engines: Any = None  # FailoverEngines, built on first use (needs SQLAlchemy)
        self._engine_options: dict[str, Any] = {}
        if app is not None:
            self.init_app(app)

    @property
    def manager(self) -> FailoverManager:
        """The app's manager (opened by :meth:`init_app`)."""
        if self._manager is None:
            raise RuntimeError("PgFailover.init_app(app) has not run")
        return self._manager

    def init_app(self, app: Flask) -> None:
        """Build and open the manager from ``app.config``; hook the requests; mount the API."""
        source = app.config.get("PGFAILOVER_SOURCE")
        if source is None:
            raise RuntimeError("set app.config['PGFAILOVER_SOURCE'] (a TOML path or a DSN)")
        mgr = manager_from(
            source,
            name=app.config.get("PGFAILOVER_NAME", app.name),
            settings=app.config.get("PGFAILOVER_SETTINGS"),
        )
        self._manager = mgr.open()
        atexit.register(mgr.close)
        app.extensions[EXTENSION] = self
        # Flask-SQLAlchemy needs a URL; this one reaches the primary (see contrib.urls).
        app.config.setdefault("SQLALCHEMY_DATABASE_URI", sqlalchemy_url(mgr.nodes))
        self._engine_options = dict(app.config.get("PGFAILOVER_ENGINE_OPTIONS") or {})
        cookie = bool(app.config.get("PGFAILOVER_COOKIE", True))
        cookie_max_age = int(app.config.get("PGFAILOVER_COOKIE_MAX_AGE", 60))

        @app.context_processor
        def _writable() -> dict[str, Any]:
            return {"pgfailover_writable": mgr.writable}  # read-only banner in templates

        @app.before_request
        def _enter() -> None:
            g.pgfailover_writable = mgr.writable  # False: writes raise ReadOnlyMode at once
            token = parse_token(request.cookies.get(COOKIE_NAME)) if cookie else None
            stack = ExitStack()
            g.pgfailover_unit = stack.enter_context(read_your_writes(min_lsn=token))
            g.pgfailover_stack = stack

        @app.after_request
        def _leave(response: Response) -> Response:
            unit: Causality | None = g.get("pgfailover_unit")
            if unit is not None and unit.wrote and cookie:
                set_token_cookie(mgr, response, cookie_max_age)
            return response

        @app.teardown_request
        def _close(exc: BaseException | None) -> None:
            if exc is not None:
                report_error(mgr, exc)
            stack: ExitStack | None = g.pop("pgfailover_stack", None)
            if stack is not None:
                stack.close()

        if app.config.get("PGFAILOVER_API", True):
            app.register_blueprint(
                admin_blueprint(mgr, token=app.config.get("PGFAILOVER_ADMIN_TOKEN"))
            )

    def query(
        self, sql: Any, params: Any = None, *, readonly: bool = False
    ) -> list[tuple[Any, ...]]:
        """``manager.query`` routed with this request's read-your-writes."""
        mgr = self.manager
        if readonly:
            unit = current()
            if unit is not None and unit.wrote:
                return mgr.query(sql, params)  # after a write: the primary
            return mgr.query(sql, params, readonly=True, min_lsn=unit.min_lsn if unit else None)
        write_node(mgr)  # marks the unit as written (and waits for a primary)
        return mgr.query(sql, params)

    def read_node(self) -> str:
        """The node this request's next read goes to."""
        return read_node(self.manager)

    def engines(self) -> Any:
        """The app's :class:`~pgfailover.contrib.sqlalchemy.FailoverEngines`, on its manager.

        One manager per app: the engines share this extension's, so the
        cluster is probed once. ``FailoverSession`` without ``engines=``
        uses these. Options: ``app.config["PGFAILOVER_ENGINE_OPTIONS"]``.
        """
        if self._engines is None:
            from pgfailover.contrib.sqlalchemy import FailoverEngines

            self._engines = FailoverEngines(self.manager, engine_options=self._engine_options)
        return self._engines

    def close(self) -> None:
        """Dispose of the engines (if any) and close the manager."""
        if self._engines is not None:
            self._engines.close()
        if self._manager is not None:
            self._manager.close()


def admin_blueprint(mgr: FailoverManager, *, token: str | None = None) -> Blueprint:
    """The status/admin API (:mod:`pgfailover.server`) and ``/metrics`` as a blueprint."""
    admin = AdminApp(mgr, token=token)
    blueprint = Blueprint("pgfailover", __name__)

    def serve_api(**_: Any) -> BaseResponse:
        return Response.from_app(admin, request.environ)

    for method, path in admin.routes:
        endpoint = method.lower() + "_" + "".join(c if c.isalnum() else "_" for c in path)
        blueprint.add_url_rule(path, endpoint, serve_api, methods=[method])
    blueprint.add_url_rule("/metrics", "metrics", serve_api, methods=["GET"])
    return blueprint
