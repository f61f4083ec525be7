"""The model proxy against a real upstream HTTP server, over real unix sockets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from moorage.egress import ModelProxy
from support import scaled, serve_messages

REAL = "sk-real"


class Upstream:
    """An upstream that holds its stream open until told to finish."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.seen: list[dict[str, str]] = []

    async def messages(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(dict(request.headers))
        body = await request.json()
        if not body.get("stream"):
            return web.json_response({"model": "m-json", "usage": {"input_tokens": 5, "output_tokens": 2}})
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        start = {
            "type": "message_start",
            "message": {"model": "m-sse", "usage": {"input_tokens": 10, "output_tokens": 1}},
        }
        await response.write(f"event: message_start\ndata: {json.dumps(start)}\n\n".encode())
        await asyncio.wait_for(self.release.wait(), scaled(10))
        delta = {"type": "message_delta", "usage": {"output_tokens": 9}}
        await response.write(f"event: message_delta\ndata: {json.dumps(delta)}\n\n".encode())
        await response.write_eof()
        return response


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[Upstream, str]]:
    up = Upstream()
    async with serve_messages(up.messages) as url:
        yield up, url


@pytest.fixture
async def proxy(upstream: tuple[Upstream, str], tmp_path: Path) -> AsyncIterator[ModelProxy]:
    p = ModelProxy(tmp_path / "egress", upstream[1], REAL)
    await p.start()
    yield p
    await p.close()


def session(sock: Path) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock)))


async def test_streamed_responses_pass_through_unbuffered(proxy: ModelProxy, upstream: tuple[Upstream, str]) -> None:
    """The first SSE event reaches the sandbox while the upstream is still streaming."""
    up, _ = upstream
    sock = await proxy.open("sb-1")
    async with session(sock) as http:
        resp = await http.post("http://model/v1/messages", json={"stream": True}, headers={"x-api-key": "placeholder"})
        first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), scaled(5))
        assert b"message_start" in first and not up.release.is_set()
        up.release.set()
        rest = await asyncio.wait_for(resp.content.read(), scaled(5))
        assert b"message_delta" in rest
    usage = proxy.usage["sb-1"]
    assert (usage.requests, usage.input_tokens, usage.output_tokens) == (1, 10, 9)
    assert usage.by_model == {"m-sse": {"input_tokens": 10, "output_tokens": 9}}


async def test_real_key_replaces_the_placeholder(proxy: ModelProxy, upstream: tuple[Upstream, str]) -> None:
    """Upstream sees the service's key, never the sandbox's own credentials."""
    up, _ = upstream
    sock = await proxy.open("sb-1")
    async with session(sock) as http:
        resp = await http.post(
            "http://model/v1/messages",
            json={},
            headers={"x-api-key": "placeholder", "authorization": "Bearer stolen"},
        )
        assert resp.status == 200
    headers = {k.lower(): v for k, v in up.seen[-1].items()}
    assert headers["x-api-key"] == REAL and "authorization" not in headers
    assert proxy.usage["sb-1"].input_tokens == 5


async def test_only_the_messages_api_is_reachable(proxy: ModelProxy, upstream: tuple[Upstream, str]) -> None:
    """Any other path or method is refused by the proxy without touching upstream."""
    up, _ = upstream
    sock = await proxy.open("sb-1")
    async with session(sock) as http:
        for method, path in (("GET", "/v1/models"), ("POST", "/v1/files"), ("GET", "/v1/messages")):
            resp = await http.request(method, "http://model" + path)
            assert resp.status == 404, (method, path)
    assert up.seen == []


async def test_usage_is_attributed_to_the_socket_it_came_through(proxy: ModelProxy) -> None:
    """Each sandbox's socket is its identity: usage lands on the right sandbox."""
    a = await proxy.open("sb-a")
    b = await proxy.open("sb-b")
    for sock, times in ((a, 2), (b, 1)):
        async with session(sock) as http:
            for _ in range(times):
                await http.post("http://model/v1/messages", json={})
    assert proxy.usage["sb-a"].requests == 2 and proxy.usage["sb-b"].requests == 1
    await proxy.close_sandbox("sb-a")
    assert not a.exists()
