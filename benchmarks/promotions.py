"""When faults.py's promotions start and end: pgfailover's, from its log lines, and
the baseline's, from an orchestrator stand-in that promotes after a given delay.

The stand-in mirrors ``failover.py``'s promoter, with ``pg_promote(false)``
and a 5 ms poll of ``pg_is_in_recovery()`` (as pgfailover's own promotion)
instead of ``pg_promote(true)``, so that "promoted" means the same instant
for both contenders.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Final

from common import follow_new_primary, most_advanced

from pgfailover.lab import LocalLab

__all__ = ["PromotionLog", "Promotions"]


class PromotionLog(logging.Handler):
    """Monotonic times at which pgfailover started and finished a promotion.

    Read from the manager's own WARNING lines, matched on their format
    strings (a changed message shows as ``delay_source: fallback`` and fails
    the smoke test), stamped when they are logged.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.started: list[float] = []
        self.promoted: list[float] = []

    STARTED: Final = "cluster %s: promoting %s (%s)"
    PROMOTED: Final = "node %s promoted in %.3fs"

    def emit(self, record: logging.LogRecord) -> None:
        now = time.monotonic()
        if record.msg == self.STARTED:
            self.started.append(now)
        elif record.msg == self.PROMOTED:
            self.promoted.append(now)


def _promoter(
    lab: LocalLab, candidates: list[str], delay: float, at: float, out: dict[str, Any]
) -> None:
    """Promote the most advanced of ``candidates`` ``delay`` s after ``at``, repoint the rest.

    Mirrors ``failover.py``'s promoter, with ``pg_promote(false)`` and a 5 ms
    poll (as pgfailover's own promotion) instead of ``pg_promote(true)``.
    """
    time.sleep(max(0.0, at + delay - time.monotonic()))
    target = most_advanced(lab, candidates)
    if target is None:
        return
    out["target"] = target
    out["promote_started"] = time.monotonic()
    with lab.connect(target) as conn:
        conn.execute("SELECT pg_promote(false)")
        deadline = time.monotonic() + 60
        while conn.execute("SELECT pg_is_in_recovery()").fetchone() != (False,):
            if time.monotonic() > deadline:
                return
            time.sleep(0.005)
    out["promoted"] = time.monotonic()
    follow_new_primary(lab, target, candidates)


def _start_promoter(
    lab: LocalLab, candidates: list[str], delay: float, at: float, out: dict[str, Any]
) -> threading.Thread:
    thread = threading.Thread(
        target=_promoter, args=(lab, candidates, delay, at, out), name="promoter", daemon=True
    )
    thread.start()
    return thread


@dataclass
class Promotions:
    """When each promotion of one run started and ended (monotonic seconds)."""

    log: PromotionLog  # pgfailover's, from its log lines
    promoters: list[threading.Thread] = field(default_factory=list)  # the baseline's
    outs: list[dict[str, Any]] = field(default_factory=list)  # one per baseline promoter

    def promote(self, lab: LocalLab, candidates: list[str], delay: float, at: float) -> None:
        """Start the baseline's promoter for a fault at ``at``."""
        self.outs.append({})
        self.promoters.append(_start_promoter(lab, candidates, delay, at, self.outs[-1]))

    def join(self) -> None:
        """Wait for the baseline's promoters (each also repoints a standby)."""
        for thread in self.promoters:
            thread.join(40)

    def after(self, t: float, until: float | None = None) -> tuple[float | None, float | None]:
        """Start and end of the first promotion after ``t`` (and before ``until``)."""
        if self.outs:
            out = next(
                (o for o in self.outs if o.get("promote_started", -1.0) > t),
                {},
            )
            return out.get("promote_started"), out.get("promoted")
        stop = until if until is not None else float("inf")
        started = [s for s in self.log.started if t < s < stop]
        promoted = [s for s in self.log.promoted if t < s < stop]
        return min(started, default=None), min(promoted, default=None)
