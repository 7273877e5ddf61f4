"""One node's state after one probe result: the health thresholds, the smoothed
response time, the timeline a standby is on (pure, for the state machine).

:func:`probed` is the per-node step of :func:`pgfailover.transition.transition`;
the cluster-wide decisions (which node is primary, promotion, fencing) are
made there, from the nodes this returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from pgfailover.config import FailoverConfig
from pgfailover.model import NodeState, Role, evolve
from pgfailover.probe import ProbeResult

__all__ = ["RT_SMOOTHING", "probed"]

RT_SMOOTHING: Final = 0.3
"""Weight of the newest probe in ``NodeState.response_time_avg`` (the ``latency`` strategy)."""


def probed(
    prev: NodeState,
    result: ProbeResult | None,
    now: float,
    cfg: FailoverConfig,
    by_address: Mapping[str, str],
    *,
    corroborated: bool = False,
) -> NodeState:
    """Apply one probe result to a node, counting the thresholds.

    ``corroborated``: a query saw the node's connection fail since the
    previous round; with a failed probe that is one more failed check.

    A ``busy`` result (the server refused a new session for lack of
    connection slots) is no failure of a node that was up: the server
    answered, and the sessions it already has (the pools') still serve. It
    keeps its role, health and positions (a standby's lag grows against the
    primary's, which only takes reads off it) and shows the refusal in
    ``error``. Counting it as a failure would turn a full server into a lost
    one: its primary given up, writes held, and a probe every
    ``fast_interval`` from every manager, which the full server refuses too.
    A node that was down stays down: a refusal does not say what it is now.
    """
    if result is None:
        return prev
    if not result.ok and result.busy and prev.checked and prev.up:
        return evolve(prev, last_check=now, error=result.error)
    if not result.ok:
        failures = prev.consecutive_failures + (2 if corroborated else 1)
        healthy = prev.checked and prev.healthy and failures < cfg.unhealthy_threshold
        return evolve(
            prev,
            up=False,
            healthy=healthy,
            checked=True,
            consecutive_failures=failures,
            consecutive_successes=0,
            last_check=now,
            response_time=None,
            down_since=prev.down_since if prev.down_since is not None else now,
            error=result.error,
            receiver_streaming=None,
            receiver_silence=None,
            upstream=None,
            lag_bytes=None,
            promotion_eligible=False,
            follows=None,
            not_following_since=None,
            streaming_names=None,
        )
    # An old primary answering as a standby was rejoined (pg_rewind, new
    # configuration): it proves itself over healthy_threshold probes like a
    # node that was down, however short its restart was.
    rejoined = prev.role is Role.STALE and result.in_recovery
    successes = 1 if rejoined else prev.consecutive_successes + 1
    healthy = (
        (not prev.checked) or (prev.healthy and not rejoined) or successes >= cfg.healthy_threshold
    )
    streaming = result.receiver_status == "streaming" if result.receiver_visible else None
    upstream = None
    if streaming and result.sender_host:
        upstream = by_address.get(f"{result.sender_host}:{result.sender_port}")
    return evolve(
        prev,
        role=Role.STANDBY if result.in_recovery else Role.PRIMARY,
        up=True,
        healthy=healthy,
        checked=True,
        consecutive_failures=0,
        consecutive_successes=successes,
        last_check=now,
        response_time=result.response_time,
        response_time_avg=_smoothed(prev.response_time_avg, result.response_time),
        down_since=None if healthy else prev.down_since,
        error=None,
        timeline=_timeline(prev, result),
        wal_lsn=result.wal_lsn,
        receive_lsn=result.receive_lsn,
        replay_lsn=result.replay_lsn,
        lag_seconds=result.replay_age if result.in_recovery else None,
        receiver_visible=result.receiver_visible,
        receiver_streaming=streaming,
        upstream=upstream,
        read_only=result.read_only,
        sync_standby_names=result.sync_standby_names,
        receiver_silence=result.receiver_silence if streaming else None,
        upstream_end_lsn=result.upstream_end_lsn,
        receiver_timeout=result.receiver_timeout,
        app_name=result.app_name,
        streaming_names=result.streaming_names,
        sync_record=result.sync_record,
        system_identifier=result.system_identifier,
    )


def _smoothed(previous: float | None, sample: float) -> float:
    """The probe response time smoothed over rounds (an EWMA, weight ``RT_SMOOTHING``)."""
    if previous is None:
        return sample
    return previous + RT_SMOOTHING * (sample - previous)


def _timeline(prev: NodeState, result: ProbeResult) -> int | None:
    """A standby's timeline never goes back.

    With its WAL receiver running, a standby reports the timeline it
    receives; without one (its primary just died) only the timeline of its
    last restartpoint, which lags behind a timeline switch until the next
    one. A standby that was seen on a newer timeline is still on it.
    """
    if (
        result.in_recovery
        and prev.role is Role.STANDBY
        and prev.timeline is not None
        and (result.timeline or 0) < prev.timeline
    ):
        return prev.timeline
    return result.timeline
