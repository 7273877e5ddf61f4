"""HTTPS to etcd and to a source: the CA to trust, and a client certificate (mutual TLS).

etcd clusters are commonly run with ``--client-cert-auth`` and a private CA
(as Patroni's ``etcd3`` settings ``cacert``, ``cert`` and ``key`` expect),
and an arbiter or Patroni's REST API may sit behind TLS with a CA of the
site's own. :class:`TLSFiles` names the files; :meth:`TLSFiles.context`
loads them once, when the manager or the arbiter starts, into the
:class:`ssl.SSLContext` every urllib3 pool of that connection is given.
Loading them there, not at the first connection, is what turns a missing
file, a key that does not match its certificate or a key with a passphrase
into one :class:`ConfigurationError` line before anything runs, rather than
a source that never answers. Read once: a renewed certificate is taken at
the next start.

The context is urllib3's own (:func:`urllib3.util.create_urllib3_context`):
certificates are verified, and urllib3 checks the server's name against
the URL's host as it does without one.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

import urllib3

from pgfailover.errors import ConfigurationError

__all__ = ["TLSFiles", "pool_manager", "tls_failure"]


def _no_passphrase() -> bytes:
    # Without a callback OpenSSL would ask for it on the terminal (and wait).
    raise ValueError("the key has a passphrase")


@dataclass(frozen=True)
class TLSFiles:
    """``ca_file``: the CA certificates that signed the servers' (default: the
    system's); ``cert_file`` and ``key_file``: a client certificate for servers that
    ask for one (the key may be in ``cert_file`` itself; it must have no passphrase).
    """

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def __bool__(self) -> bool:
        return any((self.ca_file, self.cert_file, self.key_file))

    def check(self, setting: str, *, wanted: bool) -> None:
        """Refuse what is wrong without reading a file: files given for nothing
        (``wanted`` false: ``setting`` is not set), a key without its certificate.
        The files themselves are read by :meth:`context`, when the manager that
        follows the source starts, or ``serve`` builds its lease: settings only
        read and checked (``[server]``'s etcd files, by a command other than
        ``serve``) need no access to a private key.

        Raises:
            ConfigurationError: one line, naming the settings.
        """
        if self and not wanted:
            raise ConfigurationError(
                f"{setting}_ca_file, {setting}_cert_file and {setting}_key_file are for "
                f"HTTPS to the {setting}: set {setting} too"
            )
        self._check_key(setting)

    def _check_key(self, setting: str) -> None:
        if self.key_file and not self.cert_file:
            raise ConfigurationError(
                f"{setting}_key_file {self.key_file!r} needs {setting}_cert_file (the "
                "client certificate it belongs to)"
            )

    def context(self, setting: str) -> ssl.SSLContext | None:
        """The files loaded (``None`` when none is given: urllib3's defaults);
        ``setting`` names them in errors (``source``, ``etcd``).

        Raises:
            ConfigurationError: a key without a certificate, or a file that
                cannot be read or used (which, and why, in one line).
        """
        if not self:
            return None
        self._check_key(setting)
        context = urllib3.util.create_urllib3_context()
        loading = f"{setting}_ca_file {self.ca_file!r}"
        try:
            if self.ca_file:
                context.load_verify_locations(cafile=self.ca_file)
            else:
                context.load_default_certs()
            if self.cert_file:
                loading = f"{setting}_cert_file {self.cert_file!r}" + (
                    f" with {setting}_key_file {self.key_file!r}" if self.key_file else ""
                )
                context.load_cert_chain(self.cert_file, self.key_file, password=_no_passphrase)
        except (OSError, ssl.SSLError, ValueError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            no_key = self.cert_file and not self.key_file
            if isinstance(exc, ssl.SSLError) and no_key and "_cert_file" in loading:
                why += f" (no key in it? give {setting}_key_file)"
            raise ConfigurationError(f"{loading}: cannot be used: {why}") from None
        return context


def pool_manager(context: ssl.SSLContext | None, **kwargs: Any) -> urllib3.PoolManager:
    """A urllib3 pool manager that uses ``context`` for HTTPS (``None``: the defaults)."""
    if context is not None:
        kwargs["ssl_context"] = context
    return urllib3.PoolManager(**kwargs)


def tls_failure(exc: BaseException) -> str | None:
    """What TLS said, in a few words, when a request failed in its handshake (an unknown
    CA, a host name the certificate lacks, a client certificate refused); ``None`` when
    the failure was not TLS's. urllib3 wraps it: MaxRetryError, SSLError, ssl.SSLError."""
    reason: object = exc
    for _ in range(8):
        if not isinstance(reason, BaseException) or isinstance(reason, ssl.SSLError):
            break
        reason = getattr(reason, "reason", None) or reason.__cause__ or reason.__context__
    if not isinstance(reason, ssl.SSLError):
        return None
    said = str(getattr(reason, "verify_message", None) or reason.reason or reason)
    if "BAD_CERTIFICATE" in said or "CERTIFICATE_REQUIRED" in said:
        said = "the server refused the client certificate (none given, or not signed by its CA)"
    elif isinstance(reason, ssl.SSLEOFError):
        # TLS 1.3: a refused client certificate can reach the client as the
        # connection's end rather than as the server's alert.
        said = "the server ended the handshake (does it want a client certificate?)"
    return f"TLS: {said[:160]}"
