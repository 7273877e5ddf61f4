"""Patroni's members as probe results, run through :func:`~pgfailover.transition.transition`.

A manager that follows Patroni (:mod:`pgfailover.topology.patroni`) learns
what each member is from Patroni, not from probes: its REST API's
``GET /cluster``, or the member and leader keys Patroni keeps in etcd. This
module turns either into one :class:`~pgfailover.probe.ProbeResult` per
node and runs them through the same :func:`transition` a probing manager's
rounds use, so the state machine, the thresholds, routing, events and
metrics all apply unchanged (:class:`PatroniReader`).

Members map to nodes by ``host:port``: Patroni's
``postgresql.connect_address`` must be the address the manager's DSN gives.
A node with no member is down (Patroni dropped the member's key: the host
has been gone for its TTL); a member with no node is ignored.

Which node takes writes: the member holding the leader key (``role``
``leader``) with PostgreSQL ``running``. Patroni takes the key *before* it
promotes, so a leader new to this reader counts as writable only once its
promotion is done: once it reports a timeline newer than its predecessor's,
or, sooner, once the ``confirm`` callback (one query on that server, made
only while a new leader is pending) finds it out of recovery. Patroni
publishes the new timeline at its next loop, up to ``loop_wait`` (10 s by
default) after the promotion; the query learns of it within one poll. Until
then the new leader is a standby and writes wait (the state is
``FAILOVER_IN_PROGRESS``) rather than fail on a server still in recovery.
The old leader, demoted or gone, is no longer the leader, so no write goes
to it after Patroni moved the key.
"""

from __future__ import annotations

import dataclasses
import json
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pgfailover.config import FailoverConfig, Node
from pgfailover.dsn import node_address
from pgfailover.probe import ProbeResult
from pgfailover.topology.replay import SourceMismatch
from pgfailover.transition import initial_snapshot, transition
from pgfailover.wire import Update

__all__ = ["Confirm", "Member", "PatroniReader", "from_cluster", "from_keys", "parse_lsn"]

UP_STATES = frozenset({"running", "streaming", "in archive recovery"})
"""Member states with PostgreSQL up and answering (the others: stopped, starting,
stopping, restarting, crashed, creating replica, ...)."""


@dataclass(frozen=True)
class Member:
    """What Patroni says of one member, in one form for both of its sources."""

    name: str
    address: str | None  # host:port of its PostgreSQL (connect_address)
    leader: bool  # holds the leader key (a standby leader is not a leader here)
    state: str
    timeline: int | None = None
    lsn: int | None = None  # a replica's WAL position (its replay or receive LSN)
    receive_lsn: int | None = None
    replay_lsn: int | None = None
    lag: int | None = None  # bytes behind the leader


def parse_lsn(value: object) -> int | None:
    """An LSN as Patroni writes it (``"0/3000060"``, or a number of bytes); None if unknown."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str) and "/" in value:
        high, _, low = value.partition("/")
        try:
            return (int(high, 16) << 32) + int(low, 16)
        except ValueError:
            return None
    return None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def from_cluster(data: object) -> list[Member]:
    """The members of a ``GET /cluster`` answer.

    Raises:
        ValueError: not a Patroni ``/cluster`` document (one line why).
    """
    if not isinstance(data, dict) or not isinstance(data.get("members"), list):
        raise ValueError("not a Patroni /cluster answer (no members list)")
    members = []
    for raw in data["members"]:
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise ValueError("a member without a name in Patroni's /cluster answer")
        host, port = raw.get("host"), _int(raw.get("port"))
        members.append(
            Member(
                name=raw["name"],
                address=f"{host}:{port or 5432}" if isinstance(host, str) and host else None,
                leader=raw.get("role") == "leader",
                state=str(raw.get("state") or "unknown"),
                timeline=_int(raw.get("timeline")),
                lsn=parse_lsn(raw.get("lsn")),
                receive_lsn=parse_lsn(raw.get("receive_lsn")),
                replay_lsn=parse_lsn(raw.get("replay_lsn")),
                lag=_int(raw.get("lag")),
            )
        )
    return members


def from_keys(keys: Mapping[str, str], prefix: str) -> list[Member]:
    """The members in Patroni's etcd keys under ``prefix`` (``/service/<scope>/``).

    ``<prefix>leader`` holds the leader's name; ``<prefix>members/<name>`` a
    member's JSON (``conn_url``, ``state``, ``role``, ``timeline``,
    ``xlog_location``, ``replication_state``). A member key that is not JSON
    is skipped (a member writing it as we read is caught at the next read).
    """
    leader = keys.get(f"{prefix}leader")
    members = []
    cluster_lsn = 0
    for key, value in sorted(keys.items()):
        if not key.startswith(f"{prefix}members/"):
            continue
        name = key[len(f"{prefix}members/") :]
        try:
            data: Any = json.loads(value)
        except ValueError:
            continue
        if not isinstance(data, dict):
            continue
        is_leader = name == leader
        state = (None if is_leader else data.get("replication_state")) or data.get("state")
        members.append(
            Member(
                name=name,
                address=_address(data.get("conn_url")),
                leader=is_leader,
                state=str(state or "unknown"),
                timeline=_int(data.get("timeline")),
                lsn=_int(data.get("xlog_location")),
                receive_lsn=_int(data.get("receive_lsn")),
                replay_lsn=_int(data.get("replay_lsn")),
            )
        )
        cluster_lsn = max(cluster_lsn, _int(data.get("xlog_location")) or 0)
    if cluster_lsn:  # the leader's position is the newest; lag as /cluster gives it
        members = [
            m
            if m.leader or m.lsn is None
            else dataclasses.replace(m, lag=max(0, cluster_lsn - m.lsn))
            for m in members
        ]
    return members


def _address(conn_url: object) -> str | None:
    if not isinstance(conn_url, str):
        return None
    try:
        parts = urllib.parse.urlsplit(conn_url)
        return f"{parts.hostname}:{parts.port or 5432}" if parts.hostname else None
    except ValueError:
        return None


class Confirm(Protocol):
    """Asks a server whether it takes writes (:class:`~pgfailover.topology.confirm.Confirmer`)."""

    def timeline(self, node: str) -> int | None:
        """``node``'s timeline if it takes writes now, else ``None``."""
        ...

    def done(self) -> None:
        """Nothing is pending any more: let go of the connection."""
        ...


