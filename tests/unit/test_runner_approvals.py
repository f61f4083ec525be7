"""The runner's side of approvals and custom tools (moorage_runner.approvals),
with the channel replaced by a recorder that answers like the service."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from claude_agent_sdk import HookContext, HookInput
from moorage_runner.approvals import Approvals, Asks
from moorage_runner.channel import ChannelOut

AGENT = {
    "ask_tools": ["Bash"],
    "custom_tools": [{"name": "weather", "description": "d", "input_schema": {"type": "object"}}],
}


class Service:
    """Records frames and answers each with ``reply(frame)``."""

    def __init__(self, reply: dict[str, Any]) -> None:
        self.sent: list[dict[str, Any]] = []
        self.reply = reply
        self.asks: Asks | None = None

    async def send(self, frame: dict[str, Any]) -> None:
        self.sent.append(frame)
        assert self.asks is not None
        asyncio.get_running_loop().call_soon(self.asks.resolve, {**self.reply, "id": frame["id"]})


def approvals(reply: dict[str, Any]) -> tuple[Approvals, Service]:
    service = Service(reply)
    asks = Asks(cast(ChannelOut, service))
    service.asks = asks
    return Approvals(AGENT, asks), service


def hook_input(tool: str) -> HookInput:
    return cast(HookInput, {"hook_event_name": "PreToolUse", "tool_name": tool, "tool_input": {"command": "ls"}})


async def test_an_ask_tool_waits_for_the_answer_and_others_pass() -> None:
    gate, service = approvals({"behavior": "deny", "message": "no"})
    context = cast(HookContext, {"signal": None})
    assert await gate.pre_tool_use(hook_input("Read"), "toolu_0", context) == {}
    assert service.sent == []
    denied = await gate.pre_tool_use(hook_input("Bash"), "toolu_1", context)
    assert service.sent == [{"kind": "permission_request", "id": "toolu_1", "tool": "Bash", "input": {"command": "ls"}}]
    assert denied["hookSpecificOutput"] == {  # type: ignore[typeddict-item]
        "hookEventName": "PreToolUse",
        "permissionDecision": "deny",
        "permissionDecisionReason": "no",
    }
    gate, _ = approvals({"behavior": "allow"})
    allowed = await gate.pre_tool_use(hook_input("Bash"), "toolu_2", context)
    assert allowed["hookSpecificOutput"]["permissionDecision"] == "allow"  # type: ignore[typeddict-item]


async def test_options_gate_only_what_the_agent_asks_for() -> None:
    gate, _ = approvals({})
    options = gate.options()
    assert set(options["mcp_servers"]) == {"client"} and options["hooks"]["PreToolUse"][0].on_failure == "block"
    assert Approvals(None, gate.asks).options() == {"mcp_servers": {}}


async def test_a_custom_tool_call_returns_what_the_client_gave() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "QQ=="}}
    gate, service = approvals({"content": [{"type": "text", "text": "22C"}, image], "is_error": False})
    tool = gate._tool(AGENT["custom_tools"][0])  # type: ignore[index]
    result = await tool.handler({"city": "Oslo"})
    (call,) = service.sent
    assert call["kind"] == "custom_tool_use" and call["name"] == "weather" and call["input"] == {"city": "Oslo"}
    assert result == {
        "content": [{"type": "text", "text": "22C"}, {"type": "image", "data": "QQ==", "mimeType": "image/png"}],
        "is_error": False,
    }
