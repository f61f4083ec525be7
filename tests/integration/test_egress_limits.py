"""The model proxy's bounds: request size, connections per sandbox, head deadlines.

The slowloris client runs in a child process, so the file descriptors this
process holds are the service's own (proxy, tunnel, TCP front, upstream).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from moorage.egress import ModelProxy, ProxyLimits
from moorage.egress_port import ProxyPort
from moorage.tunnel import Policy, Tunnel, parse_allowlist
from support import scaled, serve_messages

MiB = 1024 * 1024


class Upstream:
    def __init__(self) -> None:
        self.bodies: list[tuple[int, str]] = []  # (length, sha256) of each body received

    async def messages(self, request: web.Request) -> web.Response:
        digest, size = hashlib.sha256(), 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
        self.bodies.append((size, digest.hexdigest()))
        return web.json_response({"model": "claude-haiku-4", "usage": {"input_tokens": size // 4, "output_tokens": 1}})


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[Upstream, str]]:
    up = Upstream()
    async with serve_messages(up.messages, max_body=1024 * MiB) as url:
        yield up, url


def unix(sock: Path) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock)))


async def test_a_long_conversation_over_a_mebibyte_goes_through(upstream: tuple[Upstream, str], tmp_path: Path) -> None:
    """aiohttp's 1 MiB default no longer applies: 5 MiB reach the upstream intact (default limits)."""
    up, url = upstream
    proxy = ModelProxy(tmp_path / "egress", url, "sk-real")
    await proxy.start()
    try:
        sock = await proxy.open("sb")
        body = os.urandom(5 * MiB)
        async with unix(sock) as http:
            resp = await http.post("http://model/v1/messages", data=io.BytesIO(body))
            assert resp.status == 200, await resp.text()
        assert up.bodies == [(len(body), hashlib.sha256(body).hexdigest())]
    finally:
        await proxy.close()


async def test_request_bodies_at_the_limit_pass_and_over_it_get_a_413(
    upstream: tuple[Upstream, str], tmp_path: Path
) -> None:
    """At MOORAGE_MODEL_REQUEST_MAX_BYTES a body passes; one byte more is a 413 in the
    Messages API's error shape, with or without a Content-Length, and the over-size
    body with a length never leaves."""
    up, url = upstream
    limit = 2 * MiB
    proxy = ModelProxy(tmp_path / "egress", url, "sk-real", ProxyLimits(request_max_bytes=limit))
    await proxy.start()
    try:
        sock = await proxy.open("sb")
        async with unix(sock) as http:
            resp = await http.post("http://model/v1/messages", data=io.BytesIO(b"x" * limit))
            assert resp.status == 200
            assert up.bodies[-1][0] == limit
            resp = await http.post("http://model/v1/messages", data=io.BytesIO(b"x" * (limit + 1)))
            assert resp.status == 413
            error = await resp.json()
            assert error["type"] == "error" and error["error"]["type"] == "request_too_large"
            assert "MOORAGE_MODEL_REQUEST_MAX_BYTES" in error["error"]["message"]
            assert len(up.bodies) == 1

            async def chunked() -> AsyncIterator[bytes]:
                for _ in range(3):
                    yield b"y" * MiB

            resp = await http.post("http://model/v1/messages", data=chunked())
            assert resp.status == 413
            assert (await resp.json())["error"]["type"] == "request_too_large"
        assert proxy.usage["sb"].requests == 1
    finally:
        await proxy.close()


# --- slowloris ------------------------------------------------------------------------------

SLOW_CLIENT = r"""
import socket, sys, time
kind, address, count, head = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].encode()
conns = []
for _ in range(count):
    if kind == "unix":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(address)
    else:
        host, port = address.rsplit(":", 1)
        s = socket.create_connection((host, int(port)))
    s.setblocking(False)
    try:
        s.send(head[:10])  # a request head begun, never finished
    except OSError:
        pass
    conns.append(s)
print("opened", flush=True)
open_ = set(range(count))
i = 10
while open_:
    time.sleep(0.05)
    i += 1
    for n in list(open_):
        try:
            if conns[n].recv(4096, socket.MSG_PEEK) == b"":
                open_.discard(n)
                continue
            open_.discard(n)  # an answer (the refusal): the server is done with it
        except BlockingIOError:
            try:
                conns[n].send(head[i % len(head):i % len(head) + 1])  # one more byte, slowly
            except OSError:
                open_.discard(n)
        except OSError:
            open_.discard(n)
print("all closed", flush=True)
"""

