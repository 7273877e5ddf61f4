"""A fresh Django project and a fresh Flask app, written from the README, under load.

Each run builds the app the way a new user would (``django-admin
startproject`` and ``startapp``, or one ``app.py``), configures it with the
README's own block (read from ``README.md``, so a README change is tested),
serves it with gunicorn (2 worker processes x 4 threads, each worker with
its own manager, as in production) next to the arbiter (``pgfailover
serve``, the README's "who promotes"), and sends a stream of requests over
HTTP: one client writing unique refs, two reading. Meanwhile the primary is
killed, the old primary rejoined and a standby restarted. What must hold:

- only the write that meets the crash may fail (at most one: there is one
  writer, and reads are on standbys);
- the rejoin and the restart fail no request at all;
- no request takes longer than ``failover_wait_timeout`` + 1 s;
- every acknowledged write is on the final primary.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pgfailover import FailoverConfig
from pgfailover.lab import LocalLab
from tests.readme import block

from .conftest import make_lab
from .helpers import get_json, lab_config, serve_process, stop_process, wait_until

pytest.importorskip("gunicorn")
pytestmark = pytest.mark.timeout(240)

WAIT_LIMIT = FailoverConfig().failover_wait_timeout + 1.0  # the README's defaults
WRITERS, READERS = 1, 2


# -- the apps, as a user writes them ---------------------------------------------

DJANGO_MODELS = """\
from django.db import models


class Order(models.Model):
    ref = models.CharField(max_length=40, unique=True)
"""

DJANGO_VIEWS = """\
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from .models import Order


@csrf_exempt
@require_POST
def add(request):
    Order.objects.create(ref=request.POST["ref"])
    return JsonResponse({"ok": True})


@require_GET
def count(request):
    return JsonResponse({"orders": Order.objects.count()})
"""

DJANGO_URLS = """\
from django.urls import path

from shop import views

urlpatterns = [path("orders/add", views.add), path("orders/count", views.count)]
"""

FLASK_HEAD = """\
from flask import Flask, request
from sqlalchemy import String, func, select
from sqlalchemy.orm import Mapped, mapped_column

app = Flask(__name__)
"""

FLASK_TAIL = """

class Order(db.Model):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    ref: Mapped[str] = mapped_column(String(40), unique=True)


@app.post("/orders/add")
def add():
    db.session.add(Order(ref=request.form["ref"]))
    db.session.commit()
    return {"ok": True}


@app.get("/orders/count")
def count():
    return {"orders": db.session.scalar(select(func.count()).select_from(Order))}


if __name__ == "__main__":  # python app.py: create the table
    with app.app_context():
        db.create_all()
"""


def _paste_lists(snippet: str) -> str:
    """The README's ``NAME = [..., "x"]`` means NAME's existing items, then ``"x"``."""
    snippet = re.sub(r"^(\w+) = \[\.\.\., ", r"\1 = [*\1, ", snippet, flags=re.M)
    return re.sub(r"^(\w+) = \[(.*), \.\.\.\]", r"\1 = [\2, *\1]", snippet, flags=re.M)


def _run(args: list[str], cwd: Path) -> None:
    result = subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"


def django_project(root: Path, config: Path, *, pool: bool) -> tuple[Path, str]:
    """``startproject`` + ``startapp`` + the README's settings; (directory, WSGI module)."""
    django = [sys.executable, "-m", "django"]
    root.mkdir()
    (root / "pgfailover.toml").write_text(config.read_text())  # PGFAILOVER["source"]
    _run([*django, "startproject", "shopsite", str(root)], root.parent)
    _run([sys.executable, "manage.py", "startapp", "shop"], root)
    (root / "shop" / "models.py").write_text(DJANGO_MODELS)
    (root / "shop" / "views.py").write_text(DJANGO_VIEWS)
    (root / "shopsite" / "urls.py").write_text(DJANGO_URLS)
    snippet = _paste_lists(block("django-settings"))
    if not pool:
        assert ', options={"pool": True}' in snippet
        snippet = snippet.replace(', options={"pool": True}', "")
    settings = root / "shopsite" / "settings.py"
    settings.write_text(
        settings.read_text()
        + '\nALLOWED_HOSTS = ["127.0.0.1"]\nINSTALLED_APPS += ["shop"]\n\n'
        + snippet
    )
    _run([sys.executable, "manage.py", "makemigrations", "shop"], root)
    _run([sys.executable, "manage.py", "migrate"], root)
    return root, "shopsite.wsgi"


