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
from typing import Any, Protocol

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


ClientFrame = UserFrame | InterruptFrame | PingFrame


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
    if kind == "permission_response":
        raise ProtocolError(
            "sessions run with permissions bypassed inside the sandbox; there is nothing to answer",
            code=Code.UNSUPPORTED,
        )
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
