"""Following a topology source instead of probing every node (``source=``).

A manager built with a source (``FailoverManager(..., source="http://arbiter:8009")``
or ``source="patroni+http://db1:8008,..."``,
``source = "..."`` in the TOML, ``PGFAILOVER_SOURCE``) routes on snapshots
the source pushes, so the cluster's probe load does not grow with the number
of application processes:

- :mod:`.urls`: what a source setting may say, checked when the config is built;
- :mod:`.sse`: reading a server-sent event stream;
- :mod:`.arbiter`: the ``pgfailover serve`` stream (:mod:`pgfailover.stream`) as a source;
- :mod:`.patroni`: Patroni's REST API (polled) or its keys in etcd (watched) as a source,
  and :mod:`.members`: what Patroni says of its members, as probe results;
- :mod:`.build`: the source a setting names;
- :mod:`.replay`: the decisions a new snapshot implies (events, callbacks), as a round's;
- :mod:`.follower`: the ``pgfailover-follower`` thread, and the fall back to probing.

This package imports none of its modules here, so that the configuration can
check a source setting without importing the follower.
"""
