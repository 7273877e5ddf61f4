"""Does a flooded HTTP port slow the arbiter's failover? Flooded and quiet, in pairs.

Per run: a fresh 3-node lab cluster, ``pgfailover serve`` (promotion
``auto``, probing every 0.2 s, admin endpoints on their own port), then
node0 is killed (SIGKILL) and the time from the kill to the switch of
writes is read from the arbiter's history. In a ``flooded`` run 500
connections to the main port are opened first, half idle and half stuck
halfway through a request, and held through the failover; a ``quiet`` run
has none. Runs alternate (quiet, flooded, flooded, quiet, ...), each alone
on the machine; the summary gives the medians and their difference. The
target is a difference of 100 ms or less. Also recorded: the serve
process's threads and descriptors before and during the flood.

    python benchmarks/http_flood.py [--pairs 5]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, machine

from pgfailover.lab import LocalLab

FLOOD = 500
TOKEN = "bench-token-0123456789abcdef"  # noqa: S105 - a throwaway local arbiter


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
        return json.loads(response.read())


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return -1


def _flood(url: str) -> list[socket.socket]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    socks = []
    for i in range(FLOOD):
        sock = socket.create_connection((host, int(port)), timeout=5)
        socks.append(sock)
        if i % 2:
            sock.sendall(b"POST /failover/trigger HTTP/1.1\r\nContent-Length: 99\r\n\r\n")
    return socks


def _config(lab: LocalLab, directory: Path) -> Path:
    lines = []
    for node in lab.nodes:
        lines += ["[[nodes]]", f'name = "{node.name}"', f'dsn = "{node.dsn}"']
    lines += [
        "[failover]",
        "promotion = 'auto'",
        "health_check_interval = 0.2",
        "fast_interval = 0.05",
        "failover_cooldown = 0",
    ]
    path = directory / "pgfailover.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_once(flooded: bool) -> dict[str, Any]:
    """One kill of the primary under ``pgfailover serve``; one record."""
    lab = LocalLab.create(standbys=2)
    socks: list[socket.socket] = []
    with tempfile.TemporaryDirectory(prefix="pgfl-bench-") as tmp:
        argv = [sys.executable, "-m", "pgfailover", "serve", "--config"]
        argv += [str(_config(lab, Path(tmp))), "--port", "0", "--admin-port", "0"]
        proc = subprocess.Popen(
            [*argv, "--token", TOKEN],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert proc.stdout is not None
            ready = json.loads(proc.stdout.readline())
            admin = ready["admin_url"]
            threads = _threads(proc.pid)
            fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
            if flooded:
                socks = _flood(ready["url"])
                _get(admin + "/failover/status")  # the flood is in place
            during = (_threads(proc.pid), len(os.listdir(f"/proc/{proc.pid}/fd")))
            killed = time.time()
            lab.kill("node0")
            deadline = time.monotonic() + 30
            done: list[dict[str, Any]] = []
            while not done and time.monotonic() < deadline:
                events = _get(admin + "/failover/history")["events"]
                done = [e for e in events if e["outcome"] == "completed"]
                time.sleep(0.05)
            return {
                "benchmark": "http_flood",
                "flooded": flooded,
                "connections": len(socks),
                "kill_to_switch_s": round(done[0]["completed"] - killed, 4) if done else None,
                "kill_to_detection_s": round(done[0]["started"] - killed, 4) if done else None,
                "threads_before": threads,
                "threads_during": during[0],
                "fds_before": fds,
                "fds_during": during[1],
            }
        finally:
            for sock in socks:
                sock.close()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            if proc.stdout is not None:
                proc.stdout.close()
            lab.destroy()


def main(argv: list[str] | None = None) -> int:
    """Print one JSON line per run, then a summary line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=5)
    args = parser.parse_args(argv)
    emit(
        {
            "benchmark": "http_flood",
            "machine": machine(),
            "date": datetime.date.today().isoformat(),
            "connections": FLOOD,
        }
    )
    runs: list[dict[str, Any]] = []
    for pair in range(args.pairs):
        order = (False, True) if pair % 2 == 0 else (True, False)
        for flooded in order:
            record = run_once(flooded)
            record["pair"] = pair
            runs.append(record)
            emit(record)

    def median(flooded: bool) -> float:
        values = [r["kill_to_switch_s"] for r in runs if r["flooded"] is flooded]
        return round(statistics.median(v if v is not None else 99.0 for v in values), 4)

    quiet, loud = median(False), median(True)
    emit(
        {
            "benchmark": "http_flood",
            "summary": {
                "quiet_median_s": quiet,
                "flooded_median_s": loud,
                "difference_s": round(loud - quiet, 4),
                "flooded_max_s": max(r["kill_to_switch_s"] or 99.0 for r in runs if r["flooded"]),
                "threads_growth_max": max(r["threads_during"] - r["threads_before"] for r in runs),
                "fds_during_max": max(r["fds_during"] for r in runs),
            },
            "target_met": loud - quiet <= 0.1,
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
