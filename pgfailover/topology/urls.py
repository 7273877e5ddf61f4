"""What a ``source`` setting may say: one or more arbiter URLs, checked at start-up.

``source = "http://arbiter-a:8009,http://arbiter-b:8009"``: the managers
follow the first arbiter that answers and move to the next one when it goes
silent. A URL may carry credentials for a proxy in front of the arbiter;
they are masked wherever the URL is shown.
"""

from __future__ import annotations

import urllib.parse

from pgfailover.errors import ConfigurationError

__all__ = ["mask_url", "source_urls"]

SCHEMES = ("http", "https")


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for logs, status and errors)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


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
            raise ConfigurationError(f"{setting} {shown!r}: {exc}") from None
        if parts.scheme not in SCHEMES or not parts.hostname:
            raise ConfigurationError(
                f"{setting} {shown!r}: expected http://host:port or https://host:port"
                + (" (the arbiter's --stream-port)" if setting == "source" else "")
            )
        if port == 0 or any(c.isspace() for c in url) or parts.query or parts.fragment:
            raise ConfigurationError(
                f"{setting} {shown!r}: expected http(s)://host:port[/path], no blanks, "
                "query or fragment"
            )
    return urls
