"""Wire protocol v1, without I/O: client frames in, typed commands out, and
the per-turn guard that decides when to interrupt or kill.

See docs/protocol.md for the public description.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal, Protocol

from .errors import Code, ProtocolError

MAX_TEXT_BYTES = 1024 * 1024


@dataclass(frozen=True)
class UserFrame:
    message: dict[str, Any]


@dataclass(frozen=True)
class InterruptFrame:
    pass


@dataclass(frozen=True)
class PingFrame:
    id: Any = None


@dataclass(frozen=True)
class PermissionResponseFrame:
    """A client's answer to a ``permission_request``."""

    id: str
    behavior: Literal["allow", "deny"]
    message: str = ""


@dataclass(frozen=True)
class CustomToolResultFrame:
    """A client's result of a ``custom_tool_use``: content blocks as the
    Messages API's tool_result carries them (text; image with a base64 source)."""

    id: str
    content: list[dict[str, Any]]
    is_error: bool = False


Answer = PermissionResponseFrame | CustomToolResultFrame
ClientFrame = UserFrame | InterruptFrame | PingFrame | PermissionResponseFrame | CustomToolResultFrame

MAX_ANSWER_ID_CHARS = 128  # channel.MAX_REQUEST_ID_CHARS: no pending request has a longer id
MAX_DENY_MESSAGE_CHARS = 4096


def _check_content(content: Any) -> None:
    if isinstance(content, str):
        if not content.strip():
            raise ProtocolError("message.content is empty")
        return
    if not isinstance(content, list) or not content:
        raise ProtocolError("message.content must be a non-empty string or a list of content blocks")
    for block in content:
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise ProtocolError("every content block must be an object with a string 'type'")


def _answer_id(data: dict[str, Any]) -> str:
    value = data.get("id")
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ANSWER_ID_CHARS:
        raise ProtocolError(f"{data['type']} needs an 'id' string (the request's id)")
    return value


def _tool_content(content: Any) -> list[dict[str, Any]]:
    """A custom tool result's content: a string, or text / base64 image blocks."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise ProtocolError("custom_tool_result.content must be a string or a list of content blocks")
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            continue
        source = block.get("source") if isinstance(block, dict) else None
        if (
            kind == "image"
            and isinstance(source, dict)
            and source.get("type") == "base64"
            and isinstance(source.get("media_type"), str)
            and isinstance(source.get("data"), str)
        ):
            continue
        raise ProtocolError("custom_tool_result blocks are {type:text,text} or {type:image,source:{type:base64,...}}")
    return [dict(block) for block in content]


def _parse_answer(kind: str, data: dict[str, Any]) -> Answer:
    request_id = _answer_id(data)
    if kind == "permission_response":
        behavior = data.get("behavior")
        if behavior not in ("allow", "deny"):
            raise ProtocolError("permission_response.behavior must be 'allow' or 'deny'")
        message = data.get("message", "")
        if not isinstance(message, str) or len(message) > MAX_DENY_MESSAGE_CHARS:
            raise ProtocolError(f"permission_response.message must be a string of at most {MAX_DENY_MESSAGE_CHARS}")
        return PermissionResponseFrame(request_id, behavior, message)
    is_error = data.get("is_error", False)
    if not isinstance(is_error, bool):
        raise ProtocolError("custom_tool_result.is_error must be a boolean")
    return CustomToolResultFrame(request_id, _tool_content(data.get("content")), is_error)


def _not_json(token: str) -> Any:
    raise ValueError(f"{token} is not JSON")


def _finite(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):
        raise ValueError(f"{token} does not fit a float")
    return value


# An escaped UTF-16 surrogate (\\ud800-\\udfff): unpaired, it cannot be re-encoded.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _decode(raw: str | bytes) -> Any:
    """Strict JSON: no NaN/Infinity, no float overflow, no unpaired surrogates
    (each would make the frames we send on, or echo back, invalid), and a
    nesting too deep for the parser is an error, not a crash."""
    try:
        data = json.loads(raw, parse_constant=_not_json, parse_float=_finite)
    except RecursionError as exc:
        raise ProtocolError("frame is nested too deeply", code=Code.INVALID_JSON) from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError("frame is not valid JSON", code=Code.INVALID_JSON) from exc
    # bytes may be UTF-16/32, which json decodes with surrogates passed through.
    if isinstance(raw, bytes) or _SURROGATE_ESCAPE.search(raw) or not raw.isascii():
        try:
            json.dumps(data, ensure_ascii=False).encode()
        except UnicodeEncodeError as exc:
            raise ProtocolError("frame has an unpaired UTF-16 surrogate", code=Code.INVALID_JSON) from exc
    return data


def parse_client_frame(raw: str | bytes) -> ClientFrame:
    """Validate one client frame; raise ProtocolError with a stable code."""
    data = _decode(raw)
    if not isinstance(data, dict):
        raise ProtocolError("frame must be a JSON object")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("frame has no string 'type'")
    if kind == "user":
        message = data.get("message")
        if not isinstance(message, dict):
            raise ProtocolError("user frame needs a 'message' object")
        if message.get("role", "user") != "user":
            raise ProtocolError("message.role must be 'user'")
        _check_content(message.get("content"))
        return UserFrame({"role": "user", "content": message["content"]})
    if kind == "interrupt":
        return InterruptFrame()
    if kind == "ping":
        return PingFrame(data.get("id"))
    if kind in ("permission_response", "custom_tool_result"):
        return _parse_answer(kind, data)
    raise ProtocolError(f"unknown frame type {kind[:64]!r}", code=Code.UNKNOWN_FRAME_TYPE)


def user_message_line(frame: UserFrame) -> dict[str, Any]:
    """The CLI's stream-json input shape for one user turn."""
    return {"type": "user", "message": frame.message, "parent_tool_use_id": None}


