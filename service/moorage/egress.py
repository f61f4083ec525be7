"""The model proxy: each sandbox's one way out.

Every sandbox gets its own unix socket; the socket a request arrives on is
the sandbox's identity (a sandbox cannot claim to be another). Requests to
the Messages API are forwarded to ``ANTHROPIC_BASE_URL`` with the real API key
put in place of the sandbox's placeholder; streamed (SSE) responses are passed
through chunk by chunk, never buffered. Token usage is read from every
response on the way past and added to that sandbox's ``Usage``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from .tunnel import Tunnel

log = structlog.get_logger(__name__)

ALLOWED_PATHS = ("/v1/messages", "/v1/messages/count_tokens")
# Hop-by-hop and identity headers we never pass on.
# accept-encoding goes too: the proxy reads usage from the bytes it relays.
DROP_REQUEST_HEADERS = {
    "host",
    "x-api-key",
    "authorization",
    "content-length",
    "connection",
    "transfer-encoding",
    "accept-encoding",
}
DROP_RESPONSE_HEADERS = {"content-length", "connection", "transfer-encoding", "content-encoding", "keep-alive"}
# Set by a front that has already identified the sandbox (egress_port: a path
# token); requests on the unix sites never carry it.
SANDBOX_ID_KEY = web.RequestKey("moorage_sandbox_id", str)


@dataclass
class Usage:
    """Tokens one sandbox spent, as read from the model's responses."""

    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    by_model: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, model: str, usage: dict[str, Any]) -> None:
        per_model = self.by_model.setdefault(model, {})
        for kind in ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"):
            value = usage.get(kind)
            if isinstance(value, int) and value > 0:
                setattr(self, kind, getattr(self, kind) + value)
                per_model[kind] = per_model.get(kind, 0) + value


class SseUsageReader:
    """Reads usage out of an SSE byte stream fed in arbitrary chunks."""

    def __init__(self) -> None:
        self._buffer = b""
        self.model = ""
        self.usage: dict[str, int] = {}

    def feed(self, chunk: bytes) -> None:
        self._buffer += chunk
        while b"\n\n" in self._buffer:
            event, self._buffer = self._buffer.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                if line.startswith(b"data:"):
                    self._data(line[5:].strip())
        if len(self._buffer) > 1024 * 1024:  # not SSE as we know it; stop reading
            self._buffer = b""

    def _data(self, raw: bytes) -> None:
        try:
            data = json.loads(raw)
        except ValueError:
            return
        if not isinstance(data, dict):
            return
        if data.get("type") == "message_start":
            message = data.get("message") or {}
            self.model = str(message.get("model", ""))
            self.usage.update({k: v for k, v in (message.get("usage") or {}).items() if isinstance(v, int)})
        elif data.get("type") == "message_delta":
            # message_delta carries the final (cumulative) counts.
            self.usage.update({k: v for k, v in (data.get("usage") or {}).items() if isinstance(v, int)})


