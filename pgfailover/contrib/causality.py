"""What the framework integrations share: a manager from settings, and read-your-writes.

The integrations route every query to a node by name: writes to the primary
(waiting up to ``failover_wait_timeout`` while a failover runs), reads to a
fitting standby. Read-your-writes is tracked per unit of work (a request, a
session) in a context variable:

- once the unit has written, its reads stay on the primary;
- the next unit may carry a token, the primary's WAL position taken after
  the writes committed (:meth:`FailoverManager.write_position`, e.g. in a
  cookie): its reads go to a standby only once that standby's last probe
  showed it replayed that far, else to the primary.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pgfailover.config import FailoverConfig, Node
from pgfailover.errors import ConfigurationError
from pgfailover.execution import is_connection_error
from pgfailover.manager import FailoverManager
from pgfailover.sources import load_toml, nodes_from_dsn

__all__ = [
    "COOKIE_NAME",
    "Causality",
    "CookieResponse",
    "causes",
    "current",
    "load_source",
    "manager_from",
    "parse_token",
    "read_node",
    "read_your_writes",
    "report_error",
    "set_token_cookie",
    "write_node",
]

COOKIE_NAME = "pgfailover_lsn"

Source = str | Path | Sequence[Node] | FailoverManager


def load_source(source: str | Path | Sequence[Node]) -> tuple[list[Node], FailoverConfig]:
    """Nodes and settings from a TOML path, a DSN, or Nodes."""
    if isinstance(source, Path) or (isinstance(source, str) and source.endswith(".toml")):
        return load_toml(source)
    if isinstance(source, str):
        return nodes_from_dsn(source), FailoverConfig()
    if isinstance(source, Sequence) and all(isinstance(n, Node) for n in source):
        return [n for n in source if isinstance(n, Node)], FailoverConfig()
    raise ConfigurationError(
        f"pgfailover source must be a .toml path, a DSN, Nodes or a manager, not {source!r}"
    )


def manager_from(
    source: Source, *, name: str = "default", settings: dict[str, Any] | None = None
) -> FailoverManager:
    """An unopened manager from a TOML path, a DSN, nodes, or a manager (returned as is).

    The manager's own pools serve only small queries (the read-your-writes
    token), so they keep no idle connections unless ``settings`` say so.
    """
    if isinstance(source, FailoverManager):
        return source
    nodes, config = load_source(source)
    overrides: dict[str, Any] = {"pool_min_size": 0, "pool_max_size": 4, **(settings or {})}
    return FailoverManager(nodes=nodes, config=config.replace(**overrides), name=name)


@dataclass
class Causality:
    """Read-your-writes state of one unit of work (a request, a session)."""

    min_lsn: int | None = None  # reads need a standby replayed this far
    wrote: bool = False  # this unit wrote: its reads stay on the primary
    used: set[str] = field(default_factory=set)  # nodes this unit was sent to


_state: ContextVar[Causality | None] = ContextVar("pgfailover_causality", default=None)


@contextmanager
def read_your_writes(min_lsn: int | None = None) -> Iterator[Causality]:
    """Track read-your-writes for the code in the block (a request, a job)."""
    state = Causality(min_lsn=min_lsn)
    token = _state.set(state)
    try:
        yield state
    finally:
        _state.reset(token)


def current() -> Causality | None:
    """The unit of work in progress, if any."""
    return _state.get()


def write_node(mgr: FailoverManager) -> str:
    """The primary's name, waiting for one during a failover; marks the unit as written."""
    node = mgr.wait_for_primary(time.monotonic() + mgr.config.failover_wait_timeout)
    state = _state.get()
    if state is not None:
        state.wrote = True
        state.used.add(node)
    return node


def read_node(mgr: FailoverManager) -> str:
    """Where a read goes: the primary after a write in this unit, else a fitting standby."""
    state = _state.get()
    if state is not None and state.wrote:
        node = mgr.wait_for_primary(time.monotonic() + mgr.config.failover_wait_timeout)
    else:
        node = mgr.read_target(state.min_lsn if state is not None else None)
    if state is not None:
        state.used.add(node)
    return node


def report_error(mgr: FailoverManager, exc: BaseException) -> None:
    """A connection error in this unit: suspect the nodes it used, so the next units avoid them."""
    state = _state.get()
    if state is None or not any(is_connection_error(e) for e in causes(exc)):
        return
    for node in state.used:
        mgr.suspect(node, f"{type(exc).__name__} in a framework request: {exc}")


def causes(exc: BaseException) -> Iterator[BaseException]:
    """The error and what it wraps (Django's ``__cause__``, SQLAlchemy's ``orig``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        wrapped = getattr(current, "orig", None)
        current = wrapped if isinstance(wrapped, BaseException) else current.__cause__


def parse_token(value: str | None) -> int | None:
    """A read-your-writes token from a cookie or header (``None`` if absent or malformed)."""
    if not value or not value.isdigit() or len(value) > 20:
        return None
    return int(value)


class CookieResponse(Protocol):
    """What Django's and Flask's responses both offer for the token cookie."""

    def set_cookie(
        self, key: str, value: str, *, max_age: int, httponly: bool, samesite: str
    ) -> Any:
        """Set a cookie."""

    def delete_cookie(self, key: str) -> Any:
        """Delete a cookie."""


def set_token_cookie(mgr: FailoverManager, response: CookieResponse, max_age: int) -> None:
    """After a unit that wrote: the read-your-writes token for the next request.

    The primary's WAL position, taken now that the writes have committed;
    when it cannot be read, the cookie is dropped and the next request's
    reads go to the primary.
    """
    try:
        position = mgr.write_position()
    except Exception:  # noqa: BLE001 - no token: the next request reads the primary
        response.delete_cookie(COOKIE_NAME)
        return
    response.set_cookie(COOKIE_NAME, str(position), max_age=max_age, httponly=True, samesite="Lax")
