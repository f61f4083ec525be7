"""The model proxy: each sandbox's one way out.

Every sandbox gets its own unix socket; the socket a request arrives on is
the sandbox's identity (a sandbox cannot claim to be another). Requests to
the Messages API are forwarded to ``ANTHROPIC_BASE_URL`` with the real API key
put in place of the sandbox's placeholder; request bodies are streamed up (at
most ``request_max_bytes``) and responses (SSE or not) are passed through
chunk by chunk, never buffered.

Requests to ``/mcp/<server>`` are the session's MCP servers that a vault credential is for: they
are forwarded to the server's real URL with the credential added (``vault_proxy.McpProxy``), the
same promise as the API key's — the sandbox uses the credential, never holds it.

Every upstream response is metered, whatever the sandbox does: usage is read
from the bytes as they pass (``egress_meter``) and charged from
``message_start`` on, then once more in a ``finally`` when the response ends.
If the sandbox hangs up (or stops reading), the proxy keeps reading the
upstream response to its end in the same handler, bounded by
``drain_timeout_s``, so the final ``message_delta`` usage is charged too; the
handler keeps its connection slot meanwhile (``egress_gate``). A response is
charged to the ledger that was live when its request arrived, so a drain
that outlives its session still lands on that tenant's daily spend.

Every ``/v1/messages`` request is also told to a ``RequestObserver``
(``model_spans.ModelSpans``: the session's ``model_request_start`` /
``_end`` frames): when it arrives (even one the budget check refuses), each
usage delta as it is charged, and when it is over, answered whole or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
import structlog
from aiohttp import web

from .egress_gate import Gate
from .egress_meter import ResponseMeter
from .settings import Settings
from .tunnel import Tunnel

if TYPE_CHECKING:
    from .vault_proxy import McpProxy

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
    "expect",
}
DROP_RESPONSE_HEADERS = {"content-length", "connection", "transfer-encoding", "content-encoding", "keep-alive"}
# Set by a front that has already identified the sandbox (egress_port: a path
# token); requests on the unix sites never carry it.
SANDBOX_ID_KEY = web.RequestKey("moorage_sandbox_id", str)
# A write to the sandbox that blocks this long means it stopped reading:
# treated as a hang-up (the response is drained, not held).
WRITE_STALL_S = 60.0
BODY_CHUNK = 64 * 1024
MCP_PREFIX = "/mcp/"  # a session's MCP servers with a vault credential (vault_proxy.py)

Charge = Callable[[str, dict[str, int]], None]  # (model, token delta)


class RequestObserver(Protocol):
    """Told of every ``/v1/messages`` request (``model_spans.ModelSpans``); never blocks."""

    def started(self, sandbox_id: str) -> str | None:
        """The request arrived: its span id, or None (nobody to tell)."""

    def metered(self, span: str, usage: dict[str, int]) -> None:
        """Its response reported this much more usage (a delta, as it is charged)."""

    def ended(self, span: str, is_error: bool) -> None:
        """It is over: answered 200 and relayed whole (``is_error`` False), or not
        (refused, failed, cut, drained after the sandbox hung up)."""


@dataclass
class Outcome:
    """How one ``/v1/messages`` request went, for its observer."""

    charge: Charge | None = None  # its usage deltas go here too
    whole: bool = False  # a 200 response relayed to its end


class Meter(Protocol):
    """What the proxy asks of accounting (``accounting.Accounting``)."""

    def refusal(self, sandbox_id: str) -> str | None:
        """A reason to refuse this sandbox's next model request (a spent budget), or None."""

    def charge(self, sandbox_id: str) -> Charge:
        """Where one response's usage goes, bound now: called when its request arrives."""


