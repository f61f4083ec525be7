"""The egress tunnel's TLS termination for ``environment_variable`` vault credentials.

When a session's sandbox starts, ``grant`` gives it placeholders for its vaults' environment
credentials (``egress_secrets.plan``) and its own CA (``egress_ca.SessionCA``): the runner puts the
placeholders in the CLI's environment and the CA certificate in the sandbox's trust bundle. The
tunnel (``tunnel.py``) asks ``wants`` about every ``CONNECT`` its policy allows; only for a host a
held credential is for (looked up *now*: an archived credential is gone at the next connection)
does it connect upstream over TLS — verifying the host's certificate against the system CAs (and
``MOORAGE_EGRESS_UPSTREAM_CA_FILE``) before answering ``200`` — and hand both ends to ``relay``.
Everything else stays a blind pipe.

``relay`` answers the sandbox's TLS with a leaf for that host, reads its HTTP/1.1 requests with
``h11`` (heads bounded by ``MAX_HEAD_BYTES``), looks the credentials up again for each request
(archived: no longer substituted; a new secret: used at once), replaces the placeholders where
each credential allows (``egress_secrets.swaps``), and sends the request on over the verified
connection; the response comes back as it is. ``Expect: 100-continue`` is answered here; a
``101 Switching Protocols`` (WebSocket) turns the connection into a pipe after the handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import h11
import structlog

from .egress_ca import SessionCA
from .egress_secrets import (
    MAX_BODY_BYTES,
    EnvCredential,
    Opened,
    Plan,
    SecretsUnavailable,
    Swaps,
    placeholder_label,
    plan,
    substitute_body,
    substitute_headers,
    swaps,
    wanted,
)
from .tunnel import ESTABLISHED, pipe

log = structlog.get_logger(__name__)

MAX_HEAD_BYTES = 64 * 1024
IDLE_S = 60.0  # a kept-alive connection with no next request
READ_S = 900.0  # a quiet upstream (a long answer) or a slow request body
WRITE_STALL_S = 60.0
HANDSHAKE_S = 15.0


class SecretSource(Protocol):
    """Where a session's ``environment_variable`` credentials come from (``vault_proxy.StoreCredentials``)."""

    async def environment(self, tenant: str, vault_ids: Sequence[str]) -> list[Opened]:
        """The live ones of the tenant's vaults among ``vault_ids``, in that order, with their
        secrets; ``SecretsUnavailable`` when they cannot be read or opened."""


def upstream_context(ca_file: str = "") -> ssl.SSLContext:
    """How the tunnel checks a credentialed host: the system CAs, plus ``ca_file`` if given."""
    ctx = ssl.create_default_context()
    if ca_file:
        ctx.load_verify_locations(ca_file)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


@dataclass(frozen=True)
class Granted:
    """One sandbox's credentials: whose, and which placeholder stands for which credential."""

    tenant: str
    vault_ids: tuple[str, ...]
    issued: dict[str, str]  # credential id -> placeholder
    ca: SessionCA


@dataclass(frozen=True)
class Grant:
    """What a starting sandbox is given (``start`` frame): its variables and the CA to trust."""

    plan: Plan
    ca_pem: str | None  # None: no placeholder issued, no TLS terminated


