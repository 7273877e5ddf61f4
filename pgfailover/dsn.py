"""Connection strings: parsing multi-host DSNs and masking passwords.

libpq accepts a URL (``postgresql://u@h1:5432,h2:5432/app``) or a key/value
string (``host=h1,h2 port=5432 dbname=app``) naming several hosts. pgfailover
splits such a string into one DSN per node. Every DSN shown to a person (log,
status, metric, exception) goes through :func:`mask_dsn` first.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgfailover.errors import ConfigurationError

__all__ = ["mask_dsn", "node_address", "parse_dsn", "secrets_in", "split_multihost"]

_SCHEME = re.compile(r"postgres(?:ql)?://", re.IGNORECASE)
# key = value in libpq's key/value form, for keys that are or look like a
# password (misspelt ones too: the DSN is then broken, and echoed): a quoted
# value, an already masked one, or everything up to the next ``key=`` (a
# value with a space in it is broken, but must not show either).
_SECRET_KEY = r"[A-Za-z_]*(?:pass|pwd|pasw)[A-Za-z_]*"  # noqa: S105 - a key pattern
_KV_PASSWORD = re.compile(
    rf"((?<![?&%\w]){_SECRET_KEY}\s*=\s*)"
    r"(\*\*\*(?=[\s'\"]|$)|'(?:[^'\\]|\\.)*'?|(?:(?!\s+[A-Za-z_]+\s*=).)*)",
    re.IGNORECASE | re.DOTALL,
)
# URL query parameters: the key as libpq reads it (percent-decoded).
_QUERY_PARAM = re.compile(r"(?<=[?&])([^=&#\s]*)=([^&#]*)")
_QUOTED = re.compile(r'"[^"]*"?')
# Values libpq checks only when it connects: checked when the DSN is given.
_CHOICES = {
    "sslmode": ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    "target_session_attrs": (
        "any",
        "read-write",
        "read-only",
        "primary",
        "standby",
        "prefer-standby",
    ),
}


def _userinfo_password(dsn: str, start: int, end: int) -> tuple[int, int] | None:
    """Span of the password in the URL whose scheme ends at ``start``, or ``None``.

    The user info ends at the *last* '@' before ``end``: a password holding
    an unescaped '@', '/' or '?' is still masked whole (libpq would misparse
    it; :func:`parse_dsn` refuses such a URL).
    """
    at = dsn.rfind("@", start, end)
    if at < 0:
        return None
    colon = dsn.find(":", start, at)
    return None if colon < 0 else (colon + 1, at)


def _secret_spans(text: str) -> list[tuple[int, int]]:
    spans = []
    whole = bool(_SCHEME.match(text.strip()))
    for match in _SCHEME.finditer(text):
        end = len(text)
        if not whole:  # a URL inside a message ends at a blank
            stop = re.compile(r"\s").search(text, match.end())
            end = stop.start() if stop else end
        span = _userinfo_password(text, match.end(), end)
        if span is not None and span[1] > span[0]:
            spans.append(span)
    for match in _KV_PASSWORD.finditer(text):
        if match.end(2) > match.start(2) and match.group(2) != "***":
            spans.append((match.start(2), match.end(2)))
    for match in _QUERY_PARAM.finditer(text):
        key = urllib.parse.unquote(match.group(1)).lower()
        if re.fullmatch(_SECRET_KEY, key, re.IGNORECASE) and match.end(2) > match.start(2):
            spans.append((match.start(2), match.end(2)))
    return spans


def secrets_in(dsn: str) -> list[str]:
    """The password-like values written in ``dsn`` (as written, and decoded).

    Generous on purpose: whatever could be a password counts, so that a
    message about a broken DSN can be checked against all of it.
    """
    found = []
    for start, end in _secret_spans(dsn):
        raw = dsn[start:end].strip("'")
        found += [raw, urllib.parse.unquote(raw)]
    return sorted({f for f in found if f}, key=len, reverse=True)


def mask_dsn(dsn: str) -> str:
    """The DSN (or a message quoting DSNs) with every password replaced by ``***``.

    Textual, so it works on strings libpq cannot parse, in any scheme case,
    and keeps the form the user wrote: URL user info (up to the last '@'),
    ``password=`` / ``sslpassword=`` in key/value strings and URL queries.
    """
    spans = _secret_spans(dsn)
    if not spans:
        return dsn
    out, last = [], 0
    for start, end in sorted(spans):
        out.append(dsn[last : max(start, last)] + "***")
        last = max(last, end)
    return "".join(out) + dsn[last:]


def _is_port(text: str) -> bool:
    return bool(re.fullmatch(r"[0-9]{1,5}", text)) and 0 < int(text) < 65536


def _url_problem(dsn: str) -> str | None:
    """What libpq would misread or refuse in a URL's scheme or user info, or ``None``."""
    match = _SCHEME.match(dsn.strip())
    if match is None:
        return None
    if not match.group(0).islower():
        return "libpq reads only a lower-case postgresql:// or postgres:// scheme"
    rest = dsn.strip()[match.end() :]
    # libpq's user info runs to the first '@' before the first '/'.
    authority_end = rest.find("/") if "/" in rest else len(rest)
    query = rest.find("?", authority_end)
    path = rest[authority_end : query if query >= 0 else len(rest)]
    if "@" in path:
        return "the user or password holds '/': percent-encode it as %2F"
    if rest[:authority_end].count("@") > 1:
        return "the user or password holds '@': percent-encode it as %40"
    return None


def _suspicious(dsn: str) -> bool:
    """Could ``dsn`` hold a password, in any form, even a broken one?"""
    return bool(secrets_in(dsn)) or re.search(r"pass|pwd|pasw", dsn, re.IGNORECASE) is not None


