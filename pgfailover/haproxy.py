"""HAProxy's agent check: the arbiter tells HAProxy which node takes writes and reads.

For every client that is not Python (Go, Node, pgbouncer, psql), HAProxy in
front of the cluster gives one port that always reaches the primary and one
that balances over standbys fit to read from, and asks pgfailover which is
which with its ``agent-check``: for each server of a backend HAProxy opens a
TCP connection to the agent, sends the server's ``agent-send`` line and
reads one line back (``up`` or ``down``). The line names the node and the
role wanted::

    node0 rw        ->  up    when node0 is the primary and answers (and no split brain)
    node1 ro        ->  up    when node1 serves reads (healthy standby, within the lag limits)

anything else is ``down``, as is any node while the manager knows no
primary for ``rw``. The answers come from the manager's published snapshot,
the same predicates its own routing uses (``Snapshot.writable_primary``,
``NodeState.serves_reads``), so HAProxy and ``mgr.query()`` never disagree
for longer than one check interval. ``examples/haproxy/haproxy.cfg`` is the
matching configuration.

Why the agent rather than HTTP checks: HAProxy sends one HTTP check request
per backend, so a check cannot name the server it is for; ``agent-send`` is
per server. The agent is asyncio streams on one thread: many connections
cost no thread, a line is read within 2 s and at most 128 bytes, then the
connection is closed.

Locks: none; the snapshot it reads is immutable and replaced atomically.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Final

from pgfailover.model import Snapshot

__all__ = ["AgentServer", "agent_answer"]

logger = logging.getLogger(__name__)

READ_TIMEOUT: Final = 2.0
MAX_LINE: Final = 128


def agent_answer(snap: Snapshot, line: str) -> str:
    """The agent's answer (``up`` or ``down``, with a reason) to one ``agent-send`` line."""
    words = line.split()
    if len(words) != 2 or words[1] not in ("rw", "ro"):
        return "down #expected 'NODE rw' or 'NODE ro'"
    name, role = words
    try:
        node = snap.node(name)
    except KeyError:
        return f"down #unknown node {name[:40]}"
    if role == "rw":
        primary = snap.writable_primary
        if snap.split_brain:
            return "down #split brain"
        if primary is None or primary.name != node.name:
            return "down #not the primary"
        return "up"
    if node.serves_reads:
        return "up"
    return f"down #{node.read_block or 'not a standby that serves reads'}"


class AgentServer:
    """The agent on ``host:port`` (port 0: a free one), on its own thread."""

    def __init__(self, snapshot: Callable[[], Snapshot], host: str, port: int) -> None:
        self._snapshot = snapshot
        self.host = host
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            try:
                self._server = self._loop.run_until_complete(
                    asyncio.start_server(self._handle, host, port, limit=MAX_LINE)
                )
            except BaseException as exc:  # noqa: BLE001 - handed to the constructor
                failure.append(exc)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

        self._thread = threading.Thread(target=run, name="pgfailover-haproxy-agent", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            raise failure[0]
        assert self._server is not None  # noqa: S101 - set before ready
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            raw = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
            answer = agent_answer(self._snapshot(), raw.decode("ascii", "replace").strip())
            writer.write((answer + "\n").encode())
            await asyncio.wait_for(writer.drain(), READ_TIMEOUT)
        except (asyncio.TimeoutError, asyncio.LimitOverrunError, ValueError, OSError):
            pass  # a client that says nothing useful gets nothing
        finally:
            writer.close()
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), READ_TIMEOUT)

    def close(self, timeout: float = 2.0) -> None:
        """Stop listening and end the thread; idempotent."""
        if not self._thread.is_alive():
            return

        async def stop() -> None:
            if self._server is not None:
                self._server.close()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._server.wait_closed(), timeout)
            self._loop.stop()

        asyncio.run_coroutine_threadsafe(stop(), self._loop)
        self._thread.join(timeout)

    def __enter__(self) -> AgentServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
