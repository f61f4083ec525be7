"""Who is calling: bearer tokens mapped to tenants.

Two sources, checked in this order:

- ``MOORAGE_API_KEYS`` (``tenant:token,…``): only their SHA-256 digests are
  kept in memory; checked without touching the database.
- the ``api_tokens`` table (``moorage tokens create --tenant T``): tokens of the
  form ``mrg_<id>_<secret>``, looked up by id with one primary-key read and
  compared as digests in constant time. A valid answer is cached in process for
  at most ``MOORAGE_AUTH_CACHE_TTL_S`` (default 5 s, never past the token's
  expiry), so a revocation reaches every replica within that bound. Failures
  are never cached. A database outage raises ``DatabaseUnavailable`` (the
  handshake answers 503), it never lets a caller in.

A WebSocket (or an HTTP request) presents its token as ``Authorization: Bearer <token>``
or ``x-api-key: <token>``, or — for
browsers, which cannot set headers — as ``?token=<token>`` or the subprotocol
``bearer.<token>`` (offered next to ``moorage.v1``, which the server then
selects; the token is never echoed). The service is open (every caller is
tenant ``default``) only on a loopback bind while ``MOORAGE_API_KEYS`` is empty
and no token was ever issued: the first ``moorage tokens create`` closes it.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from moorage_session_store import DatabaseUnavailable, Tokens
from moorage_session_store.columns import utcnow
from starlette.requests import HTTPConnection

SUBPROTOCOL = "moorage.v1"
BEARER_SUBPROTOCOL = "bearer."
OPEN_TENANT = "default"
TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
MIN_TOKEN_CHARS = 16
T = TypeVar("T")
CACHE_MAX_ENTRIES = 10_000
DB_TIMEOUT_S = 5.0


class AuthConfigError(ValueError):
    pass


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_api_keys(spec: str) -> dict[str, str]:
    """``tenant:token,…`` -> {sha256(token): tenant}; AuthConfigError names a bad entry by position."""
    keys: dict[str, str] = {}
    for n, entry in enumerate((e.strip() for e in spec.split(",")), start=1):
        if not entry:
            continue
        tenant, sep, token = entry.partition(":")
        if not sep or not TENANT_RE.match(tenant):
            raise AuthConfigError(f"MOORAGE_API_KEYS entry {n}: expected tenant:token with a plain tenant name")
        if len(token) < MIN_TOKEN_CHARS:
            raise AuthConfigError(f"MOORAGE_API_KEYS entry {n}: tokens need at least {MIN_TOKEN_CHARS} characters")
        keys[digest(token)] = tenant
    return keys


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Credentials:
    token: str | None
    subprotocol: str | None  # what to accept the socket with


def credentials(ws: HTTPConnection) -> Credentials:
    """The token a WebSocket handshake (or an HTTP request) presents."""
    offered = [p.strip() for p in ws.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    subprotocol = SUBPROTOCOL if SUBPROTOCOL in offered else None
    header = ws.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return Credentials(header[7:].strip() or None, subprotocol)
    if api_key := ws.headers.get("x-api-key", "").strip():  # curl users of the Managed Agents docs
        return Credentials(api_key, subprotocol)
    for proto in offered:
        if proto.startswith(BEARER_SUBPROTOCOL):
            return Credentials(proto[len(BEARER_SUBPROTOCOL) :] or None, SUBPROTOCOL)
    return Credentials(ws.query_params.get("token") or None, subprotocol)


@dataclass(frozen=True)
class Verdict:
    """Who the caller is (``tenant``), or why not (``reason``); ``token_id`` names a table token (public)."""

    tenant: str | None
    reason: str
    token_id: str | None = None


@dataclass
class _Cached:
    tenant: str
    token_id: str
    until: float  # monotonic


class Authenticator:
    """Env keys, then table tokens (cached briefly). Build it with the database's :class:`Tokens` or ``None``."""

    def __init__(
        self,
        keys: dict[str, str],
        tokens: Tokens | None = None,
        *,
        allow_open: bool = True,
        cache_ttl_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._keys = keys
        self._tokens = tokens
        self._allow_open = allow_open
        self._ttl = cache_ttl_s
        self._clock = clock
        self._cache: dict[str, _Cached] = {}
        self._issued = False  # a table token exists: never open again (tokens are revoked, not deleted)
        self._issued_checked_at: float | None = None

    async def open(self) -> bool:
        """Whether every caller is let in as tenant ``default`` (no keys, no issued tokens, loopback)."""
        if self._keys or not self._allow_open:
            return False
        if self._tokens is None or self._issued:
            return not self._issued
        now = self._clock()
        if self._issued_checked_at is None or now - self._issued_checked_at >= self._ttl:
            self._issued = await self._bounded(self._tokens.any())
            self._issued_checked_at = now
        return not self._issued

    async def verdict(self, token: str | None) -> Verdict:
        """Judge a presented token; raise ``DatabaseUnavailable`` when the table cannot be read."""
        if token:
            tenant = self._keys.get(digest(token))
            if tenant is not None:
                return Verdict(tenant, "ok")
        if await self.open():
            return Verdict(OPEN_TENANT, "open")
        if not token:
            return Verdict(None, "missing")
        if self._tokens is None:
            return Verdict(None, "unknown")
        key = digest(token)
        now = self._clock()
        hit = self._cache.get(key)
        if hit is not None and now < hit.until:
            return Verdict(hit.tenant, "ok", hit.token_id)
        check = await self._bounded(self._tokens.check(token))
        token_id = check.record.id if check.record else None
        if not check.ok or check.record is None:
            self._cache.pop(key, None)
            return Verdict(None, check.reason, token_id)
        self._remember(key, _Cached(check.record.tenant, check.record.id, now + self._ttl_for(check.record.expires_at)))
        return Verdict(check.record.tenant, "ok", token_id)

    async def tenant(self, token: str | None) -> str | None:
        """The caller's tenant, or None when it must be refused."""
        return (await self.verdict(token)).tenant

    def _ttl_for(self, expires_at: datetime | None) -> float:
        if expires_at is None:
            return self._ttl
        return max(0.0, min(self._ttl, (expires_at - utcnow()).total_seconds()))

    def _remember(self, key: str, entry: _Cached) -> None:
        if len(self._cache) >= CACHE_MAX_ENTRIES:
            now = self._clock()
            self._cache = {k: v for k, v in self._cache.items() if v.until > now}
            while len(self._cache) >= CACHE_MAX_ENTRIES:
                del self._cache[next(iter(self._cache))]
        self._cache[key] = entry

    async def _bounded(self, awaitable: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(DB_TIMEOUT_S):
                return await awaitable
        except TimeoutError as exc:
            raise DatabaseUnavailable(f"the token table did not answer within {DB_TIMEOUT_S:.0f}s") from exc
