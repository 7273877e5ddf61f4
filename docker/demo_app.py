"""The compose lab's demo app: writes and reads through a FailoverManager in external mode.

It follows the arbiter's promotions (it never promotes itself): with
``PGFAILOVER_SOURCE`` (the compose file sets the arbiter's stream) it routes
on the arbiter's snapshots and reports a failed write to it, which probes at
once; without it, it probes the nodes itself. It writes a row
every 100 ms and reads one back from a standby, logs one line a second, and
serves its manager's status API and /metrics on port 8009 for Prometheus.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import psycopg

from pgfailover import FailoverManager, PgFailoverError
from pgfailover.server import serve
from pgfailover.sources import load_toml

logger = logging.getLogger("demo-app")


def main() -> None:
    """Run until SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    nodes, config = load_toml(os.environ["PGFAILOVER_CONFIG"])
    source = os.environ.get("PGFAILOVER_SOURCE") or None
    config = config.replace(promotion="external", source=source)
    # The cluster's name, the arbiter's --name: a follower follows only its own cluster.
    mgr = FailoverManager(nodes=nodes, config=config, name="lab").open()
    api = serve(mgr, host="0.0.0.0", port=8009)  # noqa: S104 - inside its container
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    mgr.query("CREATE TABLE IF NOT EXISTS demo (id bigserial PRIMARY KEY, at timestamptz)")
    log_acks = bool(os.environ.get("DEMO_LOG_ACKS"))  # one line per acknowledged id (tests)
    written = failed = 0
    last_log = time.monotonic()
    while not stop.is_set():
        try:
            ident, node = mgr.query(
                "INSERT INTO demo (at) VALUES (now())"
                " RETURNING id, current_setting('cluster_name')"
            )[0]
            written += 1
            if log_acks:
                logger.info("acked %d on %s", ident, node or "?")
            # Read it back from a standby that has replayed it (read-your-writes).
            mgr.query("SELECT count(*) FROM demo", readonly=True, min_lsn=mgr.write_position())
        except (PgFailoverError, psycopg.Error) as exc:
            failed += 1
            logger.warning("statement failed: %s", str(exc).strip().splitlines()[0])
        if time.monotonic() - last_log >= 1:
            snap = mgr.snapshot
            logger.info(
                "primary %s state %s written %d failed %d",
                snap.primary,
                snap.state.value,
                written,
                failed,
            )
            last_log = time.monotonic()
        stop.wait(0.1)  # the demo's write rate
    api.close()
    mgr.close()


if __name__ == "__main__":
    main()
