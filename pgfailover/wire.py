"""The cluster's snapshot on the wire: what an arbiter sends the managers that follow it.

A manager that follows an arbiter (``pgfailover serve``) instead of probing
every node itself must route exactly as if its own round had produced the
snapshot: the same roles, timelines, positions, read blocks and failover
bookkeeping. The status report
(:mod:`pgfailover.report`) is for people and drops much of that, so the
wire carries the :class:`~pgfailover.model.Snapshot` itself, whole, as
JSON (msgspec, which the configuration already uses, encodes and checks
the dataclasses without a schema written twice).

An :class:`Update` wraps it with the format version, the cluster's name and
a sequence number, so that a follower can refuse another cluster's or a
newer format's snapshot, and notice one it missed. Decoding is strict
about types and lenient about fields a newer arbiter adds (they are
ignored), so an arbiter can be upgraded before its followers within one
format version.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgspec

from pgfailover.errors import PgFailoverError
from pgfailover.model import Snapshot

__all__ = [
    "FORMAT",
    "HEARTBEAT",
    "Update",
    "WireError",
    "decode",
    "encode",
    "routing_key",
    "shape",
]

FORMAT = 1
"""The wire format's version: raised when a change would mislead an older follower."""

HEARTBEAT = 0.25
"""Seconds between an arbiter's heartbeats while no snapshot is due (:mod:`pgfailover.stream`)."""


class WireError(PgFailoverError, ValueError):
    """A message that is not a snapshot update this version can use (one line, why)."""


@dataclass(frozen=True)
class Update:
    """One snapshot as an arbiter published it.

    ``seq`` grows by one with every snapshot the arbiter publishes (a gap:
    the follower missed one); ``sent_at`` is the arbiter's wall clock;
    ``held``: the arbiter holds writes (a switchover moves the primary), so
    followers hold theirs too.
    """

    cluster: str
    seq: int
    sent_at: float
    snapshot: Snapshot
    held: bool = False
    format: int = FORMAT


def routing_key(snap: Snapshot, held: bool) -> tuple[Any, ...]:
    """What a follower routes on in ``snap``: an update that changes it is sent at once.

    The cluster's state and primary, the failover under way, a split brain
    or a blocked promotion, each node's role, health, read block, timeline
    and whether it takes writes or follows the primary, and whether writes
    are held. Left out, because routing reads them only through what is
    in (a read block already says "too far behind"): positions, lag, probe
    times and counts, error texts. A follower's read-your-writes check may
    see a standby's position up to the arbiter's quiet gap late, which only
    sends such a read to the primary.

    A read block's and a blocked promotion's texts count by their shape
    (:func:`shape`: numbers masked). Their numbers run: "heard from node0
    1.7s ago" reads "1.8s ago" a round later, and rounds come every 50 ms
    while the primary is in doubt; sent at once, each tick made every
    follower decode and adopt a snapshot in the very seconds the promotion
    comes. A block that starts, ends or changes its reason still goes at
    once; its running numbers follow within the quiet gap.
    """
    clock = snap.failover
    return (
        snap.state,
        snap.primary,
        snap.last_primary,
        snap.max_timeline,
        snap.split_brain,
        shape(snap.promotion_blocked),
        snap.system_identifier,
        snap.fork_timeline,
        clock.started_at,
        clock.count,
        held,
        tuple(
            (
                n.name,
                n.role,
                n.up,
                n.healthy,
                shape(n.read_block),
                n.timeline,
                n.read_only,
                n.follows,
            )
            for n in snap.nodes
        ),
    )


_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def shape(text: str | None) -> str | None:
    """``text`` with its numbers masked: what a reason says, without its running clock
    or byte count ("lag: 3.2s behind" and "lag: 3.4s behind" have one shape)."""
    return None if text is None else _NUMBER.sub("#", text)


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(Update)
_PEEK = msgspec.json.Decoder(dict[str, object])


def encode(update: Update) -> bytes:
    """``update`` as JSON bytes."""
    return _ENCODER.encode(update)


def decode(data: bytes | str, cluster: str | None = None) -> Update:
    """The update in ``data``; ``cluster``: the only cluster name accepted.

    Raises:
        WireError: not JSON, another format version, another cluster, or a
            field of the wrong type (the message names it).
    """
    # One pass over the JSON on the way every follower takes for every update; the
    # message is looked at again only to say why it was refused.
    try:
        update = _DECODER.decode(data)
    except msgspec.ValidationError as exc:
        try:
            version = _PEEK.decode(data).get("format", FORMAT)
        except msgspec.DecodeError as outer:
            raise WireError(f"not a snapshot update: {outer}") from None
        if version != FORMAT:  # a newer format's fields are not this one's
            raise WireError(_newer(version)) from None
        raise WireError(f"snapshot update: {exc}") from None
    except msgspec.DecodeError as exc:
        raise WireError(f"not a snapshot update: {exc}") from None
    if update.format != FORMAT:
        raise WireError(_newer(update.format))
    if cluster is not None and update.cluster != cluster:
        raise WireError(f"snapshot update of cluster {update.cluster!r}, not {cluster!r}")
    if update.seq < 0:
        raise WireError(f"snapshot update with a negative sequence number {update.seq}")
    return update


def _newer(version: object) -> str:
    return f"snapshot update format {version!r}; this version reads {FORMAT}"
