"""Every upstream response is metered, whatever the sandbox does.

Invariant: the tokens the proxy meters for a request equal the tokens the
upstream reported for it, and its session's log says so: a
``model_request_start`` / ``model_request_end`` pair per request
(``model_spans.py``), the end carrying exactly what was metered. A scripted
upstream pauses at each interesting point of a response until the test says
go; the sandbox (a client on the proxy's unix socket) hangs up right there.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from moorage.accounting import DEFAULT_PRICES, Accounting, Ledger
from moorage.egress import ModelProxy, Usage
from moorage.metrics import Metrics
from moorage.model_spans import ModelSpans
from support import scaled, serve_messages

KINDS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
ZERO = dict.fromkeys(KINDS, 0)


@dataclass
class Script:
    """How the upstream answers one request, and where it waits for ``go``."""

    stream: bool = True
    deltas: int = 4
    pause: str = ""  # "", "before_headers", "before_start", "after_start", "mid_content", "before_delta"
    go: asyncio.Event = field(default_factory=asyncio.Event)
    received: asyncio.Event = field(default_factory=asyncio.Event)
    reported: dict[str, int] = field(default_factory=dict)  # what the upstream told the proxy
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Upstream:
    """A Messages API stand-in that reports usage exactly as the real one does."""

    def __init__(self) -> None:
        self.scripts: dict[str, Script] = {}

    async def messages(self, request: web.Request) -> web.StreamResponse:
        script = self.scripts[request.headers["x-test-id"]]
        try:
            return await self._answer(request, script)
        finally:
            script.done.set()

    async def _answer(self, request: web.Request, script: Script) -> web.StreamResponse:
        raw = await request.read()
        script.received.set()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return web.json_response(
                {"type": "error", "error": {"type": "invalid_request_error", "message": "bad json"}}, status=400
            )
        if script.pause == "before_headers":
            await asyncio.wait_for(script.go.wait(), scaled(10))
        usage = {"input_tokens": 100, "cache_read_input_tokens": 7, "cache_creation_input_tokens": 5}
        if not script.stream:
            script.reported = {**usage, "output_tokens": 3 * script.deltas}
            return web.json_response(
                {"type": "message", "model": "claude-sonnet-4", "content": [], "usage": script.reported}
            )
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)

        async def send(kind: str, data: dict[str, object]) -> None:
            await response.write(f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode())

        if script.pause == "before_start":
            await asyncio.wait_for(script.go.wait(), scaled(10))
        start_usage = {**usage, "output_tokens": 1}
        script.reported = dict(start_usage)
        await send(
            "message_start", {"type": "message_start", "message": {"model": "claude-sonnet-4", "usage": start_usage}}
        )
        if script.pause == "mid_content":
            await send("content_block_delta", {"type": "content_block_delta", "delta": {"text": "first"}})
        if script.pause in ("after_start", "mid_content"):
            await asyncio.wait_for(script.go.wait(), scaled(10))
        for i in range(script.deltas):
            await send("content_block_delta", {"type": "content_block_delta", "delta": {"text": f"word {i} " * 20}})
        if script.pause == "before_delta":
            await asyncio.wait_for(script.go.wait(), scaled(10))
        final = {"output_tokens": 3 * script.deltas}
        await send("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": final})
        script.reported.update(final)
        await send("message_stop", {"type": "message_stop"})
        await response.write_eof()
        return response


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[Upstream, str]]:
    up = Upstream()
    async with serve_messages(up.messages) as url:
        yield up, url


@pytest.fixture
async def proxy(upstream: tuple[Upstream, str], tmp_path: Path) -> AsyncIterator[ModelProxy]:
    p = ModelProxy(tmp_path / "egress", upstream[1], "sk-real")
    await p.start()
    yield p
    await p.close()


def logged_spans(proxy: ModelProxy, sandbox_id: str) -> tuple[ModelSpans, list[dict[str, object]]]:
    """Observe ``proxy``'s requests as a session owning ``sandbox_id`` would: the frames it logs."""
    spans = proxy.observer = ModelSpans()
    log: list[dict[str, object]] = []
    spans.register(sandbox_id, log.append)
    return spans, log


def metered(usage: Usage) -> dict[str, int]:
    return {kind: getattr(usage, kind) for kind in KINDS if getattr(usage, kind)}


async def until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + scaled(timeout)
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def read_until(resp: aiohttp.ClientResponse, marker: bytes) -> None:
    seen = b""
    while marker not in seen:
        chunk = await asyncio.wait_for(resp.content.readany(), scaled(5))
        assert chunk, f"stream ended before {marker!r}"
        seen += chunk


