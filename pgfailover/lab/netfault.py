"""Network faults for the local lab: black holes, client-only partitions, full backlogs.

A killed server resets its connections and a paused one still completes TCP
handshakes in the kernel; neither looks like a host that vanished from the
network. This module makes that happen with iptables ``DROP`` rules on the
node's TCP port, so packets are lost without a reset:

- ``blackhole``: every TCP packet to or from the node's port, on every
  address, is dropped. New connections hang in the handshake; open ones
  (clients, and the WAL receivers of standbys streaming from the node) go
  silent until a timeout on the other side gives up.
- ``partition``: only packets to or from the node's port on the client
  address (:data:`~pgfailover.lab.base.CLIENT_HOST`) are dropped. Clients
  connected through that address lose the node; replication over the node's
  own address keeps streaming.
- ``backlog``: only the first packet of each new connection (SYN) to the
  node's port is dropped, as a kernel does when the server's listen backlog
  is full (a burst of new clients): new connections hang in the handshake,
  the open ones go on.

Loopback packets pass the OUTPUT chain on the way out and INPUT on the way in
(through ``lo``). For TCP a DROP in either chain is silent (the sender's
stack retransmits), both checked on this machine; the rules go into INPUT,
where a packet from a remote host would be lost too, and are inserted at the
top so no ACCEPT rule before them can let packets through.

Every rule carries ``-m comment --comment pgfailover-lab:<lab>:<node>:<fault>``
(``<lab>`` is the first 12 hex digits of the SHA-1 of the lab directory), so
a lab finds, reports and removes its own rules, and
:func:`remove_stale_rules` removes what a crashed run left behind: with
``keep=live_labs()``, only that, leaving the rules of labs whose servers
still run (another test session's, on the same machine). The argv
builders are pure functions; only :class:`NetFaults` and
:func:`remove_stale_rules` run iptables (which needs root).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, cast, get_args

from pgfailover.errors import LabError
from pgfailover.lab.base import CLIENT_HOST
from pgfailover.lab.proc import postmaster_pid

__all__ = [
    "CHAIN",
    "TAG_PREFIX",
    "Fault",
    "NetFaults",
    "TaggedRule",
    "delete_argv",
    "fault_tag",
    "insert_argv",
    "lab_id",
    "list_argv",
    "live_labs",
    "parse_tag",
    "remove_stale_rules",
    "rule_specs",
    "stale",
    "tagged_rules",
    "unavailable_reason",
]

logger = logging.getLogger(__name__)

Fault = Literal["blackhole", "partition", "backlog"]
FAULTS: Final[tuple[str, ...]] = get_args(Fault)

TAG_PREFIX: Final = "pgfailover-lab"
CHAIN: Final = "INPUT"
IPTABLES: Final = "iptables"
# Seconds iptables waits for the xtables lock held by another caller.
LOCK_WAIT: Final = "10"
_RUN_TIMEOUT: Final = 30.0
_MAX_COMMENT: Final = 256  # the comment match's limit
_INSTALL_HINT: Final = "install it (Debian/Ubuntu: apt-get install iptables)"


# -- pure parts: tags and argv -------------------------------------------


def lab_id(directory: Path | str) -> str:
    """A short stable name for the lab in ``directory``: 12 hex digits of SHA-1."""
    return hashlib.sha1(str(directory).encode(), usedforsecurity=False).hexdigest()[:12]


def fault_tag(lab: str, node: str, fault: Fault) -> str:
    """The comment that marks one fault's rules: ``pgfailover-lab:LAB:NODE:FAULT``."""
    if fault not in FAULTS:
        raise LabError(f"unknown network fault {fault!r} (known: {', '.join(FAULTS)})")
    tag = f"{TAG_PREFIX}:{lab}:{node}:{fault}"
    if len(tag) > _MAX_COMMENT or any(c.isspace() or c in "\"'" for c in tag):
        raise LabError(f"cannot tag iptables rules with {tag!r}: node or lab name unsuitable")
    return tag


def parse_tag(tag: str) -> tuple[str, str, Fault] | None:
    """``(lab, node, fault)`` from a tag made by :func:`fault_tag`, else ``None``."""
    parts = tag.split(":")
    if len(parts) != 4 or parts[0] != TAG_PREFIX or parts[3] not in FAULTS:
        return None
    return parts[1], parts[2], cast("Fault", parts[3])