class ModelProxy:
    """Owns one aiohttp server with one UnixSite per live sandbox."""

    def __init__(self, socket_dir: Path | None, upstream: str, api_key: str) -> None:
        # A unix socket path must fit in 108 bytes, so by default the sockets
        # live in a short private directory, not under the state dir.
        self._own_dir = socket_dir is None
        self.socket_dir = (socket_dir or Path(tempfile.mkdtemp(prefix="moorage-egress-", dir=_short_base()))).resolve()
        self.upstream = upstream.rstrip("/")
        self._api_key = api_key
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None
        self._sites: dict[str, tuple[web.UnixSite, str]] = {}
        self._by_path: dict[str, str] = {}
        self.usage: dict[str, Usage] = {}
        self.on_usage: Callable[[str, str, dict[str, int]], None] | None = None
        # Asked before each request: a reason to refuse it (a spent budget), or None.
        self.refusal: Callable[[str], str | None] | None = None
        # Opt-in HTTPS egress to allowlisted hosts (MOORAGE_EGRESS_ALLOW).
        self.tunnel: Tunnel | None = None

    async def start(self) -> None:
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.chmod(0o700)
        # aiohttp's default (1 MiB) refuses a conversation holding one large
        # user message; the Messages API takes 32 MB (issue 10 items 9, 10).
        app = web.Application(client_max_size=32 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        self._client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=900))

    async def open(self, sandbox_id: str) -> Path:
        """A new socket for one sandbox, in a directory only the service can
        enter; bwrap mounts it into the sandbox from a private stage."""
        assert self._runner is not None
        path = self.socket_dir / f"{secrets.token_hex(8)}.sock"
        site = web.UnixSite(self._runner, str(path))
        await site.start()
        os.chmod(path, 0o666)
        self._sites[sandbox_id] = (site, str(path))
        self._by_path[str(path)] = sandbox_id
        self.usage[sandbox_id] = Usage()
        return path

    async def close_sandbox(self, sandbox_id: str) -> None:
        if self.tunnel is not None:
            await self.tunnel.close_sandbox(sandbox_id)
        entry = self._sites.pop(sandbox_id, None)
        if entry is None:
            return
        site, path = entry
        self._by_path.pop(path, None)
        await site.stop()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    async def close(self) -> None:
        for sandbox_id in list(self._sites):
            await self.close_sandbox(sandbox_id)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._client is not None:
            await self._client.close()
        if self._own_dir:
            shutil.rmtree(self.socket_dir, ignore_errors=True)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Serve one request that a front (``egress_port``) accepted."""
        return await self._handle(request)

    def _sandbox_of(self, request: web.Request) -> str | None:
        claimed = request.get(SANDBOX_ID_KEY)
        if claimed is not None:
            return claimed if claimed in self._sites else None
        transport = request.transport
        sockname = transport.get_extra_info("sockname") if transport is not None else None
        return self._by_path.get(str(sockname)) if sockname else None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        sandbox_id = self._sandbox_of(request)
        if sandbox_id is None:
            return web.json_response(
                {"type": "error", "error": {"type": "forbidden", "message": "unknown sandbox"}}, status=403
            )
        if request.method != "POST" or request.path not in ALLOWED_PATHS:
            return web.json_response(
                {
                    "type": "error",
                    "error": {"type": "not_found_error", "message": "only the Messages API is reachable"},
                },
                status=404,
            )
        if request.path == "/v1/messages" and self.refusal is not None and (scope := self.refusal(sandbox_id)):
            # 400, not 429: the CLI must give up on this turn, not retry.
            message = f"budget_exceeded: the {scope} budget is spent"
            return web.json_response(
                {"type": "error", "error": {"type": "invalid_request_error", "message": message}}, status=400
            )
        assert self._client is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in DROP_REQUEST_HEADERS}
        headers["x-api-key"] = self._api_key
        body = await request.read()
        try:
            upstream = await self._client.post(
                self.upstream + request.path_qs, data=body, headers=headers, allow_redirects=False
            )
        except aiohttp.ClientError as exc:
            log.warning("model_upstream_failed", error=type(exc).__name__)
            return web.json_response(
                {"type": "error", "error": {"type": "api_error", "message": "model API unreachable"}}, status=502
            )
        async with upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in upstream.headers.items():
                if key.lower() not in DROP_RESPONSE_HEADERS:
                    response.headers[key] = value
            await response.prepare(request)
            is_sse = upstream.headers.get("content-type", "").startswith("text/event-stream")
            sse = SseUsageReader() if is_sse else None
            whole = bytearray()
            async for chunk in upstream.content.iter_any():
                if sse is not None:
                    sse.feed(chunk)
                elif len(whole) < 8 * 1024 * 1024:
                    whole += chunk
                await response.write(chunk)
            await response.write_eof()
        if request.path == "/v1/messages" and upstream.status == 200:
            model, usage = (sse.model, sse.usage) if sse is not None else _json_usage(bytes(whole))
            self._record(sandbox_id, model, usage)
        return response

    def _record(self, sandbox_id: str, model: str, usage: dict[str, int]) -> None:
        record = self.usage.get(sandbox_id)
        if record is None:
            return
        record.requests += 1
        record.add(model, usage)
        if self.on_usage is not None:
            self.on_usage(sandbox_id, model, usage)


def _short_base() -> str | None:
    """/run when we may write there (root), else the system temp dir."""
    return "/run" if os.access("/run", os.W_OK) else None


def _json_usage(body: bytes) -> tuple[str, dict[str, int]]:
    try:
        data = json.loads(body)
    except ValueError:
        return "", {}
    if not isinstance(data, dict):
        return "", {}
    usage = {k: v for k, v in (data.get("usage") or {}).items() if isinstance(v, int)}
    return str(data.get("model", "")), usage
