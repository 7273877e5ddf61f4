"""What a ``source`` setting may say, checked at start-up (:func:`parse_source`).

- ``"http://arbiter-a:8009,http://arbiter-b:8009"``: ``pgfailover serve``
  arbiters; the managers follow the first that answers and move to the next
  one when it goes silent;
- ``"patroni+http://db1:8008,patroni+http://db2:8008"``: Patroni's REST APIs;
- ``"patroni+etcd://etcd1:2379,patroni+etcd://etcd2:2379/service/<scope>"``:
  the etcd Patroni keeps its keys in, and where (``<namespace>/<scope>``,
  Patroni's ``/service/`` namespace by default), watched;
  ``patroni+etcds://`` for an etcd served over TLS.

A URL may carry credentials (a proxy in front of the arbiter, Patroni's
REST API behind basic authentication); they are masked wherever the URL is
shown.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Literal

from pgfailover.errors import ConfigurationError

__all__ = ["SourceSpec", "mask_url", "parse_source", "source_urls"]

SCHEMES = ("http", "https")
PATRONI = "patroni+"
Kind = Literal["arbiter", "patroni", "patroni-etcd"]


@dataclass(frozen=True)
class SourceSpec:
    """A parsed ``source``: what kind, its endpoints (``http(s)://host:port``, credentials
    kept) and, for Patroni's etcd, the keys' prefix (``/service/<scope>/``)."""

    kind: Kind
    urls: tuple[str, ...]
    prefix: str | None = None


def parse_source(text: str) -> SourceSpec:
    """The ``source`` setting, checked (one kind of URL per setting).

    Raises:
        ConfigurationError: an empty setting, a URL that is none of the
            three kinds, kinds mixed, or Patroni's etcd without one
            ``/<namespace>/<scope>`` path (the message names the URL, masked).
    """
    parts = [u.strip() for u in text.split(",") if u.strip()]
    if not any(p.startswith(PATRONI) for p in parts):
        return SourceSpec("arbiter", source_urls(text))
    if not all(p.startswith(PATRONI) for p in parts):
        raise ConfigurationError(
            "source: give either arbiter URLs or Patroni URLs (patroni+...), not both"
        )
    etcd = [p.startswith((f"{PATRONI}etcd://", f"{PATRONI}etcds://")) for p in parts]
    schemes = {p.split("://", 1)[0] for p, is_etcd in zip(parts, etcd, strict=True) if is_etcd}
    if len(schemes) > 1:  # a user and password would travel in clear to some of them
        raise ConfigurationError(
            "source: give Patroni's etcd endpoints all over TLS (patroni+etcds://) or "
            "all without (patroni+etcd://), not both"
        )
    if any(etcd) and not all(etcd):
        raise ConfigurationError(
            "source: give either Patroni's REST APIs (patroni+http://) or its etcd "
            "(patroni+etcd:// or patroni+etcds://), not both"
        )
    if not all(etcd):
        stripped = ",".join(_default_port(p[len(PATRONI) :], 8008) for p in parts)
        urls = source_urls(stripped, what="Patroni REST API URLs (patroni+http://host:8008)")
        for url in urls:
            if urllib.parse.urlsplit(url).path.strip("/"):
                raise ConfigurationError(
                    f"source {mask_url(url)[:120]!r}: a Patroni REST API URL has no path "
                    "(patroni+http://host:8008)"
                )
        return SourceSpec("patroni", urls)
    stripped = ",".join(
        _default_port(
            ("https://" if p.startswith(f"{PATRONI}etcds://") else "http://")
            + p.split("://", 1)[1],
            2379,
        )
        for p in parts
    )
    urls = source_urls(stripped, what="etcd URLs (patroni+etcd://host:2379/service/<scope>)")
    paths = {urllib.parse.urlsplit(u).path.strip("/") for u in urls} - {""}
    if len(paths) != 1 or any(not s for s in next(iter(paths), "").split("/")):
        raise ConfigurationError(
            "source: Patroni's etcd needs where its keys are, once: "
            "patroni+etcd://host:2379/<namespace>/<scope> (e.g. /service/main)"
        )
    prefix = "/" + paths.pop() + "/"
    endpoints = tuple(
        urllib.parse.urlunsplit(urllib.parse.urlsplit(u)._replace(path="")) for u in urls
    )
    return SourceSpec("patroni-etcd", endpoints, prefix)


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for logs, status and errors).

    Read off the text itself, not a parse: a password with ``#``, ``/`` or
    ``?`` in it (not percent-encoded) breaks a URL parser, and must not
    break the mask. Everything between the user's ``:`` and the last ``@``
    is hidden.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:  # no scheme, or a slash short: where the user ends is anyone's guess
        _, at, host = url.rpartition("@")
        return f"***@{host}" if at else url
    authority, at, host = rest.rpartition("@")
    if not at:
        return url
    user, colon, _ = authority.partition(":")
    if not colon:
        return url
    return f"{scheme}://{user}:***@{host}"


def _default_port(url: str, port: int) -> str:
    """``url`` with ``port`` when it names none (Patroni's REST API 8008, etcd 2379),
    left as it is when it cannot be read (the check that follows says why)."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.port is not None or not parts.hostname:
            return url
    except ValueError:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.netloc}:{port}"))


def source_urls(
    text: str, *, setting: str = "source", what: str = "arbiter URLs"
) -> tuple[str, ...]:
    """The URLs in a ``source`` setting (or another list of URLs: ``etcd``), each checked.

    Raises:
        ConfigurationError: an empty setting, or a URL that is not
            ``http(s)://host[:port]`` (the message names it, masked).
    """
    urls = tuple(u.strip() for u in text.split(",") if u.strip())
    if not urls:
        raise ConfigurationError(f"{setting}: give one or more {what}, comma-separated")
    for url in urls:
        shown = mask_url(url)[:120]
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError as exc:
            # The parser's words may quote a piece of a password: then none of them.
            why = str(exc) if shown == url[:120] else "cannot read its host and port"
            raise ConfigurationError(f"{setting} {shown!r}: {why}") from None
        if parts.scheme not in SCHEMES or not parts.hostname:
            raise ConfigurationError(
                f"{setting} {shown!r}: expected http://host:port or https://host:port"
                + (" (the arbiter's --stream-port)" if what == "arbiter URLs" else "")
            )
        if port == 0 or any(c.isspace() for c in url) or parts.query or parts.fragment:
            raise ConfigurationError(
                f"{setting} {shown!r}: expected http(s)://host:port[/path], no blanks, "
                "query or fragment"
            )
    if setting == "etcd" and len({urllib.parse.urlsplit(u).scheme for u in urls}) > 1:
        # The endpoints share one user and password (etcd's token is asked for at
        # any of them): some over TLS and some not would send it in clear.
        raise ConfigurationError("etcd: give its endpoints all https:// or all http://, not both")
    return urls