# (name, stream, upstream pauses at, the sandbox hangs up after reading this: None = after the response headers)
HANG_UPS = [
    ("streamed, read whole", True, "", b"message_stop"),
    ("streamed, before the response headers", True, "before_headers", b"-"),
    ("streamed, after the headers", True, "before_start", None),
    ("streamed, after message_start", True, "after_start", b"message_start"),
    ("streamed, mid-content", True, "mid_content", b"first"),
    ("streamed, before message_delta", True, "before_delta", b"word 3"),
    ("json, read whole", False, "", b"usage"),
    ("json, before the response", False, "before_headers", b"-"),
]


@pytest.mark.parametrize(("name", "stream", "pause", "hang_up_after"), HANG_UPS, ids=[h[0] for h in HANG_UPS])
async def test_metered_tokens_equal_the_upstreams_whenever_the_sandbox_hangs_up(
    proxy: ModelProxy,
    upstream: tuple[Upstream, str],
    name: str,
    stream: bool,
    pause: str,
    hang_up_after: bytes | None,
) -> None:
    """A sandbox that closes its socket at any point of a response still pays for all of it."""
    up, _ = upstream
    script = up.scripts[name] = Script(stream=stream, pause=pause)
    sock = await proxy.open("sb")
    _, spans = logged_spans(proxy, "sb")
    http = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock)))
    try:
        request = http.post(
            "http://model/v1/messages",
            json={"stream": stream, "max_tokens": 1000, "messages": []},
            headers={"x-test-id": name},
        )
        if hang_up_after == b"-":  # the request is out; hang up before any answer
            task = asyncio.ensure_future(request)
            await asyncio.wait_for(script.received.wait(), scaled(5))
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        else:
            resp = await asyncio.wait_for(request, scaled(5))
            assert resp.status == 200
            if hang_up_after is not None:
                await read_until(resp, hang_up_after)
            if hang_up_after in (b"message_stop", b"usage"):
                await resp.read()
            resp.close()
    finally:
        await http.close()
    script.go.set()
    await asyncio.wait_for(script.done.wait(), scaled(10))
    await until(lambda: metered(proxy.usage["sb"]) == script.reported, f"metering to match {script.reported}")
    await until(lambda: proxy.busy("sb") == 0, "the response to be drained")
    assert metered(proxy.usage["sb"]) == script.reported
    assert proxy.usage["sb"].requests == 1
    assert proxy.usage["sb"].by_model == {"claude-sonnet-4": script.reported}
    start, end = spans
    assert start == {"type": "model_request_start", "id": start["id"]}
    whole = hang_up_after in (b"message_stop", b"usage")  # the sandbox read it all: not an error
    assert end == {"type": "model_request_end", "id": start["id"], "usage": script.reported, "is_error": not whole}


async def test_usage_is_metered_from_message_start_on(proxy: ModelProxy, upstream: tuple[Upstream, str]) -> None:
    """The budget moves as soon as message_start reports input tokens, not at the end."""
    up, _ = upstream
    script = up.scripts["t"] = Script(pause="after_start")
    sock = await proxy.open("sb")
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as http:
        resp = await http.post("http://model/v1/messages", json={"stream": True}, headers={"x-test-id": "t"})
        await read_until(resp, b"message_start")
        await until(lambda: proxy.usage["sb"].input_tokens == 100, "message_start's usage to be metered")
        assert proxy.usage["sb"].output_tokens == 1 and not script.done.is_set()
        script.go.set()
        await resp.read()
    assert metered(proxy.usage["sb"]) == script.reported


async def test_garbage_and_huge_max_tokens_are_metered_as_reported(
    proxy: ModelProxy, upstream: tuple[Upstream, str]
) -> None:
    """A body the upstream refuses costs nothing; a huge generation cut short by the sandbox costs all of it."""
    up, _ = upstream
    up.scripts["garbage"] = Script()
    huge = up.scripts["huge"] = Script(deltas=2000, pause="mid_content")
    sock = await proxy.open("sb-garbage")
    sock2 = await proxy.open("sb-huge")
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as http:
        resp = await http.post("http://model/v1/messages", data=b"\x00{not json", headers={"x-test-id": "garbage"})
        assert resp.status == 400
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock2))) as http:
        body = {"stream": True, "max_tokens": 10**12, "messages": [{"role": "user", "content": "x" * 1000}]}
        resp = await http.post("http://model/v1/messages", json=body, headers={"x-test-id": "huge"})
        await read_until(resp, b"first")
        resp.close()
    huge.go.set()
    await asyncio.wait_for(huge.done.wait(), scaled(10))
    await until(lambda: metered(proxy.usage["sb-huge"]) == huge.reported, "the huge response to be metered")
    assert huge.reported["output_tokens"] == 6000
    assert metered(proxy.usage["sb-garbage"]) == {}


