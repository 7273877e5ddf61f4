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

from dataclasses import dataclass

import msgspec

from pgfailover.errors import PgFailoverError
from pgfailover.model import Snapshot

__all__ = ["FORMAT", "HEARTBEAT", "Update", "WireError", "decode", "encode"]

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
    try:
        head = _PEEK.decode(data)
    except msgspec.DecodeError as exc:
        raise WireError(f"not a snapshot update: {exc}") from None
    version = head.get("format", FORMAT)
    if version != FORMAT:
        raise WireError(f"snapshot update format {version!r}; this version reads {FORMAT}")
    try:
        update = _DECODER.decode(data)
    except msgspec.ValidationError as exc:
        raise WireError(f"snapshot update: {exc}") from None
    if cluster is not None and update.cluster != cluster:
        raise WireError(f"snapshot update of cluster {update.cluster!r}, not {cluster!r}")
    if update.seq < 0:
        raise WireError(f"snapshot update with a negative sequence number {update.seq}")
    return update
