"""What the ASGI app refuses before any route runs: browser pages from
origins that are not allowed (cross-site WebSocket hijacking), and, with a
separate metrics listener, the operational routes on the public port.

A browser attaches an ``Origin`` header to every WebSocket handshake and to
every non-GET request, and a page cannot forge it. WebSockets are not subject
to CORS, so without this check any page the operator visits could open a
session on a loopback service that runs without authentication. Clients
that send no ``Origin`` (bots, SDKs, ``curl``) are not browsers and are not
affected. The decision (``OriginPolicy.allows``) is pure; ``EdgeGuard`` is
the thin ASGI layer that applies it to every WebSocket and every
state-changing HTTP request, so routes added later are covered too.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import structlog
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from .errors import Code, error_body, http_status

log = structlog.get_logger(__name__)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
DEFAULT_PORTS = {"http": 80, "https": 443}
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
OPS_PATHS = frozenset({"/metrics", "/readyz"})


def _host_port(host: str, port: int) -> str:
    host = host.lower().strip("[]")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def normalize_origin(text: str) -> str | None:
    """``scheme://host:port`` (lowercase, explicit port) of an http(s)
    origin, or None for anything else (``null``, other schemes, paths)."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
        return None
    if parts.query or parts.fragment or parts.username or parts.password:
        return None
    return f"{parts.scheme}://{_host_port(parts.hostname, port or DEFAULT_PORTS[parts.scheme])}"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class OriginPolicy:
    allowed: frozenset[str]  # normalized origins from MOORAGE_ALLOWED_ORIGINS
    own_hosts: frozenset[str]  # host names that name this service

    @classmethod
    def build(cls, allowed_origins: str, host: str, port: int) -> OriginPolicy:
        """Raises ValueError for an entry that is not an http(s) origin."""
        allowed = set()
        for entry in (e.strip() for e in allowed_origins.split(",")):
            if not entry:
                continue
            origin = normalize_origin(entry)
            if origin is None:
                raise ValueError(f"MOORAGE_ALLOWED_ORIGINS: {entry!r} is not an origin like https://host[:port]")
            allowed.add(origin)
        own = {host.lower().strip("[]")}
        if own & set(LOOPBACK_NAMES) or (_is_ip(host) and ipaddress.ip_address(host.strip("[]")).is_loopback):
            own |= set(LOOPBACK_NAMES)
        for scheme in DEFAULT_PORTS:
            for name in own:
                if not _is_ip(name) or not ipaddress.ip_address(name).is_unspecified:
                    allowed.add(f"{scheme}://{_host_port(name, port)}")
        return cls(frozenset(allowed), frozenset(own))

    def allows(self, origin: str | None, host_header: str | None) -> bool:
        """May a request with this ``Origin`` (None: not a browser), arriving
        with this ``Host`` header, go on?

        Allowed: no Origin; an origin in the list (which holds the service's
        own ``scheme://host:port`` for the address it is bound to, and the
        loopback names when bound to loopback); or the origin the ``Host``
        header names when that host names this service: a bound name or an IP
        address. A DNS name in ``Host`` counts only when listed: a page on an
        attacker's name rebound to 127.0.0.1 (DNS rebinding) sends its own
        name as both ``Host`` and ``Origin``."""
        if origin is None:
            return True
        normalized = normalize_origin(origin)
        if normalized is None:
            return False
        if normalized in self.allowed:
            return True
        if not host_header:
            return False
        scheme = normalized.split("://", 1)[0]
        try:
            parts = urlsplit(f"{scheme}://{host_header.strip()}")
            host, port = parts.hostname, parts.port or DEFAULT_PORTS[scheme]
        except ValueError:
            return False
        if not host or parts.path or not (host in self.own_hosts or _is_ip(host)):
            return False
        return normalized == f"{scheme}://{_host_port(host, port)}"


def listener_serves(path: str, on_metrics_listener: bool, split: bool) -> bool:
    """With a metrics listener (``split``), /metrics and /readyz live only
    there and it serves nothing else but /healthz; without, one port serves all."""
    if not split:
        return True
    if on_metrics_listener:
        return path in OPS_PATHS or path == "/healthz"
    return path not in OPS_PATHS


class EdgeGuard:
    """ASGI middleware: the origin check on every WebSocket and every
    state-changing HTTP request, and the metrics-listener split."""

    def __init__(
        self,
        app: ASGIApp,
        policy: OriginPolicy,
        metrics_port: int = 0,
        on_refused: Callable[[Code], None] | None = None,
    ) -> None:
        self.app = app
        self.policy = policy
        self.metrics_port = metrics_port
        self.on_refused = on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        server = scope.get("server")
        on_metrics = bool(self.metrics_port) and server is not None and server[1] == self.metrics_port
        if not listener_serves(scope["path"], on_metrics, bool(self.metrics_port)):
            if scope["type"] == "http":
                await PlainTextResponse("Not Found", status_code=404)(scope, receive, send)
            else:
                await send({"type": "websocket.close", "code": 1008, "reason": ""})
            return
        headers = dict(scope["headers"])
        raw_origin = headers.get(b"origin")
        checked = scope["type"] == "websocket" or scope.get("method", "GET") not in SAFE_METHODS
        if checked and raw_origin is not None:
            origin = raw_origin.decode("latin-1")
            host = headers.get(b"host", b"").decode("latin-1") or None
            if not self.policy.allows(origin, host):
                await self._refuse(scope, receive, send, origin)
                return
        await self.app(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, origin: str) -> None:
        code = Code.ORIGIN_NOT_ALLOWED
        log.info("client_refused", reason=str(code), origin=origin[:200], path=scope["path"][:200])
        if self.on_refused is not None:
            self.on_refused(code)
        response = JSONResponse(
            error_body(code, "this browser origin may not use this service (MOORAGE_ALLOWED_ORIGINS)"),
            status_code=http_status(code),
        )
        if scope["type"] == "websocket":
            await WebSocket(scope, receive, send).send_denial_response(response)
        else:
            await response(scope, receive, send)
