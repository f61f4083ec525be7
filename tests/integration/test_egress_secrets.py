"""The egress tunnel with ``environment_variable`` vault credentials (egress_intercept.py), over a
real unix socket against real TLS servers on 127.0.0.1: for a host a credential is for, the tunnel
terminates the sandbox's TLS with the sandbox's own CA and the upstream receives the real secret
where the credential allows it (headers, Basic credentials, the body), over a connection whose
certificate the tunnel checked; another host's tunnel is a blind pipe (the sandbox's TLS reaches the
server untouched, the placeholder with it); an upstream with an untrusted certificate is refused
before anything is sent; an archived credential is not substituted any more."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import os
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from moorage.egress_ca import SessionCA, san
from moorage.egress_intercept import Interceptor, upstream_context
from moorage.egress_secrets import EnvCredential, Opened
from moorage.tunnel import Policy, Rule, Tunnel
from multidict import CIMultiDict
from support import scaled

SECRET = "sk-live-" + "7" * 24
OTHER = "other-secret-42"
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


class Source:
    """A SecretSource: the session's live credentials, which a test can archive."""

    def __init__(self) -> None:
        self.live = [
            Opened(EnvCredential("vcrd_1", "MY_TOKEN", ("127.0.0.1",), header=True, body=True), SECRET),
            Opened(EnvCredential("vcrd_2", "ELSEWHERE", ("api.example.com",), header=True, body=True), OTHER),
        ]

    async def environment(self, tenant: str, vault_ids: Sequence[str]) -> list[Opened]:
        return list(self.live) if tenant == "acme" else []


@dataclass
class Upstream:
    port: int
    seen: list[tuple[CIMultiDict[str], bytes]] = field(default_factory=list)


async def serve(context: ssl.SSLContext) -> tuple[Upstream, web.AppRunner]:
    async def echo(request: web.Request) -> web.Response:
        up.seen.append((CIMultiDict(request.headers), await request.read()))
        return web.Response(text=f"ok {len(up.seen)}")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    up = Upstream(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    return up, runner


@dataclass
class World:
    tunnel: Tunnel
    source: Source
    sock: Path
    trusted: Upstream  # certificate for 127.0.0.1 and localhost, from the CA the tunnel trusts
    untrusted: Upstream  # certificate from a CA nobody trusts
    upstream_ca: str
    outcomes: list[str]


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    test_ca, rogue_ca = SessionCA("test upstream"), SessionCA("rogue")
    ca_file = tmp_path / "upstream-ca.pem"
    ca_file.write_text(test_ca.cert_pem)
    trusted, r1 = await serve(leaf_context(test_ca, "127.0.0.1", "localhost"))
    untrusted, r2 = await serve(leaf_context(rogue_ca, "127.0.0.1"))
    source = Source()
    outcomes: list[str] = []
    tunnel = Tunnel(tmp_path, networks=LOOPBACK)
    tunnel.interceptor = Interceptor(
        source, upstream_context(str(ca_file)), lambda m: hashlib.sha256(m).digest(), outcomes.append
    )
    sock = await tunnel.open("sb-1")
    rules = tuple(Rule(h, p) for h in ("127.0.0.1", "localhost") for p in (trusted.port, untrusted.port))
    tunnel.allow("sb-1", Policy(rules))
    yield World(tunnel, source, sock, trusted, untrusted, test_ca.cert_pem, outcomes)
    await tunnel.close()
    await r1.cleanup()
    await r2.cleanup()


def leaf_context(ca: SessionCA, *hosts: str) -> ssl.SSLContext:
    """A server context for ``hosts`` signed by ``ca`` (SessionCA serves one host; this serves several)."""
    cert, key = ca.leaf(hosts[0])
    builder = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(cert.issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(cert.not_valid_before_utc)
        .not_valid_after(cert.not_valid_after_utc)
        .add_extension(x509.SubjectAlternativeName([san(h) for h in hosts]), critical=False)
    )
    cert = builder.sign(ca._key, hashes.SHA256())
    fd = os.memfd_create("test-leaf")
    os.write(
        fd,
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        + cert.public_bytes(serialization.Encoding.PEM),
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(f"/proc/self/fd/{fd}")
    os.close(fd)
    return ctx


async def connect(world: World, target: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """A CONNECT through the sandbox's tunnel socket: the stream and the tunnel's answer line."""
    reader, writer = await asyncio.open_unix_connection(str(world.sock))
    writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), scaled(10))
    return reader, writer, head.split(b"\r\n")[0]


def trusting(*pems: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    for pem in pems:
        ctx.load_verify_locations(cadata=pem)
    return ctx


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> bytes:
    writer.write(request)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), scaled(10))
    length = int(
        next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")).split(b":")[1]
    )
    return head + await asyncio.wait_for(reader.readexactly(length), scaled(10))