def rule_specs(
    fault: Fault, port: int, tag: str, client_host: str = CLIENT_HOST
) -> list[list[str]]:
    """The match-and-target part of each rule one fault needs (no chain, no command).

    Two rules per fault, one per direction: packets to the server's port and
    packets from it. ``partition`` restricts both to ``client_host``.
    ``backlog`` is one rule: new connections' SYNs to the port.
    """
    if not 0 < port < 65536:
        raise LabError(f"port must be between 1 and 65535, got {port}")
    target = ["-m", "comment", "--comment", tag, "-j", "DROP"]
    if fault == "blackhole":
        to_server = ["-p", "tcp", "--dport", str(port)]
        from_server = ["-p", "tcp", "--sport", str(port)]
    elif fault == "partition":
        to_server = ["-p", "tcp", "-d", client_host, "--dport", str(port)]
        from_server = ["-p", "tcp", "-s", client_host, "--sport", str(port)]
    elif fault == "backlog":
        return [["-p", "tcp", "--dport", str(port), "--syn", *target]]
    else:
        raise LabError(f"unknown network fault {fault!r} (known: {', '.join(FAULTS)})")
    return [to_server + target, from_server + target]


def insert_argv(spec: list[str], chain: str = CHAIN) -> list[str]:
    """``iptables`` argv that inserts one rule at the top of ``chain``."""
    return [IPTABLES, "-w", LOCK_WAIT, "-I", chain, *spec]


def delete_argv(spec: list[str], chain: str = CHAIN) -> list[str]:
    """``iptables`` argv that deletes the rule matching ``spec`` from ``chain``."""
    return [IPTABLES, "-w", LOCK_WAIT, "-D", chain, *spec]


def list_argv() -> list[str]:
    """``iptables`` argv that prints every rule of the filter table as ``-A ...`` lines."""
    return [IPTABLES, "-w", LOCK_WAIT, "-S"]


@dataclass(frozen=True)
class TaggedRule:
    """One rule from ``iptables -S`` whose comment starts with a prefix."""

    chain: str
    tag: str
    spec: tuple[str, ...]

    def delete_argv(self) -> list[str]:
        """``iptables`` argv that deletes exactly this rule."""
        return delete_argv(list(self.spec), self.chain)


def tagged_rules(listing: str, prefix: str) -> list[TaggedRule]:
    """The rules in ``iptables -S`` output whose comment starts with ``prefix``."""
    found = []
    for line in listing.splitlines():
        try:
            words = shlex.split(line)
        except ValueError:
            continue
        if len(words) < 3 or words[0] != "-A" or "--comment" not in words:
            continue
        at = words.index("--comment")
        tag = words[at + 1] if at + 1 < len(words) else ""
        if tag.startswith(prefix):
            found.append(TaggedRule(words[1], tag, tuple(words[2:])))
    return found


# -- running iptables ------------------------------------------------------


def _iptables_path() -> str | None:
    # Non-root shells often lack the sbin directories on PATH.
    path = os.environ.get("PATH", os.defpath) + ":/usr/sbin:/sbin"
    return shutil.which(IPTABLES, path=path)


def unavailable_reason() -> str | None:
    """Why network faults cannot work here (one line), or ``None`` when they can."""
    if _iptables_path() is None:
        return f"network faults need the iptables command, which is missing: {_INSTALL_HINT}"
    if os.geteuid() != 0:
        return "network faults change the firewall with iptables: run as root"
    return None


