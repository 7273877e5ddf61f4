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
    assert deployment["spec"]["replicas"] == 2  # two arbiters, one lease in etcd
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[0] == "serve"
    assert {a for a in args if a.startswith("--")} <= _serve_options()
    # Several arbiters need the lease: --etcd, from the Secret the pod reads.
    etcd = args[args.index("--etcd") + 1]
    assert etcd == "$(PGFAILOVER_ETCD)"
    secret = next(d for d in docs if d["kind"] == "Secret")
    assert "PGFAILOVER_ETCD" in secret["stringData"]
    assert {"secretRef": {"name": "pgfailover"}} in container["envFrom"]
    ports = {p["containerPort"] for p in container["ports"]}
    assert int(args[args.index("--stream-port") + 1]) in ports


def test_systemd_unit_runs_serve_with_real_options() -> None:
    text = (ROOT / "docs/deploy/pgfailover.service").read_text()
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    argv = shlex.split(exec_start.removeprefix("ExecStart="))
    assert argv[1] == "serve"
    assert {a for a in argv if a.startswith("--")} <= _serve_options()
    assert "KillSignal=SIGTERM" in text
