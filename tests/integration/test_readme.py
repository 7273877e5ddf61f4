"""The README's blocks, run as written against lab clusters.

Python blocks run as scripts in a directory holding the lab's
``pgfailover.toml`` (``pgfailover lab config``), with the few names a block
takes from its surroundings defined before it (``app``, ``mgr``) and
addresses replaced by the lab's: each substitution is asserted, so a block
that changes shape fails here. Console blocks run in one bash session,
command by command: each must exit 0 unless the README shows otherwise
(``echo $?``), and every output line the README shows must appear, in
order, in the shape of what the command printed (:func:`tests.readme.normalise`).
"""

from __future__ import annotations

import ast
import contextlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgfailover.lab import LocalLab
from tests.readme import block

from .conftest import make_lab
from .console import run_console
from .helpers import lab_config

pytestmark = pytest.mark.timeout(300)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _replace(text: str, old: str, new: str) -> str:
    assert old in text, f"the README block no longer has {old!r}"
    return text.replace(old, new)


def _python(directory: Path, source: str, **env: str) -> str:
    script = directory / "snippet.py"
    script.write_text(source)
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=directory,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, f"{source}\n--- stderr:\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalLab, Path]]:
    """One lab with the README's tables, and a directory with its pgfailover.toml."""
    lab = make_lab()
    try:
        directory = tmp_path_factory.mktemp("readme")
        lab_config(lab, directory / "pgfailover.toml")
        lab.run_sql("node0", "CREATE TABLE orders (id int)")
        lab.run_sql("node0", "CREATE TABLE stock (id int PRIMARY KEY, n int)")
        lab.run_sql("node0", "INSERT INTO stock VALUES (7, 10)")
        yield lab, directory
    finally:
        lab.destroy()


def _count_42(lab: LocalLab) -> int:
    return int(lab.run_sql("node0", "SELECT count(*) FROM orders WHERE id = 42")[0][0])


def test_the_manager_block(site: tuple[LocalLab, Path]) -> None:
    lab, directory = site
    text = block("manager")
    for i, node in enumerate(lab.nodes):
        text = _replace(text, f'"host=10.0.0.{i + 1} dbname=app user=app"', repr(node.dsn))
    before = _count_42(lab)
    out = _python(directory, text)
    assert out.strip() == "healthy"
    assert _count_42(lab) == before + 1
    assert lab.run_sql("node0", "SELECT n FROM stock WHERE id = 7") == [(9,)]


def test_the_config_file_block(site: tuple[LocalLab, Path]) -> None:
    lab, directory = site
    toml = _replace(
        block("config-file"), "postgresql://app@db1:5432,db2:5432,db3:5432/app", lab.url
    )
    (directory / "from-readme.toml").write_text(toml)
    out = _python(
        directory,
        "from pgfailover import FailoverManager\n"
        'mgr = FailoverManager.from_config("from-readme.toml")\n'
        "print(mgr.config.promotion, mgr.config.health_check_interval, len(mgr.nodes))\n"
        "with mgr:\n"
        '    print(mgr.get_failover_status()["state"])\n',
    )
    assert out.split() == ["auto", "1.0", "3", "healthy"]


def test_the_flask_block(site: tuple[LocalLab, Path]) -> None:
    lab, directory = site
    before = _count_42(lab)
    prelude = "from flask import Flask\napp = Flask(__name__)\n"
    _python(directory, prelude + block("flask") + "failover.close()\n")
    assert _count_42(lab) == before + 1


def test_the_sqlalchemy_block(site: tuple[LocalLab, Path]) -> None:
    _, directory = site
    epilogue = (
        "from sqlalchemy import text\n"
        "with Session() as session:\n"
        '    print(session.scalar(text("SELECT count(*) FROM stock")))\n'
        "engines.close()\n"
    )
    assert _python(directory, block("sqlalchemy") + epilogue).strip() == "1"


def test_the_metrics_block(site: tuple[LocalLab, Path]) -> None:
    _, directory = site
    port = _free_port()
    prelude = (
        "from pgfailover import FailoverManager\n"
        'mgr = FailoverManager.from_config("pgfailover.toml").open()\n'
    )
    epilogue = (
        "import urllib.request\n"
        f'print(urllib.request.urlopen("http://127.0.0.1:{port}/metrics").read().decode())\n'
        "mgr.close()\n"
    )
    text = _replace(block("metrics"), "9187", str(port))
    out = _python(directory, prelude + text + epilogue)
    assert 'pgfailover_primary_healthy{cluster="default"} 1.0' in out


def test_the_asyncio_block(site: tuple[LocalLab, Path]) -> None:
    lab, directory = site
    stock = lab.run_sql("node0", "SELECT n FROM stock WHERE id = 7")[0][0]
    out = _python(directory, block("asyncio"))
    # The count comes from a standby (without min_lsn it may not have the new row yet).
    assert re.fullmatch(r"\[\(\d+,\)\] healthy", out.strip()), out
    assert lab.run_sql("node0", "SELECT count(*) FROM orders WHERE id = 43") == [(1,)]
    assert lab.run_sql("node0", "SELECT n FROM stock WHERE id = 7") == [(stock - 1,)]


def test_the_admin_server_block(site: tuple[LocalLab, Path]) -> None:
    _, directory = site
    prelude = (
        "from pgfailover import FailoverManager\n"
        'mgr = FailoverManager.from_config("pgfailover.toml").open()\n'
    )
    epilogue = (
        "import json, urllib.request\n"
        'print(json.load(urllib.request.urlopen(server.url + "/failover/status"))["state"])\n'
        "server.close()\n"
        "mgr.close()\n"
    )
    text = _replace(block("admin-server"), "port=8008", f"port={_free_port()}")
    out = _python(directory, prelude + text + epilogue, PGFAILOVER_ADMIN_TOKEN="t" * 20)
    assert out.strip() == "healthy"


def test_the_lab_python_block(tmp_path: Path) -> None:
    out = _python(tmp_path, block("lab-python"))
    nodes = {n["name"]: n for n in ast.literal_eval(out)}  # the block prints a list of dicts
    assert nodes["node0"]["role"] == "standby"
    assert nodes["node0"]["upstream"] == "node1"
    assert nodes["node1"]["role"] == "primary"


# -- console sessions -----------------------------------------------------------


@pytest.fixture
def lab_dir() -> Iterator[Path]:
    """Where a console session's ``pgfailover lab up`` builds; destroyed afterwards."""
    path = Path(tempfile.gettempdir()) / f"pgfl-readme-{os.getpid()}-{time.monotonic_ns()}"
    try:
        yield path
    finally:
        if path.exists():
            LocalLab.open(path).destroy()


def _stop_background(directory: Path) -> None:
    pids = directory / "background.pids"
    if pids.exists():
        for pid in pids.read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), 15)


def test_the_lab_session(tmp_path: Path, lab_dir: Path) -> None:
    run_console(block("lab-session"), tmp_path, lab_dir)
    assert not lab_dir.exists()  # lab down removed it


def test_the_operations_session(tmp_path: Path, lab_dir: Path) -> None:
    port = str(_free_port())
    try:
        run_console(block("operations").replace("8008", port), tmp_path, lab_dir)
    finally:
        _stop_background(tmp_path)


def test_the_cli_session(tmp_path: Path, lab_dir: Path) -> None:
    setup = "$ pgfailover lab up --standbys 2\n$ pgfailover lab config > pgfailover.toml\n"
    run_console(setup + block("cli-session"), tmp_path, lab_dir)
