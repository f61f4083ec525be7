"""A real MCP server for the vault tests: the ``mcp`` package's streamable-HTTP server on the host's
loopback, with one tool (``whoami``), that answers only requests carrying
``Authorization: Bearer <token>`` (401 otherwise) and records every Authorization header it got."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import uvicorn
from mcp.server.mcpserver import MCPServer
from starlette.types import ASGIApp, Receive, Scope, Send
from support import free_port, wait_until


class BearerOnly:
    """ASGI middleware: 401 unless the request carries the expected bearer token."""

    def __init__(self, app: ASGIApp, token: str, seen: list[str]) -> None:
        self.app = app
        self.token = token
        self.seen = seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        got = headers.get("authorization", "")
        self.seen.append(got)
        if got != f"Bearer {self.token}":
            await send({"type": "http.response.start", "status": 401, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"a bearer token is required"})
            return
        await self.app(scope, receive, send)


class BearerMcpServer:
    """Runs in a thread of its own; ``url`` is its MCP endpoint, ``seen`` its Authorization headers."""

    def __init__(self, token: str, answer: str) -> None:
        self.token = token
        self.seen: list[str] = []
        self.calls = 0
        server: MCPServer[Any] = MCPServer("secure")

        @server.tool()
        def whoami() -> str:
            """Who the caller is, as the MCP server sees it."""
            self.calls += 1
            return answer

        app = BearerOnly(server.streamable_http_app(), token, self.seen)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=lambda: asyncio.run(self._server.serve()), daemon=True)

    def start(self) -> BearerMcpServer:
        self._thread.start()
        wait_until(lambda: self._server.started, 10, "the MCP server to listen")
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
