"""The model proxy on a TCP port, for sandboxes that cannot be handed a unix
socket (Kubernetes pods run on other nodes).

Each sandbox gets an unguessable path token; its runner's
``ANTHROPIC_BASE_URL`` is ``http://<this replica's pod IP>:<port>/s/<token>``.
The token names the sandbox here the way the socket a request arrives on
names it for the unix sites: a request with an unknown token is refused,
and the request is then handled by ``ModelProxy`` itself (same key
injection, allowlist, budget refusal and usage metering). A request reaches
the replica that owns the sandbox because the URL carries that replica's own
address. Who may connect at all is the NetworkPolicy's job (k8s/).

Bounds, as on the unix sockets (``egress_gate``): connections are capped per
peer address (each pod has its own) and must deliver a request head in
time; requests in flight, drains included, are capped per token.
"""

from __future__ import annotations

import asyncio
import secrets

import structlog
from aiohttp import web

from .egress import SANDBOX_ID_KEY, ModelProxy, error_response
from .egress_gate import Gate

log = structlog.get_logger(__name__)

PREFIX = "/s/"


class ProxyPort:
    """One aiohttp TCP site in front of ``proxy``; see the module docstring."""

    def __init__(self, proxy: ModelProxy, host: str, port: int, advertise_host: str) -> None:
        self.proxy = proxy
        self.host = host
        self.port = port
        self.advertise_host = advertise_host
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self._by_token: dict[str, str] = {}
        self._token_of: dict[str, str] = {}
        limits = proxy.limits
        self.gate = Gate(limits.connections_per_sandbox, limits.request_timeout_s)
        self.in_flight: dict[str, int] = {}  # requests being served, by token

    async def start(self) -> None:
        limits = self.proxy.limits
        app = web.Application(client_max_size=limits.request_max_bytes)
        app.router.add_route("*", PREFIX + "{token}/{tail:.*}", self._handle)
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, keepalive_timeout=limits.request_timeout_s
        )
        await self._runner.setup()
        assert self._runner.server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self.gate.factory(_peer, self._runner.server), self.host, self.port)
        if self.port == 0:  # tests: learn the port the system chose
            self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("proxy_port_started", host=self.host, port=self.port)

    def open(self, sandbox_id: str) -> str:
        """The base URL one sandbox's runner talks to (idempotent per sandbox)."""
        token = self._token_of.get(sandbox_id)
        if token is None:
            token = secrets.token_urlsafe(32)
            self._by_token[token] = sandbox_id
            self._token_of[sandbox_id] = token
        return f"http://{self.advertise_host}:{self.port}{PREFIX}{token}"

    def close_sandbox(self, sandbox_id: str) -> None:
        token = self._token_of.pop(sandbox_id, None)
        if token is not None:
            self._by_token.pop(token, None)

    async def close(self) -> None:
        self._by_token.clear()
        self._token_of.clear()
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        with self.gate.in_request(request.transport):
            token = request.match_info["token"]
            sandbox_id = self._by_token.get(token)
            if sandbox_id is None:
                return error_response(403, "forbidden", "unknown sandbox")
            if self.in_flight.get(token, 0) >= self.gate.cap:
                return error_response(503, "overloaded_error", "too many requests in flight from this sandbox")
            tail = "/" + request.match_info["tail"]
            inner = request.clone(rel_url=request.rel_url.with_path(tail, keep_query=True))
            inner[SANDBOX_ID_KEY] = sandbox_id
            self.in_flight[token] = self.in_flight.get(token, 0) + 1
            try:
                return await self.proxy.handle(inner)
            finally:
                if (left := self.in_flight.get(token, 1) - 1) > 0:
                    self.in_flight[token] = left
                else:
                    self.in_flight.pop(token, None)


def _peer(transport: asyncio.BaseTransport) -> str:
    """The gate's key on TCP: the peer's address (one per pod)."""
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else "?"