class Interceptor:
    """See the module docstring."""

    def __init__(
        self,
        source: SecretSource,
        upstream: ssl.SSLContext,
        mac: Callable[[bytes], bytes],
        on_outcome: Callable[[str], None] | None = None,
    ) -> None:
        self.source = source
        self.upstream = upstream
        self.mac = mac  # the operator's key's MAC (vault_crypto.SecretBox.mac): placeholders
        self.on_outcome = on_outcome  # per request: "forwarded", "refused" or "failed", for metrics
        self._grants: dict[str, Granted] = {}

    async def grant(self, sandbox_id: str, tenant: str, vault_ids: Sequence[str], session_id: str) -> Grant:
        """Placeholders for the session's environment credentials, and (if any) the sandbox's CA."""
        held = [o.credential for o in await self.source.environment(tenant, vault_ids)]
        made = plan(held, {c.id: self.mac(placeholder_label(session_id, c.id)) for c in held})
        if not made.issued:
            self._grants.pop(sandbox_id, None)
            return Grant(made, None)
        ca = await asyncio.to_thread(SessionCA, sandbox_id[:32])
        self._grants[sandbox_id] = Granted(tenant, tuple(vault_ids), made.issued, ca)
        return Grant(made, ca.cert_pem)

    def forget(self, sandbox_id: str) -> None:
        self._grants.pop(sandbox_id, None)

    async def wants(self, sandbox_id: str, host: str) -> bool:
        """Must the tunnel terminate TLS for this sandbox's ``CONNECT`` to ``host``?"""
        granted = self._grants.get(sandbox_id)
        if granted is None:
            return False
        current = await self.source.environment(granted.tenant, granted.vault_ids)
        return wanted(granted.issued, [o.credential for o in current], host)

    async def relay(
        self,
        sandbox_id: str,
        host: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_r: asyncio.StreamReader,
        up_w: asyncio.StreamWriter,
    ) -> None:
        """Answer the sandbox's ``CONNECT`` to ``host`` and serve its requests (see the module docstring)."""
        granted = self._grants.get(sandbox_id)
        if granted is None:
            return
        bound = log.bind(sandbox_id=sandbox_id, host=host)
        try:
            context = await asyncio.to_thread(granted.ca.context, host)
            # Nothing may be read as plain data between the answer and the TLS layer: the
            # sandbox's ClientHello follows the answer at once, and it belongs to TLS.
            transport = writer.transport
            assert isinstance(transport, asyncio.ReadTransport)
            transport.pause_reading()
            writer.write(ESTABLISHED)
            await writer.start_tls(context, ssl_handshake_timeout=HANDSHAKE_S)
        except (OSError, TimeoutError) as exc:  # the sandbox does not trust its CA, or hung up
            bound.info("egress_tls_refused", error=type(exc).__name__)
            return
        relay = _Relay(reader, writer, up_r, up_w)
        with contextlib.suppress(h11.ProtocolError, ConnectionError, OSError, TimeoutError):
            while (request := await relay.request()) is not None:
                try:
                    opened = await self.source.environment(granted.tenant, granted.vault_ids)
                except SecretsUnavailable:
                    self._count("refused")
                    bound.warning("egress_secret_unavailable")
                    await relay.answer(503, b"moorage egress: the session's credentials cannot be read now\n")
                    return
                replaced = swaps(granted.issued, opened, host)
                try:
                    status = await relay.forward(request, replaced)
                except (h11.ProtocolError, ConnectionError, OSError, TimeoutError) as exc:
                    self._count("failed")
                    bound.info("egress_secret_request_failed", error=type(exc).__name__)
                    raise
                self._count("forwarded")
                bound.info("egress_secret_request", method=request.method.decode(errors="replace")[:16], status=status)
                if not await relay.next_cycle():
                    return

    def _count(self, outcome: str) -> None:
        if self.on_outcome is not None:
            self.on_outcome(outcome)


