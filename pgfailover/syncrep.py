"""Synchronous replication that never hangs commits (pure planning).

A primary whose ``synchronous_standby_names`` needs standbys that do not
stream from it makes every COMMIT wait on ``SyncRep`` forever. That happens
after failovers: a promoted standby inherits a setting naming the old
primary, a repointed standby never attaches, a rejoined node sits in
``startup``. :func:`plan_sync` decides, from what the primary's probe saw,
what the setting should be:

- **satisfied** (enough listed standbys stream, or async): leave it, unless
  quorum was lowered earlier and standbys stream again: then *restore* the
  policy's method and count over the streaming standbys (a standby that
  rejoins later counts); and when the manager wrote the setting, a member
  that streams but is not listed (an old primary after its rejoin) is
  *added*, so it counts towards the quorum again. A list the operator wrote
  is theirs: a standby left out of it stays out;
- **unsatisfied** for less than ``sync_standby_attach_timeout``: wait (a
  standby that was just repointed needs a moment to attach);
- **unsatisfied** for longer: list the standbys that do stream, with the
  count capped at their number, or go async (``''``) when none does, and
  say so (event note, metric, alert).

The *policy* (method and count) is what the operator configured: learned
from the primary's setting whenever it differs from what the manager last
wrote, and kept across failovers. ``'*'`` (any standby) is left alone.

What the manager wrote, and the policy it kept, are recorded on the primary
itself (:class:`SyncRecord`, the custom setting ``pgfailover.sync``, set by
``ALTER SYSTEM`` next to ``synchronous_standby_names``): a manager that
restarts, or the arbiter that takes the lease over, reads it with its first
probe and goes on where the writer left off. Kept only in the writer's
memory, a list the manager lowered counted as the operator's after a
restart, so a rejoined standby was never added back and the lowered count
became the policy.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from psycopg import sql as pgsql

__all__ = [
    "RECORD_SETTING",
    "SyncPlan",
    "SyncRecord",
    "SyncSpec",
    "format_sync",
    "parse_record",
    "parse_sync",
    "plan_sync",
    "recorded",
    "rewrite_sync_names",
]

RECORD_SETTING = "pgfailover.sync"
"""The custom setting that holds a primary's :class:`SyncRecord` (``ALTER SYSTEM``)."""

_SYNC_RE = re.compile(
    r"^\s*(?:(ANY|FIRST)\s+)?(?:(\d+)\s*)?\((.*)\)\s*$", re.IGNORECASE | re.DOTALL
)


@dataclass(frozen=True)
class SyncSpec:
    """A parsed ``synchronous_standby_names``: method, count and names."""

    method: str
    count: int
    names: tuple[str, ...]

    @property
    def shown(self) -> str:
        """``METHOD count (name, ...)`` as status shows it (names unquoted)."""
        return f"{self.method} {self.count} ({', '.join(self.names)})"

    @property
    def star(self) -> bool:
        """``*``: any standby counts."""
        return "*" in self.names

    def satisfied(self, streaming: Collection[str]) -> bool:
        """Enough of the listed standbys stream for a COMMIT to complete.

        Names match case-insensitively, as PostgreSQL matches them.
        """
        if self.star:
            return len(streaming) >= self.count
        listed = {n.casefold() for n in self.names}
        return len(listed & {n.casefold() for n in streaming}) >= self.count


_NAME_RE = re.compile(r'\s*("(?:[^"]|"")*"|[^,]+?)\s*(?:,|$)')


def _split_names(text: str) -> tuple[str, ...]:
    """Names of a list, honouring double quotes (a quoted name may hold a comma)."""
    names = []
    for match in _NAME_RE.finditer(text):
        name = match.group(1).strip()
        if len(name) >= 2 and name[0] == name[-1] == '"':
            name = name[1:-1].replace('""', '"')
        if name:
            names.append(name)
    return tuple(names)


def parse_sync(text: str | None) -> SyncSpec | None:
    """Parse a ``synchronous_standby_names`` value; ``None`` means async."""
    value = (text or "").strip()
    if not value:
        return None
    match = _SYNC_RE.match(value)
    if match:
        method = (match.group(1) or "FIRST").upper()
        return SyncSpec(method, int(match.group(2) or 1), _split_names(match.group(3)))
    return SyncSpec("FIRST", 1, _split_names(value))  # the old list form "a, b"


def format_sync(method: str, count: int, names: Sequence[str]) -> str:
    """``METHOD count (name, ...)`` with names quoted as identifiers where needed."""
    quoted = ", ".join(pgsql.Identifier(n).as_string(None) for n in names)
    return f"{method} {count} ({quoted})"


