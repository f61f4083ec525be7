"""The Managed Agents view of a session's event log, without I/O.

A session's log (``eventlog.py``) holds the WebSocket frames (docs/protocol.md). The Managed
Agents API (MANAGED_AGENTS.md §6) shows the same session as typed events (``user.message``,
``agent.tool_use``, ``session.status_idle`` …). :class:`Projector` turns each logged frame, in seq
order, into zero or more :class:`MaEvent`; the HTTP list (``GET …/events``) and the SSE stream
(``…/events/stream``) are both this projection, so they agree. Mapping table and the decisions
behind it: docs/managed-agents.md.

Decisions:

- **Ids** are derived from the frame's seq alone: the first event of frame ``seq`` is
  ``sevt_<seq:012d>``, further ones ``sevt_<seq:012d>_<n:06d>`` (n = 1, 2 …). Zero padding keeps
  the ids in log order when sorted as strings, and a re-projection (a list after a stream, a
  reconnect, a restarted service) gives the same ids. :func:`seq_of` reads the seq back.
- **State** (which tool_use ids were built-in / MCP / custom tools, which requests wait, whether a
  turn runs, the usage so far, which model requests are open) comes only from the frames already
  projected, so a projector rebuilt by replaying the log from seq 1 is in the same state as the
  live one.
- **Approvals.** The CLI's ``tool_use`` block (in an ``assistant`` frame) comes *before* the
  ``permission_request`` for it, and the stream cannot wait. So ``agent.tool_use`` is emitted with
  the assistant frame, with ``evaluated_permission`` (``ask``/``allow``) only when the projector
  was given the agent's tool policy (:class:`~moorage.pending.AgentTools`). The
  ``permission_request`` then emits ``session.status_idle`` with ``requires_action`` naming that
  ``agent.tool_use`` event's id (as the hosted service does when it waits on a confirmation);
  the answer (``user.tool_confirmation``) is followed by ``session.status_running`` again (or by
  another ``requires_action`` idle naming what still waits).
- A custom tool's ``tool_use`` block (``mcp__client__<name>``) and its ``tool_result`` are not
  shown: the ``custom_tool_use`` / ``custom_tool_result`` frames are those events.
- The list filters (``types[]``, ``created_at[…]``, ``order``) are in ``ma_query.py``.
- **Model request spans.** The model proxy logs each ``/v1/messages`` request as a
  ``model_request_start`` / ``model_request_end`` frame pair (``model_spans.py``); they become
  ``span.model_request_start`` / ``_end``, the end naming its start's *event id* and carrying the
  proxy's token counts. The proxy may see a request before the CLI's ``system`` init frame reaches
  the log, so a span start while the session is not running, nothing waits and a user message is
  due a turn (one logged and its result not yet) opens the turn: ``session.status_running`` comes
  first, as in the hosted order (MANAGED_AGENTS.md §6.6), and the init then adds nothing. Any
  other span (a request the CLI makes after its result, a subagent's while a confirmation waits)
  changes no status; a span end never does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from .agents import BUILTIN_TOOLS
from .errors import Code
from .pending import AgentTools

Json = dict[str, Any]

ID_PREFIX = "sevt_"
_ID = re.compile(r"^sevt_(\d{12})(?:_(\d{6}))?$")
CUSTOM_TOOL_PREFIX = "mcp__client__"
#: The CLI name of a built-in tool → its Managed Agents name (``Bash`` → ``bash``).
MA_TOOL_NAMES = {cli: name for name, cli in BUILTIN_TOOLS.items()}
#: Content block types an event's ``content`` may carry (§6.2); others are dropped.
USER_BLOCKS = frozenset({"text", "image", "document"})
RESULT_BLOCKS = frozenset({"text", "image", "document", "search_result"})
#: Most spans kept open (started, not ended) at once; the oldest is forgotten past it.
MAX_OPEN_SPANS = 256
#: Every type the projection can emit (the ``types[]`` filter accepts any string; these are ours).
EMITTED_TYPES = (
    "user.message",
    "user.tool_confirmation",
    "user.custom_tool_result",
    "agent.message",
    "agent.thinking",
    "agent.tool_use",
    "agent.tool_result",
    "agent.mcp_tool_use",
    "agent.mcp_tool_result",
    "agent.custom_tool_use",
    "session.status_running",
    "session.status_rescheduled",
    "session.status_idle",
    "session.error",
    "session.usage",
    "span.model_request_start",
    "span.model_request_end",
)


class Logged(Protocol):
    """One logged frame (``moorage_session_store.events.StoredEvent`` is one)."""

    @property
    def seq(self) -> int: ...
    @property
    def type(self) -> str: ...
    @property
    def body(self) -> dict[str, Any]: ...
    @property
    def created_at(self) -> datetime: ...


@dataclass(frozen=True, slots=True)
class MaEvent:
    """One Managed Agents event: ``wire()`` is its JSON object."""

    id: str
    type: str
    at: datetime  # processed_at
    fields: Json = field(default_factory=dict)

    def wire(self) -> Json:
        return {"type": self.type, "id": self.id, "processed_at": timestamp(self.at), **self.fields}


def event_id(seq: int, n: int = 0) -> str:
    """The id of the ``n``-th event (from 0) projected from frame ``seq``."""
    return f"{ID_PREFIX}{seq:012d}" if n == 0 else f"{ID_PREFIX}{seq:012d}_{n:06d}"


def seq_of(ident: str) -> tuple[int, int] | None:
    """``(seq, n)`` of an id :func:`event_id` made; None for anything else."""
    match = _ID.match(ident)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2) or 0)


def timestamp(at: datetime) -> str:
    """RFC 3339 in UTC with a ``Z`` (a naive time is taken as UTC)."""
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return at.isoformat().replace("+00:00", "Z")


# -- content blocks -----------------------------------------------------------


def _text(text: str) -> Json:
    return {"type": "text", "text": text}


def blocks(content: object, allowed: frozenset[str]) -> list[Json]:
    """Messages API content (a string or blocks) as event content blocks of ``allowed`` types."""
    if isinstance(content, str):
        return [_text(content)] if content else []
    if not isinstance(content, list):
        return []
    return [b for b in content if isinstance(b, dict) and b.get("type") in allowed]


# -- the projector ------------------------------------------------------------

ToolKind = Literal["builtin", "mcp", "custom"]


@dataclass(frozen=True, slots=True)
class Waiting:
    """A request waiting for a client: the WebSocket request id and the event naming it."""

    kind: Literal["permission_request", "custom_tool_use"]
    request_id: str  # the frame's ``id`` (a tool_use id, or a ``ctu_`` id)
    event_id: str  # the agent.tool_use / agent.mcp_tool_use / agent.custom_tool_use event


@dataclass
class Usage:
    """The session's usage so far, summed from ``result`` frames."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_creation_1h_input_tokens: int = 0
    cost_usd: float = 0.0

    def add(self, result: Mapping[str, Any]) -> None:
        usage = result.get("usage")
        if isinstance(usage, dict):
            self.input_tokens += _count(usage.get("input_tokens"))
            self.output_tokens += _count(usage.get("output_tokens"))
            self.cache_read_input_tokens += _count(usage.get("cache_read_input_tokens"))
            self.cache_creation_input_tokens += _count(usage.get("cache_creation_input_tokens"))
            split = usage.get("cache_creation")
            if isinstance(split, dict):
                self.cache_creation_1h_input_tokens += _count(split.get("ephemeral_1h_input_tokens"))
        cost = result.get("total_cost_usd")  # cumulative for the session already
        if isinstance(cost, int | float) and not isinstance(cost, bool) and cost >= 0:
            self.cost_usd = max(self.cost_usd, float(cost))

    def wire(self) -> Json:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            # The API reports cache writes only by lifetime; 5 minutes is the default, so what is
            # not reported as 1 h is counted as 5 min (the total stays right).
            "cache_creation": {
                "ephemeral_5m_input_tokens": max(
                    0, self.cache_creation_input_tokens - self.cache_creation_1h_input_tokens
                ),
                "ephemeral_1h_input_tokens": self.cache_creation_1h_input_tokens,
            },
            "list_cost": {"amount": str(round(self.cost_usd * 100)), "currency": "USD"},
        }


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


