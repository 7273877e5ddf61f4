"""The source a ``source`` setting names, built for one manager.

:func:`build_source` reads the setting (:func:`~pgfailover.topology.urls.parse_source`)
and returns what the follower reads (:class:`~pgfailover.topology.follower.Source`):
the arbiter's stream, Patroni's REST API polled, or Patroni's keys in etcd
watched. How long each waits before giving up is the manager's
``health_check_interval``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from pgfailover.config import FailoverConfig, Node
from pgfailover.topology.arbiter import ArbiterSource
from pgfailover.topology.confirm import Confirmer
from pgfailover.topology.follower import Source
from pgfailover.topology.members import PatroniReader
from pgfailover.topology.patroni import PatroniEtcdSource, PatroniRestSource
from pgfailover.topology.urls import parse_source
from pgfailover.wire import HEARTBEAT

__all__ = ["build_source"]


def build_source(config: FailoverConfig, nodes: Sequence[Node], name: str) -> Source:
    """The source ``config.source`` names, for the manager of cluster ``name``.

    - the arbiter: silent for ``max(health_check_interval, 3 heartbeats)`` is gone;
    - Patroni's REST API: read every ``fast_interval``, gone after
      ``health_check_interval`` without an answer;
    - Patroni's etcd: watched, and read every ``health_check_interval / 2``
      (at most every 0.5 s), gone after ``health_check_interval`` without one;
    - either Patroni source confirms a new leader's promotion on it, waiting up
      to ``fast_interval`` a time on the server, until it takes writes
      (:class:`~pgfailover.topology.confirm.Confirmer`).

    Each speaks HTTPS with the config's ``source_*_file`` TLS files.
    """
    spec = parse_source(config.source or "")
    silence = max(config.health_check_interval, 3 * HEARTBEAT)
    tls = config.source_tls().context("source")
    if spec.kind == "arbiter":
        return ArbiterSource(
            spec.urls,
            name,
            connect_timeout=config.connect_timeout,
            silence=silence,
            ssl_context=tls,
        )
    stop = threading.Event()  # set by neither: a pause of the source's own thread
    confirmer = Confirmer(
        {n.name: n.dsn for n in nodes},
        timeout=config.connect_timeout,
        wait=config.fast_interval,
        pause=stop.wait,
    )
    reader = PatroniReader(nodes, config, name, confirmer)
    if spec.kind == "patroni":
        return PatroniRestSource(
            spec.urls,
            reader,
            connect_timeout=config.connect_timeout,
            silence=silence,
            poll=config.fast_interval,
            ssl_context=tls,
        )
    return PatroniEtcdSource(
        spec.urls,
        spec.prefix or "/",
        reader,
        connect_timeout=config.connect_timeout,
        silence=silence,
        poll=min(0.5, silence / 2),
        ssl_context=tls,
    )
