"""The Django router and middleware with Django's test client, against one lab cluster.

Django's settings can be configured once per process, so every test here
shares one cluster; the tests that kill primaries run last, in order.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("django")

import django
from django.conf import settings
from django.core.management import call_command
from django.test import Client

from pgfailover import ReadOnlyMode
from pgfailover.contrib.django import databases, get_manager, reset_manager
from pgfailover.lab import LocalLab

from .conftest import make_lab
from .helpers import wait_for_table, wait_until

SETTINGS = {
    "health_check_interval": 0.2,
    "fast_interval": 0.05,
    "failover_cooldown": 0,
    "promotion": "auto",
}


@pytest.fixture(scope="module")
def site() -> Iterator[LocalLab]:
    lab = make_lab()
    try:
        if settings.configured:
            pytest.skip("Django settings were configured elsewhere in this process")
        nodes = lab.manager_nodes()
        settings.configure(
            DEBUG=False,
            ALLOWED_HOSTS=["testserver"],
            SECRET_KEY="pgfailover-tests",
            INSTALLED_APPS=["pgfailover.contrib.django", "tests.integration.djangoapp"],
            DATABASES=databases(nodes, options={"pool": {"min_size": 0, "max_size": 4}}),
            DATABASE_ROUTERS=["pgfailover.contrib.django.FailoverRouter"],
            MIDDLEWARE=["pgfailover.contrib.django.FailoverMiddleware"],
            ROOT_URLCONF="tests.integration.djangoapp.urls",
            TEMPLATES=[
                {
                    "BACKEND": "django.template.backends.django.DjangoTemplates",
                    "OPTIONS": {
                        "context_processors": ["pgfailover.contrib.django.context_processor"]
                    },
                }
            ],
            DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
            USE_TZ=True,
            PGFAILOVER={"source": nodes, "settings": SETTINGS, "cookie_max_age": 30},
        )
        django.setup()
        call_command("migrate", run_syncdb=True, verbosity=0)
        from tests.integration.djangoapp.models import Note

        wait_for_table(lab, Note._meta.db_table)
        yield lab
    finally:
        from django.db import connections

        connections.close_all()
        reset_manager()
        lab.destroy()


def _get(client: Client, path: str) -> dict[str, Any]:
    response = client.get(path)
    assert response.status_code == 200, response.content
    data: dict[str, Any] = response.json()
    return data


def test_writes_go_to_the_primary_and_reads_after_a_write_stay_there(site: LocalLab) -> None:
    result = _get(Client(), "/write?text=a")
    assert result["write_db"] == "node0"
    assert result["read_db"] == "node0"  # this request wrote: its reads stay on the primary
    assert result["seen"]
    _get(Client(), "/read?id=0")
    counted = {
        (q["node"], q["route"])
        for q in get_manager().get_metrics()["queries"]
        if q["outcome"] == "ok" and q["count"] > 0
    }
    assert ("node0", "write") in counted  # the ORM's INSERT, counted for the dashboard
    assert ("node0", "read_primary") in counted  # the read after it
    assert {("node1", "read"), ("node2", "read")} & counted  # the stranger's read


def test_reads_go_to_standbys_and_the_cookie_gives_read_your_writes(site: LocalLab) -> None:
    stranger = Client()
    assert _get(stranger, "/read?id=0")["read_db"] in ("node1", "node2")

    writer = Client()
    note = _get(writer, "/write?text=b")
    assert "pgfailover_lsn" in writer.cookies
    served: set[str] = set()

    def on_a_standby() -> bool:
        result = _get(writer, f"/read?id={note['id']}")
        assert result["seen"], result  # wherever it is read, the write is there
        served.add(result["read_db"])
        return bool(result["read_db"] in ("node1", "node2"))

    wait_until(on_a_standby, what="the writer's reads back on a replayed standby")


def test_migrations_only_on_the_primary(site: LocalLab) -> None:
    from pgfailover.contrib.django import FailoverRouter

    router = FailoverRouter()
    assert router.allow_migrate("default", "djangoapp")
    assert router.allow_migrate("node0", "djangoapp")
    assert not router.allow_migrate("node1", "djangoapp")


def test_status_command(site: LocalLab) -> None:
    from io import StringIO

    out = StringIO()
    call_command("pgfailover_status", stdout=out)
    assert "primary: node0" in out.getvalue()


def test_a_read_sent_to_a_standby_that_just_died_is_run_again_elsewhere(site: LocalLab) -> None:
    note = _get(Client(), "/write?text=r")["id"]
    site.kill("node1")
    try:
        served = [_get(Client(), f"/read?id={note}")["read_db"] for _ in range(20)]
        assert "node1" not in served
        retried = sum(
            q["count"]
            for q in get_manager().get_metrics()["queries"]
            if (q["node"], q["route"], q["outcome"]) == ("node1", "read", "retry")
        )
        assert retried >= 1  # the request routed to node1 was run again, not failed
    finally:
        site.start("node1")
        site.wait_streaming("node1", "node0", timeout=30)
        wait_until(
            lambda: get_manager().snapshot.node("node1").serves_reads, timeout=30, what="node1"
        )


def test_a_primary_kill_fails_only_the_requests_in_flight(site: LocalLab) -> None:
    outcomes: list[tuple[float, str]] = []  # (time, write_db or "error: ...")
    stop = threading.Event()

    def clients() -> None:
        from django.db import connections

        client = Client()
        try:
            while not stop.is_set():
                try:
                    result = _get(client, "/write?text=k")
                    outcomes.append((time.monotonic(), result["write_db"]))
                except Exception as exc:  # noqa: BLE001 - a failed request is what is counted
                    outcomes.append((time.monotonic(), f"error: {type(exc).__name__}"))
        finally:
            connections.close_all()  # this thread's connections (the test client keeps them)

    thread = threading.Thread(target=clients, daemon=True)
    thread.start()
    try:
        wait_until(lambda: len(outcomes) >= 5, what="requests before the kill")
        site.kill("node0")
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
    errors = [r for r in after if r.startswith("error")]
    assert len(errors) <= 1, after  # the one request in flight at the crash, at most
    first_new = next(i for i, r in enumerate(after) if r in ("node1", "node2"))
    assert all(r == after[first_new] for r in after[first_new:]), after
    assert get_manager().snapshot.primary == after[first_new]


def test_a_read_only_cluster_shows_a_banner_and_writes_fail_at_once(site: LocalLab) -> None:
    """After the kill test: maintenance mode, then the new primary killed too."""
    client = Client()
    assert client.get("/banner").content == b"writable True"
    mgr = get_manager()
    primary = mgr.snapshot.primary
    assert primary is not None
    mgr.pause("test: nobody promotes")
    site.kill(primary)
    wait_until(lambda: not mgr.writable, timeout=15, what="read-only mode")
    assert client.get("/banner").content == b"read-only False"
    started = time.monotonic()
    with pytest.raises(ReadOnlyMode):
        client.get("/write?text=r")
    assert time.monotonic() - started < 1.0  # not failover_wait_timeout
