"""Vault credentials for MCP servers, injected outside the sandbox.

A session names vaults (``vault_ids``); when its sandbox starts, each of its agent's MCP servers
that a live credential of those vaults is for (``vaults.proxied_servers``) is *granted* here, and
the runner is told to reach that server at ``<its model bridge>/mcp/<server name>`` instead of its
real URL. A request arriving there comes in on the sandbox's own model-proxy socket, whose
identity is the socket (``egress.ModelProxy``): this module looks up the credential for that
sandbox's session *now* (so archiving or deleting it revokes at once, and a new token applies to
the next request), opens its secret, and forwards the request — streamed both ways, SSE included
(MCP streamable HTTP) — to the server's real URL with ``Authorization: Bearer <token>``. The
sandbox never holds the token: not in its environment, its files, its processes, or any answer.

The same egress rules as the tunnel (``tunnel.py``) apply to the forwarded request: the host and
port must be allowed by the session's policy (``egress_policy``), and every address the host
resolves to must be public or inside ``MOORAGE_EGRESS_ALLOW_NETWORKS`` — checked in the resolver
the connection uses, so DNS cannot swap in an inward address between check and connect. A bearer
token goes over plain ``http://`` only to an address inside ``MOORAGE_EGRESS_ALLOW_NETWORKS``
(an internal server the operator named); anywhere else it needs ``https://``. Redirects are not
followed (a 3xx goes back to the sandbox as it is, and the client follows it without the token).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
import structlog
from aiohttp import web
from moorage_session_store import Vaults

from .egress import MCP_PREFIX, RequestTooLarge, bounded_body
from .egress_secrets import EnvCredential, Opened, SecretsUnavailable
from .errors import STORE_ERRORS
from .ssrf import CheckedResolver, TargetRefused, in_networks
from .tunnel import Network, Policy, address_allowed
from .vault_crypto import SealedSecretError, SecretBox, open_secrets
from .vaults import MCP_KINDS, Held, bearer_of, mcp_key, proxied_servers

log = structlog.get_logger(__name__)

WRITE_STALL_S = 60.0
DROP_REQUEST_HEADERS = frozenset(
    {
        "host",
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "content-length",
        "connection",
        "keep-alive",
        "transfer-encoding",
        "te",
        "upgrade",
        "expect",
        "accept-encoding",
    }
)
DROP_RESPONSE_HEADERS = frozenset({"content-length", "connection", "keep-alive", "transfer-encoding", "upgrade"})


class CredentialSource(Protocol):
    """Where a session's credentials come from (``StoreCredentials``: the vaults table)."""

    async def held(self, tenant: str, vault_ids: Sequence[str]) -> list[Held]:
        """The live credentials of the tenant's vaults among ``vault_ids``, in that order (no secrets)."""

    async def bearer(self, tenant: str, vault_ids: Sequence[str], url: str) -> str | None:
        """The token for the MCP server at ``url`` (the first of those vaults' that has one), or None."""


class StoreCredentials:
    """``CredentialSource`` over the vaults table, opening secrets with the operator's key."""

    def __init__(self, vaults: Vaults, box: SecretBox | None) -> None:
        self.vaults = vaults
        self.box = box

    async def held(self, tenant: str, vault_ids: Sequence[str]) -> list[Held]:
        records = await self.vaults.live_credentials(tenant, vault_ids)
        return [Held(r.id, r.vault_id, r.kind, r.match_key) for r in records]

    async def environment(self, tenant: str, vault_ids: Sequence[str]) -> list[Opened]:
        """``egress_intercept.SecretSource``: the live ``environment_variable`` credentials, opened."""
        try:
            records = await self.vaults.live_credentials(tenant, vault_ids)
            wanted = [r for r in records if r.kind == "environment_variable"]
            if wanted and self.box is None:
                raise SealedSecretError("this server has no MOORAGE_SECRET_KEY")
            return [
                Opened(
                    EnvCredential.of(r.id, r.public["auth"]),
                    open_secrets(self.box, r.sealed, r.tenant, r.vault_id, r.id)["secret_value"],
                )
                for r in wanted
                if self.box is not None
            ]
        except (SealedSecretError, KeyError, *STORE_ERRORS) as exc:  # type: ignore[misc]
            raise SecretsUnavailable(type(exc).__name__) from exc

    async def bearer(self, tenant: str, vault_ids: Sequence[str], url: str) -> str | None:
        records = await self.vaults.live_credentials(tenant, vault_ids, "mcp:" + mcp_key(url))
        record = next((r for r in records if r.kind in MCP_KINDS), None)
        if record is None:
            return None
        if self.box is None:
            raise SealedSecretError("this server has no MOORAGE_SECRET_KEY")
        return bearer_of(record.kind, open_secrets(self.box, record.sealed, record.tenant, record.vault_id, record.id))


def target_refusal(scheme: str, addresses: Sequence[str], networks: tuple[Network, ...]) -> str | None:
    """Why a bearer token may not go to these addresses (None: it may): each must be public or in
    an operator network, and plain http only to operator networks. Pure."""
    if not addresses:
        return "the host has no address"
    if not all(address_allowed(a, networks) for a in addresses):
        return "the host resolves to a non-public address"
    if scheme == "http" and not all(in_networks(a, networks) for a in addresses):
        return "a credential goes over plain http only to a network in MOORAGE_EGRESS_ALLOW_NETWORKS; use https"
    return None


@dataclass(frozen=True)
class Grant:
    """What one sandbox's session may reach here: its MCP servers with a credential, by name."""

    tenant: str
    vault_ids: tuple[str, ...]
    servers: dict[str, str]  # name -> real URL
    policy: Policy