async def test_a_response_drained_after_its_session_ended_is_charged_to_its_tenant(
    upstream: tuple[Upstream, str], tmp_path: Path
) -> None:
    """Hang up mid-stream and end the session at once: the tenant's daily spend still
    gets the whole response, priced from what the upstream reported."""
    up, url = upstream
    accounting = Accounting(Metrics(tuple(DEFAULT_PRICES)), DEFAULT_PRICES, None, None)
    proxy = ModelProxy(tmp_path / "egress", url, "sk-real")
    proxy.meter = accounting
    await proxy.start()
    try:
        sock = await proxy.open("sb")
        accounting.ledgers["sb"] = ledger = Ledger(tenant="acme")
        observer, spans = logged_spans(proxy, "sb")
        script = up.scripts["t"] = Script(pause="before_delta")
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as http:
            resp = await http.post("http://model/v1/messages", json={"stream": True}, headers={"x-test-id": "t"})
            await read_until(resp, b"word 3")
            resp.close()
        await proxy.close_sandbox("sb")  # what a session's end does, in this order
        accounting.ledgers.pop("sb")
        assert len(spans) == 1
        observer.unregister("sb")
        # Its log closes now: the span ends as an error with what was metered so far.
        assert spans[1] == {
            "type": "model_request_end",
            "id": spans[0]["id"],
            "usage": {
                **ZERO,
                "input_tokens": 100,
                "cache_read_input_tokens": 7,
                "cache_creation_input_tokens": 5,
                "output_tokens": 1,
            },
            "is_error": True,
        }
        script.go.set()
        await asyncio.wait_for(script.done.wait(), scaled(10))
        await until(lambda: proxy.busy("sb") == 0, "the drain to end")
        expected = accounting.price("claude-sonnet-4", script.reported)
        assert script.reported["output_tokens"] == 12
        assert accounting.tenant_today("acme") == pytest.approx(expected)
        assert ledger.total_usd == pytest.approx(expected)
        assert len(spans) == 2  # the drain's own end came after the log closed: dropped
    finally:
        await proxy.close()


async def test_refused_failed_and_unowned_requests_in_the_log(
    proxy: ModelProxy, upstream: tuple[Upstream, str]
) -> None:
    """A request the budget check refuses and one the upstream refuses are each a start and an
    error end with nothing metered; count_tokens and a sandbox no session owns log nothing."""
    up, _ = upstream
    up.scripts["garbage"] = Script()
    accounting = Accounting(Metrics(tuple(DEFAULT_PRICES)), DEFAULT_PRICES, 0.0, None)
    proxy.meter = accounting
    sock = await proxy.open("sb")
    unowned = await proxy.open("sb-warm")
    _, spans = logged_spans(proxy, "sb")
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as http:
        resp = await http.post("http://model/v1/messages", data=b"\x00{not json", headers={"x-test-id": "garbage"})
        assert resp.status == 400  # the upstream's answer: no ledger yet, nothing to refuse
        accounting.ledgers["sb"] = Ledger(tenant="acme")
        resp = await http.post("http://model/v1/messages", json={"stream": True}, headers={"x-test-id": "garbage"})
        assert resp.status == 400 and "budget_exceeded" in await resp.text()
        accounting.ledgers.pop("sb")
        resp = await http.post("http://model/v1/messages/count_tokens", json={})
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(unowned))) as http:
        up.scripts["warm"] = Script(stream=False)
        resp = await http.post("http://model/v1/messages", json={}, headers={"x-test-id": "warm"})
        assert resp.status == 200
    await until(lambda: proxy.busy("sb") == 0 and proxy.busy("sb-warm") == 0, "the requests to end")
    assert [f["type"] for f in spans] == ["model_request_start", "model_request_end"] * 2
    ends = spans[1::2]
    assert [e["id"] for e in ends] == [s["id"] for s in spans[0::2]] and len({e["id"] for e in ends}) == 2
    assert all(e["is_error"] is True and e["usage"] == ZERO for e in ends)
