"""A small etcd v3 client over its JSON gateway: leases, transactions, reads.

The highly available arbiter (:mod:`pgfailover.lease`) needs a few calls of
etcd's v3 API: grant a lease, keep it alive, revoke it, take a key in a
transaction (only if nobody holds it), read keys (several at one revision)
and write the cluster's shared maintenance pause. etcd serves them as
JSON over HTTP (its gRPC gateway, ``/v3/...``, keys and values base64), so
this client is urllib3, which the project already uses, rather than a gRPC
stack; Patroni's own etcd3 support talks to the same gateway the same way.
The maintained Python clients were weighed and left: ``etcd3`` has had no
release since 2020, and ``etcd3gw`` brings requests, futurist and pbr for
these calls.

Every call goes to the endpoint that answered last, then the others in
turn, within ``timeout`` in all; an error etcd returns, or no endpoint
answering, is an :class:`EtcdError` with one line saying which.

An etcd with authentication on (``etcdctl auth enable``) is reached with a
user and password in the endpoint URL (``http://pgfailover:secret@etcd1:2379``,
percent-encoded as in any URL): the gateway takes no basic auth, so the
client asks ``/v3/auth/authenticate`` for a token once, sends it with every
call (and the Patroni source's watch), and asks again when etcd says the
token is no longer valid (simple tokens expire after ``--auth-token-ttl``,
5 minutes by default, and when the member restarts). The password is never
in a log line, status or error: endpoints are kept without it.

An etcd served over TLS (``https://`` endpoints), with a private CA or
asking for client certificates (``--client-cert-auth``), is reached with an
:class:`ssl.SSLContext` that has them loaded (:mod:`pgfailover.tls`).

Thread safety: an :class:`Etcd` may be used from several threads (urllib3's
pool is thread-safe; the endpoint order is a tuple replaced whole, so a
call reads a consistent one; the token is guarded by a lock).
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import urllib3

from pgfailover.errors import PgFailoverError
from pgfailover.tls import pool_manager, tls_failure
from pgfailover.topology.urls import mask_url

__all__ = ["Etcd", "EtcdError", "KeyValue", "split_credentials"]


class EtcdError(PgFailoverError):
    """etcd refused a call, or no endpoint answered (one line, which and why)."""


@dataclass(frozen=True)
class KeyValue:
    """One key as etcd holds it: ``create_revision`` fences its holder."""

    key: str
    value: str
    create_revision: int
    mod_revision: int
    lease: int


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _text(data: str | None) -> str:
    return base64.b64decode(data or "").decode(errors="replace")


def split_credentials(endpoint: str) -> tuple[str, tuple[str, str] | None]:
    """``endpoint`` without its user and password, and them (``None``: none given)."""
    parts = urllib.parse.urlsplit(endpoint.rstrip("/"))
    if parts.username is None:
        return urllib.parse.urlunsplit(parts), None
    user = urllib.parse.unquote(parts.username)
    password = urllib.parse.unquote(parts.password or "")
    bare = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    return bare, (user, password)


# What etcd says when a call's token is missing or no longer valid: ask for a new one.
_TOKEN_REFUSED = ("invalid auth token", "user name is empty")


class Etcd:
    """Calls to etcd at ``endpoints`` (``http://host:2379``, ``http://user:pw@host:2379``).

    Locks: ``_lock`` guards the token (a leaf; never held across a call).

    Thread safety: every method may be called from any thread.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout: float = 2.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if not endpoints:
            raise EtcdError("no etcd endpoint given")
        split = [split_credentials(e) for e in endpoints]
        self.endpoints = tuple(bare for bare, _ in split)
        self._credentials = next((c for _, c in split if c is not None), None)
        self._shown = ",".join(mask_url(e.rstrip("/")) for e in endpoints)
        self.timeout = timeout
        self._http = pool_manager(ssl_context, num_pools=len(self.endpoints) + 1, retries=False)
        self._lock = threading.Lock()
        self._token: str | None = None  # guarded by self._lock; "": authentication is off

    @property
    def shown(self) -> str:
        """The endpoints for logs and status, passwords masked."""
        return self._shown

    def auth_headers(self) -> dict[str, str]:
        """The header that authenticates a request (asking etcd for a token first if none
        is held); none without a user in the endpoints, or while etcd's is off.

        Raises:
            EtcdError: etcd refused the user and password, or did not answer.
        """
        if self._credentials is None:
            return {}
        with self._lock:
            token = self._token
        if token is None:
            name, password = self._credentials
            try:
                data = self._post("auth/authenticate", {"name": name, "password": password}, {})
                token = str(data.get("token") or "")
            except EtcdError as exc:
                if "authentication is not enabled" not in str(exc):
                    raise
                token = ""  # a user given before etcd's authentication is turned on
            with self._lock:
                self._token = token
        return {"Authorization": token} if token else {}

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``/v3/<path>``; its JSON.

        The endpoint that answered last is tried first; one that cannot be
        reached, or answers 5xx (a member without a leader), passes the call
        to the next, all within ``timeout`` in total. A token etcd no longer
        takes is replaced and the call made once more.

        Raises:
            EtcdError: etcd refused the call (4xx), or no endpoint answered in time.
        """
        try:
            return self._post(path, body, self.auth_headers())
        except EtcdError as exc:
            if self._credentials is None or not any(t in str(exc) for t in _TOKEN_REFUSED):
                raise
            self.forget_token()
            return self._post(path, body, self.auth_headers())

    def forget_token(self) -> None:
        """Ask etcd for a new token before the next call (it refused this one)."""
        with self._lock:
            self._token = None

    def _post(self, path: str, body: dict[str, Any], auth: dict[str, str]) -> dict[str, Any]:
        """:meth:`call` without the token's renewal."""
        payload = json.dumps(body).encode()
        failures = []
        deadline = time.monotonic() + self.timeout
        for endpoint in list(self.endpoints):
            left = deadline - time.monotonic()
            if left <= 0:
                failures.append("out of time")
                break
            try:
                response = self._http.request(
                    "POST",
                    f"{endpoint}/v3/{path}",
                    body=payload,
                    headers={**auth, "Content-Type": "application/json"},
                    timeout=urllib3.Timeout(total=left),
                )
            except urllib3.exceptions.HTTPError as exc:
                failures.append(f"{mask_url(endpoint)}: {tls_failure(exc) or type(exc).__name__}")
                continue
            try:
                data = json.loads(response.data or b"{}")
            except ValueError:
                data = {}
            if not isinstance(data, dict):
                data = {"error": "not a JSON object"}
            message = str(data.get("message") or data.get("error") or response.status)[:200]
            if response.status >= 500:
                failures.append(f"{mask_url(endpoint)}: {message}")
                continue
            if response.status != 200 or "error" in data:
                raise EtcdError(f"etcd {path}: {message}")
            self._prefer(endpoint)
            return data
        raise EtcdError(f"etcd {path}: no endpoint answered ({'; '.join(failures)})")

    def _prefer(self, endpoint: str) -> None:
        """Try ``endpoint`` first from now on (it answered)."""
        if self.endpoints[0] != endpoint:
            self.endpoints = (endpoint, *(e for e in self.endpoints if e != endpoint))

    def grant(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds; its ID."""
        return int(self.call("lease/grant", {"TTL": ttl, "ID": 0})["ID"])

    def keepalive(self, lease: int) -> int:
        """Renew ``lease``; the TTL it now has (0: it had expired, it is gone)."""
        result = self.call("lease/keepalive", {"ID": lease}).get("result", {})
        return int(result.get("TTL", 0))

    def revoke(self, lease: int) -> None:
        """End ``lease`` now: the keys attached to it are deleted."""
        self.call("lease/revoke", {"ID": lease})

    def get(self, key: str) -> KeyValue | None:
        """``key`` as etcd holds it now (a linearizable read), or ``None``."""
        kvs = self.call("kv/range", {"key": _b64(key)}).get("kvs", [])
        return _kv(kvs[0]) if kvs else None

    def get_many(self, keys: Sequence[str]) -> tuple[int, list[KeyValue | None]]:
        """Each of ``keys`` as etcd holds it, all read at one revision (one
        transaction, linearizable); that revision, and the keys (``None``: absent)."""
        body = {"compare": [], "success": [{"request_range": {"key": _b64(k)}} for k in keys]}
        result = self.call("kv/txn", body)
        responses = result.get("responses") or []
        found: list[KeyValue | None] = []
        for index in range(len(keys)):
            answer = responses[index] if index < len(responses) else {}
            kvs = answer.get("response_range", {}).get("kvs", [])
            found.append(_kv(kvs[0]) if kvs else None)
        return _revision(result), found

    def put(self, key: str, value: str) -> int:
        """Set ``key`` to ``value`` (attached to no lease: it outlives every arbiter);
        the revision of the write."""
        return _revision(self.call("kv/put", {"key": _b64(key), "value": _b64(value)}))

    def create(self, key: str, value: str, lease: int) -> tuple[bool, KeyValue | None]:
        """Put ``key`` attached to ``lease`` only if it does not exist.

        Returns whether this call created it, and the key as it is now
        (ours, or the holder's).
        """
        body = {
            "compare": [{"key": _b64(key), "target": "CREATE", "create_revision": "0"}],
            "success": [{"request_put": {"key": _b64(key), "value": _b64(value), "lease": lease}}],
            "failure": [{"request_range": {"key": _b64(key)}}],
        }
        result = self.call("kv/txn", body)
        created = bool(result.get("succeeded", False))
        if not created:
            kvs = result.get("responses", [{}])[0].get("response_range", {}).get("kvs", [])
            return False, _kv(kvs[0]) if kvs else None
        return True, self.get(key)

    def delete_if(self, key: str, create_revision: int) -> bool:
        """Delete ``key`` if it is still the one created at ``create_revision``."""
        body = {
            "compare": [
                {"key": _b64(key), "target": "CREATE", "create_revision": str(create_revision)}
            ],
            "success": [{"request_delete_range": {"key": _b64(key)}}],
        }
        return bool(self.call("kv/txn", body).get("succeeded", False))

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.clear()


def _revision(result: dict[str, Any]) -> int:
    """The store revision an answer was made at (its header's)."""
    return int((result.get("header") or {}).get("revision", 0))


def _kv(raw: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=_text(raw.get("key")),
        value=_text(raw.get("value")),
        create_revision=int(raw.get("create_revision", 0)),
        mod_revision=int(raw.get("mod_revision", 0)),
        lease=int(raw.get("lease", 0)),
    )