class Projector:
    """Logged frames in, in seq order; Managed Agents events out. Not thread-safe; one per view.

    ``tools``: the session's tool policy, if known — then ``agent.tool_use`` carries
    ``evaluated_permission``. It must be the same for every projection of one session (it is
    fixed by the agent version the session runs), or ids and fields could differ between views.
    """

    def __init__(self, tools: AgentTools | None = None) -> None:
        self.tools = tools
        self.turn_open = False  # from the turn's system init to its result
        self.running = False  # the last status event was status_running
        self.usage = Usage()
        self.last_seq = 0
        self._tool_uses: dict[str, tuple[ToolKind, str]] = {}  # CLI tool_use id → kind, event id
        self._waiting: dict[str, Waiting] = {}  # request id → what waits (arrival order)
        self._budget_hit = False  # a budget error came while the turn ran
        self._idle_reason: str | None = None  # the stop_reason type of the last idle, None if running/never
        self._turns_due = 0  # user messages logged whose turn has not ended (results not yet logged)
        self._spans: dict[str, str] = {}  # model request id → its span.model_request_start event id
        self._ends: list[Json] = []  # span ends held back until the message they end is shown

    @property
    def waiting(self) -> list[Waiting]:
        return list(self._waiting.values())

    def waiting_for(self, ident: str) -> Waiting | None:
        """What waits under event id ``ident`` (for ``POST …/events`` to find the request to answer)."""
        return next((w for w in self._waiting.values() if w.event_id == ident), None)

    def project(self, frame: Logged) -> list[MaEvent]:
        if frame.seq <= self.last_seq:
            raise ValueError(f"frame seq {frame.seq} is not after {self.last_seq}: project the log in order")
        self.last_seq = frame.seq
        out = _Out(frame.seq, frame.created_at)
        body = frame.body
        # A response ends at the proxy before the CLI writes it to the log: during a turn, its span
        # end waits for the session's next assistant frame (and goes after it, the hosted order
        # of §6.6), or goes before any other frame (a tool result, the turn's result, an error).
        message_frame = frame.type == "assistant" and not body.get("parent_tool_use_id")
        if self._ends and frame.type != "model_request_end" and not message_frame:
            self._flush_ends(out)
        match frame.type:
            case "user_message":
                message = body.get("message")
                content = message.get("content") if isinstance(message, dict) else None
                out.add("user.message", content=blocks(content, USER_BLOCKS))
                self._turns_due += 1
            case "system" if body.get("subtype") == "init":
                self._run(out)
            case "assistant" | "user" if body.get("parent_tool_use_id"):
                pass  # a subagent's (Task tool) own messages: its thread, not the session's
            case "assistant":
                self._assistant(body, out)
            case "user":
                self._tool_results(body, out)
            case "permission_request":
                self._permission_request(body, out)
            case "custom_tool_use":
                ident = out.add("agent.custom_tool_use", name=str(body.get("name", "")), input=_obj(body.get("input")))
                self._wait(Waiting("custom_tool_use", str(body.get("id", "")), ident), out)
            case "permission_response":
                self._answer(body, out, confirmation=True)
            case "custom_tool_result":
                self._answer(body, out, confirmation=False)
            case "result":
                self._result(body, out)
            case "error":
                self._error(body, out)
            case "model_request_start":
                self._span_start(body, out)
            case "model_request_end":
                self._span_end(body, out)
            case "rescheduled":  # its sandbox starts again (a rehydration): running comes with the next turn
                self.running = False
                out.add("session.status_rescheduled")
            case _:
                pass  # queued, other system notices: no Managed Agents event
        if message_frame:
            self._flush_ends(out)
        return out.events

    def project_all(self, frames: Iterable[Logged]) -> list[MaEvent]:
        return [event for frame in frames for event in self.project(frame)]

    # -- frames ----------------------------------------------------------------

    def _run(self, out: _Out) -> None:
        self.turn_open = True
        if not self.running:
            self.running = True
            self._idle_reason = None
            out.add("session.status_running")

    def _span_start(self, body: Json, out: _Out) -> None:
        if not self.running and not self._waiting and self._turns_due > 0:
            self._run(out)  # the request overtook the turn's init frame: the turn runs already
        self._spans[str(body.get("id", ""))] = out.add("span.model_request_start")
        while len(self._spans) > MAX_OPEN_SPANS:  # ends lost to a kill -9 of the service
            del self._spans[next(iter(self._spans))]

    def _span_end(self, body: Json, out: _Out) -> None:
        ident = str(body.get("id", ""))
        start = self._spans.pop(ident, ident)  # unknown: its start is not in the log (retention)
        self._ends.append(
            {
                "model_request_start_id": start,
                "model_usage": model_usage(body.get("usage")),
                "is_error": body.get("is_error") is True,
            }
        )
        del self._ends[:-MAX_OPEN_SPANS]
        if not self.turn_open or self._waiting:  # no message of this turn is due: shown now
            self._flush_ends(out)

    def _flush_ends(self, out: _Out) -> None:
        for fields in self._ends:
            out.add("span.model_request_end", **fields)
        self._ends.clear()

    def _assistant(self, body: Json, out: _Out) -> None:
        message = body.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        text: list[Json] = []
        for block in content if isinstance(content, list) else []:
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            if kind == "text":
                text.append(_text(str(block.get("text", ""))))
                continue
            if text:
                out.add("agent.message", content=text)
                text = []
            if kind in ("thinking", "redacted_thinking"):
                out.add("agent.thinking")
            elif kind == "tool_use":
                self._tool_use(block, out)
        if text:
            out.add("agent.message", content=text)

    def _tool_use(self, block: Json, out: _Out) -> None:
        ident, name, tool_input = str(block.get("id", "")), str(block.get("name", "")), _obj(block.get("input"))
        if name.startswith(CUSTOM_TOOL_PREFIX):
            self._tool_uses[ident] = ("custom", "")  # the custom_tool_use frame is the event
            return
        permission: Json = {}
        if self.tools is not None:
            asks = self.tools.waits_for(name)
            permission = {
                "evaluated_permission": "ask" if asks else "allow",
                "evaluation": {"type": "always_ask" if asks else "always_allow"},
            }
        server, _, tool = name.removeprefix("mcp__").partition("__")
        if name.startswith("mcp__") and server and tool:
            event = out.add("agent.mcp_tool_use", mcp_server_name=server, name=tool, input=tool_input, **permission)
            self._tool_uses[ident] = ("mcp", event)
        else:
            event = out.add("agent.tool_use", name=MA_TOOL_NAMES.get(name, name), input=tool_input, **permission)
            self._tool_uses[ident] = ("builtin", event)

    def _tool_results(self, body: Json, out: _Out) -> None:
        message = body.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        for block in content if isinstance(content, list) else []:
            if not isinstance(block, dict) or block.get("type") != "tool_result":
                continue
            ident = str(block.get("tool_use_id", ""))
            kind, event = self._tool_uses.get(ident, ("builtin", ident))  # unknown: its tool_use was not seen
            result: Json = {"content": blocks(block.get("content"), RESULT_BLOCKS)}
            if isinstance(block.get("is_error"), bool):
                result["is_error"] = block["is_error"]
            if kind == "mcp":
                out.add("agent.mcp_tool_result", mcp_tool_use_id=event, **result)
            elif kind == "builtin":
                out.add("agent.tool_result", tool_use_id=event, **result)

    def _permission_request(self, body: Json, out: _Out) -> None:
        ident = str(body.get("id", ""))
        known = self._tool_uses.get(ident)
        if known is not None and known[0] != "custom":
            event = known[1]
        else:  # its assistant frame is not in the log (retention): show the call here
            tool_input = _obj(body.get("input"))
            name = str(body.get("tool", ""))
            event = out.add(
                "agent.tool_use",
                name=MA_TOOL_NAMES.get(name, name),
                input=tool_input,
                evaluated_permission="ask",
                evaluation={"type": "always_ask"},
            )
            self._tool_uses[ident] = ("builtin", event)
        self._wait(Waiting("permission_request", ident, event), out)

    def _wait(self, waiting: Waiting, out: _Out) -> None:
        self._waiting[waiting.request_id] = waiting
        self._idle(out, {"type": "requires_action", "event_ids": [w.event_id for w in self._waiting.values()]})

    def _answer(self, body: Json, out: _Out, *, confirmation: bool) -> None:
        ident = str(body.get("id", ""))
        waiting = self._waiting.pop(ident, None)
        if confirmation:
            target = waiting.event_id if waiting is not None else self._tool_uses.get(ident, ("builtin", ident))[1]
            behavior = "allow" if body.get("behavior") == "allow" else "deny"
            fields: Json = {"tool_use_id": target, "result": behavior}
            if behavior == "deny" and body.get("message"):
                fields["deny_message"] = str(body["message"])
            out.add("user.tool_confirmation", **fields)
        else:
            target = waiting.event_id if waiting is not None else ident
            result: Json = {"custom_tool_use_id": target, "content": blocks(body.get("content"), RESULT_BLOCKS)}
            if isinstance(body.get("is_error"), bool):
                result["is_error"] = body["is_error"]
            out.add("user.custom_tool_result", **result)
        if self._waiting:
            self._idle(out, {"type": "requires_action", "event_ids": [w.event_id for w in self._waiting.values()]})
        elif self._idle_reason == "requires_action":
            if self.turn_open:
                self._run(out)  # the turn goes on
            else:  # settled after its turn ended (an interrupt's denial): nothing waits any more
                self._idle(out, {"type": "end_turn"})

    def _result(self, body: Json, out: _Out) -> None:
        self._turns_due = max(0, self._turns_due - 1)
        self.usage.add(body)
        out.add("session.usage", usage=self.usage.wire())
        if self._waiting:
            reason: Json = {"type": "requires_action", "event_ids": [w.event_id for w in self._waiting.values()]}
        else:
            reason = {"type": stop_reason(body, self._budget_hit)}
            if reason["type"] == "retries_exhausted":
                message = str(body.get("result") or "the model request failed")[:2000]
                out.add("session.error", error=session_error("model_request_failed_error", message, "exhausted"))
        self._idle(out, reason)
        self.turn_open = False
        self._tool_uses.clear()  # a turn's tool results all come before its result
        self._budget_hit = False

    def _error(self, body: Json, out: _Out) -> None:
        code = str(body.get("code", ""))
        message = str(body.get("message", ""))
        budget = code == Code.BUDGET_EXCEEDED
        kind = "billing_error" if budget else "unknown_error"
        out.add("session.error", error=session_error(kind, message or code, "exhausted"))
        if body.get("fatal") is True:
            # The session's sandbox is gone: no result will come for a running turn, and what
            # waited is gone with it (a rehydrated session starts with nothing pending).
            was_open = self.turn_open or bool(self._waiting)
            self._turns_due = 0  # queued messages go with the sandbox
            self._waiting.clear()
            self._tool_uses.clear()
            self.turn_open = self._budget_hit = False
            if was_open:
                self._idle(out, {"type": "budget_reached" if budget else "retries_exhausted"})
        elif budget and self.turn_open:
            self._budget_hit = True  # the turn's idle says budget_reached
        elif budget and self._idle_reason != "budget_reached":
            self._idle(out, {"type": "budget_reached"})

    def _idle(self, out: _Out, reason: Json) -> None:
        self.running = False
        self._idle_reason = str(reason["type"])
        out.add("session.status_idle", stop_reason=reason)