def error(status: int, message: str) -> web.Response:
    return web.json_response({"type": "error", "error": {"type": "mcp_proxy_error", "message": message}}, status=status)


class McpProxy:
    """The ``/mcp/<name>`` route of every sandbox's model-proxy socket; see the module docstring."""

    def __init__(
        self,
        source: CredentialSource,
        networks: tuple[Network, ...] = (),
        request_max_bytes: int = 32 * 1024 * 1024,
        request_timeout_s: float = 30.0,
        on_outcome: Callable[[str], None] | None = None,
    ) -> None:
        self.source = source
        self.on_outcome = on_outcome  # "forwarded", "refused" or "failed" per request, for metrics
        self.networks = networks
        self.request_max_bytes = request_max_bytes
        self.request_timeout_s = request_timeout_s
        self._grants: dict[str, Grant] = {}
        self._clients: dict[str, aiohttp.ClientSession] = {}

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=15, sock_read=900)
        for scheme in ("http", "https"):
            connector = aiohttp.TCPConnector(
                resolver=CheckedResolver(functools.partial(target_refusal, scheme, networks=self.networks))
            )
            self._clients[scheme] = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False)

    async def close(self) -> None:
        self._grants.clear()
        for client in self._clients.values():
            await client.close()
        self._clients.clear()

    async def grant(
        self,
        sandbox_id: str,
        tenant: str,
        vault_ids: Sequence[str],
        servers: Sequence[dict[str, str]],
        policy: Policy,
    ) -> list[str]:
        """Grant a starting sandbox its session's credentialed MCP servers: their names (for the runner)."""
        held = await self.source.held(tenant, vault_ids)
        chosen = proxied_servers(servers, held)
        urls = {s["name"]: s["url"] for s in servers if s.get("name") in chosen}
        self._grants[sandbox_id] = Grant(tenant, tuple(vault_ids), urls, policy)
        return sorted(chosen)

    def forget(self, sandbox_id: str) -> None:
        self._grants.pop(sandbox_id, None)

    async def handle(self, request: web.Request, sandbox_id: str) -> web.StreamResponse:
        grant = self._grants.get(sandbox_id)
        name = request.path[len(MCP_PREFIX) :]
        bound = log.bind(sandbox_id=sandbox_id, server=name[:64])
        url = grant.servers.get(name) if grant is not None else None
        if grant is None or url is None:
            return self._refused(bound, 404, f"no credentialed MCP server {name[:64]!r} for this session", "no_grant")
        bound = bound.bind(tenant=grant.tenant)
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if not grant.policy.allows(host, port):
            return self._refused(bound, 403, f"{host}:{port} is not allowed for this session", "not_allowlisted")
        with contextlib.suppress(ValueError):
            ipaddress.ip_address(host)  # an address literal skips the resolver: check it here
            if (why := target_refusal(parts.scheme, [host], self.networks)) is not None:
                return self._refused(bound, 403, why, "address")
        try:
            token = await self.source.bearer(grant.tenant, grant.vault_ids, url)
        except SealedSecretError as exc:
            bound.warning("mcp_proxy_secret_unavailable", detail=str(exc))
            message = "the credential cannot be opened on this server (MOORAGE_SECRET_KEY)"
            return self._refused(bound, 503, message, "secret_unavailable")
        if token is None:
            message = f"the session's vaults no longer hold a credential for MCP server {name!r}"
            return self._refused(bound, 403, message, "no_credential")
        return await self._forward(request, url, token, bound)

    def _refused(self, bound: Any, status: int, message: str, reason: str) -> web.Response:
        bound.info("mcp_proxy_refused", reason=reason, status=status)
        self._count("refused")
        return error(status, message)

    def _failed(self, bound: Any, exc: BaseException) -> web.Response:
        bound.info("mcp_proxy_failed", error=type(exc).__name__)
        self._count("failed")
        return error(502, "the MCP server is unreachable")

    def _count(self, outcome: str) -> None:
        if self.on_outcome is not None:
            self.on_outcome(outcome)

    async def _forward(self, request: web.Request, url: str, token: str, bound: Any) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in DROP_REQUEST_HEADERS}
        headers["Authorization"] = f"Bearer {token}"
        too_large = f"request body exceeds {self.request_max_bytes} bytes"
        length = request.content_length
        if length is not None:
            if length > self.request_max_bytes:
                return self._refused(bound, 413, too_large, "too_large")
            headers["Content-Length"] = str(length)
        deadline = asyncio.get_running_loop().time() + self.request_timeout_s
        data = bounded_body(request, self.request_max_bytes, deadline) if request.body_exists else None
        client = self._clients[urlsplit(url).scheme]
        try:
            upstream = await client.request(request.method, url, headers=headers, data=data, allow_redirects=False)
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, TargetRefused):
                return self._refused(bound, 403, str(exc.os_error), "address")
            return self._failed(bound, exc)
        except RequestTooLarge:
            return self._refused(bound, 413, too_large, "too_large")
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
            return self._failed(bound, exc)
        async with upstream:
            bound.info("mcp_proxied", method=request.method, status=upstream.status)
            self._count("forwarded")
            return await self._relay(request, upstream)

    async def _relay(self, request: web.Request, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for key, value in upstream.headers.items():
            if key.lower() not in DROP_RESPONSE_HEADERS:
                response.headers.add(key, value)
        try:
            async with asyncio.timeout(WRITE_STALL_S):
                await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                async with asyncio.timeout(WRITE_STALL_S):
                    await response.write(chunk)
            await response.write_eof()
        except (ConnectionError, TimeoutError, aiohttp.ClientError):
            if request.transport is not None:
                request.transport.abort()  # a half response must not look whole
        return response
