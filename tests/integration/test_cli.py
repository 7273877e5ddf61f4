"""The operational commands against lab clusters: in-process (CliRunner) and as processes.

Exit codes are part of the interface (0 healthy, 1 degraded or refused,
2 no writable primary, 3 usage or configuration errors), so every test
checks them along with the output.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from pgfailover.cli.app import cli
from pgfailover.lab import LocalLab
from pgfailover.server import serve

from .helpers import FAST, config_file, manager_for, wait_until

TOKEN = "cli-admin-token-0123456789"


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output


def test_status_exit_codes_follow_the_cluster(fresh_lab: LocalLab, tmp_path: Path) -> None:
    config = str(config_file(fresh_lab, tmp_path))
    code, out = _run("status", "--config", config)
    assert code == 0, out
    assert "HEALTHY" in out
    assert "\x1b[" not in out  # no colour in a pipe
    code, out = _run("status", "--config", config, "--json")
    data = json.loads(out)
    assert (code, data["state"], data["current_primary"]) == (0, "healthy", "node0")

    fresh_lab.stop("node2")
    code, out = _run("status", "--config", config)
    assert code == 1, out
    assert "DEGRADED" in out
    assert "node2" in out

    fresh_lab.kill("node0")
    code, out = _run("check-health", "--config", config, "--json")
    assert code == 2, out
    assert json.loads(out)["current_primary"] is None


def test_trigger_refuses_then_promotes_with_force(fresh_lab: LocalLab, tmp_path: Path) -> None:
    config = str(config_file(fresh_lab, tmp_path))
    code, out = _run("trigger", "--config", config, "--to", "node9", "--yes")
    assert code == 3, out
    assert "unknown node 'node9'" in out
    code, out = _run("trigger", "--config", config, "--to", "node1", "--yes")
    assert code == 1, out
    assert "guard primary_reachable" in out
    assert "--force" in out
    assert fresh_lab.run_sql("node1", "SELECT pg_is_in_recovery()") == [(True,)]

    code, out = _run("trigger", "--config", config, "--to", "node1", "--force", "--yes")
    assert code == 0, out
    assert "soft-fence node0" in out
    assert "completed" in out
    assert fresh_lab.run_sql("node1", "SELECT pg_is_in_recovery()") == [(False,)]
    code, out = _run("history", "--config", config)
    assert code == 0
    assert "node0 -> node1" in " ".join(out.split())
    assert "soft-fenced" in out


def test_trigger_through_url_shows_the_plan_and_asks_before_acting(fresh_lab: LocalLab) -> None:
    """Through ``--url`` as locally: the server's plan first, no failover without a yes."""
    config = FAST.replace(promotion="manual")
    with manager_for(fresh_lab, config) as mgr, serve(mgr, token=TOKEN) as server:
        base = ("--url", server.url, "--token", TOKEN)
        code, out = _run("trigger", *base, "--to", "node1")
        assert code == 1, out  # refused before asking: the primary answers
        assert "refused      guard primary_reachable" in out
        code, out = _run("trigger", *base, "--to", "node1", "--force")
        assert code == 3, out  # no terminal and no --yes: never a guess
        assert "plan         soft-fence node0 (read-only), then promote node1" in out
        assert "pass --yes" in out
        assert mgr.history() == []
        assert fresh_lab.run_sql("node1", "SELECT pg_is_in_recovery()") == [(True,)]
        code, out = _run("trigger", *base, "--to", "node1", "--force", "--yes")
        assert code == 0, out
        assert "plan         soft-fence node0" in out
        assert "node0 -> node1" in " ".join(out.split())
        assert fresh_lab.run_sql("node1", "SELECT pg_is_in_recovery()") == [(False,)]


def test_user_mistakes_print_one_line_and_exit_3(tmp_path: Path) -> None:
    env_free = {k: v for k, v in os.environ.items() if not k.startswith(("PGFAILOVER_", "DB_"))}
    cases = [
        ["status", "--bogus"],
        ["status", "--config", str(tmp_path / "missing.toml")],
        ["status", "--url", "http://127.0.0.1:9/"],
        ["trigger", "--url", "ftp://example"],
        ["status"],
    ]
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'dsn = "host=127.0.0.1 password=topsecret"\n[failover]\nhealth_check_interval = -1\n'
    )
    cases.append(["status", "--config", str(bad)])
    for args in cases:
        proc = subprocess.run(
            [sys.executable, "-m", "pgfailover", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env_free,
            check=False,
        )
        assert proc.returncode == 3, (args, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr, args
        assert "topsecret" not in proc.stderr + proc.stdout
        assert proc.stderr.strip(), args


def test_serve_answers_and_stops_on_sigterm(fresh_lab: LocalLab, tmp_path: Path) -> None:
    config = str(config_file(fresh_lab, tmp_path))
    log_path = tmp_path / "serve.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pgfailover",
            "serve",
            "--config",
            config,
            "--port",
            "0",
            "--token",
            TOKEN,
            "--log-format",
            "json",
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        url = ready["url"]
        with urllib.request.urlopen(url + "/failover/status", timeout=10) as response:  # noqa: S310
            assert json.loads(response.read())["current_primary"] == "node0"
        code, out = _run("status", "--url", url)
        assert code == 0, out
        code, out = _run("check-health", "--url", url, "--token", TOKEN, "--json")
        assert code == 0, out

        fresh_lab.kill("node0")  # the arbiter runs promotion=auto by default
        wait_until(
            lambda: (
                json.loads(_run("status", "--url", url, "--json")[1])["current_primary"]
                in ("node1", "node2")
            ),
            timeout=30,
            what="the arbiter promoting a standby",
        )
        code, out = _run("status", "--url", url)
        assert code == 1, out  # node0 is gone: degraded
        code, out = _run("history", "--url", url, "--json")
        assert code == 0
        assert any(e["outcome"] == "completed" for e in json.loads(out))

        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        assert time.monotonic() - started < 1.0  # "stops within a second"
        log.flush()
        text = log_path.read_text()
        lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        assert any("stopped" in line["message"] for line in lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
        log.close()


def test_watch_refreshes_and_stops(fresh_lab: LocalLab, tmp_path: Path) -> None:
    config = str(config_file(fresh_lab, tmp_path))
    code, out = _run("watch", "--config", config, "--interval", "0.2", "--count", "2")
    assert code == 0, out
    assert out.count("HEALTHY") == 2


@pytest.mark.parametrize(
    "command", ["status", "trigger", "history", "watch", "serve", "demo", "lab"]
)
def test_every_command_has_help(command: str) -> None:
    code, out = _run(command, "--help")
    assert code == 0
    assert "Usage:" in out
