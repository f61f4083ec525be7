"""A scripted stand-in for the Anthropic Messages API.

The real Claude Code CLI talks to it through ``ANTHROPIC_BASE_URL``; only the
model is fake. What it answers is read from the last user prompt, one command
per prompt, so tests and benchmarks stay deterministic:

``say TEXT``      answer with TEXT.
``bash CMD``      call the Bash tool with CMD; after the tool result, answer
                  ``tool said: <result>``.
``tool NAME JSON`` call the tool NAME (e.g. a custom tool, ``mcp__client__x``)
                  with the JSON object as its input; after the tool result,
                  answer ``tool said: <result>``.
``loop``          call Bash (``true``) again and again (tests the turn limit).
``sleep S``       wait S seconds before answering (tests timeouts/interrupt).
anything else     answer ``ok``.

Every response reports fixed token usage (see ``USAGE``) so metering can be
checked exactly. Used by the tests, ``make bench`` and anyone building a client
who wants a model that answers instantly and for free.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

USAGE = {"input_tokens": 11, "output_tokens": 7, "cache_read_input_tokens": 3, "cache_creation_input_tokens": 2}
_ids = itertools.count(1)


def _text_of(content: Any) -> str:
    """The prompt text of a user message, without the CLI's system reminders."""
    if isinstance(content, str):
        return content
    parts = [block.get("text", "") for block in content if isinstance(block, dict) and block.get("type") == "text"]
    parts = [p for p in parts if not p.lstrip().startswith("<system-reminder>")]
    return parts[-1] if parts else ""


def _tool_result(content: Any) -> str | None:
    if not isinstance(content, list):
        return None
    for block in content:
        if isinstance(block, dict) and block.get("type") == "tool_result":
            inner = block.get("content")
            if isinstance(inner, list):
                return "".join(b.get("text", "") for b in inner if isinstance(b, dict))
            return str(inner or "")
    return None


def _last_prompt(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            text = _text_of(message.get("content", ""))
            if text:
                return text.strip()
    return ""


@dataclass
class Reply:
    """What the model says next: text, or one Bash (or other) tool call."""

    text: str = ""
    bash: str | None = None
    delay_s: float = 0.0
    tool: tuple[str, dict[str, Any]] | None = None  # name, input

    @property
    def calls_tool(self) -> bool:
        return self.bash is not None or self.tool is not None

    def blocks(self) -> list[dict[str, Any]]:
        if self.tool is not None:
            return [{"type": "tool_use", "id": f"toolu_{next(_ids):08d}", "name": self.tool[0], "input": self.tool[1]}]
        if self.bash is not None:
            return [
                {
                    "type": "tool_use",
                    "id": f"toolu_{next(_ids):08d}",
                    "name": "Bash",
                    "input": {"command": self.bash, "description": "scripted"},
                }
            ]
        return [{"type": "text", "text": self.text}]


def decide(body: dict[str, Any]) -> Reply:
    """Pick the reply for one Messages API request body."""
    messages = body.get("messages") or []
    if not any(t.get("name") == "Bash" for t in body.get("tools") or []):
        # Side requests (titles, summaries, quota probes): answer plainly.
        return Reply(text="ok")
    prompt = _last_prompt(messages)
    command, _, arg = prompt.partition(" ")
    # The CLI may end with a system-role note (e.g. a token count for some models): the turn's last word is before it.
    last: dict[str, Any] = next((m for m in reversed(messages) if m.get("role") != "system"), {})
    fresh_prompt = last.get("role") == "user" and bool(_text_of(last.get("content", "")))
    result = _tool_result(last.get("content")) if last.get("role") == "user" else None
    if command == "loop":
        return Reply(bash="true")
    if result is not None and not fresh_prompt:
        return Reply(text=f"tool said: {result.strip()}")
    if command == "say":
        return Reply(text=arg)
    if command == "bash":
        return Reply(bash=arg)
    if command == "tool":
        name, _, args = arg.partition(" ")
        return Reply(tool=(name, json.loads(args or "{}")))
    if command == "sleep":
        return Reply(text="slept", delay_s=float(arg or "1"))
    return Reply(text="ok")


def sse_events(reply: Reply, model: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """The SSE events of one streamed response, in Messages API order."""
    msg_id = f"msg_{next(_ids):08d}"
    blocks = reply.blocks()
    start_usage = {**USAGE, "output_tokens": 1}
    yield (
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": msg_id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": start_usage,
            },
        },
    )
    for index, block in enumerate(blocks):
        if block["type"] == "text":
            yield (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": "text", "text": ""},
                },
            )
            yield (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "text_delta", "text": block["text"]},
                },
            )
        else:
            yield (
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}},
                },
            )
            yield (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": json.dumps(block["input"])},
                },
            )
        yield "content_block_stop", {"type": "content_block_stop", "index": index}
    stop = "tool_use" if reply.calls_tool else "end_turn"
    yield (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": None},
            "usage": {"output_tokens": USAGE["output_tokens"]},
        },
    )
    yield "message_stop", {"type": "message_stop"}


@dataclass
class ScriptedModel:
    """The server; ``requests`` records every request body for assertions."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    api_keys: list[str] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_post("/v1/messages/count_tokens", self._count_tokens)
        return app

    async def _count_tokens(self, request: web.Request) -> web.Response:
        return web.json_response({"input_tokens": 42})

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        self.api_keys.append(request.headers.get("x-api-key", ""))
        reply = decide(body)
        model = str(body.get("model", "claude-scripted"))
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": f"msg_{next(_ids):08d}",
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": reply.blocks(),
                    "stop_reason": "tool_use" if reply.calls_tool else "end_turn",
                    "stop_sequence": None,
                    "usage": USAGE,
                }
            )
        response = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
        await response.prepare(request)
        for event, data in sse_events(reply, model):
            await response.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())
        await response.write_eof()
        return response


class ScriptedModelServer:
    """Runs a ScriptedModel on 127.0.0.1 in a thread of its own."""

    def __init__(self, port: int = 0) -> None:
        self.model = ScriptedModel()
        self._port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="scripted-model")
        self._runner: web.AppRunner | None = None
        self.url = ""

    def start(self) -> ScriptedModelServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.model.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self._port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


def main() -> None:
    """``python -m moorage.testing.scripted_model [PORT]``: serve until killed."""
    import sys

    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8787
    web.run_app(ScriptedModel().app(), host="127.0.0.1", port=port, access_log=None)


if __name__ == "__main__":
    main()
