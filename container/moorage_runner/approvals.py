"""Approvals and client-executed custom tools, the runner's side.

The service's ``start`` frame may carry ``agent``: ``{"ask_tools": [tool
names whose policy is always_ask, or ``mcp__<server>__*``], "allow_tools": [exceptions
to such a wildcard], "custom_tools": [{name, description,
input_schema}]}``. Before an ``always_ask`` tool runs, a ``PreToolUse`` hook
sends a ``permission_request`` frame and waits for the service's
``permission_response``; every other tool is allowed as before. (Not the
SDK's ``can_use_tool``: the CLI consults it only for calls its own rules
would prompt for, so a read-only ``ls`` or a ``Read`` never reached it, and
``always_ask`` means every call. A hook sees every call, and the session
keeps ``bypassPermissions`` inside its sandbox.) Each custom tool is a tool of an in-process SDK MCP server
(``mcp__client__<name>`` to the model) whose handler sends a
``custom_tool_use`` frame and waits for ``custom_tool_result``. The service
owns the deadline (it answers with a denial or an error result), so the
runner waits without one of its own.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from claude_agent_sdk import (
    HookContext,
    HookInput,
    HookJSONOutput,
    HookMatcher,
    McpSdkServerConfig,
    SdkMcpTool,
    create_sdk_mcp_server,
)

from .channel import ChannelOut

MCP_SERVER = "client"  # custom tools reach the model as mcp__client__<name>
# The CLI's own limit on a hook (its default is 60 s): the service's
# MOORAGE_PERMISSION_TIMEOUT_S answers first.
HOOK_TIMEOUT_S = 7 * 24 * 3600.0


class Asks:
    """Frames sent to the service that wait for its answer, by id."""

    def __init__(self, out: ChannelOut) -> None:
        self.out = out
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}

    async def ask(self, frame: dict[str, Any]) -> dict[str, Any]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[str(frame["id"])] = future
        try:
            await self.out.send(frame)
            return await future
        finally:
            self._waiting.pop(str(frame["id"]), None)

    def resolve(self, frame: dict[str, Any]) -> None:
        future = self._waiting.get(str(frame.get("id")))
        if future is not None and not future.done():
            future.set_result(frame)


def _mcp_content(blocks: object) -> list[dict[str, Any]]:
    """Messages API blocks (what clients send) as the SDK's MCP tool content."""
    content: list[dict[str, Any]] = []
    for block in blocks if isinstance(blocks, list) else []:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            content.append({"type": "text", "text": str(block.get("text", ""))})
        elif block.get("type") == "image" and isinstance(source := block.get("source"), dict):
            content.append({"type": "image", "data": source.get("data", ""), "mimeType": source.get("media_type", "")})
    return content


class Approvals:
    """The agent's tool policy, as SDK options."""

    def __init__(self, agent: object, asks: Asks) -> None:
        spec = agent if isinstance(agent, dict) else {}
        self.ask_tools = frozenset(str(name) for name in spec.get("ask_tools") or [])
        self.allow_tools = frozenset(str(name) for name in spec.get("allow_tools") or [])
        self.custom_tools = [t for t in spec.get("custom_tools") or [] if isinstance(t, dict)]
        self.asks = asks

    async def pre_tool_use(self, data: HookInput, tool_use_id: str | None, context: HookContext) -> HookJSONOutput:
        """Every tool call: an always_ask tool waits for a client's answer."""
        tool = str(data.get("tool_name", ""))
        if not self.waits_for(tool):
            return {}
        request_id = tool_use_id or f"perm_{uuid.uuid4().hex}"
        frame = {"kind": "permission_request", "id": request_id, "tool": tool, "input": data.get("tool_input") or {}}
        answer = await self.asks.ask(frame)
        allowed = answer.get("behavior") == "allow"
        reason = str(answer.get("message") or ("allowed by the user" if allowed else "the user denied this tool call"))
        return {
            "hookSpecificOutput": {
                "hookEventName": "PreToolUse",
                "permissionDecision": "allow" if allowed else "deny",
                "permissionDecisionReason": reason,
            }
        }

    def waits_for(self, tool: str) -> bool:
        """``ask_tools`` names tools, or all of an MCP server's as ``mcp__<server>__*``
        (less ``allow_tools``); the service's ``pending.AgentTools.waits_for`` is the same rule."""
        if tool in self.allow_tools:
            return False
        return any(tool == name or (name.endswith("*") and tool.startswith(name[:-1])) for name in self.ask_tools)

    def _tool(self, spec: dict[str, Any]) -> SdkMcpTool[Any]:
        name = str(spec["name"])

        async def handler(args: dict[str, Any]) -> dict[str, Any]:
            request_id = f"ctu_{uuid.uuid4().hex}"
            answer = await self.asks.ask({"kind": "custom_tool_use", "id": request_id, "name": name, "input": args})
            return {"content": _mcp_content(answer.get("content")), "is_error": bool(answer.get("is_error"))}

        given = spec.get("input_schema")
        schema: dict[str, Any] = given if isinstance(given, dict) else {"type": "object"}
        return SdkMcpTool(name, str(spec.get("description", "")), schema, handler)

    def mcp_servers(self) -> dict[str, McpSdkServerConfig]:
        if not self.custom_tools:
            return {}
        return {MCP_SERVER: create_sdk_mcp_server(MCP_SERVER, tools=[self._tool(t) for t in self.custom_tools])}

    def options(self) -> dict[str, Any]:
        """Keyword arguments for ``ClaudeAgentOptions``."""
        options: dict[str, Any] = {"mcp_servers": self.mcp_servers()}
        if self.ask_tools:
            # on_failure="block": a hook that fails denies, never allows.
            matcher = HookMatcher(hooks=[self.pre_tool_use], timeout=HOOK_TIMEOUT_S, on_failure="block")
            options["hooks"] = {"PreToolUse": [matcher]}
        return options
