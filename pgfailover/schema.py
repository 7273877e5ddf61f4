"""One check of settings, whichever way they arrive: keywords, TOML, environment.

The schema is the settings dataclasses' own annotations: a field typed
``Annotated[float, Meta(gt=0, le=86400)]`` says what it accepts, once.
:func:`check` validates an instance against them with msgspec (called from
``__post_init__``, so keyword arguments, ``replace()``, TOML tables and
environment values all pass the same check); :func:`from_mapping` builds
one from a mapping, refusing unknown keys with a "did you mean" hint.
Every failure is one :class:`~pgfailover.errors.ConfigurationError` line
naming the key, the value (``***`` for secrets) and what is allowed.

msgspec was chosen over pydantic for its weight: a small compiled package
without dependencies that imports in a few milliseconds (pydantic's
dataclasses add about 150 ms to every ``import pgfailover``, and a library
pinning pydantic 2 collides with applications still on 1), and it reads
``Annotated`` constraints on plain dataclasses, so the public classes stay
frozen dataclasses.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import types
import typing
from collections.abc import Collection, Mapping
from typing import Any, TypeVar

import msgspec

from pgfailover.dsn import mask_dsn
from pgfailover.errors import ConfigurationError

__all__ = ["check", "from_mapping", "matches", "refuse_unknown"]

T = TypeVar("T")

_AT = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


@functools.cache
def _schema(cls: type) -> type[msgspec.Struct]:
    hints = _hints(cls)
    fields = [(f.name, hints[f.name]) for f in dataclasses.fields(cls)]
    return msgspec.defstruct(f"{cls.__name__}Schema", fields)


def _allowed(hint: Any) -> str | None:
    """``one of a, b, c`` for a Literal (possibly inside Annotated or Optional)."""
    for arg in (hint, *typing.get_args(hint)):
        if typing.get_origin(arg) is typing.Literal:
            return "one of " + ", ".join(str(a) for a in typing.get_args(arg))
    return None


_WORDS = {float: "a number", int: "an integer", str: "a string", bool: "true or false"}


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _described(hint: Any) -> str | None:
    """What a field accepts, in words: ``a number > 0 and <= 86400``."""
    optional = False
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        if len(args) != 1:
            return None
        hint = args[0]
    metas: list[msgspec.Meta] = []
    if typing.get_origin(hint) is typing.Annotated:
        base, *extra = typing.get_args(hint)
        metas = [m for m in extra if isinstance(m, msgspec.Meta)]
        hint = base
    words = _WORDS.get(hint)
    if words is None:
        return None
    described = next((m.description for m in metas if m.description), None)
    if described is not None:
        return described + (" (or unset)" if optional else "")
    bounds = []
    for meta in metas:
        for attr, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            if getattr(meta, attr) is not None:
                bounds.append(f"{sign} {_number(getattr(meta, attr))}")
    text = words + (" " + " and ".join(bounds) if bounds else "")
    return text + (" (or unset)" if optional else "")


def _shown(value: Any, secret: bool) -> str:
    """The value for a message: masked as a DSN (a DSN pasted in the wrong key), cut."""
    if secret:
        return "***"
    text = mask_dsn(repr(value))
    return text if len(text) <= 60 else text[:57] + "..."


def _message(
    exc: msgspec.ValidationError,
    cls: type,
    data: Mapping[str, Any],
    source: str,
    secrets: Collection[str],
) -> str:
    match = _AT.match(str(exc).strip())
    what = match.group("what") if match else str(exc)
    path = (match.group("path") if match else "") or ""
    key = re.split(r"[.\[]", path.lstrip("."), maxsplit=1)[0]
    hint = _hints(cls).get(key) if key else None
    expected = (
        _allowed(hint)
        or _described(hint)
        or what.replace("`", "").removeprefix("Expected ").split(", got ")[0]
    )
    where = f"{source}: " if source else ""
    if not key:
        return f"{where}expected {expected}"
    return f"{where}{key} must be {expected}, got {_shown(data.get(key), key in secrets)}"


def check(obj: Any, *, source: str = "", secrets: Collection[str] = ()) -> None:
    """Validate a dataclass instance's fields against their annotations (strict types).

    ``bool`` is not an ``int`` here and an ``int`` is a ``float``; values of
    the fields named in ``secrets`` never appear in the message.
    """
    cls: type = type(obj)
    data = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    try:
        msgspec.convert(data, type=_schema(cls), strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigurationError(_message(exc, cls, data, source, secrets)) from None


def refuse_unknown(given: Collection[str], known: Collection[str], source: str) -> None:
    """A ConfigurationError for keys that are not settings, with the closest one."""
    unknown = sorted(str(k) for k in set(given) - set(known))
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
        hints.append(f"{key} (did you mean {close[0]}?)" if close else key)
    raise ConfigurationError(
        f"{source}: unknown setting(s) {', '.join(hints)}; known: {', '.join(sorted(known))}"
    )


def from_mapping(cls: type[T], data: Any, *, source: str) -> T:
    """Build the dataclass ``cls`` from a mapping (a TOML table), checked.

    Raises ConfigurationError for something that is not a table, unknown
    keys (with a suggestion), and any value the schema refuses.
    """
    if not isinstance(data, Mapping):
        raise ConfigurationError(f"{source} must be a table, got {_shown(data, False)}")
    assert dataclasses.is_dataclass(cls)  # noqa: S101 - callers pass dataclasses
    refuse_unknown(data, [f.name for f in dataclasses.fields(cls)], source)
    if not all(isinstance(k, str) for k in data):
        raise ConfigurationError(f"{source}: keys must be names")
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in data
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigurationError(f"{source}: missing {', '.join(missing)}")
    try:
        return cls(**dict(data))
    except ConfigurationError as exc:
        text = str(exc)
        raise ConfigurationError(
            text if text.startswith(source) else f"{source}: {text}"
        ) from None


def matches(pattern: str, value: str) -> bool:
    """``value`` matches the whole of ``pattern`` (a schema ``Meta(pattern=...)``)."""
    return re.search(pattern, value) is not None