@dataclass(frozen=True)
class ProxyLimits:
    """The model proxy's bounds (``MOORAGE_MODEL_*``, see settings)."""

    request_max_bytes: int = 32 * 1024 * 1024
    connections_per_sandbox: int = 32
    request_timeout_s: float = 30.0  # head, then body, each within this
    drain_timeout_s: float = 600.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ProxyLimits:
        return cls(
            settings.model_request_max_bytes,
            settings.model_proxy_connections_per_sandbox,
            settings.model_proxy_request_timeout_s,
            settings.model_proxy_drain_timeout_s,
        )


class RequestTooLarge(Exception):
    pass


async def bounded_body(request: web.Request, cap: int, deadline: float) -> AsyncIterator[bytes]:
    """A request body, streamed: at most ``cap`` bytes (else ``RequestTooLarge``), all of it
    before ``deadline`` (loop time; else ``TimeoutError``)."""
    seen = 0
    while True:
        async with asyncio.timeout_at(deadline):
            chunk = await request.content.read(BODY_CHUNK)
        if not chunk:
            return
        seen += len(chunk)
        if seen > cap:
            raise RequestTooLarge
        yield chunk


def error_response(status: int, kind: str, message: str) -> web.Response:
    """An error in the Messages API's own shape."""
    return web.json_response({"type": "error", "error": {"type": kind, "message": message}}, status=status)


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