def _libpq_detail(exc: Exception, dsn: str) -> str:
    """libpq's complaint, without any fragment of a password it may quote.

    In a DSN that could hold a password, libpq's quoted fragments are cut
    (but for one or two characters, like ``"="``): a broken DSN is exactly
    where a password is split in ways no pattern foresees.
    """
    text = str(exc).strip()
    detail = re.split(r"[\r\n]", text)[0] if text else "cannot parse"
    secrets = secrets_in(dsn)
    suspicious = _suspicious(dsn)
    for secret in secrets:  # first, while libpq's quoting is still intact
        detail = detail.replace(secret, "***")

    def quote(match: re.Match[str]) -> str:
        quoted = match.group(0)
        fragment = quoted[1:-1] if len(quoted) > 1 and quoted.endswith('"') else quoted[1:]
        keep = len(fragment) <= 2 if suspicious else _harmless(fragment, secrets)
        return quoted if keep else '"..."'

    return _QUOTED.sub(quote, detail)


def _harmless(fragment: str, secrets: list[str]) -> bool:
    """Nothing of a secret in ``fragment`` (no run of 3 characters in common)."""
    if not fragment.strip() or (len(fragment) <= 2 and not fragment.isalnum()):
        return True  # '=' and the like
    windows = {fragment[i : i + 3] for i in range(max(1, len(fragment) - 2))}
    return not any(fragment in s or any(w in s for w in windows) for s in secrets)


def parse_dsn(dsn: str, *, field: str = "dsn") -> dict[str, str]:
    """libpq's parse of ``dsn`` as a dict, or a ConfigurationError naming ``field``.

    A URL whose user info libpq would split wrongly (an unescaped '/' or
    '@' in the password, which would turn parts of it into the host, port
    or database) is refused: percent-encode those characters.
    """
    problem = "contains a NUL character" if "\x00" in dsn else _url_problem(dsn)
    if problem is not None:
        raise ConfigurationError(f"{field}: invalid DSN {mask_dsn(dsn)!r}: {problem}")
    try:
        params = {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}
    except psycopg.ProgrammingError as exc:
        # A DSN libpq cannot read may hold a password where no mask finds it.
        shown = "(not shown: it may hold a password)" if _suspicious(dsn) else repr(dsn)
        raise ConfigurationError(
            f"{field}: invalid DSN {shown}: {_libpq_detail(exc, dsn)}"
        ) from None
    for key, allowed in _CHOICES.items():
        if key in params and params[key] not in allowed:
            raise ConfigurationError(
                f"{field}: {key} {params[key]!r} in {mask_dsn(dsn)!r} is not one of "
                f"{', '.join(allowed)}"
            )
    for address in params.get("hostaddr", "").split(","):
        if address.strip():
            try:
                ipaddress.ip_address(address.strip())
            except ValueError:
                raise ConfigurationError(
                    f"{field}: hostaddr {address!r} in {mask_dsn(dsn)!r} is not an IP address"
                ) from None
    for port in params.get("port", "").split(","):
        if port.strip() and not _is_port(port.strip()):
            shown = repr(port) if _harmless(port, secrets_in(dsn)) else "'...'"
            raise ConfigurationError(
                f"{field}: port {shown} in {mask_dsn(dsn)!r} is not a port number "
                "(1-65535, or empty for 5432)"
            )
    return params


def split_multihost(dsn: str, *, field: str = "dsn") -> list[str]:
    """One DSN per host of a libpq multi-host DSN, in the order given.

    ``port`` may list one port per host or a single port for all of them,
    as in libpq. ``target_session_attrs`` and ``load_balance_hosts`` are
    dropped: pgfailover decides the role of each node itself.

    Raises:
        ConfigurationError: the DSN does not parse, names no host, or the
            port list does not match the host list.
    """
    params = parse_dsn(dsn, field=field)
    hosts = params.pop("host", "").split(",") if params.get("host") else []
    hostaddrs = params.pop("hostaddr", "").split(",") if params.get("hostaddr") else []
    ports = params.pop("port", "").split(",") if params.get("port") else []
    params.pop("target_session_attrs", None)
    params.pop("load_balance_hosts", None)
    count = max(len(hosts), len(hostaddrs))
    if count == 0:
        raise ConfigurationError(f"{field}: DSN {mask_dsn(dsn)!r} names no host")
    if hosts and hostaddrs and len(hosts) != len(hostaddrs):
        raise ConfigurationError(
            f"{field}: {len(hosts)} hosts but {len(hostaddrs)} hostaddrs in {mask_dsn(dsn)!r}"
        )
    if len(ports) not in (0, 1, count):
        raise ConfigurationError(
            f"{field}: {count} hosts but {len(ports)} ports in {mask_dsn(dsn)!r} "
            "(give one port for all hosts, or one per host)"
        )
    for port in ports:
        if port.strip() and not _is_port(port.strip()):
            raise ConfigurationError(
                f"{field}: port {port!r} in {mask_dsn(dsn)!r} is not a port number "
                "(1-65535, or empty for 5432)"
            )
    result = []
    for index in range(count):
        node = dict(params)
        if hosts:
            node["host"] = hosts[index]
        if hostaddrs:
            node["hostaddr"] = hostaddrs[index]
        if ports:
            node["port"] = ports[0] if len(ports) == 1 else ports[index]
        result.append(make_conninfo("", **node))
    return result


def node_address(dsn: str) -> str:
    """``host:port`` of a single-host DSN, for naming nodes and messages."""
    params = parse_dsn(dsn)
    host = params.get("host") or params.get("hostaddr") or "localhost"
    return f"{host}:{params.get('port') or '5432'}"
