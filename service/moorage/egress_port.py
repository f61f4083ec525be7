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
"""

from __future__ import annotations

import secrets

import structlog
from aiohttp import web

from .egress import SANDBOX_ID_KEY, ModelProxy

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
        self._by_token: dict[str, str] = {}
        self._token_of: dict[str, str] = {}

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", PREFIX + "{token}/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:  # tests: learn the port the system chose
            self.port = int(self._runner.addresses[0][1])
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
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        sandbox_id = self._by_token.get(request.match_info["token"])
        if sandbox_id is None:
            return web.json_response(
                {"type": "error", "error": {"type": "forbidden", "message": "unknown sandbox"}}, status=403
            )
        tail = "/" + request.match_info["tail"]
        inner = request.clone(rel_url=request.rel_url.with_path(tail, keep_query=True))
        inner[SANDBOX_ID_KEY] = sandbox_id
        return await self.proxy.handle(inner)