CAP = 8
ATTACKERS = 120
# The service's own descriptors besides the attack's: the normal request's
# pooled upstream connection and, in this process, the test upstream's end of it.
SLACK = 4


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def until(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + scaled(timeout)
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def slowloris(kind: str, address: str, head: bytes) -> asyncio.subprocess.Process:
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SLOW_CLIENT,
        kind,
        address,
        str(ATTACKERS),
        head.decode(),
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None
    line = await asyncio.wait_for(child.stdout.readline(), scaled(15))
    assert line == b"opened\n"
    return child


async def normal_request(http: aiohttp.ClientSession, url: str) -> None:
    resp = await asyncio.wait_for(http.post(url, json={"messages": []}), scaled(5))
    assert resp.status == 200
    await resp.read()


@pytest.mark.parametrize("front", ["model socket", "tunnel socket", "tcp port"])
async def test_slowloris_on_one_sandbox_is_capped_cut_and_harmless_to_others(
    front: str, upstream: tuple[Upstream, str], tmp_path: Path
) -> None:
    """120 half-open, byte-dripping connections on one sandbox's socket: at most the cap
    are held (the service's fd count stays bounded), each is cut after the head
    deadline, and another sandbox's socket serves a normal request meanwhile."""
    _, url = upstream
    deadline_s = scaled(1.0)
    limits = ProxyLimits(connections_per_sandbox=CAP, request_timeout_s=deadline_s)
    proxy = ModelProxy(tmp_path / "egress", url, "sk-real", limits)
    await proxy.start()
    port: ProxyPort | None = None
    head = b"POST /v1/messages HTTP/1.1\r\nHost: model\r\nContent-Type: application/json\r\nX-Pad: " + b"a" * 200
    try:
        if front == "tunnel socket":
            proxy.tunnel = Tunnel(proxy.socket_dir, connections_per_sandbox=CAP, head_timeout_s=deadline_s)
        victim = await proxy.open("victim")
        other = await proxy.open("other")
        if front == "tcp port":
            port = ProxyPort(proxy, "127.0.0.1", 0, "127.0.0.1")
            await port.start()
            port.open("victim")
            other_url = port.open("other") + "/v1/messages"
        baseline = fds()
        if front == "model socket":
            child = await slowloris("unix", str(victim), head)
        elif front == "tunnel socket":
            assert proxy.tunnel is not None
            tunnel_sock = await proxy.tunnel.open("victim")
            proxy.tunnel.allow("victim", Policy(parse_allowlist("example.com")))
            await proxy.tunnel.open("other")
            baseline = fds()
            child = await slowloris(
                "unix", str(tunnel_sock), b"CONNECT example.com:443 HTTP/1.1\r\nX-Pad: " + b"a" * 200
            )
        else:
            assert port is not None
            child = await slowloris("tcp", f"127.0.0.1:{port.port}", head)
        try:
            held = fds() - baseline
            assert held <= CAP + SLACK, f"{held} descriptors held for one sandbox (cap {CAP})"
            # Another sandbox is served while the attack holds its slots.
            if front == "tcp port":
                local = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
                async with aiohttp.ClientSession(connector=local) as http:
                    await normal_request(http, other_url)
            else:
                async with unix(other) as http:
                    await normal_request(http, "http://model/v1/messages")
            assert fds() - baseline <= CAP + SLACK
            # Every held connection is cut once its head deadline passes.
            assert child.stdout is not None
            line = await asyncio.wait_for(child.stdout.readline(), scaled(15))
            assert line == b"all closed\n"
            await until(lambda: fds() <= baseline + SLACK, "the held descriptors to be closed")
        finally:
            if child.returncode is None:
                child.kill()
            await child.wait()
    finally:
        if port is not None:
            await port.close()
        if proxy.tunnel is not None:
            await proxy.tunnel.close()
        await proxy.close()


async def test_the_tcp_front_caps_requests_in_flight_per_token(upstream: tuple[Upstream, str], tmp_path: Path) -> None:
    """Past the cap, a token's next request is refused at once (503, Messages API shape)
    even from another address; another token is unaffected."""
    _, url = upstream
    limits = ProxyLimits(connections_per_sandbox=2)
    proxy = ModelProxy(tmp_path / "egress", url, "sk-real", limits)
    await proxy.start()
    await proxy.open("a")
    await proxy.open("b")
    port = ProxyPort(proxy, "127.0.0.1", 0, "127.0.0.1")
    await port.start()
    try:
        base_a, base_b = port.open("a"), port.open("b")
        stuck: list[asyncio.StreamWriter] = []
        for source in ("127.0.0.3", "127.0.0.4"):  # two requests in flight: bodies that never end
            _, writer = await asyncio.open_connection("127.0.0.1", port.port, local_addr=(source, 0))
            path = base_a.split(str(port.port), 1)[1] + "/v1/messages"
            writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{".encode())
            await writer.drain()
            stuck.append(writer)
        await until(lambda: port.in_flight.get(base_a.rsplit("/", 1)[1], 0) == 2, "two requests in flight")
        local = aiohttp.TCPConnector(local_addr=("127.0.0.5", 0))
        async with aiohttp.ClientSession(connector=local) as http:
            resp = await http.post(base_a + "/v1/messages", json={})
            assert resp.status == 503
            assert (await resp.json())["error"]["type"] == "overloaded_error"
            await normal_request(http, base_b + "/v1/messages")
        for writer in stuck:
            writer.close()
    finally:
        await port.close()
        await proxy.close()


async def test_a_body_that_never_ends_is_cut_at_the_deadline(upstream: tuple[Upstream, str], tmp_path: Path) -> None:
    """A complete head with a body that stalls gets a 408 (Messages API shape) once the
    body deadline passes, and its connection slot comes back."""
    _, url = upstream
    proxy = ModelProxy(tmp_path / "egress", url, "sk-real", ProxyLimits(request_timeout_s=scaled(0.5)))
    await proxy.start()
    try:
        sock = await proxy.open("sb")
        reader, writer = await asyncio.open_unix_connection(str(sock))
        writer.write(b"POST /v1/messages HTTP/1.1\r\nHost: m\r\nContent-Length: 100\r\n\r\n{")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), scaled(10))
        writer.close()
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert b'"type": "timeout_error"' in answer
        await until(lambda: not proxy.gate.open, "the slot to be released")
    finally:
        await proxy.close()
