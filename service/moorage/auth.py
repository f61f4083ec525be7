"""Who is calling: bearer tokens mapped to tenants.

Tokens come from ``MOORAGE_API_KEYS`` (``tenant:token,…``). Only their
SHA-256 digests are kept in memory. A WebSocket presents its token as
``Authorization: Bearer <token>``, or — for browsers, which cannot set
headers — as ``?token=<token>`` or the subprotocol ``bearer.<token>`` (offered
next to ``moorage.v1``, which the server then selects; the token is never
echoed). With no tokens configured the service is open, which it allows only
on a loopback bind.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass

from starlette.websockets import WebSocket

SUBPROTOCOL = "moorage.v1"
BEARER_SUBPROTOCOL = "bearer."
OPEN_TENANT = "default"
TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
MIN_TOKEN_CHARS = 16


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


def credentials(ws: WebSocket) -> Credentials:
    offered = [p.strip() for p in ws.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    subprotocol = SUBPROTOCOL if SUBPROTOCOL in offered else None
    header = ws.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return Credentials(header[7:].strip() or None, subprotocol)
    for proto in offered:
        if proto.startswith(BEARER_SUBPROTOCOL):
            return Credentials(proto[len(BEARER_SUBPROTOCOL) :] or None, SUBPROTOCOL)
    return Credentials(ws.query_params.get("token") or None, subprotocol)


class Authenticator:
    def __init__(self, keys: dict[str, str]) -> None:
        self._keys = keys

    @property
    def open(self) -> bool:
        return not self._keys

    def tenant(self, token: str | None) -> str | None:
        """The caller's tenant, or None when it must be refused."""
        if self.open:
            return OPEN_TENANT
        if not token:
            return None
        return self._keys.get(digest(token))
