"""Which failed probes are "opening": a new session that got no answer in time.

A round excuses such a probe on a node where a statement succeeded after it
began (the node serves; its new sessions are slow). A refused or reset
connection is an answer and must count: a killed primary's reply read late
by a writer once excused its first failed probe, and the manager waited a
whole interval (1 s) before probing it again. These drive a real
:class:`NodeProber` against sockets on loopback that refuse, reset, or
accept and never answer (no PostgreSQL needed).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import pytest

from pgfailover.probe import NodeProber


@contextmanager
def _refusing() -> Iterator[int]:
    """A port nothing listens on (bound, not listening: connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@contextmanager
def _resetting() -> Iterator[int]:
    """A server that accepts each connection and closes it at once (a dying postmaster)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.settimeout(0.1)
        stop = threading.Event()

        def serve() -> None:
            while not stop.is_set():
                try:
                    conn, _ = sock.accept()
                except OSError:
                    continue
                conn.close()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            yield sock.getsockname()[1]
        finally:
            stop.set()
            thread.join(2)


@contextmanager
def _silent() -> Iterator[int]:
    """A server whose listen backlog takes connections that nothing ever answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


@pytest.mark.parametrize(
    ("server", "opening"),
    [
        pytest.param(_refusing, False, id="refused: an answer, counted"),
        pytest.param(_resetting, False, id="closed during the startup: an answer, counted"),
        pytest.param(_silent, True, id="no answer in time: opening, maybe just slow"),
    ],
)
def test_only_a_session_that_got_no_answer_in_time_is_opening(
    server: Callable[[], AbstractContextManager[int]], opening: bool
) -> None:
    with server() as port:
        prober = NodeProber("node0", f"host=127.0.0.1 port={port} user=x dbname=x", timeout=1.0)
        try:
            result = prober.probe()
        finally:
            prober.close()
    assert not result.ok
    assert result.opening is opening, result.error