@dataclass
class _Out:
    seq: int
    at: datetime
    events: list[MaEvent] = field(default_factory=list)

    def add(self, kind: str, **fields: Any) -> str:
        ident = event_id(self.seq, len(self.events))
        self.events.append(MaEvent(ident, kind, self.at, fields))
        return ident


def _obj(value: object) -> Json:
    return value if isinstance(value, dict) else {}


def stop_reason(result: Mapping[str, Any], budget_hit: bool = False) -> str:
    """The ``stop_reason`` type of a turn that ended with ``result`` and left nothing waiting."""
    subtype = result.get("subtype")
    text = result.get("result")
    if budget_hit or subtype == "error_max_budget_usd":
        return "budget_reached"
    if result.get("is_error") is True and (subtype == "success" or result.get("api_error_status") is not None):
        # The model request failed and the CLI's own retries are spent: its result says
        # "API Error: …". A refusal by the model proxy's budget check reads "budget_exceeded: …".
        return "budget_reached" if isinstance(text, str) and "budget_exceeded" in text else "retries_exhausted"
    return "end_turn"  # success, an interrupt, max turns (its error frame follows)


def session_error(kind: str, message: str, retry: Literal["retrying", "exhausted", "terminal"]) -> Json:
    return {"type": kind, "message": message, "retry_status": {"type": retry}}


def model_usage(value: object) -> Json:
    """``model_usage`` of a ``span.model_request_end``: the proxy's four token counts."""
    usage = value if isinstance(value, dict) else {}
    return {
        "input_tokens": _count(usage.get("input_tokens")),
        "output_tokens": _count(usage.get("output_tokens")),
        "cache_creation_input_tokens": _count(usage.get("cache_creation_input_tokens")),
        "cache_read_input_tokens": _count(usage.get("cache_read_input_tokens")),
    }
