"""One data directory of the local lab and the processes serving it.

A :class:`LocalNode` starts, stops, kills, pauses and resumes one PostgreSQL
server by PID, and edits its ``postgresql.auto.conf`` while it is down.
Its own settings (port, listen addresses, cluster name) live in a marked block
of its ``postgresql.conf``, rewritten before every start: ``pg_basebackup``
copies the primary's file, and a plain ``pg_ctl start`` (what ``pgfailover
rejoin`` runs, as on any host) must still start the node where it belongs.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path

from pgfailover.errors import LabError
from pgfailover.lab.base import CLIENT_HOST, NodeInfo, StopMode
from pgfailover.lab.binaries import PgBinaries
from pgfailover.lab.proc import (
    RunAs,
    children_of,
    freeze_server,
    kill_server,
    postmaster_pid,
    process_letter,
    processes_in,
    signal_pids,
    started,
    survivors,
    wait_gone,
    wait_stopped,
)
from pgfailover.rejoin import set_auto_conf
from pgfailover.syncrep import RECORD_SETTING

_OWN_START = "# pgfailover lab: this node's own settings (rewritten before each start)"
_OWN_END = "# end of this node's own settings"

__all__ = ["LocalNode"]

logger = logging.getLogger(__name__)

_START_TIMEOUT = 60


class LocalNode:
    """One server of the local lab.

    Thread safety: not thread-safe; the lab drives one action at a time.
    """

    def __init__(self, info: NodeInfo, datadir: Path, bins: PgBinaries, run_as: RunAs) -> None:
        self.info = info
        self.datadir = datadir
        self.logfile = datadir.parent / f"{info.name}.log"
        self._bins = bins
        self._run_as = run_as

    @property
    def name(self) -> str:
        """The node's name (also its ``application_name`` and slot name)."""
        return self.info.name

    def __repr__(self) -> str:
        return f"<LocalNode {self.name} port={self.info.port} datadir={self.datadir}>"

    # -- process state -------------------------------------------------

    def pid(self) -> int | None:
        """The verified postmaster PID, or ``None`` when not running."""
        return postmaster_pid(self.datadir)

    def process_state(self) -> str:
        """``running``, ``paused`` (SIGSTOPped) or ``stopped``."""
        pid = self.pid()
        if pid is None:
            return "stopped"
        try:
            raw = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return "stopped"
        state = raw[raw.rindex(")") + 2 :].split()[0]
        return "paused" if state in ("T", "t") else "running"

    # -- actions -------------------------------------------------------

    @property
    def listen_addresses(self) -> str:
        """The node's own host (replication, the lab) and the client address."""
        return ",".join(dict.fromkeys([self.info.host, CLIENT_HOST]))

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        if self.process_state() != "stopped":
            return
        self._clear_stale_lock()
        self.write_own_settings()
        self._run_as.run(
            [
                self._bins.path("pg_ctl"),
                "start",
                "-D",
                str(self.datadir),
                "-l",
                str(self.logfile),
                "-w",
                "-t",
                str(_START_TIMEOUT),
            ],
            timeout=_START_TIMEOUT + 10,
        )
        logger.info("lab: %s started on port %d", self.name, self.info.port)

    def stop(self, mode: StopMode = "fast", wait: int = 30) -> None:
        """Stop with ``pg_ctl stop``, waiting up to ``wait`` seconds; then :meth:`kill`."""
        state = self.process_state()
        if state == "stopped":
            return
        if state == "paused":
            self.resume()
        result = self._run_as.run(
            [
                self._bins.path("pg_ctl"),
                "stop",
                "-D",
                str(self.datadir),
                "-m",
                mode,
                "-w",
                "-t",
                str(wait),
            ],
            timeout=wait + 10,
            check=False,
        )
        if result.returncode != 0:
            logger.warning(
                "lab: %s did not stop (%s); killing it", self.name, result.stderr.strip()
            )
            self.kill()
        logger.info("lab: %s stopped (%s)", self.name, mode)

    def kill(self) -> None:
        """Node loss: the postmaster and every child die by SIGKILL at one moment
        (:func:`~pgfailover.lab.proc.kill_server`), then any leftover process of the
        data directory. Each backend leads its own session, so a process-group kill
        would miss them.
        """
        killed = kill_server(self.datadir)
        # Start times, for wait_gone, taken after the kill (it must not wait): a PID
        # is reused only once the whole PID space has been cycled through.
        births = {p: started(p) for p in killed}
        leftovers = [p for p in processes_in(self.datadir) if p not in births]
        births.update({p: started(p) for p in leftovers})
        signal_pids(leftovers, signal.SIGKILL)
        victims = [*killed, *leftovers]
        if not victims:
            return
        # Hundreds of backends on busy CPUs can take more than 10 s to finish dying
        # (seen: some in uninterruptible sleep, "D", for that long after SIGKILL).
        if not wait_gone(victims, 30.0, births):
            left = ", ".join(
                f"{p} ({process_letter(p) or '?'})" for p in survivors(victims, births)[:20]
            )
            raise LabError(f"{self.name}: processes survived SIGKILL: {left}")
        self._clear_stale_lock()
        logger.info("lab: %s killed (%d processes)", self.name, len(victims))

    def pause(self) -> None:
        """SIGSTOP the postmaster, then every child: the server hangs."""
        frozen = freeze_server(self.datadir)
        if not frozen:
            raise LabError(f"{self.name} is not running: nothing to pause")
        if not wait_stopped(frozen, stopped=True):
            states = {p: process_letter(p) for p in frozen}
            running = {p: s for p, s in states.items() if s not in (None, "T", "t", "Z", "X")}
            raise LabError(f"{self.name}: processes did not stop after SIGSTOP: {running}")
        logger.info("lab: %s paused", self.name)

    def resume(self) -> None:
        """SIGCONT every child, then the postmaster."""
        pid = self.pid()
        if pid is None:
            raise LabError(f"{self.name} is not running: nothing to resume")
        children = children_of(pid)
        signal_pids(children, signal.SIGCONT)
        signal_pids([pid], signal.SIGCONT)
        wait_stopped([pid, *children], stopped=False)
        logger.info("lab: %s resumed", self.name)

    def leftovers(self) -> list[int]:
        """Live processes still working in this node's data directory."""
        return processes_in(self.datadir)

    def _clear_stale_lock(self) -> None:
        """Remove the lock file of a postmaster that is dead or a zombie.

        After SIGKILL the postmaster can stay a zombie for a second or two
        until its parent reaps it, and PostgreSQL (``pg_ctl start``, or the
        single-user crash recovery ``pg_rewind`` runs) refuses to start while
        ``kill(pid, 0)`` succeeds on the PID in ``postmaster.pid``. A zombie
        is dead, and so is every child we killed, so its lock is stale and
        removing it beats waiting on a reaper we do not control.
        """
        lock = self.datadir / "postmaster.pid"
        if not lock.exists() or postmaster_pid(self.datadir) is not None:
            return
        lock.unlink(missing_ok=True)

    # -- configuration -------------------------------------------------

    def set_auto_conf(self, **settings: str | None) -> None:
        """Set (or, with ``None``, remove) keys in ``postgresql.auto.conf``.

        Only for a stopped server: a running one is changed with
        ``ALTER SYSTEM`` instead.
        """
        set_auto_conf(self.datadir, **settings)
        self._run_as.chown(self.datadir / "postgresql.auto.conf")

    def write_own_settings(self) -> None:
        """(Re)write this node's block of ``postgresql.conf``; idempotent.

        Later lines win in PostgreSQL's configuration files, so the block at
        the end overrides whatever a copy from another node brought along.
        """
        conf = self.datadir / "postgresql.conf"
        lines = conf.read_text().splitlines()
        if _OWN_START in lines:
            start = lines.index(_OWN_START)
            end = lines.index(_OWN_END, start) if _OWN_END in lines[start:] else start
            del lines[start : end + 1]
        lines += [
            _OWN_START,
            f"port = {self.info.port}",
            f"listen_addresses = '{self.listen_addresses}'",
            f"cluster_name = '{self.name}'",
            _OWN_END,
        ]
        conf.write_text("\n".join(lines) + "\n")  # in place: owner and mode kept

    def make_standby(self, upstream: NodeInfo) -> None:
        """Configure this (stopped) data directory to stream from ``upstream``."""
        self.set_auto_conf(
            primary_conninfo=upstream_conninfo(upstream, self.name),
            primary_slot_name=self.name,
            synchronous_standby_names=None,
            **{RECORD_SETTING: None},
        )
        signal_file = self.datadir / "standby.signal"
        signal_file.touch()
        self._run_as.chown(signal_file)


def upstream_conninfo(upstream: NodeInfo, application_name: str) -> str:
    """The ``primary_conninfo`` a standby named ``application_name`` uses."""
    return (
        f"host={upstream.host} port={upstream.port} user=postgres "
        f"application_name={application_name} connect_timeout=2"
    )