def _run(argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    reason = unavailable_reason()
    if reason:
        raise LabError(reason)
    binary = _iptables_path()
    assert binary is not None  # noqa: S101 - unavailable_reason checked it
    try:
        result = subprocess.run(
            [binary, *argv[1:]], capture_output=True, text=True, timeout=_RUN_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        raise LabError(f"{shlex.join(argv)} did not return in {_RUN_TIMEOUT:.0f}s") from None
    except OSError as exc:
        raise LabError(f"cannot run {binary}: {exc}") from None
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise LabError(f"{shlex.join(argv)} failed: {detail[-1] if detail else result.returncode}")
    return result


def _list(prefix: str) -> list[TaggedRule]:
    return tagged_rules(_run(list_argv()).stdout, prefix)


def stale(rules: Sequence[TaggedRule], keep: Collection[str]) -> list[TaggedRule]:
    """The rules that belong to no lab in ``keep`` (a tag naming no lab is stale too)."""
    out = []
    for rule in rules:
        parsed = parse_tag(rule.tag)
        if parsed is None or parsed[0] not in keep:
            out.append(rule)
    return out


def live_labs(parent: Path | str | None = None) -> frozenset[str]:
    """The ids (:func:`lab_id`) of the labs in ``parent`` with a server running.

    ``parent`` defaults to the temporary directory, where
    :meth:`~pgfailover.lab.LocalLab.create` makes its ``pgfl-*`` directories
    (a lab given a directory elsewhere is not found). A lab whose servers are
    all gone is a crashed run's: its rules are stale, and a later lab that
    gets one of its ports must not inherit its faults.
    """
    where = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    found = set()
    for base in where.glob("pgfl-*"):
        with contextlib.suppress(OSError):
            if any(d.is_dir() and postmaster_pid(d) is not None for d in base.iterdir()):
                found.add(lab_id(base))
    return frozenset(found)


def _delete(prefix: str, keep: Collection[str] = ()) -> int:
    """Delete every rule whose comment starts with ``prefix``, except those of the labs
    in ``keep``; how many went."""
    rules = stale(_list(prefix), keep)
    for rule in rules:
        # check=False: a concurrent heal may have removed it already.
        _run(rule.delete_argv(), check=False)
    left = stale(_list(prefix), keep)
    if left:
        raise LabError(
            f"could not remove {len(left)} iptables rule(s) tagged {left[0].tag!r}: "
            "remove them with 'iptables -D'"
        )
    return len(rules)


def remove_stale_rules(prefix: str = TAG_PREFIX, *, keep: Collection[str] = ()) -> int:
    """Delete every iptables rule whose comment starts with ``prefix``, except the rules
    of the labs in ``keep``.

    For cleaning up after a crashed run. With ``keep=live_labs()`` it leaves
    the labs whose servers run, such as another test session's on this
    machine; with the default it removes the rules of every lab, including
    labs other processes are using right now. Returns how many rules it
    removed.
    """
    removed = _delete(prefix, keep)
    if removed:
        logger.warning("lab: removed %d stale iptables rule(s) tagged %s*", removed, prefix)
    return removed


class NetFaults:
    """The network faults of one lab, kept as tagged iptables rules.

    Nothing is cached: every call reads or changes the firewall, so any
    process (a test, the CLI) sees and heals what another one set. Each node
    has at most one fault; applying one replaces the node's previous fault.

    Thread safety: calls may run concurrently (iptables serialises changes
    with the xtables lock); concurrent changes to one node race, and the
    last one wins.
    """

    def __init__(self, lab: str, client_host: str = CLIENT_HOST) -> None:
        self.lab = lab
        self.client_host = client_host

    def _prefix(self, node: str | None = None) -> str:
        return f"{TAG_PREFIX}:{self.lab}:" + (f"{node}:" if node else "")

    def apply(self, node: str, port: int, fault: Fault) -> None:
        """Put ``fault`` on the node listening on ``port``; effective on return."""
        tag = fault_tag(self.lab, node, fault)
        specs = rule_specs(fault, port, tag, self.client_host)
        self._delete_quietly(node)
        try:
            for spec in specs:
                _run(insert_argv(spec))
        except BaseException:
            self._delete_quietly(node)
            raise
        logger.info("lab: %s %s (port %d, rules tagged %s)", node, fault, port, tag)

    def _delete_quietly(self, node: str) -> None:
        removed = _delete(self._prefix(node))
        if removed:
            logger.debug("lab: %s: %d earlier fault rule(s) removed", node, removed)

    def heal(self, node: str | None = None) -> int:
        """Remove one node's fault rules, or all of this lab's; idempotent.

        Returns how many rules were removed.
        """
        removed = _delete(self._prefix(node))
        if removed:
            logger.info("lab: %s healed (%d rule(s) removed)", node or "every node", removed)
        return removed

    def active(self) -> dict[str, Fault]:
        """The fault in force on each node that has one, read from iptables."""
        found: dict[str, Fault] = {}
        for rule in _list(self._prefix()):
            parsed = parse_tag(rule.tag)
            if parsed is not None:
                _, node, fault = parsed
                found[node] = fault
        return found

    def __repr__(self) -> str:
        return f"<NetFaults {self._prefix()}*>"
