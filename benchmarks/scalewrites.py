"""What a scale run's writes came to: when each manager first wrote on the new primary,
from the switch and from the promotion, what was lost and where (scale.py and
scale_patroni.py), and when the new primary left recovery, by its log."""

from __future__ import annotations

import contextlib
import datetime
import re
from collections import Counter
from pathlib import Path
from typing import Any

from scalerun import quantiles

_LEFT_RECOVERY = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) UTC \[\d+\] LOG:  archive recovery complete$",
    re.MULTILINE,
)


def left_recovery(logfile: Path, after: float) -> float | None:
    """When the server whose log is ``logfile`` left recovery after ``after`` (wall
    clock, to the millisecond), from its log: the lab's ``log_line_prefix`` starts
    with ``%m``. PostgreSQL logs "archive recovery complete" just before it ends
    recovery (``pg_is_in_recovery()`` turns false a few milliseconds later), so a
    time counted from here is, if anything, longer. ``None`` when the log has no
    such line (or is not in UTC)."""
    with contextlib.suppress(OSError):
        for match in _LEFT_RECOVERY.finditer(logfile.read_text(errors="replace")):
            at = (
                datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S.%f")
                .replace(tzinfo=datetime.timezone.utc)
                .timestamp()
            )
            if at >= after:
                return at
    return None


def writes(
    lab: Any,
    results: list[dict[str, Any]],
    killed: float,
    new: str | None,
    switched: float | None,
    *,
    old: str = "node0",
    promoted: float | None = None,
) -> dict[str, Any]:
    """What the managers' writes came to after the kill (or the switchover from ``old``);
    with ``promoted`` (when the new primary left recovery), the first writes from then
    too."""
    new_port = lab.node(new).port if new else None
    old_port = lab.node(old).port
    firsts: list[float] = []
    from_promotion: list[float] = []
    seen = (
        sorted(t - switched for r in results for t in r["switched"].values()) if switched else []
    )
    never = old_after_new = 0
    acked: dict[int, tuple[int, float]] = {}  # id -> the port that acknowledged it, when
    for result in results:
        for manager in result["acks"]:
            acked.update((i, (p, t)) for i, p, _, t in manager)
            on_new = [(b, t) for _, p, b, t in manager if p == new_port and t > killed]
            if not on_new or switched is None:
                never += 1
                continue
            began, done = min(on_new, key=lambda bt: bt[1])
            # From the switch, or from the attempt's start if it began later (the
            # writer was pausing between writes): the routing's delay, not the pace's.
            firsts.append(done - max(switched, began))
            if promoted is not None:
                from_promotion.append(done - max(promoted, began))
            old_after_new += sum(1 for _, p, _, t in manager if p == old_port and t > done)
    # How loaded the machine was: the writes' own latency before the event.
    before = sorted(t - b for r in results for m in r["acks"] for _, _, b, t in m if t < killed)
    present = {r[0] for r in lab.run_sql(new, "SELECT id FROM bench")} if new else set()
    lost = [acked[i] for i in acked.keys() - present] if new else []
    ordered = sorted(firsts)
    return {
        "switch_after_kill_s": round(switched - killed, 3) if switched else None,
        **(
            {
                "promotion_to_switch_s": round(switched - promoted, 4),
                "promotion_to_first_write_s": quantiles(sorted(from_promotion)),
            }
            if promoted is not None and switched is not None
            else {}
        ),
        "switch_to_first_write_s": quantiles(ordered),
        "switch_to_manager_switch_s": quantiles(seen),
        "write_before_s": quantiles(before),
        "never_wrote_on_new": never,
        "lost": len(lost) if new else None,  # no new primary: nothing to count on
        # Where and when the lost writes were acknowledged (seconds after the kill began):
        # the old primary, in the moments its processes were being killed, is the
        # asynchronous replication's window; anything else would be a bug.
        "lost_by_port": dict(Counter(str(port) for port, _ in lost)),
        "lost_acked_after_kill_s": [
            round(t - killed, 4) for _, t in sorted(lost, key=lambda x: x[1])
        ][:20],
        "old_primary_acks_after_new": old_after_new,
        "failed_attempts": sum(sum(r["failures"]) for r in results),
    }