def rewrite_sync_names(original: str, survivors: Sequence[str]) -> tuple[str, str | None]:
    """``synchronous_standby_names`` for a new primary followed by ``survivors``.

    Keeps the method and count of ``original``, capped at the number of
    survivors; with no survivor it returns ``''`` (async). The second value
    is a note to record when durability is lowered. ``'*'`` is kept.
    """
    spec = parse_sync(original)
    if spec is None or spec.star:
        return original.strip(), None
    if not survivors:
        return "", f"no standby left to follow: synchronous replication off (was {original!r})"
    k = min(spec.count, len(survivors))
    note = None
    if k < spec.count:
        note = f"only {len(survivors)} standby(s) left: quorum lowered from {spec.count} to {k}"
    return format_sync(spec.method, k, survivors), note


@dataclass(frozen=True)
class SyncPlan:
    """What to do with the primary's setting: ``value`` to write (``None``: nothing)."""

    value: str | None
    note: str | None = None
    lowered: bool = False


def plan_sync(
    current: str,
    streaming: Collection[str],
    *,
    members: Collection[str],
    policy: SyncSpec | None,
    unsatisfied_for: float,
    attach_timeout: float,
    managed: bool = False,
) -> SyncPlan:
    """The ``synchronous_standby_names`` a primary should have now (see the module doc).

    ``streaming``: application names streaming from the primary;
    ``members``: the names the cluster's standbys stream under (others, a
    ``pg_basebackup`` for one, never become synchronous); ``unsatisfied_for``:
    seconds the current setting has not been satisfied (0 when it is);
    ``managed``: the manager wrote ``current`` (not the operator).
    """
    spec = parse_sync(current)
    if spec is not None and spec.star:
        return SyncPlan(None)
    known = {n.casefold() for n in (*members, *(spec.names if spec else ()))}
    # In the policy's order (FIRST k is a priority list), then the others by name.
    order = [n.casefold() for n in (policy.names if policy else ())]
    eligible = sorted(
        (n for n in streaming if n.casefold() in known),
        key=lambda n: (order.index(n.casefold()) if n.casefold() in order else len(order), n),
    )
    if spec is None or spec.satisfied(streaming):
        if policy is None or policy.star or not eligible:
            return SyncPlan(None)
        have = 0 if spec is None else spec.count
        want = min(policy.count, len(eligible))
        if want > have:
            value = format_sync(policy.method, want, eligible)
            return SyncPlan(
                value, f"standbys stream again: synchronous replication back to {value!r}"
            )
        listed = {n.casefold() for n in spec.names} if spec is not None else set()
        missing = [n for n in eligible if n.casefold() not in listed]
        if spec is None or not managed or not missing:
            return SyncPlan(None)
        value = format_sync(spec.method, spec.count, [*spec.names, *missing])
        return SyncPlan(value, f"{', '.join(missing)} streams again: now {value!r}")
    if unsatisfied_for < attach_timeout:
        return SyncPlan(None)
    rule = policy if policy is not None and not policy.star else spec
    if not eligible:
        return SyncPlan(
            "",
            f"no standby named in {current!r} streamed for {unsatisfied_for:.1f}s: "
            "synchronous replication off (commits would wait forever)",
            lowered=True,
        )
    value = format_sync(rule.method, min(rule.count, len(eligible)), eligible)
    return SyncPlan(
        value,
        f"{current!r} was not satisfied for {unsatisfied_for:.1f}s: now {value!r}",
        lowered=min(rule.count, len(eligible)) < rule.count,
    )


@dataclass(frozen=True)
class SyncRecord:
    """What a manager wrote into a primary's ``synchronous_standby_names``
    (``written``), and the operator's policy it kept in doing so.

    Kept on the primary (:data:`RECORD_SETTING`, JSON), so that it is known
    to whichever manager acts next: while the setting still reads
    ``written``, the list is the manager's to keep up (a standby that streams
    again is added to it, and ``policy`` is what a lowered list is restored
    to); once it reads anything else, the operator changed it.
    """

    written: str
    policy: SyncSpec | None

    def encode(self) -> str:
        """The record as the setting's value."""
        policy = self.policy
        shown = None if policy is None else format_sync(policy.method, policy.count, policy.names)
        return json.dumps({"written": self.written, "policy": shown}, separators=(",", ":"))


def parse_record(text: str | None) -> SyncRecord | None:
    """The record in a :data:`RECORD_SETTING` value; ``None`` for none (unset, reset:
    ``''``) or one this version cannot read (then the list counts as the operator's)."""
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    written, policy = data.get("written"), data.get("policy")
    if not isinstance(written, str) or not (policy is None or isinstance(policy, str)):
        return None
    spec = parse_sync(policy)
    return SyncRecord(written, None if spec is None or spec.star else spec)


def recorded(current: str, text: str | None) -> SyncRecord | None:
    """The record in ``text`` if it names ``current`` as the list a manager wrote (then
    the list is a manager's, and the record's policy is in force); else ``None``."""
    record = parse_record(text)
    return record if record is not None and record.written == current else None