class _Relay:
    """One intercepted connection: h11 as the sandbox's server and as the upstream's client."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_r: asyncio.StreamReader,
        up_w: asyncio.StreamWriter,
    ) -> None:
        self.reader, self.writer, self.up_r, self.up_w = reader, writer, up_r, up_w
        self.client = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self.server = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)

    async def request(self) -> h11.Request | None:
        event = await _next(self.client, self.reader, IDLE_S)
        return event if isinstance(event, h11.Request) else None

    async def answer(self, status: int, body: bytes) -> None:
        headers = [
            (b"content-type", b"text/plain"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await _write(self.writer, _send(self.client, h11.Response(status_code=status, headers=headers)))
        await _write(self.writer, (_send(self.client, h11.Data(data=body))) + (_send(self.client, h11.EndOfMessage())))

    async def forward(self, request: h11.Request, replaced: Swaps) -> int:
        """Send ``request`` (and its body) upstream with the placeholders replaced; relay the response."""
        headers = substitute_headers(
            [(k, v) for k, v in request.headers.raw_items() if k.lower() != b"expect"], replaced.header
        )
        if self.client.they_are_waiting_for_100_continue:
            await _write(self.writer, _send(self.client, h11.InformationalResponse(status_code=100, headers=[])))
        buffered, done = b"", False
        if replaced.body:  # read the body first (bounded), so the placeholder can be replaced in it
            while len(buffered) <= MAX_BODY_BYTES:
                event = await _next(self.client, self.reader, READ_S)
                if isinstance(event, h11.EndOfMessage):
                    done = True
                    break
                if not isinstance(event, h11.Data):
                    raise h11.RemoteProtocolError("the request body ended early")
                buffered += event.data
            if done:
                new = substitute_body(buffered, replaced.body)
                if new != buffered:
                    framing = (b"content-length", b"transfer-encoding")
                    headers = [(k, v) for k, v in headers if k.lower() not in framing]
                    headers.append((b"content-length", str(len(new)).encode()))
                buffered = new
        head = h11.Request(method=request.method, target=request.target, headers=headers)
        await _write(self.up_w, _send(self.server, head))
        if buffered:
            await _write(self.up_w, _send(self.server, h11.Data(data=buffered)))
        while not done:
            event = await _next(self.client, self.reader, READ_S)
            if isinstance(event, h11.EndOfMessage):
                done = True
            elif not isinstance(event, h11.Data):
                raise h11.RemoteProtocolError("the request body ended early")
            else:
                await _write(self.up_w, _send(self.server, event))
        await _write(self.up_w, _send(self.server, h11.EndOfMessage()))
        return await self._response()

    async def _response(self) -> int:
        status = 0
        while True:
            event = await _next(self.server, self.up_r, READ_S)
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 100:
                    continue  # answered here already
                await _write(self.writer, _send(self.client, event))
                if event.status_code == 101:
                    await self._switch()
                    return 101
            elif isinstance(event, h11.Response):
                status = event.status_code
                out = h11.Response(
                    status_code=event.status_code, headers=list(event.headers.raw_items()), reason=event.reason
                )
                await _write(self.writer, _send(self.client, out))
            elif isinstance(event, h11.Data):
                await _write(self.writer, _send(self.client, event))
            elif isinstance(event, h11.EndOfMessage):
                await _write(self.writer, _send(self.client, event))
                return status
            else:
                raise h11.RemoteProtocolError("the upstream closed before its response ended")

    async def _switch(self) -> None:
        """After ``101``: the rest of the connection is a pipe both ways (a WebSocket, say)."""
        await _write(self.up_w, self.client.trailing_data[0])
        await _write(self.writer, self.server.trailing_data[0])
        await asyncio.gather(pipe(self.reader, self.up_w), pipe(self.up_r, self.writer))

    async def next_cycle(self) -> bool:
        """Keep the connection for the sandbox's next request, if both sides allow it."""
        if self.client.our_state is h11.SWITCHED_PROTOCOL:
            return False
        try:
            self.client.start_next_cycle()
            self.server.start_next_cycle()
        except h11.LocalProtocolError:
            return False
        return True


async def _next(conn: h11.Connection, reader: asyncio.StreamReader, timeout: float) -> h11.Event | type[h11.PAUSED]:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event  # type: ignore[return-value]  # h11's sentinels are types
        async with asyncio.timeout(timeout):
            data = await reader.read(65536)
        conn.receive_data(data)


def _send(conn: h11.Connection, event: h11.Event) -> bytes:
    return conn.send(event) or b""


async def _write(writer: asyncio.StreamWriter, data: bytes) -> None:
    if data:
        writer.write(data)
        async with asyncio.timeout(WRITE_STALL_S):
            await writer.drain()


__all__ = ["EnvCredential", "Grant", "Interceptor", "SecretSource", "SecretsUnavailable", "upstream_context"]
