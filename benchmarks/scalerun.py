"""What scale.py, scale_patroni.py and arbiter_loss.py share: the run loop (rounds of
contenders, medians), CPU groups, and the worker processes (:class:`Workers`)."""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import emit, percentile
from cpugroups import hierarchy, sweep


def add_cpu_groups(parser: argparse.ArgumentParser) -> None:
    """``--cpu-groups`` / ``--no-cpu-groups`` (see cpugroups.py)."""
    parser.add_argument(
        "--cpu-groups",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="each role (database, arbiter, etcd, workers) in its own CPU cgroup, where it can",
    )


def add_per_process(parser: argparse.ArgumentParser) -> None:
    """``--per-process N``: managers per worker process (see ``scale._specs``)."""
    parser.add_argument(
        "--per-process",
        type=int,
        default=10,
        help="managers per worker process (10: at most 20 processes; 1: one each, as a "
        "gunicorn worker has, with no other manager's threads on its interpreter lock)",
    )


def add_in_step(parser: argparse.ArgumentParser) -> None:
    """``--in-step``: every writer starts at once (see ``scaleworker.run``)."""
    parser.add_argument(
        "--in-step",
        action="store_true",
        help="start every manager's writes at the same moment, so that each round of "
        "writes reaches the primary as one burst (default: each starts at its own point "
        "of the pace, as independent application processes do)",
    )


def add_warmup(parser: argparse.ArgumentParser) -> None:
    """``--warmup SQL``: every contender's pools run it on each new connection."""
    parser.add_argument(
        "--warmup",
        default=None,
        metavar="SQL",
        help="pool_warmup for the managers' pools (the libpq pools run the same hook as "
        "their configure): e.g. 'SELECT 1 FROM bench WHERE id = 0'",
    )


def why_no_switch(get: Callable[[str], Any], log: Path, lines: int = 30) -> str:
    """What an arbiter that did not fail over says: its state, its last events, the
    end of its log (for stderr: a run with no switch is otherwise a row of n/a)."""
    out = ["the arbiter did not fail over:"]
    try:
        out.append(f"state {get('/failover/status')['state']}")
        for event in get("/failover/history")["events"][-3:]:
            out.append(json.dumps({k: event.get(k) for k in ("outcome", "to", "error", "notes")}))
    except (OSError, ValueError, KeyError) as exc:
        out.append(f"(its API: {exc})")
    with contextlib.suppress(OSError):
        out += log.read_text(errors="replace").splitlines()[-lines:]
    return "\n".join(out)


def cpu_groups_kind(args: argparse.Namespace) -> str | None:
    """The cgroup version the run uses (``None``: one group for everything)."""
    found = hierarchy() if args.cpu_groups else None
    return None if found is None else found[1]


def run_all(
    args: argparse.Namespace,
    known: tuple[str, ...],
    run_one: Callable[[int, str, int, argparse.Namespace], dict[str, Any]],
    header: dict[str, Any],
) -> None:
    """Every size, ``args.runs`` rounds of every contender (the order reversed every
    other round), each run's record and then the medians, as JSON lines."""
    contenders = [c for c in args.contenders.split(",") if c]
    unknown = set(contenders) - set(known)
    if unknown:
        raise SystemExit(f"unknown contender(s) {', '.join(sorted(unknown))}")
    sweep()  # groups a killed run left behind
    emit(header)
    runs = []
    for size in (int(s) for s in args.sizes.split(",")):
        for run in range(args.runs):
            order = contenders if run % 2 == 0 else contenders[::-1]
            for contender in order:
                record = run_one(size, contender, run, args)
                emit(record)
                runs.append(record)
    for record in summaries(runs, contenders):
        emit(record)


def _median(values: list[Any]) -> Any:
    """The median of the values a run gave (``None``: it had none, e.g. nothing lost
    can be counted where no new primary came)."""
    given = [v for v in values if v is not None]
    return statistics.median(given) if given else None


def quantiles(ordered: list[float]) -> dict[str, float] | None:
    """p50, p99 and max of ascending values (``None`` for none)."""
    if not ordered:
        return None
    return {
        "p50": round(percentile(ordered, 0.5), 4),
        "p99": round(percentile(ordered, 0.99), 4),
        "max": round(ordered[-1], 4),
    }


def summaries(runs: list[dict[str, Any]], contenders: list[str]) -> list[dict[str, Any]]:
    """Medians over the runs of each size and contender."""
    out = []
    for size in sorted({r["size"] for r in runs}):
        for contender in contenders:
            mine = [r for r in runs if r["size"] == size and r["contender"] == contender]
            if not mine:
                continue
            out.append(
                {
                    "summary": True,
                    "size": size,
                    "contender": contender,
                    "runs": len(mine),
                    **{
                        key: _median([r[key] for r in mine])
                        for key in (
                            "steady_probe_sessions",
                            "steady_probes_per_s",
                            "steady_arbiter_probes_per_s",
                            "failover_probe_sessions_max",
                            "failover_probes_per_s",
                            "failover_live_probes_per_s",
                            "failover_arbiter_probes_per_s",
                            "rss_kib_per_manager",
                            "threads_per_manager",
                            "lost",
                            "never_wrote_on_new",
                            "old_primary_acks_after_new",
                        )
                    },
                    **{
                        f"{name}_{q}_s": statistics.median(
                            r[f"{name}_s"][q] for r in mine if r.get(f"{name}_s")
                        )
                        for name in (
                            "switch_to_manager_switch",
                            "switch_to_first_write",
                            "promotion_to_first_write",
                            "write_before",
                            "all_at_once",
                        )
                        for q in ("p50", "p99", "max")
                        if any(r.get(f"{name}_s") for r in mine)
                    },
                }
            )
    return out


WORKER = Path(__file__).resolve().parent / "scaleworker.py"


class Workers:
    """The worker processes of one run, spoken to line by line."""

    def __init__(self, specs: list[dict[str, Any]]) -> None:
        self.procs = [
            subprocess.Popen(
                [sys.executable, str(WORKER), json.dumps(spec)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for spec in specs
        ]

    def ask(self, command: str | None) -> list[dict[str, Any]]:
        """Send ``command`` to every worker (``None``: nothing), then read one answer each."""
        if command is not None:
            for proc in self.procs:
                assert proc.stdin is not None
                proc.stdin.write(command + "\n")
                proc.stdin.flush()
        answers = []
        for proc in self.procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line:
                raise SystemExit(f"worker {proc.pid} ended early")
            answers.append(json.loads(line))
        return answers

    def probes(self) -> dict[str, int]:
        """Probes the managers ran, per node."""
        out: dict[str, int] = {}
        for answer in self.ask("count"):
            for node, count in answer["probes"].items():
                out[node] = out.get(node, 0) + count
        return out

    def kill(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(Exception):
                if proc.poll() is None:
                    proc.kill()
                proc.wait(10)