class ModelProxy:
    """Owns one aiohttp server listening on one unix socket per live sandbox."""

    def __init__(
        self,
        socket_dir: Path | None,
        upstream: str,
        api_key: str,
        limits: ProxyLimits | None = None,
        prefix: str = "moorage-egress-",
    ) -> None:
        # A unix socket path must fit in 108 bytes, so by default the sockets
        # live in a short private directory, not under the state dir, named
        # with ``prefix`` (the replica's: a restart after a crash finds and
        # removes the one its predecessor left, see sweep.py).
        self._own_dir = socket_dir is None
        self.socket_dir = (socket_dir or Path(tempfile.mkdtemp(prefix=prefix, dir=socket_base()))).resolve()
        self.upstream = upstream.rstrip("/")
        self._api_key = api_key
        self.limits = limits or ProxyLimits()
        self.gate = Gate(self.limits.connections_per_sandbox, self.limits.request_timeout_s)
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None
        self._sites: dict[str, tuple[asyncio.Server, str]] = {}
        self._by_path: dict[str, str] = {}
        self._handlers: dict[asyncio.Task[Any], str] = {}  # running request handlers, by sandbox
        self.usage: dict[str, Usage] = {}
        # Budgets and charges (accounting.Accounting); None: nothing refused, nothing charged.
        self.meter: Meter | None = None
        # Told of every /v1/messages request (model_spans.ModelSpans); None: nobody.
        self.observer: RequestObserver | None = None
        # HTTPS egress to the hosts each sandbox's session allows (tunnel.py, egress_policy.py).
        self.tunnel: Tunnel | None = None
        # ``/mcp/<server>``: the session's MCP servers, with its vault credentials added (vault_proxy.py).
        self.mcp: McpProxy | None = None

    async def start(self) -> None:
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.chmod(0o700)
        app = web.Application(client_max_size=self.limits.request_max_bytes)
        app.router.add_route("*", "/{tail:.*}", self._handle_unix)
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, keepalive_timeout=self.limits.request_timeout_s
        )
        await self._runner.setup()
        self._client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=900))

    async def open(self, sandbox_id: str) -> Path:
        """A new socket for one sandbox, in a directory only the service can
        enter; bwrap mounts it into the sandbox from a private stage."""
        assert self._runner is not None and self._runner.server is not None
        path = self.socket_dir / f"{secrets.token_hex(8)}.sock"
        loop = asyncio.get_running_loop()
        server = await loop.create_unix_server(self.gate.factory(sandbox_id, self._runner.server), str(path))
        os.chmod(path, 0o666)
        self._sites[sandbox_id] = (server, str(path))
        self._by_path[str(path)] = sandbox_id
        self.usage[sandbox_id] = Usage()
        return path

    async def close_sandbox(self, sandbox_id: str) -> None:
        """Stop listening for this sandbox. Responses still draining finish
        (bounded by ``drain_timeout_s``) and are charged as usual."""
        if self.tunnel is not None:
            await self.tunnel.close_sandbox(sandbox_id)
        if self.mcp is not None:
            self.mcp.forget(sandbox_id)
        entry = self._sites.pop(sandbox_id, None)
        if entry is None:
            return
        server, path = entry
        self._by_path.pop(path, None)
        server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    async def close(self) -> None:
        for sandbox_id in list(self._sites):
            await self.close_sandbox(sandbox_id)
        # Open responses are charged what they reported so far (their ``finally``).
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        if handlers:
            await asyncio.wait(handlers, timeout=5.0)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._client is not None:
            await self._client.close()
        if self.mcp is not None:
            await self.mcp.close()
        if self._own_dir:
            shutil.rmtree(self.socket_dir, ignore_errors=True)

    def busy(self, sandbox_id: str) -> int:
        """Request handlers running for this sandbox (relaying or draining)."""
        return sum(1 for owner in self._handlers.values() if owner == sandbox_id)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Serve one request that a front (``egress_port``) accepted."""
        return await self._serve(request)

    async def _handle_unix(self, request: web.Request) -> web.StreamResponse:
        with self.gate.in_request(request.transport):
            return await self._serve(request)

    def _sandbox_of(self, request: web.Request) -> str | None:
        claimed = request.get(SANDBOX_ID_KEY)
        if claimed is not None:
            return claimed if claimed in self._sites else None
        transport = request.transport
        sockname = transport.get_extra_info("sockname") if transport is not None else None
        return self._by_path.get(str(sockname)) if sockname else None

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        sandbox_id = self._sandbox_of(request)
        if sandbox_id is None:
            return error_response(403, "forbidden", "unknown sandbox")
        if self.mcp is not None and request.path.startswith(MCP_PREFIX):
            return await self.mcp.handle(request, sandbox_id)
        if request.method != "POST" or request.path not in ALLOWED_PATHS:
            return error_response(404, "not_found_error", "only the Messages API is reachable")
        observer = self.observer if request.path == "/v1/messages" else None
        span = observer.started(sandbox_id) if observer is not None else None
        outcome = Outcome()
        if observer is not None and span is not None:
            outcome.charge = lambda _model, delta: observer.metered(span, delta)
        try:
            return await self._admit(request, sandbox_id, outcome)
        finally:
            if observer is not None and span is not None:
                observer.ended(span, not outcome.whole)

    async def _admit(self, request: web.Request, sandbox_id: str, outcome: Outcome) -> web.StreamResponse:
        if request.path == "/v1/messages" and self.meter is not None and (scope := self.meter.refusal(sandbox_id)):
            # 400, not 429: the CLI must give up on this turn, not retry.
            return error_response(400, "invalid_request_error", f"budget_exceeded: the {scope} budget is spent")
        length = request.content_length
        if length is not None and length > self.limits.request_max_bytes:
            return self._too_large()
        task = asyncio.current_task()
        assert task is not None
        self._handlers[task] = sandbox_id
        try:
            return await self._forward(request, sandbox_id, length, outcome)
        finally:
            self._handlers.pop(task, None)

    def _too_large(self) -> web.Response:
        limit = self.limits.request_max_bytes
        return error_response(
            413, "request_too_large", f"request body exceeds {limit} bytes (MOORAGE_MODEL_REQUEST_MAX_BYTES)"
        )

    async def _forward(
        self, request: web.Request, sandbox_id: str, length: int | None, outcome: Outcome
    ) -> web.StreamResponse:
        assert self._client is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in DROP_REQUEST_HEADERS}
        headers["x-api-key"] = self._api_key
        if length is not None:
            headers["content-length"] = str(length)
        body_failed: list[BaseException] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.request_timeout_s

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in bounded_body(request, self.limits.request_max_bytes, deadline):
                    yield chunk
            except (RequestTooLarge, TimeoutError, ConnectionError, aiohttp.ClientError) as exc:
                body_failed.append(exc)
                raise

        try:
            upstream = await self._client.post(
                self.upstream + request.path_qs, data=body(), headers=headers, allow_redirects=False
            )
        except (aiohttp.ClientError, RequestTooLarge, TimeoutError, ConnectionError) as exc:
            if body_failed:
                return self._body_failed(body_failed[0])
            log.warning("model_upstream_failed", error=type(exc).__name__)
            return error_response(502, "api_error", "model API unreachable")
        if body_failed:  # the upstream answered a body we cut short
            upstream.close()
            return self._body_failed(body_failed[0])
        async with upstream:
            return await self._relay(request, upstream, sandbox_id, outcome)

    def _body_failed(self, exc: BaseException) -> web.Response:
        if isinstance(exc, RequestTooLarge):
            return self._too_large()
        if isinstance(exc, TimeoutError):
            return error_response(408, "timeout_error", "request body not received in time")
        return error_response(400, "invalid_request_error", "request body broken off")

    async def _relay(
        self, request: web.Request, upstream: aiohttp.ClientResponse, sandbox_id: str, outcome: Outcome
    ) -> web.StreamResponse:
        """Pass the response through and meter it; drain it if the sandbox goes."""
        metered = request.path == "/v1/messages"
        charge = _both(self.meter.charge(sandbox_id) if metered and self.meter is not None else None, outcome.charge)
        record = self.usage.get(sandbox_id) if metered else None
        meter = ResponseMeter(streamed=upstream.headers.get("content-type", "").startswith("text/event-stream"))
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for key, value in upstream.headers.items():
            if key.lower() not in DROP_RESPONSE_HEADERS:
                response.headers[key] = value
        loop = asyncio.get_running_loop()
        relaying = True
        try:
            async with asyncio.timeout(None) as draining:
                try:
                    async with asyncio.timeout(WRITE_STALL_S):
                        await response.prepare(request)
                except (ConnectionError, TimeoutError):
                    relaying = False
                    draining.reschedule(loop.time() + self.limits.drain_timeout_s)
                async for chunk in upstream.content.iter_any():
                    meter.feed(chunk)
                    _settle(meter, record, charge)
                    if not relaying:
                        continue
                    try:
                        async with asyncio.timeout(WRITE_STALL_S):
                            await response.write(chunk)
                    except (ConnectionError, TimeoutError):
                        relaying = False  # the sandbox hung up or stopped reading: drain
                        draining.reschedule(loop.time() + self.limits.drain_timeout_s)
                        if request.transport is not None:
                            request.transport.abort()
            if relaying:
                with contextlib.suppress(ConnectionError):
                    await response.write_eof()
                    outcome.whole = upstream.status == 200
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("model_response_cut", error=type(exc).__name__, relaying=relaying)
            if relaying and request.transport is not None:
                request.transport.abort()  # a half response must not look whole
        finally:
            meter.finish()
            _settle(meter, record, charge)
            if record is not None and upstream.status == 200:
                record.requests += 1
        if not relaying:
            log.info("model_response_drained", sandbox_id=sandbox_id, usage=meter.usage)
        return response


def _settle(meter: ResponseMeter, record: Usage | None, charge: Charge | None) -> None:
    """Charge what the response reported since the last time."""
    delta = meter.take()
    if not delta:
        return
    if record is not None:
        record.add(meter.model, delta)
    if charge is not None:
        charge(meter.model, delta)


def _both(first: Charge | None, second: Charge | None) -> Charge | None:
    """One charge that goes to both (either may be None)."""
    if first is None or second is None:
        return first or second

    def charge(model: str, delta: dict[str, int]) -> None:
        first(model, delta)
        second(model, delta)

    return charge


def socket_base() -> str:
    """/run when we may write there (root), else the system temp dir."""
    return "/run" if os.access("/run", os.W_OK) else tempfile.gettempdir()