def flask_app(root: Path, url: str) -> tuple[Path, str]:
    """One ``app.py``: the README's Flask-SQLAlchemy lines, a model and two routes."""
    snippet = block("flask-sqlalchemy")
    readme_url = re.search(r'"(postgresql://[^"]+)"', snippet)
    assert readme_url is not None
    root.mkdir()
    (root / "app.py").write_text(
        FLASK_HEAD + snippet.replace(readme_url.group(1), url) + FLASK_TAIL
    )
    _run([sys.executable, "app.py"], root)
    return root, "app:app"


# -- serving and loading --------------------------------------------------------


@contextlib.contextmanager
def gunicorn(directory: Path, app: str, log: Path) -> Iterator[int]:
    """``gunicorn --workers 2 --threads 4`` on a socket the test bound; yields its port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    fd = listener.fileno()
    args = [sys.executable, "-m", "gunicorn", "--workers", "2", "--threads", "4"]
    args += ["--bind", f"fd://{fd}", "--graceful-timeout", "5", app]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PGFAILOVER", "DB_"))}
    with log.open("w") as out:
        proc = subprocess.Popen(
            args, cwd=directory, env=env, stdout=out, stderr=out, pass_fds=(fd,)
        )
    listener.close()  # gunicorn holds it now
    try:
        wait_until(lambda: _request(port, "GET", "/orders/count")[0] == 200, 60, "the app")
        yield port
    finally:
        stop_process(proc)


def _request(port: int, method: str, path: str, form: dict[str, str] | None = None) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT_LIMIT + 10)
    try:
        body = urllib.parse.urlencode(form) if form else None
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if form else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@dataclass(frozen=True)
class Outcome:
    kind: str  # "write" or "read"
    start: float
    end: float
    status: int | str  # the HTTP status, or the exception
    ref: str | None


class Load:
    """One writer posting unique refs, two readers counting, each request on its own socket."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, args=(kind, k), daemon=True)
            for k, kind in enumerate(["write"] * WRITERS + ["read"] * READERS)
        ]

    def _loop(self, kind: str, k: int) -> None:
        i = 0
        while not self._stop.is_set():
            i += 1
            ref = f"c{k}-{i}" if kind == "write" else None
            start = time.monotonic()
            try:
                if ref is not None:
                    status = _request(self.port, "POST", "/orders/add", {"ref": ref})[0]
                else:
                    status = _request(self.port, "GET", "/orders/count")[0]
            except Exception as exc:  # noqa: BLE001 - a failed request is what is counted
                status = repr(exc)
            self.outcomes.append(Outcome(kind, start, time.monotonic(), status, ref))

    def answered(self, kind: str, after: float = 0.0) -> list[Outcome]:
        """Requests of ``kind`` started after ``after`` and answered 200."""
        return [o for o in self.outcomes if o.kind == kind and o.status == 200 and o.start > after]

    def ok(self, kind: str, after: float = 0.0) -> int:
        return len(self.answered(kind, after))

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(WAIT_LIMIT + 15)


def _more_requests(load: Load, what: str) -> None:
    since = time.monotonic()
    wait_until(
        lambda: load.ok("write", since) >= 10 and load.ok("read", since) >= 10,
        timeout=30,
        what=f"requests answered {what}",
    )


def _serves_reads(status_url: str, name: str) -> bool:
    status = get_json(status_url)
    node = next(n for n in status["nodes"] if n["name"] == name)
    return bool(status["state"] == "healthy" and node["serves_reads"])


