"""The Flask extension and the SQLAlchemy session against lab clusters."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("flask")
pytest.importorskip("sqlalchemy")

from flask import Flask, g, jsonify, render_template_string
from flask.testing import FlaskClient
from sqlalchemy import BigInteger, String, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pgfailover import ReadOnlyMode
from pgfailover.contrib.flask import PgFailover
from pgfailover.contrib.sqlalchemy import FailoverEngines, FailoverSession
from pgfailover.lab import LocalLab

from .helpers import wait_for_table, wait_until

SETTINGS = {
    "health_check_interval": 0.2,
    "fast_interval": 0.05,
    "failover_cooldown": 0,
    "promotion": "auto",
}


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


def _port_of(lab: LocalLab, port: Any) -> str:
    return next(n.name for n in lab.nodes if n.port == port)


def _json(response: Any) -> dict[str, Any]:
    data = response.json
    assert isinstance(data, dict), response.data
    return data


@pytest.fixture
def engines(fresh_lab: LocalLab) -> Iterator[FailoverEngines]:
    fresh_lab.run_sql("node0", "CREATE TABLE items (id bigint PRIMARY KEY, name text)")
    wait_for_table(fresh_lab, "items")
    found = FailoverEngines(fresh_lab.manager_nodes(), settings=SETTINGS)
    try:
        yield found
    finally:
        found.close()


def test_session_sends_writes_to_the_primary_and_reads_to_standbys(
    fresh_lab: LocalLab, engines: FailoverEngines
) -> None:
    Session = engines.sessionmaker()
    port = func.inet_server_port()
    with Session() as session:
        assert _port_of(fresh_lab, session.scalar(select(port))) in ("node1", "node2")
    with Session() as session, session.begin():
        session.add(Item(id=1, name="a"))
        session.flush()  # the flush went to the primary...
        # ...and from now on this session reads there too: it sees its own write.
        assert _port_of(fresh_lab, session.scalar(select(port))) == "node0"
        assert session.scalar(select(func.count()).select_from(Item)) == 1
    with Session() as session:
        assert session.get_bind(clause=select(Item).with_for_update()) is engines.primary
    counted = {
        (q["node"], q["route"]): q["count"]
        for q in engines.manager.get_metrics()["queries"]
        if q["outcome"] == "ok"
    }
    assert counted.get(("node0", "write"), 0) >= 1  # the INSERT of the flush
    assert counted.get(("node0", "read_primary"), 0) >= 2  # the session's reads after it
    assert sum(c for (n, r), c in counted.items() if r == "read") >= 1  # the first read


def test_flask_sqlalchemy_uses_the_failover_session(
    fresh_lab: LocalLab, engines: FailoverEngines
) -> None:
    flask_sqlalchemy = pytest.importorskip("flask_sqlalchemy")
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = (
        f"postgresql+psycopg://postgres@127.0.0.1:{fresh_lab.node('node0').port}/postgres"
    )
    db = flask_sqlalchemy.SQLAlchemy(
        app, session_options={"class_": FailoverSession, "engines": engines}
    )
    with app.app_context():
        db.session.add(Item(id=7, name="flask"))
        db.session.commit()
        assert isinstance(db.session(), FailoverSession)
    assert fresh_lab.run_sql("node0", "SELECT name FROM items WHERE id = 7") == [("flask",)]


def _app(lab: LocalLab) -> tuple[Flask, PgFailover]:
    app = Flask(__name__)
    app.config.update(
        PGFAILOVER_SOURCE=lab.manager_nodes(),
        PGFAILOVER_SETTINGS=SETTINGS,
        PGFAILOVER_ADMIN_TOKEN="flask-admin-token-0123456789",
    )
    failover = PgFailover(app)

    @app.post("/items/<int:item>")
    def create(item: int) -> Any:
        port = failover.query(
            "INSERT INTO items (id, name) VALUES (%s, 'x') RETURNING inet_server_port()", (item,)
        )[0][0]
        return jsonify(node=_port_of(lab, port))

    @app.get("/items/<int:item>")
    def show(item: int) -> Any:
        rows = failover.query(
            "SELECT inet_server_port(), count(*) FROM items WHERE id = %s", (item,), readonly=True
        )
        return jsonify(node=_port_of(lab, rows[0][0]), seen=rows[0][1] == 1)

    return app, failover


@pytest.fixture
def flask_app(fresh_lab: LocalLab) -> Iterator[tuple[Flask, PgFailover]]:
    fresh_lab.run_sql("node0", "CREATE TABLE items (id bigint PRIMARY KEY, name text)")
    wait_for_table(fresh_lab, "items")
    app, failover = _app(fresh_lab)
    try:
        yield app, failover
    finally:
        failover.close()


def test_flask_routes_with_read_your_writes_and_serves_the_api(
    flask_app: tuple[Flask, PgFailover],
) -> None:
    app, _ = flask_app
    client: FlaskClient = app.test_client()
    assert _json(client.post("/items/1")) == {"node": "node0"}
    assert client.get_cookie("pgfailover_lsn") is not None
    stranger = app.test_client()
    assert _json(stranger.get("/items/1"))["node"] in ("node1", "node2")

    def writer_on_a_standby() -> bool:
        body = _json(client.get("/items/1"))
        assert body["seen"], body  # the writer always sees its write
        return bool(body["node"] in ("node1", "node2"))

    wait_until(writer_on_a_standby, what="the writer's reads on a replayed standby")
    status = client.get("/failover/status")
    assert status.status_code == 200
    assert _json(status)["current_primary"] == "node0"
    assert b"pgfailover_primary_healthy" in client.get("/metrics").data
    assert client.post("/failover/check-health").status_code == 401


def test_flask_requests_survive_a_primary_kill(
    fresh_lab: LocalLab, flask_app: tuple[Flask, PgFailover]
) -> None:
    app, failover = flask_app
    outcomes: list[tuple[float, str]] = []
    stop = threading.Event()

    def client_loop() -> None:
        client = app.test_client()
        item = 1000
        while not stop.is_set():
            item += 1
            try:
                response = client.post(f"/items/{item}")
                outcomes.append((time.monotonic(), _json(response)["node"]))
            except Exception as exc:  # noqa: BLE001 - a failed request is what is counted
                outcomes.append((time.monotonic(), f"error: {type(exc).__name__}"))

    thread = threading.Thread(target=client_loop, daemon=True)
    thread.start()
    try:
        wait_until(lambda: len(outcomes) >= 5, what="requests before the kill")
        fresh_lab.kill("node0")
        killed = time.monotonic()
        wait_until(
            lambda: sum(1 for t, r in outcomes if t > killed and r in ("node1", "node2")) >= 10,
            timeout=30,
            what="writes on the new primary",
        )
    finally:
        stop.set()
        thread.join(30)
    after = [r for t, r in outcomes if t > killed]
    assert sum(1 for r in after if r.startswith("error")) <= 1, after  # in flight at the crash
    assert failover.manager.snapshot.primary in ("node1", "node2")


def test_a_flask_app_written_from_the_readme_uses_one_manager(fresh_lab: LocalLab) -> None:
    """Exactly the README's Flask-SQLAlchemy lines, with the lab's multi-host URL."""
    flask_sqlalchemy = pytest.importorskip("flask_sqlalchemy")
    app = Flask(__name__)
    app.config["PGFAILOVER_SOURCE"] = fresh_lab.url  # postgresql://...@h:p1,h:p2,h:p3/...
    app.config["PGFAILOVER_SETTINGS"] = SETTINGS
    failover = PgFailover(app)
    db = flask_sqlalchemy.SQLAlchemy(app, session_options={"class_": FailoverSession})

    class Note(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "notes"
        id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
        text: Mapped[str] = mapped_column(String(50))

    try:
        with app.app_context():
            db.create_all()  # through SQLALCHEMY_DATABASE_URI: the primary, chosen by libpq
            with db.session() as reader:
                port = reader.scalar(select(func.inet_server_port()))
                assert _port_of(fresh_lab, port) in ("node1", "node2")
            db.session.add(Note(id=1, text="hello"))
            db.session.commit()
            assert failover.engines().manager is failover.manager  # one manager per app
            assert isinstance(db.session(), FailoverSession)
        assert fresh_lab.run_sql("node0", "SELECT text FROM notes") == [("hello",)]
        queries = failover.manager.get_metrics()["queries"]
        node0 = fresh_lab.node("node0")
        primary = f"{node0.host}:{node0.port}"  # nodes from a URL are named host:port
        assert any(q["node"] == primary and q["route"] == "write" for q in queries), queries
    finally:
        with app.app_context():
            db.engine.dispose()
        failover.close()


def test_a_read_only_cluster_shows_a_banner_and_writes_fail_at_once(
    fresh_lab: LocalLab,
) -> None:
    """Manual promotion: the primary killed, nobody promotes; the page says so."""
    app = Flask(__name__)
    app.config.update(
        PGFAILOVER_SOURCE=fresh_lab.manager_nodes(),
        PGFAILOVER_SETTINGS={**SETTINGS, "promotion": "manual"},
    )
    failover = PgFailover(app)

    @app.get("/banner")
    def banner() -> Any:
        page = render_template_string(
            "{% if pgfailover_writable %}writable{% else %}read-only{% endif %}"
        )
        return f"{page} {g.pgfailover_writable}"

    @app.post("/orders")
    def order() -> Any:
        try:
            failover.query("SELECT 1")  # not readonly: routed to the primary
        except ReadOnlyMode:
            return "read-only: try again later", 503
        return "ok"

    try:
        client = app.test_client()
        assert client.get("/banner").data == b"writable True"
        fresh_lab.kill("node0")
        wait_until(lambda: not failover.manager.writable, timeout=15, what="read-only mode")
        assert client.get("/banner").data == b"read-only False"
        started = time.monotonic()
        assert client.post("/orders").status_code == 503
        assert time.monotonic() - started < 1.0  # not failover_wait_timeout
    finally:
        failover.close()


def test_a_session_whose_connection_died_after_its_read_closes_cleanly(
    fresh_lab: LocalLab, engines: FailoverEngines
) -> None:
    """A standby restart ends the session's backend between its read and its close."""
    session = engines.sessionmaker()()
    pid, port = session.execute(select(func.pg_backend_pid(), func.inet_server_port())).one()
    node = _port_of(fresh_lab, port)
    fresh_lab.run_sql(node, "SELECT pg_terminate_backend(%s)", (pid,))
    wait_until(
        lambda: (
            fresh_lab.run_sql(node, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
            == [(0,)]
        ),
        what="the backend gone",
    )
    session.close()  # the request's teardown: no error
    with engines.sessionmaker()() as again:
        assert again.scalar(select(func.count()).select_from(Item)) == 0
