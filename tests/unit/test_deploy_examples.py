"""The deployment examples in docs/deploy stay in step with the CLI they run."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml
from click.testing import CliRunner

from pgfailover.cli.app import cli

ROOT = Path(__file__).resolve().parents[2]


def _serve_options() -> set[str]:
    out = CliRunner().invoke(cli, ["serve", "--help"]).output
    return set(re.findall(r"(--[a-z][a-z-]+)", out))


def test_kubernetes_example_runs_serve_with_real_options() -> None:
    docs = list(yaml.safe_load_all((ROOT / "docs/deploy/kubernetes.yaml").read_text()))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 1  # one arbiter
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[0] == "serve"
    assert {a for a in args if a.startswith("--")} <= _serve_options()


def test_systemd_unit_runs_serve_with_real_options() -> None:
    text = (ROOT / "docs/deploy/pgfailover.service").read_text()
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    argv = shlex.split(exec_start.removeprefix("ExecStart="))
    assert argv[1] == "serve"
    assert {a for a in argv if a.startswith("--")} <= _serve_options()
    assert "KillSignal=SIGTERM" in text
