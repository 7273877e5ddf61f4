"""Helpers for integration tests: waiting with deadlines, managers over labs."""

from __future__ import annotations

import contextlib
import importlib.metadata
import itertools
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import pgfailover
from pgfailover import FailoverConfig, FailoverManager
from pgfailover.errors import WriteOutcomeUnknown
from pgfailover.lab import LocalLab
from pgfailover.lab.topology import Topology

FAST = FailoverConfig(
    health_check_interval=0.2,
    fast_interval=0.05,
    health_check_timeout=1.0,
    failover_cooldown=0,
    failover_wait_timeout=15.0,
)


def wait_until(check: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll ``check()`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - keep polling, report the last one
            last = exc
        time.sleep(0.02)
    pytest.fail(
        f"timed out after {timeout}s waiting for {what}"
        + (f" (last error: {last})" if last else "")
    )


def holds_for(check: Callable[[], Any], seconds: float, what: str = "condition") -> None:
    """Poll ``check()`` for ``seconds``, failing the moment it is falsy: something that
    must not happen (a second promotion) is watched for, not slept through."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not check():
            pytest.fail(f"{what} stopped holding")
        time.sleep(0.02)


def manager_for(lab: Topology, config: FailoverConfig = FAST, **kwargs: Any) -> FailoverManager:
    """An open manager over every node of ``lab``."""
    nodes = lab.manager_nodes()
    return FailoverManager(nodes=nodes, config=config, **kwargs).open()


def port_of(lab: LocalLab, port: int) -> str:
    """The node name listening on ``port``."""
    return next(n.name for n in lab.nodes if n.port == port)


INSERT_SQL = "INSERT INTO w VALUES (%s) RETURNING inet_server_port()"

# Statements whose results query() must return as psycopg gives them (rows, no
# rows, zero columns, a command with no result set); read-only, so that a
# standby runs them too.
RESULT_SHAPES = (
    "SELECT 1, 'a'",
    "SELECT",
    "SELECT 1 WHERE false",
    "VALUES (1), (2)",
    "SHOW server_version_num",
    "DO $$ BEGIN END $$",
    "SET LOCAL statement_timeout = 1000",
    "WITH t(x) AS (VALUES (1)) SELECT x FROM t",
)


def expected_rows(conn: psycopg.Connection[Any], sql: str) -> list[tuple[Any, ...]]:
    """What ``sql`` returns on a plain psycopg connection (rows when it has a result set)."""
    with conn.transaction():
        cur = conn.execute(sql)
        return cur.fetchall() if cur.description is not None else []


class Ledger:
    """What a workload's writes came to: acknowledged (id, server port, time), unknown,
    failed. Shared by the thread workload here and the asyncio one of the async tests."""

    def __init__(self) -> None:
        self.acked: list[tuple[int, int, float]] = []
        self.unknown: list[int] = []
        self.failed: list[tuple[int, str]] = []

    def ok(self, i: int, rows: list[tuple[Any, ...]]) -> None:
        self.acked.append((i, rows[0][0], time.monotonic()))

    def failure(self, i: int, exc: Exception) -> None:
        if isinstance(exc, WriteOutcomeUnknown):
            self.unknown.append(i)
        else:
            self.failed.append((i, repr(exc)))

    def acked_on(self, port: int) -> int:
        return sum(1 for _, p, _ in self.acked if p == port)


class Workload(Ledger):
    """Threads committing INSERTs with unique ids, recording what was acknowledged."""

    _runs = itertools.count()  # each workload of a session writes its own ids

    def __init__(self, mgr: FailoverManager, threads: int = 4) -> None:
        super().__init__()
        self.mgr = mgr
        run = next(Workload._runs) * 100_000_000
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(run + k * 10_000_000,), daemon=True)
            for k in range(threads)
        ]

    def _run(self, base: int) -> None:
        i = base
        while not self._stop.is_set():
            i += 1
            try:
                self.ok(i, self.mgr.query(INSERT_SQL, (i,)))
            except Exception as exc:  # noqa: BLE001 - recorded and asserted on
                self.failure(i, exc)

    def __enter__(self) -> Workload:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)


def config_file(lab: LocalLab, tmp_path: Path, extra: str = "") -> Path:
    """A ``pgfailover.toml`` for ``lab`` with fast probing and a history file."""
    lines = []
    for i, node in enumerate(lab.nodes):
        lines += ["[[nodes]]", f'name = "{node.name}"', f'dsn = "{node.dsn}"', f"priority = {i}"]
    lines += [
        "[failover]",
        "health_check_interval = 0.2",
        "fast_interval = 0.05",
        "failover_cooldown = 0",
        f'history_file = "{tmp_path / "history.jsonl"}"',
        extra,
    ]
    path = tmp_path / "pgfailover.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def lab_config(lab: LocalLab, path: Path) -> Path:
    """``pgfailover lab config > PATH``, as the README says."""
    cli = [sys.executable, "-m", "pgfailover", "lab", "config", "--dir", str(lab.directory)]
    result = subprocess.run(cli, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    path.write_text(result.stdout)
    return path


def get_json(url: str, timeout: float = 5.0) -> Any:
    """GET ``url`` (a local ``pgfailover serve``) and decode its JSON."""
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback
        return json.loads(response.read())


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """Stop a process the test started, by its PID: SIGTERM, then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


_ANY_PORT = ("--port", "0")  # serve picks a free port and prints it


@contextlib.contextmanager
def serve_process(config: Path, log: Path, *options: str) -> Iterator[dict[str, Any]]:
    """``pgfailover serve --config CONFIG --port 0 OPTIONS`` as a process, stderr to ``log``.

    Yields its readiness line (``url``, ``admin_url``...) with its ``pid``;
    stopped by that PID when the block ends.
    """
    with log.open("w") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pgfailover",
                "serve",
                "--config",
                str(config),
                *_ANY_PORT,
                *options,
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        try:
            assert proc.stdout is not None
            ready: dict[str, Any] = json.loads(proc.stdout.readline())
            yield {**ready, "pid": proc.pid}
        finally:
            stop_process(proc)
            if proc.stdout is not None:
                proc.stdout.close()


def prepare(lab: Topology) -> None:
    lab.run_sql("node0", "CREATE TABLE w (id bigint PRIMARY KEY)")
    wait_for_table(lab, "w")


def wait_for_table(lab: Topology, table: str) -> None:
    """Wait until every standby has replayed ``table``'s creation."""
    wait_replayed(lab, "SELECT to_regclass(%s) IS NOT NULL", [(True,)], (table,))


def wait_replayed(
    lab: Topology,
    query: str,
    rows: list[tuple[Any, ...]],
    params: Sequence[Any] | None = None,
    standbys: tuple[str, ...] = ("node1", "node2"),
) -> None:
    """Wait until ``query`` returns ``rows`` on every standby: with asynchronous
    replication a kill of the primary right after a write could leave it unshipped."""
    for standby in standbys:

        def replayed(name: str = standby) -> bool:
            return lab.run_sql(name, query, params) == rows

        wait_until(replayed, what=f"{standby} to replay what {query!r} reads")


def wait_caught_up(
    lab: Topology, primary: str = "node0", standbys: tuple[str, ...] = ("node1", "node2")
) -> None:
    """Wait until every standby has replayed the primary's WAL up to now: a kill right
    after leaves them level (but for WAL written in the instant before it), so a test
    that names the standby to promote does not find another one ahead of it."""
    lsn = lab.run_sql(primary, "SELECT pg_current_wal_lsn()::text")[0][0]
    query = "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn"
    wait_replayed(lab, query, [(True,)], (lsn,), standbys)


def _distributions(name: str, extras: frozenset[str]) -> set[str]:
    """The installed distributions ``name[extras]`` needs, itself excluded."""
    found: set[str] = set()
    todo = [(name, extras)]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        dist, wanted = todo.pop()
        key = (canonicalize_name(dist), wanted)
        if key in seen:
            continue
        seen.add(key)
        if key[0] != canonicalize_name(name):
            found.add(key[0])
        try:
            requires = importlib.metadata.requires(dist) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        environments = [{"extra": e} for e in wanted] or [{"extra": ""}]
        for text in requires:
            req = Requirement(text)
            if req.marker is None or any(req.marker.evaluate(env) for env in environments):
                todo.append((req.name, frozenset(req.extras)))
    return found


@contextlib.contextmanager
def as_lab_user_cli(lab: LocalLab) -> Iterator[Callable[..., subprocess.CompletedProcess[str]]]:
    """Run ``python -m pgfailover ...`` as the lab's server user, like an operator would.

    The test environment's interpreter and packages may sit where that user
    cannot read them (a root-owned home), so pgfailover and the distributions
    the command imports are copied to a directory the user can read, and the
    first interpreter of this Python version that the user can start runs
    them. Skips, saying why, when no such interpreter exists.
    """
    root = Path(tempfile.mkdtemp(prefix="pgfl-cli-"))
    try:
        root.chmod(0o755)
        shutil.copytree(Path(pgfailover.__file__).parent, root / "pgfailover")
        for name in sorted(_distributions("pgfailover", frozenset({"cli", "binary"}))):
            try:
                dist = importlib.metadata.distribution(name)
            except importlib.metadata.PackageNotFoundError:
                continue
            for file in dist.files or ():
                if file.parts[0] == "..":  # console scripts outside site-packages
                    continue
                target = root / file
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(str(dist.locate_file(file))), target)
        for path in root.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        env = {"PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1"}
        check = "import sys, pgfailover.cli.app; print(sys.version_info[:2])"
        version = f"python{sys.version_info[0]}.{sys.version_info[1]}"

        def runs(candidate: str | None) -> bool:
            if candidate is None:
                return False
            try:
                said = lab.run_as.run([candidate, "-c", check], env=env, check=False)
            except OSError as exc:  # the user cannot even start it
                tried.append(f"{candidate}: {exc.strerror}")
                return False
            tried.append(f"{candidate}: {(said.stderr.strip().splitlines() or [''])[-1]}")
            return said.stdout.strip() == str(sys.version_info[:2])

        tried: list[str] = []
        candidates = [sys.executable, shutil.which(version), f"/usr/bin/{version}"]
        python = next((c for c in candidates if c and runs(c)), None)
        if python is None:
            pytest.skip(f"no {version} that OS user {lab.run_as.name} can run: {tried}")

        def run(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
            return lab.run_as.run(
                [python, "-m", "pgfailover", *args], env=env, timeout=timeout, check=False
            )

        yield run
    finally:
        shutil.rmtree(root, ignore_errors=True)
