"""Patroni's members as probe results, run through :func:`~pgfailover.transition.transition`.

A manager that follows Patroni (:mod:`pgfailover.topology.patroni`) learns
what each member is from Patroni, not from probes: its REST API's
``GET /cluster``, or the member and leader keys Patroni keeps in etcd. This
module turns either into one :class:`~pgfailover.probe.ProbeResult` per
node and runs them through the same :func:`transition` a probing manager's
rounds use, so the state machine, routing, events and metrics all apply
unchanged (:class:`PatroniReader`). The thresholds are 1: Patroni applied
its own patience (``ttl``, ``retry_timeout``) before it says a member is
down or another one leads, and one read of that decides.

Members map to nodes by ``host:port``: Patroni's
``postgresql.connect_address`` must be the address the manager's DSN gives.
A node with no member is down (Patroni dropped the member's key: the host
has been gone for its TTL); a member with no node is ignored, unless it is
the leader (then the source is refused: writes would wait for good).

Which node takes writes: the member holding the leader key (``role``
``leader``; a standby cluster's ``standby_leader`` is a standby) with
PostgreSQL ``running``. Patroni takes the key *before* it promotes, and
publishes the new timeline only at its next loop (up to ``loop_wait``, 10 s
by default), so a leader takes writes once its promotion is seen done:

- the leader that took writes at the previous read still does;
- a leader whose timeline is newer than every other member's and than the
  last leader's has been promoted (Patroni says so);
- otherwise it is *pending*, and the ``confirm`` callback
  (:class:`~pgfailover.topology.confirm.Confirmer`: one query on that
  server, made only while it is pending) decides: out of recovery on a
  newer timeline than the last leader's (or on the same one, for that same
  leader taking its key back).

Until then the pending leader is a standby and writes wait (the state is
``FAILOVER_IN_PROGRESS``) rather than fail on a server still in recovery;
a manager that starts meanwhile asks too. The old leader is no longer the
leader once Patroni moved the key: at the next read it takes no write.

The confirmation's connection is opened ahead, to the member likely to lead
next (:func:`next_leader`): a switchover's candidate, named in Patroni's
``failover`` key (etcd only; a scheduled one is not prepared for), or,
while no leader runs, the replica furthest ahead, which is the one Patroni
promotes unless tags say otherwise (a wrong guess costs one idle
connection until a leader is known).
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

__all__ = [
    "Confirm",
    "Member",
    "PatroniReader",
    "announced_candidate",
    "from_cluster",
    "from_keys",
    "next_leader",
    "parse_lsn",
]

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
        is_leader = name == leader and data.get("role") != "standby_leader"
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


def announced_candidate(keys: Mapping[str, str], prefix: str) -> str | None:
    """The member a switchover under way names in ``<prefix>failover``, if any.

    Patroni writes ``{"leader": ..., "member": ...}`` there (or, in its
    legacy form, ``"leader:member"``) when a switchover or failover is asked
    for, and clears it once done. A scheduled one (``scheduled_at``) may be hours away: it
    names nobody yet.
    """
    value = keys.get(f"{prefix}failover")
    if not value:
        return None
    try:
        data: Any = json.loads(value)
    except ValueError:
        _, _, member = value.partition(":")
        return member or None
    if not isinstance(data, dict) or data.get("scheduled_at"):
        return None
    named = data.get("member")
    return named if isinstance(named, str) and named else None


def next_leader(
    members: Sequence[Member], announced: str | None, leader: Member | None
) -> Member | None:
    """The member likely to take the leader key next, to open a connection to ahead.

    The switchover's candidate (``announced``) if it is up; else, while no
    leader runs (``leader`` None), the running replica furthest ahead (by
    LSN, else by least lag; ties by name); else nobody.
    """
    replicas = [m for m in members if not m.leader and m.state in UP_STATES]
    named = next((m for m in replicas if m.name == announced), None)
    if named is not None or leader is not None:
        return named
    return min(
        replicas,
        key=lambda m: (-(m.lsn or 0), m.lag if m.lag is not None else 0, m.name),
        default=None,
    )


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

    def prepare(self, node: str) -> None:
        """``node`` is likely to lead next: open a connection to it ahead."""
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
        # Patroni applied its own patience (ttl, retry_timeout) before it says a
        # member is down or another leads: one read decides, no thresholds on top.
        self._trusted = dataclasses.replace(cfg, unhealthy_threshold=1, healthy_threshold=1)
        self._cluster = cluster
        self._by_address = {node_address(n.dsn): n.name for n in nodes}
        self._prev = initial_snapshot(nodes)
        self._seq = 0
        self._leader: str | None = None
        self._leader_timeline: int | None = None
        self.pending: str | None = None  # a new leader whose promotion is not confirmed yet
        self._expected: str | None = None  # the node a connection was opened to ahead

    def release(self) -> None:
        """The source stopped reading: let go of a pending confirmation's connection."""
        self._settle(None)

    def update(
        self, members: Sequence[Member], now: float, took: float, announced: str | None = None
    ) -> Update:
        """The snapshot after this read of ``members`` (``took``: seconds the read took;
        ``announced``: the member a switchover under way names, see
        :func:`announced_candidate`).

        Raises:
            SourceMismatch: no member is one of this manager's nodes, or the
                leader is none of them.
        """
        results = self.results(members, now, took, announced)
        snap, _ = transition(self._prev, results, now, self._trusted)
        self._prev = snap
        self._seq += 1
        return Update(self._cluster, self._seq, now, snap)

    def results(
        self, members: Sequence[Member], now: float, took: float, announced: str | None = None
    ) -> dict[str, ProbeResult]:
        """One probe result per node, from what Patroni says of its member.

        Raises:
            SourceMismatch: no member is one of this manager's nodes, or the
                leader is none of them (writes would wait for good).
        """
        mine = {m.address: m for m in members if m.address in self._by_address}
        own = ", ".join(sorted(self._by_address))
        if not members:
            raise SourceMismatch(
                "Patroni reports no members (in etcd: the wrong namespace or scope, or "
                "Patroni's etcd (v2) rather than etcd3 keys)"
            )
        if not mine:
            shown = ", ".join(f"{m.name} {m.address}" for m in members[:6])
            raise SourceMismatch(
                f"no Patroni member is one of this manager's nodes (members: {shown}; "
                f"nodes: {own}); Patroni's connect_address must match the DSNs"
            )
        stray = next((m for m in members if m.leader and m.address not in mine), None)
        if stray is not None:
            raise SourceMismatch(
                f"Patroni's leader {stray.name} at {stray.address} is none of this manager's "
                f"nodes ({own}); Patroni's connect_address must match the DSNs"
            )
        writable = self._writable(list(mine.values()), announced)
        positions = _positions(list(mine.values()))
        results = {}
        for address, name in self._by_address.items():
            m = mine.get(address)
            if m is None or m.state not in UP_STATES:
                error = "not a Patroni member" if m is None else f"Patroni: {m.state}"
                results[name] = ProbeResult(name, False, now, took, error=error)
                continue
            wal, receive, replay = positions.get(m.name, (None, None, None))
            if m.name == writable:
                results[name] = ProbeResult(
                    name, True, now, took, in_recovery=False, read_only=False,
                    timeline=max(m.timeline or 0, self._leader_timeline or 0) or None,
                    wal_lsn=wal,
                )  # fmt: skip
            else:
                streaming = m.state == "streaming"
                results[name] = ProbeResult(
                    name, True, now, took, in_recovery=True, read_only=True,
                    timeline=m.timeline, wal_lsn=wal, receive_lsn=receive, replay_lsn=replay,
                    receiver_visible=streaming,
                    receiver_status="streaming" if streaming else None,
                )  # fmt: skip
        return results

    def _writable(self, members: Sequence[Member], announced: str | None) -> str | None:
        """The leader, once its promotion is seen done (the module's docstring)."""
        leader = next((m for m in members if m.leader and m.state == "running"), None)
        if leader is None or leader.timeline is None:  # no timeline: demoting, or not up yet
            self._expect(next_leader(members, announced, None))
            return None
        if leader.name == self._leader and self.pending is None:  # the leader it was
            self._leader_timeline = max(self._leader_timeline or 0, leader.timeline)
            self._expect(next_leader(members, announced, leader))
            return leader.name
        others = max((m.timeline or 0 for m in members if m is not leader), default=0)
        if leader.timeline > max(others, self._leader_timeline or 0):
            self._settle(leader.name, leader.timeline)  # Patroni shows it promoted
            return leader.name
        if self._confirm is None:  # nothing to ask: a leader first seen is trusted
            if self._leader is None:
                self._settle(leader.name, leader.timeline)
                return leader.name
            self.pending = leader.name
            return None
        self.pending = leader.name
        if self._node(leader) != self._expected:  # its check takes no other's connection
            self._expected = None
        confirmed = self._confirm.timeline(self._node(leader))
        floor = self._leader_timeline or 0
        if (
            confirmed is None
            or confirmed < floor
            or (confirmed == floor and leader.name != self._leader)
        ):
            return None  # took the key, still promoting (or not answering)
        self._settle(leader.name, confirmed)
        return leader.name

    def _node(self, member: Member) -> str:
        """The manager's name for ``member`` (Patroni's names need not be the nodes')."""
        return self._by_address[member.address or ""]

    def _expect(self, member: Member | None) -> None:
        """Nothing is pending: keep a connection open to ``member``, likely to lead
        next, or to nobody."""
        node = None if member is None else self._node(member)
        had = self.pending is not None or self._expected is not None
        self.pending = None
        if self._confirm is None or (node == self._expected and (node is not None or not had)):
            return
        self._expected = node
        if node is None:
            self._confirm.done()
        else:
            self._confirm.prepare(node)

    def _settle(self, leader: str | None, timeline: int | None = None) -> None:
        """A leader seen writable (or none): nothing pending, the connection let go."""
        if leader is not None:
            self._leader, self._leader_timeline = leader, timeline
        if (self.pending is not None or self._expected is not None) and self._confirm is not None:
            self._confirm.done()
        self.pending = None
        self._expected = None


def _positions(members: Sequence[Member]) -> dict[str, tuple[int | None, int | None, int | None]]:
    """Each member's WAL, receive and replay positions, for lag.

    Patroni 4.1 and later give replicas' LSNs; older ones only their ``lag``
    behind the leader. Then the positions are made up from the lags (the
    leader at a fixed base, each replica ``lag`` bytes below it): lag is
    all a manager that follows uses them for.
    """
    replicas = [m for m in members if not m.leader]
    known = [m for m in replicas if m.lsn is not None]
    if known:
        newest = max((m.lsn or 0) + (m.lag or 0) for m in known)
        out = {m.name: (m.lsn, m.receive_lsn or m.lsn, m.replay_lsn or m.lsn) for m in replicas}
        for m in members:
            if m.leader:
                out[m.name] = (m.lsn or newest, None, None)
        return out
    base = 1 << 40
    out = {m.name: (base, None, None) for m in members if m.leader}
    for m in replicas:
        if m.lag is not None:
            out[m.name] = (base - m.lag, base - m.lag, base - m.lag)
    return out