MAX_MESSAGE_ID_CHARS = 128  # a model message id is ~30; a runner's may be megabytes


class Action(Enum):
    NONE = "none"
    INTERRUPT = "interrupt"
    KILL = "kill"


@dataclass
class TurnGuard:
    """Watches one turn: the max-turns backstop and the wall-clock limit.

    The SDK enforces ``max_turns`` itself; this is the service's own check
    for a runner that goes past it anyway. A turn is one model response
    (assistant messages sharing a message id count once), as the CLI counts.
    Feed it every runner message and call ``tick`` now and then; it answers
    with what to do. Pure: time is passed in.
    """

    max_turns: int
    timeout_s: float
    grace_s: float
    started_at: float = 0.0
    running: bool = False
    model_turns: int = 0
    tripped: Code | None = None  # why the turn was interrupted, if it was
    interrupted_at: float | None = None
    _seen: set[str] = field(default_factory=set)

    def start(self, now: float) -> None:
        self.started_at = now
        self.running = True
        self.model_turns = 0
        self.tripped = None
        self.interrupted_at = None
        self._seen.clear()

    def cancel(self) -> None:
        """The turn never ran (refused before it reached the runner) or ended with its sandbox."""
        self.running = False
        self.interrupted_at = None

    def on_message(self, message: dict[str, Any], now: float) -> Action:
        kind = message.get("type")
        if kind == "result":
            self.running = False
            return Action.NONE
        if kind != "assistant" or not self.running:
            return Action.NONE
        if self.tripped is not None:
            return Action.NONE  # already stopping: remember no more ids (a runner may send endless ones)
        msg_id = str((message.get("message") or {}).get("id") or len(self._seen))[:MAX_MESSAGE_ID_CHARS]
        if msg_id not in self._seen:
            self._seen.add(msg_id)
            self.model_turns += 1
        if self.model_turns > self.max_turns and self.tripped is None:
            return self._interrupt(Code.MAX_TURNS_EXCEEDED, now)
        return Action.NONE

    def user_interrupt(self, now: float) -> None:
        if self.running and self.interrupted_at is None:
            self.interrupted_at = now

    def next_deadline(self) -> float | None:
        """When ``tick`` may next have something to do (None: nothing to watch)."""
        if not self.running:
            return None
        if self.interrupted_at is not None:
            return self.interrupted_at + self.grace_s
        return self.started_at + self.timeout_s

    def tick(self, now: float) -> Action:
        if not self.running:
            return Action.NONE
        if self.interrupted_at is not None:
            if now - self.interrupted_at < self.grace_s:
                return Action.NONE
            self.running = False  # the turn ends with its sandbox
            return Action.KILL
        if now - self.started_at >= self.timeout_s:
            return self._interrupt(Code.TURN_TIMEOUT, now)
        return Action.NONE

    def _interrupt(self, why: Code, now: float) -> Action:
        self.tripped = why
        self.interrupted_at = now
        return Action.INTERRUPT

    def finish_result(self, result: dict[str, Any]) -> dict[str, Any]:
        """A result frame as the client should see it: a turn the backstop
        stopped ends as ``error_max_turns``, like one the SDK stopped."""
        if self.tripped is Code.MAX_TURNS_EXCEEDED and result.get("subtype") != "error_max_turns":
            return {**result, "subtype": "error_max_turns", "is_error": True}
        return result


class Subscriber(Protocol):
    """An attached client connection, as a session sees it."""

    def offer(self, text: str) -> bool:
        """Queue one frame without waiting; False when the client is too slow."""

    def close(self, code: int, reason: str) -> None:
        """Send what is queued, then close."""


def dumps(frame: dict[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)
