"""Approvals and client-executed custom tools, without I/O.

A tool whose policy is ``always_ask`` does not run until a client answers;
a custom tool of the agent runs in the client, not the sandbox. Both reach
the service as runner frames (``channel.PermissionRequest`` /
``channel.CustomToolUse``) and wait here, keyed by their id, until one of:

- a client answers (any attached client; the first answer wins),
- the deadline passes (``MOORAGE_PERMISSION_TIMEOUT_S``): denied / an error
  result, with a reason that says so,
- the turn is interrupted: denied with reason ``interrupted``.

``Pending`` returns what to do (the frame for the runner, the frame for every
client); the session executes it. Requests still waiting are re-sent to a
client that attaches (``replay``), so a pending request survives a
disconnect. An answer for an id that is not pending (answered already, timed
out, never asked, or of the other kind) is refused with ``request_not_pending``.

Field names map onto the Managed Agents events (MANAGED_AGENTS.md §6.2-6.4):
``permission_request`` is ``agent.tool_use`` with ``evaluated_permission:
"ask"`` (its ``id`` the CLI's tool_use id), ``permission_response`` is
``user.tool_confirmation`` (``behavior`` -> ``result``, ``message`` ->
``deny_message``), ``custom_tool_use`` is ``agent.custom_tool_use`` and
``custom_tool_result`` is ``user.custom_tool_result`` (``id`` ->
``custom_tool_use_id``). The ids still waiting are ``requires_action.event_ids``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from .channel import (
    ChannelViolation,
    CustomToolResult,
    CustomToolUse,
    PermissionRequest,
    PermissionResponse,
    Reason,
    ServiceFrame,
)
from .errors import Code, ProtocolError
from .protocol import Answer, CustomToolResultFrame, PermissionResponseFrame

MAX_PENDING = 64  # per session: the CLI asks one at a time per tool call; a runner asking more is hostile
MAX_ASK_TOOLS = 128
MAX_CUSTOM_TOOLS = 64
MAX_SCHEMA_BYTES = 64 * 1024
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # the Messages API's tool-name rule

Source = Literal["client", "timeout", "interrupted"]


# -- the agent's tool policy (until stored agents land: the Start frame's ``agent``) --


@dataclass(frozen=True)
class CustomTool:
    name: str
    description: str
    input_schema: dict[str, Any]


@dataclass(frozen=True)
class AgentTools:
    """What the runner needs of an agent's tools: the tools whose policy is
    ``always_ask`` (``mcp__<server>__*`` for all of a server's tools, less
    ``allow_tools``) and the client-executed custom tools
    (``agents.tool_policy`` derives them from a stored spec)."""

    ask_tools: tuple[str, ...] = ()
    custom_tools: tuple[CustomTool, ...] = ()
    allow_tools: tuple[str, ...] = ()

    def waits_for(self, tool: str) -> bool:
        """Whether a call of ``tool`` waits for a client (the runner's hook decides the same)."""
        if tool in self.allow_tools:
            return False
        return any(tool == name or (name.endswith("*") and tool.startswith(name[:-1])) for name in self.ask_tools)

    @classmethod
    def parse(cls, data: object) -> AgentTools:
        """From ``{"ask_tools": [...], "custom_tools": [{name, description,
        input_schema}]}`` (other keys ignored); ``ValueError`` if malformed."""
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise ValueError("agent must be an object")
        ask = data.get("ask_tools") or []
        if not isinstance(ask, list) or len(ask) > MAX_ASK_TOOLS:
            raise ValueError(f"agent.ask_tools must be a list of at most {MAX_ASK_TOOLS} tool names")
        for name in ask:
            if not isinstance(name, str) or not 0 < len(name) <= 256:
                raise ValueError("agent.ask_tools holds tool names (strings)")
        allow = data.get("allow_tools") or []
        if not isinstance(allow, list) or len(allow) > MAX_ASK_TOOLS or not all(isinstance(n, str) for n in allow):
            raise ValueError(f"agent.allow_tools must be a list of at most {MAX_ASK_TOOLS} tool names")
        custom = data.get("custom_tools") or []
        if not isinstance(custom, list) or len(custom) > MAX_CUSTOM_TOOLS:
            raise ValueError(f"agent.custom_tools must be a list of at most {MAX_CUSTOM_TOOLS} tools")
        tools: list[CustomTool] = []
        for spec in custom:
            if not isinstance(spec, dict):
                raise ValueError("every agent.custom_tools item is an object")
            name, description, schema = spec.get("name"), spec.get("description", ""), spec.get("input_schema")
            if not isinstance(name, str) or not _TOOL_NAME.match(name):
                raise ValueError("a custom tool's name is 1-64 of [A-Za-z0-9_-]")
            if not isinstance(description, str) or len(description) > 4096:
                raise ValueError(f"custom tool {name}: description must be a string of at most 4096")
            if not isinstance(schema, dict) or schema.get("type", "object") != "object":
                raise ValueError(f"custom tool {name}: input_schema must be a JSON schema object of type 'object'")
            if len(json.dumps(schema)) > MAX_SCHEMA_BYTES:
                raise ValueError(f"custom tool {name}: input_schema is larger than {MAX_SCHEMA_BYTES} bytes")
            tools.append(CustomTool(name, description, schema))
        if len({t.name for t in tools}) != len(tools):
            raise ValueError("custom tool names must be unique")
        return cls(tuple(dict.fromkeys(ask)), tuple(tools), tuple(dict.fromkeys(allow)))

    def wire(self) -> dict[str, Any] | None:
        """The Start frame's ``agent`` field (None: nothing to enforce)."""
        if not self.ask_tools and not self.custom_tools:
            return None
        return {
            "ask_tools": list(self.ask_tools),
            "allow_tools": list(self.allow_tools),
            "custom_tools": [
                {"name": t.name, "description": t.description, "input_schema": t.input_schema}
                for t in self.custom_tools
            ],
        }


# -- pending requests ---------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One request waiting for a client."""

    id: str
    kind: Literal["permission_request", "custom_tool_use"]
    name: str
    input: dict[str, Any]
    deadline: float

    def frame(self) -> dict[str, Any]:
        """The durable frame clients see (and get again on attach)."""
        if self.kind == "permission_request":
            return {"type": "permission_request", "id": self.id, "tool": self.name, "input": self.input}
        return {"type": "custom_tool_use", "id": self.id, "name": self.name, "input": self.input}


@dataclass(frozen=True)
class Resolution:
    """A request is settled: send ``to_runner``, broadcast ``frame``."""

    to_runner: ServiceFrame
    frame: dict[str, Any]


def _resolve(request: Request, source: Source, why: str) -> Resolution:
    """The automatic answer (timeout, interrupt): a denial, or an error result."""
    if request.kind == "permission_request":
        return _permission(request.id, "deny", why, source)
    return _tool_result(request.id, [{"type": "text", "text": why}], True, source)


def _permission(request_id: str, behavior: Literal["allow", "deny"], message: str, source: Source) -> Resolution:
    frame = {"type": "permission_response", "id": request_id, "behavior": behavior, "message": message}
    return Resolution(PermissionResponse(request_id, behavior, message), {**frame, "source": source})


def _tool_result(request_id: str, content: list[dict[str, Any]], is_error: bool, source: Source) -> Resolution:
    frame = {"type": "custom_tool_result", "id": request_id, "content": content, "is_error": is_error}
    return Resolution(CustomToolResult(request_id, content, is_error), {**frame, "source": source})


@dataclass
class Pending:
    """The requests of one session that wait for a client. Pure: time is
    passed in; the caller executes the ``Resolution``s it returns."""

    timeout_s: float
    tools: AgentTools = field(default_factory=AgentTools)  # what the runner may ask about
    limit: int = MAX_PENDING
    _requests: dict[str, Request] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._requests)

    def open(self, frame: PermissionRequest | CustomToolUse, now: float) -> dict[str, Any]:
        """Remember a runner's request; the frame to broadcast. A duplicate id,
        too many at once, or a tool the agent does not ask about (clients
        would run a custom tool they never offered) breaks the channel
        protocol: the real runner does none of these."""
        if isinstance(frame, PermissionRequest) and not self.tools.waits_for(frame.tool):
            raise ChannelViolation(Reason.BAD_FIELD, "a permission request for a tool that is not always_ask")
        if isinstance(frame, CustomToolUse) and frame.name not in {t.name for t in self.tools.custom_tools}:
            raise ChannelViolation(Reason.BAD_FIELD, "a call of a custom tool the agent does not have")
        if frame.id in self._requests:
            raise ChannelViolation(Reason.BAD_FIELD, "a request id that is already pending")
        if len(self._requests) >= self.limit:
            raise ChannelViolation(Reason.BAD_FIELD, f"more than {self.limit} requests pending")
        if isinstance(frame, PermissionRequest):
            request = Request(frame.id, "permission_request", frame.tool, frame.input, now + self.timeout_s)
        else:
            request = Request(frame.id, "custom_tool_use", frame.name, frame.input, now + self.timeout_s)
        self._requests[frame.id] = request
        return request.frame()

    def answer(self, answer: Answer) -> Resolution:
        """A client's answer; ``ProtocolError(request_not_pending)`` for an
        id that is not waiting for this kind of answer."""
        want = "permission_request" if isinstance(answer, PermissionResponseFrame) else "custom_tool_use"
        request = self._requests.get(answer.id)
        if request is None or request.kind != want:
            raise ProtocolError(
                f"no {want} with this id is pending (answered already, timed out, or never asked)",
                code=Code.REQUEST_NOT_PENDING,
            )
        del self._requests[answer.id]
        if isinstance(answer, CustomToolResultFrame):
            return _tool_result(answer.id, answer.content, answer.is_error, "client")
        return _permission(answer.id, answer.behavior, answer.message, "client")

    def expire(self, now: float) -> list[Resolution]:
        """Every request past its deadline, denied (or an error result) with a reason."""
        due = [r for r in self._requests.values() if r.deadline <= now]
        for request in due:
            del self._requests[request.id]
        return [
            _resolve(request, "timeout", f"no client answered within {self.timeout_s:g}s; the request was denied")
            for request in due
        ]

    def interrupt(self) -> list[Resolution]:
        """The turn was interrupted: every request is denied (reason ``interrupted``)."""
        requests, self._requests = list(self._requests.values()), {}
        return [_resolve(request, "interrupted", "interrupted") for request in requests]

    def next_deadline(self) -> float | None:
        return min((r.deadline for r in self._requests.values()), default=None)

    def replay(self) -> list[dict[str, Any]]:
        """The frames of every request still waiting, oldest first (for a client that attaches)."""
        return [r.frame() for r in self._requests.values()]

    def ids(self) -> list[str]:
        """What the turn waits on (``requires_action.event_ids``)."""
        return list(self._requests)

    def kinds(self) -> list[str]:
        """The kind of each request waiting (``permission_request``, ``custom_tool_use``)."""
        return [r.kind for r in self._requests.values()]

    def clear(self) -> None:
        """The runner is gone: nothing is waiting any more."""
        self._requests.clear()
