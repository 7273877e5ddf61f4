"""Reading a server-sent event stream (``text/event-stream``), as bytes arrive.

The arbiter's stream (:mod:`pgfailover.stream`) is server-sent events; this
is the follower's side of the format: fields ``event``, ``data`` (joined by
newlines when repeated) and ``id``, comments (``:``, the heartbeats) and
blank lines ending an event, with ``\\n``, ``\\r\\n`` or ``\\r`` line ends. An
event larger than ``max_event`` bytes ends the stream with
:class:`StreamError` instead of growing the buffer without bound.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from pgfailover.errors import PgFailoverError

__all__ = ["Event", "EventParser", "StreamError"]

MAX_EVENT: Final = 4 * 1024 * 1024
_LINE_END = re.compile(rb"\r\n|\r|\n")


class StreamError(PgFailoverError):
    """The source broke the stream's format or its limits (one line, why).

    ``quiet``: the seconds the source had said nothing when it was given up.
    A failure known the moment it happens (a closed or refused stream) has
    none; a silence has spent that much of the follower's allowance, and
    one as long as the allowance leaves it none to try another source first.
    """

    def __init__(self, message: str, *, quiet: float = 0.0) -> None:
        super().__init__(message)
        self.quiet = quiet


@dataclass(frozen=True)
class Event:
    """One dispatched event: its type (``message`` when unnamed), data and id."""

    kind: str
    data: str
    id: str | None = None


class EventParser:
    """Feed it bytes as they arrive; it returns the events they complete.

    Thread safety: one parser per stream, fed by one thread.
    """

    def __init__(self, max_event: int = MAX_EVENT) -> None:
        self._max = max_event
        self._buffer = b""
        self._kind = ""
        self._data: list[str] = []
        self._id: str | None = None
        self._size = 0
        self._scanned = 0  # bytes of the buffer already searched for a line end

    def feed(self, chunk: bytes) -> list[Event]:
        """The events ``chunk`` completes (none for a heartbeat comment).

        Raises:
            StreamError: an event over the size limit, or a line that is not UTF-8.
        """
        self._buffer += chunk
        events: list[Event] = []
        start = 0
        # Only the new bytes can end a line, and a '\r' left waiting for its '\n': a
        # line that arrives in many chunks is searched once, not once per chunk.
        for match in _LINE_END.finditer(self._buffer, max(0, self._scanned - 1)):
            # A '\r' at the very end may be the first half of '\r\n': wait for more.
            if match.group() == b"\r" and match.end() == len(self._buffer):
                break
            self._line(self._buffer[start : match.start()], events)
            start = match.end()
        self._buffer = self._buffer[start:]
        self._scanned = len(self._buffer)
        if len(self._buffer) + self._size > self._max:
            raise StreamError(f"an event larger than {self._max} bytes")
        return events

    def _line(self, raw: bytes, events: list[Event]) -> None:
        if not raw:
            if self._data:
                events.append(Event(self._kind or "message", "\n".join(self._data), self._id))
            self._kind, self._data, self._size = "", [], 0
            return
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise StreamError("a line that is not UTF-8") from None
        if line.startswith(":"):
            return
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        self._size += len(raw)
        if self._size > self._max:
            raise StreamError(f"an event larger than {self._max} bytes")
        if name == "event":
            self._kind = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\x00" not in value:
            self._id = value