def kill_rejoin_restart(lab: LocalLab, port: int, status_url: str) -> Load:
    """The request stream through a primary kill, a rejoin and a standby restart."""
    with Load(port) as load:
        _more_requests(load, "before the kill")
        old = lab.primary()
        assert old is not None
        lab.kill(old)
        killed = time.monotonic()
        wait_until(lambda: load.ok("write", killed) >= 10, timeout=40, what="writes resuming")
        new = lab.primary()
        lab.rejoin(old)
        wait_until(lambda: _serves_reads(status_url, old), timeout=60, what=f"{old} back")
        _more_requests(load, "after the rejoin")
        standby = next(n.name for n in lab.nodes if n.name not in (old, new))
        lab.stop(standby)
        lab.start(standby)
        wait_until(lambda: _serves_reads(status_url, standby), timeout=60, what=standby)
        _more_requests(load, "after the restart")
    failed = [o for o in load.outcomes if o.status != 200]
    durations = sorted(o.end - o.start for o in load.outcomes)
    print(  # shown with -s, and on a failure: the figures of the run
        f"requests {len(durations)} (writes {load.ok('write')} ok, reads {load.ok('read')} ok),"
        f" failed {len(failed)}, p50 {durations[len(durations) // 2]:.3f}s,"
        f" max {durations[-1]:.3f}s, first write after the kill"
        f" {min(o.end for o in load.answered('write', killed)) - killed:.3f}s"
    )
    # The one write that met the crash (in flight at the kill, or sent before
    # anybody knew of it), at most; reads are on standbys, rejoin and restart cost nothing.
    resumed = min(o.end for o in load.answered("write", killed))
    assert len(failed) <= 1, failed
    assert all(o.kind == "write" and o.start < resumed for o in failed), failed
    slowest = max(load.outcomes, key=lambda o: o.end - o.start)
    assert slowest.end - slowest.start <= WAIT_LIMIT, slowest
    return load


def _acknowledged_on_primary(lab: LocalLab, load: Load, table: str) -> None:
    primary = lab.primary()
    assert primary is not None
    stored = {r[0] for r in lab.run_sql(primary, f"SELECT ref FROM {table}")}
    acked = {o.ref or "" for o in load.answered("write")}
    assert acked, "no write was acknowledged"
    assert acked <= stored, sorted(acked - stored)[:10]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[LocalLab, Path, str]]:
    """``lab up --standbys 2 --sync``, its ``pgfailover.toml``, and the arbiter on it."""
    lab = make_lab(sync=1)
    try:
        config = lab_config(lab, tmp_path / "pgfailover.toml")
        with serve_process(config, tmp_path / "serve.log") as arbiter:
            yield lab, config, arbiter["url"] + "/failover/status"
    finally:
        lab.destroy()


@pytest.mark.parametrize("pool", [True, False], ids=["pool", "no-pool"])
def test_a_fresh_django_project_survives_kill_rejoin_and_restart(
    cluster: tuple[LocalLab, Path, str], tmp_path: Path, pool: bool
) -> None:
    lab, config, status_url = cluster
    project, wsgi = django_project(tmp_path / "site", config, pool=pool)
    with gunicorn(project, wsgi, tmp_path / "gunicorn.log") as port:
        load = kill_rejoin_restart(lab, port, status_url)
    _acknowledged_on_primary(lab, load, "shop_order")


def test_a_fresh_flask_sqlalchemy_app_survives_with_one_manager_per_process(
    cluster: tuple[LocalLab, Path, str], tmp_path: Path
) -> None:
    lab, _, status_url = cluster
    directory, app = flask_app(tmp_path / "app", lab.url)
    with gunicorn(directory, app, tmp_path / "gunicorn.log") as port:
        primary = lab.primary()
        assert primary is not None
        probes = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
        # the arbiter and one manager per gunicorn worker: FailoverSession shares the extension's
        wait_until(
            lambda: lab.run_sql(primary, probes, ("pgfailover-probe",))[0][0] == 3,
            what="3 probe connections",
        )
        load = kill_rejoin_restart(lab, port, status_url)
    _acknowledged_on_primary(lab, load, "orders")
