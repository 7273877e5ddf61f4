"""Running a README console block in one bash session, checked as the README shows it.

Each command must exit 0 unless the README shows otherwise (``echo $?``),
and every output line the README shows must appear, in order, in the shape
of what the command printed (:func:`tests.readme.normalise`). The session
finds ``pgfailover`` and ``python`` of this venv first on its ``PATH``, and
keeps a lab in ``lab_dir`` (``PGFAILOVER_LAB_DIR``).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.readme import normalise, session

BIN = Path(sys.executable).parent  # pgfailover and python, as a user's venv has them


def run_console(text: str, directory: Path, lab_dir: Path) -> None:
    """Run a console block in one bash session and check it as the module docstring says."""
    steps = session(text)
    script = ["set -u", f'export PATH="{BIN}:$PATH"', f'export PGFAILOVER_LAB_DIR="{lab_dir}"']
    for i, step in enumerate(steps):
        script += [f"echo '@@step {i}'", step.command, "__rc=$?", 'echo "@@rc $__rc"']
        if step.command.rstrip().endswith("&"):
            url = re.search(r"--port (\d+)", step.command)
            assert url is not None, "a server started in the background names its port"
            script += [
                'echo "$!" >> background.pids',
                # wait (with a deadline) for the server's readiness: a user sees its first line
                f'"{sys.executable}" -c "{_WAIT_READY}" {url.group(1)}',
            ]
        script.append("(exit $__rc)")
    # what the session left in the background stops by its PID (it holds our stdout)
    script.append("[ -f background.pids ] && kill $(cat background.pids) && wait")
    result = subprocess.run(
        ["bash", "-c", "\n".join(script)],
        cwd=directory,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # as a terminal shows them
        text=True,
        timeout=240,
        check=False,
    )
    printed = _by_step(result.stdout, len(steps))
    for i, step in enumerate(steps):
        output, rc = printed[i]
        if step.command == "echo $?":
            continue
        shown_rc = (
            steps[i + 1].output[0]
            if i + 1 < len(steps) and steps[i + 1].command == "echo $?"
            else "0"
        )
        assert rc == shown_rc, (
            f"$ {step.command}\nexit {rc}, README shows {shown_rc}\n" + "\n".join(output)
        )
        actual = [normalise(line) for line in output]
        position = 0
        for line in step.output:
            if not line.strip():
                continue
            want = normalise(line)
            try:
                position = actual.index(want, position) + 1
            except ValueError:
                pytest.fail(
                    f"$ {step.command}\nREADME shows {line!r}; printed:\n" + "\n".join(output)
                )


_WAIT_READY = (
    "import socket, sys, time, urllib.request\n"
    "deadline = time.monotonic() + 30\n"
    "while time.monotonic() < deadline:\n"
    "    try:\n"
    "        url = f'http://127.0.0.1:{sys.argv[1]}/failover/status'\n"
    "        urllib.request.urlopen(url, timeout=2)\n"
    "        break\n"
    "    except Exception:\n"
    "        time.sleep(0.05)\n"
)


def _by_step(stdout: str, count: int) -> list[tuple[list[str], str]]:
    found: list[tuple[list[str], str]] = [([], "?") for _ in range(count)]
    current = -1
    for line in stdout.splitlines():
        if line.startswith("@@step "):
            current = int(line.split()[1])
        elif line.startswith("@@rc ") and current >= 0:
            found[current] = (found[current][0], line.split()[1])
        elif current >= 0:
            found[current][0].append(line)
    return found