class PatroniReader:
    """Patroni's view of the members, as this manager's snapshots (one per read).

    It keeps the previous snapshot (so thresholds and timelines carry over
    as in a probing manager's rounds) and the leader it last saw writable
    with its timeline (the promotion rule in the module's docstring).

    Thread safety: used by one thread (the source's).
    """

    def __init__(
        self,
        nodes: Sequence[Node],
        cfg: FailoverConfig,
        cluster: str,
        confirm: Confirm | None = None,
    ) -> None:
        self._confirm = confirm
        self._cfg = cfg
        self._cluster = cluster
        self._by_address = {node_address(n.dsn): n.name for n in nodes}
        self._prev = initial_snapshot(nodes)
        self._seq = 0
        self._leader: str | None = None
        self._leader_timeline: int | None = None
        self.pending: str | None = None  # a new leader whose promotion is not confirmed yet

    def release(self) -> None:
        """The source stopped reading: let go of a pending confirmation's connection."""
        self.pending = None
        if self._confirm is not None:
            self._confirm.done()

    def update(self, members: Sequence[Member], now: float, took: float) -> Update:
        """The snapshot after this read of ``members`` (``took``: seconds the read took).

        Raises:
            SourceMismatch: no member is one of this manager's nodes.
        """
        results = self.results(members, now, took)
        snap, _ = transition(self._prev, results, now, self._cfg)
        self._prev = snap
        self._seq += 1
        return Update(self._cluster, self._seq, now, snap)

    def results(
        self, members: Sequence[Member], now: float, took: float
    ) -> dict[str, ProbeResult]:
        """One probe result per node, from what Patroni says of its member."""
        mine = {m.address: m for m in members if m.address in self._by_address}
        if not mine:
            shown = ", ".join(f"{m.name} {m.address}" for m in members[:6]) or "none"
            own = ", ".join(sorted(self._by_address))
            raise SourceMismatch(
                f"no Patroni member is one of this manager's nodes (members: {shown}; "
                f"nodes: {own}); Patroni's connect_address must match the DSNs"
            )
        writable = self._writable(list(mine.values()))
        cluster_lsn = max(
            ((m.lsn or 0) + (m.lag or 0) for m in mine.values() if not m.leader), default=0
        )
        results = {}
        for address, name in self._by_address.items():
            m = mine.get(address)
            if m is None or m.state not in UP_STATES:
                error = "not a Patroni member" if m is None else f"Patroni: {m.state}"
                results[name] = ProbeResult(name, False, now, took, error=error)
            elif m.name == writable:
                results[name] = ProbeResult(
                    name, True, now, took, in_recovery=False, read_only=False,
                    timeline=max(m.timeline or 0, self._leader_timeline or 0) or None,
                    wal_lsn=m.lsn or cluster_lsn or None,
                )  # fmt: skip
            else:
                streaming = m.state == "streaming"
                results[name] = ProbeResult(
                    name, True, now, took, in_recovery=True, read_only=True,
                    timeline=m.timeline, wal_lsn=m.lsn, receive_lsn=m.receive_lsn or m.lsn,
                    replay_lsn=m.replay_lsn or m.lsn, receiver_visible=streaming,
                    receiver_status="streaming" if streaming else None,
                )  # fmt: skip
        return results

    def _writable(self, members: Sequence[Member]) -> str | None:
        """The leader, once its promotion is done (see the module's docstring)."""
        leader = next((m for m in members if m.leader and m.state == "running"), None)
        if leader is None or leader.timeline is None:  # no timeline: demoting, or not up yet
            if self.pending is not None and self._confirm is not None:
                self._confirm.done()
            self.pending = None
            return None
        if leader.name == self._leader or self._leader is None:
            self._leader = leader.name
            if leader.timeline is not None:
                self._leader_timeline = max(self._leader_timeline or 0, leader.timeline)
            return leader.name
        timeline = leader.timeline
        if self._leader_timeline is not None and timeline <= self._leader_timeline:
            confirmed = self._confirm.timeline(leader.name) if self._confirm is not None else None
            if confirmed is None or confirmed <= self._leader_timeline:
                self.pending = leader.name
                return None  # took the key, still promoting
            timeline = confirmed
        self._leader, self._leader_timeline, self.pending = leader.name, timeline, None
        if self._confirm is not None:
            self._confirm.done()
        return leader.name
