"""Server-sent events for ``GET /v1/sessions/{id}/events/stream``, without I/O.

What the official client accepts (MANAGED_AGENTS.md §7): every frame carries a non-empty
``event:`` line (frames without one are dropped by the client), named after the event's
``type``; one ``data:`` line of compact JSON; a blank line ends the frame. A ``:`` line is a
comment the client ignores: the keep-alive, which must come well within the client's 600 s read
timeout. ``event: error`` makes the client raise ``APIStatusError`` with the §1.6 envelope.

``json.dumps`` escapes every control character and (``ensure_ascii``) every non-ASCII one, so the
``data:`` line can never contain a line break of any kind.

:class:`Preview` makes the ``event_start`` / ``event_delta`` frames a connection asks for with
``event_deltas[]=agent.message`` (and ``agent.thinking``) from the CLI's ``stream_event``
partial messages. Previews are per connection, best-effort and never logged.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Any

from .ma_events import MaEvent

Json = dict[str, Any]

#: Send this when nothing else was sent for this long (the client gives up after 600 s of silence).
KEEP_ALIVE_S = 15.0
#: Response headers for the stream (no gzip: the client reads it as it comes).
HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
PREVIEWABLE = frozenset({"agent.message", "agent.thinking"})


def encode(data: Mapping[str, Any]) -> bytes:
    """One SSE frame: ``event: <type>``, one ``data:`` line of compact JSON, a blank line."""
    kind = data.get("type")
    if not isinstance(kind, str) or not kind or any(c in kind for c in "\r\n"):
        raise ValueError("an SSE event needs a one-line, non-empty 'type'")
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode("ascii")


def encode_event(event: MaEvent) -> bytes:
    return encode(event.wire())


def keep_alive() -> bytes:
    """A comment frame: keeps the connection (and the client's read timeout) alive."""
    return b": keep-alive\n\n"


def error(envelope: Mapping[str, Any]) -> bytes:
    """``event: error`` with the §1.6 envelope (``{"type": "error", "error": {…}}``): the client
    raises ``APIStatusError`` carrying it."""
    return f"event: error\ndata: {json.dumps(envelope, separators=(',', ':'))}\n\n".encode("ascii")


class Preview:
    """The preview frames of one stream connection.

    Feed it the CLI's ``stream_event`` frames in order, each with ``next_id``: the id the *next*
    logged frame's first event will get (``ma_events.event_id(next_seq)``; the caller knows the
    log's next seq). The CLI writes an ``assistant`` frame for each content block right after that
    block's deltas, so the buffered ``agent.message`` normally has exactly that id and concludes
    the preview. If another frame is logged in between (a message queued by another client), the
    ids differ: that preview is left unconcluded (previews are best-effort; the buffered event is
    the final word).
    """

    def __init__(self, kinds: Collection[str]) -> None:
        self.kinds = frozenset(kinds) & PREVIEWABLE
        self._open: dict[int, str] = {}  # content block index → previewed event id (text blocks)

    def feed(self, frame: Mapping[str, Any], next_id: str) -> list[Json]:
        event = frame.get("event")
        if frame.get("type") != "stream_event" or not isinstance(event, dict) or not self.kinds:
            return []
        kind, index = event.get("type"), event.get("index")
        if kind == "message_start":
            self._open.clear()
            return []
        if not isinstance(index, int) or isinstance(index, bool):
            return []
        if kind == "content_block_start":
            block = event.get("content_block")
            block_type = block.get("type") if isinstance(block, dict) else None
            if block_type == "text" and "agent.message" in self.kinds:
                self._open[index] = next_id
                return [{"type": "event_start", "event": {"type": "agent.message", "id": next_id}}]
            if block_type in ("thinking", "redacted_thinking") and "agent.thinking" in self.kinds:
                return [{"type": "event_start", "event": {"type": "agent.thinking", "id": next_id}}]
            return []
        if kind == "content_block_delta" and index in self._open:
            delta = event.get("delta")
            text = delta.get("text") if isinstance(delta, dict) and delta.get("type") == "text_delta" else None
            if not isinstance(text, str) or not text:
                return []
            content = {"type": "text", "text": text}
            return [
                {
                    "type": "event_delta",
                    "event_id": self._open[index],
                    "delta": {"type": "content_delta", "index": 0, "content": content},
                }
            ]
        if kind == "content_block_stop":
            self._open.pop(index, None)
        return []
