"""The vault credential route of the model proxy (``/mcp/<server>``, vault_proxy.py) over real unix
sockets against a real upstream: the credential replaces whatever the sandbox sends, answers stream
through unbuffered (SSE), and only this sandbox's granted servers, on hosts its policy allows and
addresses the operator allows, are reached — with a credential that is still live."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from moorage.egress import ModelProxy
from moorage.tunnel import Policy, Rule
from moorage.vault_proxy import McpProxy
from moorage.vaults import Held, mcp_key
from multidict import CIMultiDict
from support import scaled

TOKEN = "tok-live-123"
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)


class Credentials:
    """A CredentialSource whose token can be revoked."""

    def __init__(self) -> None:
        self.token: str | None = TOKEN
        self.held_list: list[Held] = []

    async def held(self, tenant: str, vault_ids: Sequence[str]) -> list[Held]:
        return self.held_list

    async def bearer(self, tenant: str, vault_ids: Sequence[str], url: str) -> str | None:
        return self.token if tenant == "acme" else None


class Upstream:
    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.seen: list[CIMultiDict[str]] = []

    async def mcp(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(request.headers.copy())
        await request.read()
        response = web.StreamResponse(headers={"content-type": "text/event-stream", "mcp-session-id": "s-1"})
        await response.prepare(request)
        await response.write(b"event: message\ndata: first\n\n")
        await asyncio.wait_for(self.release.wait(), scaled(10))
        await response.write(b"event: message\ndata: second\n\n")
        await response.write_eof()
        return response


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[Upstream, str]]:
    up = Upstream()
    app = web.Application()
    app.router.add_route("*", "/mcp", up.mcp)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield up, f"http://127.0.0.1:{port}/mcp"
    await runner.cleanup()


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[tuple[ModelProxy, Credentials]]:
    credentials = Credentials()
    p = ModelProxy(tmp_path / "egress", "http://127.0.0.1:9", "sk-real")
    p.mcp = McpProxy(credentials, LOOPBACK)
    await p.start()
    await p.mcp.start()
    yield p, credentials
    await p.close()


def http(sock: Path) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock)))


def allowing(url: str) -> Policy:
    host, port = url.split("//")[1].split("/")[0].split(":")
    return Policy((Rule(host, int(port)),))


async def grant(p: ModelProxy, credentials: Credentials, sandbox: str, url: str, policy: Policy) -> list[str]:
    credentials.held_list = [Held("vcrd_1", "vlt_1", "static_bearer", "mcp:" + mcp_key(url))]
    servers = [{"name": "secure", "url": url}, {"name": "plain", "url": "https://plain.example/mcp"}]
    assert p.mcp is not None
    return await p.mcp.grant(sandbox, "acme", ["vlt_1"], servers, policy)


async def test_the_credential_replaces_the_sandboxs_and_sse_streams_unbuffered(
    proxy: tuple[ModelProxy, Credentials], upstream: tuple[Upstream, str]
) -> None:
    p, credentials = proxy
    up, url = upstream
    sock = await p.open("sb-1")
    assert await grant(p, credentials, "sb-1", url, allowing(url)) == ["secure"]
    outcomes: list[str] = []
    assert p.mcp is not None
    p.mcp.on_outcome = outcomes.append
    async with http(sock) as client:
        sent = {"authorization": "Bearer forged", "mcp-session-id": "s-1", "accept": "text/event-stream"}
        resp = await client.post("http://bridge/mcp/secure", json={"jsonrpc": "2.0"}, headers=sent)
        assert resp.status == 200 and resp.headers["mcp-session-id"] == "s-1"
        first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), scaled(5))
        assert b"first" in first and not up.release.is_set()  # relayed while the upstream still streams
        up.release.set()
        assert b"second" in await asyncio.wait_for(resp.content.read(), scaled(5))
    seen = up.seen[-1]
    assert seen["authorization"] == f"Bearer {TOKEN}" and seen["mcp-session-id"] == "s-1"
    assert seen.getall("authorization") == [f"Bearer {TOKEN}"]
    assert outcomes == ["forwarded"]  # moorage_vault_requests_total{outcome}


async def test_only_this_sandboxs_live_credentialed_servers_on_allowed_hosts_are_reached(
    proxy: tuple[ModelProxy, Credentials], upstream: tuple[Upstream, str]
) -> None:
    p, credentials = proxy
    up, url = upstream
    up.release.set()
    mine, other, narrow = await p.open("sb-1"), await p.open("sb-2"), await p.open("sb-3")
    await grant(p, credentials, "sb-1", url, allowing(url))
    await grant(p, credentials, "sb-3", url, Policy((Rule("elsewhere.example"),)))
    outcomes: list[str] = []
    assert p.mcp is not None
    p.mcp.on_outcome = outcomes.append
    async with http(mine) as a, http(other) as b, http(narrow) as c:
        assert (await a.post("http://bridge/mcp/plain")).status == 404  # no credential for it: not granted
        assert (await a.post("http://bridge/mcp/secure/../x")).status == 404
        assert (await b.post("http://bridge/mcp/secure")).status == 404  # another sandbox, no grant
        refused = await c.post("http://bridge/mcp/secure")
        assert refused.status == 403 and "not allowed" in await refused.text()
        credentials.token = None  # archived meanwhile
        revoked = await a.post("http://bridge/mcp/secure")
        assert revoked.status == 403 and "no longer hold" in await revoked.text()
        assert (await a.post("http://bridge/v1/other")).status == 404  # the model routes are unchanged
    assert up.seen == [] and outcomes == ["refused"] * 5
    p.mcp.networks = ()  # loopback is not an operator network any more: refused before connecting
    credentials.token = TOKEN
    async with http(mine) as a:
        inward = await a.post("http://bridge/mcp/secure")
        assert inward.status == 403 and "non-public" in await inward.text()
    assert up.seen == []
    await p.close_sandbox("sb-1")
    assert p.mcp._grants.keys() == {"sb-3"}


@pytest.mark.parametrize("allowed", [True, False])
async def test_a_host_name_is_judged_by_the_addresses_the_connection_resolves(
    upstream: tuple[Upstream, str], tmp_path: Path, allowed: bool
) -> None:
    """A name (not an address literal) is checked in the connection's own resolver: ``localhost``
    reaches the server only while loopback is an operator network; otherwise 403, nothing sent."""
    up, url = upstream
    up.release.set()
    named = url.replace("127.0.0.1", "localhost")
    credentials = Credentials()
    networks = (*LOOPBACK, ipaddress.ip_network("::1/128")) if allowed else ()
    p = ModelProxy(tmp_path / "egress", "http://127.0.0.1:9", "sk-real")
    p.mcp = McpProxy(credentials, networks)
    await p.start()
    await p.mcp.start()
    try:
        sock = await p.open("sb-1")
        await grant(p, credentials, "sb-1", named, Policy((Rule("localhost", int(url.split(":")[2].split("/")[0])),)))
        async with http(sock) as client:
            resp = await client.post("http://bridge/mcp/secure", json={})
            if allowed:
                assert resp.status == 200 and b"second" in await resp.read()
                assert up.seen[-1]["authorization"] == f"Bearer {TOKEN}"
            else:
                assert resp.status == 403 and "non-public" in await resp.text() and up.seen == []
    finally:
        await p.close()