async def test_the_upstream_receives_the_secret_where_the_credential_allows(world: World) -> None:
    assert world.tunnel.interceptor is not None
    grant = await world.tunnel.interceptor.grant("sb-1", "acme", ["vlt_1"], "sess_1")
    mark, other_mark = grant.plan.env["MY_TOKEN"], grant.plan.env["ELSEWHERE"]
    assert grant.ca_pem is not None and SECRET not in mark and mark.startswith("moorage-secret-my-token-")
    reader, writer, line = await connect(world, f"127.0.0.1:{world.trusted.port}")
    assert b" 200 " in line
    # The sandbox trusts only its own CA here: the tunnel answers its TLS.
    await writer.start_tls(trusting(grant.ca_pem), server_hostname="127.0.0.1")
    basic = base64.b64encode(f"me:{mark}".encode()).decode()
    first = (
        f"GET /v1/things?key={mark} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {mark}\r\n"
        f"X-Basic: x\r\nProxy-Authorization: Basic {basic}\r\nX-Other: {other_mark}\r\n\r\n"
    ).encode()
    assert b"ok 1" in await exchange(reader, writer, first)
    body = f'{{"token": "{mark}"}}'.encode()
    second = (
        f"POST /v1/things HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    assert b"ok 2" in await exchange(reader, writer, second)  # the same kept-alive connection
    writer.close()
    (h1, _), (h2, b2) = world.trusted.seen
    assert h1["Authorization"] == f"Bearer {SECRET}"
    assert base64.b64decode(h1["Proxy-Authorization"].split()[1]).decode() == f"me:{SECRET}"
    assert h1["X-Other"] == other_mark  # that credential is for another host: its placeholder stays
    assert h2["Content-Length"] == str(len(b2)) and b2 == f'{{"token": "{SECRET}"}}'.encode()
    assert world.outcomes == ["forwarded", "forwarded"]

    # Archived: the next request carries the placeholder, not the secret.
    world.source.live = world.source.live[1:]
    reader, writer, line = await connect(world, f"127.0.0.1:{world.trusted.port}")
    assert b" 200 " in line
    # Nothing left for this host: a blind pipe, so the sandbox now talks to the server itself.
    await writer.start_tls(trusting(world.upstream_ca), server_hostname="127.0.0.1")
    await exchange(reader, writer, f"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {mark}\r\n\r\n".encode())
    writer.close()
    assert world.trusted.seen[-1][0]["Authorization"] == f"Bearer {mark}"


async def test_another_hosts_tunnel_is_a_blind_pipe(world: World) -> None:
    assert world.tunnel.interceptor is not None
    grant = await world.tunnel.interceptor.grant("sb-1", "acme", ["vlt_1"], "sess_1")
    mark = grant.plan.env["MY_TOKEN"]
    reader, writer, line = await connect(world, f"localhost:{world.trusted.port}")
    assert b" 200 " in line
    # The server's own certificate (the test CA's), not one from the sandbox's CA: TLS end to end.
    await writer.start_tls(trusting(world.upstream_ca), server_hostname="localhost")
    ssl_object = writer.get_extra_info("ssl_object")
    assert "test upstream" in str(ssl_object.getpeercert()["issuer"])
    await exchange(reader, writer, f"GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {mark}\r\n\r\n".encode())
    writer.close()
    assert world.trusted.seen[-1][0]["Authorization"] == f"Bearer {mark}"
    assert world.outcomes == []


async def test_an_upstream_with_an_untrusted_certificate_is_refused(world: World) -> None:
    assert world.tunnel.interceptor is not None
    await world.tunnel.interceptor.grant("sb-1", "acme", ["vlt_1"], "sess_1")
    reader, writer, line = await connect(world, f"127.0.0.1:{world.untrusted.port}")
    assert line == b"HTTP/1.1 502 Bad Gateway"
    assert b"not trusted" in await asyncio.wait_for(reader.read(), scaled(5))
    writer.close()
    assert world.untrusted.seen == []


async def test_placeholders_are_stable_per_session_and_the_sandbox_without_credentials_gets_no_ca(
    world: World,
) -> None:
    interceptor = world.tunnel.interceptor
    assert interceptor is not None
    once = await interceptor.grant("sb-1", "acme", ["vlt_1"], "sess_1")
    again = await interceptor.grant("sb-1", "acme", ["vlt_1"], "sess_1")
    other = await interceptor.grant("sb-1", "acme", ["vlt_1"], "sess_2")
    assert once.plan.env == again.plan.env and once.ca_pem != again.ca_pem  # a new CA per start
    assert other.plan.env["MY_TOKEN"] != once.plan.env["MY_TOKEN"]
    nothing = await interceptor.grant("sb-1", "globex", ["vlt_9"], "sess_3")
    assert nothing.plan.env == {} and nothing.ca_pem is None
    assert not await interceptor.wants("sb-1", "127.0.0.1")
