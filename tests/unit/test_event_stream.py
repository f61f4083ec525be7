"""One SSE stream's body (``events_api._frames``) over an in-memory log: the session's streams
share one projection, so another stream may have read further than this one was told — it must
still send each preview before the message it previews, under that message's id."""

from __future__ import annotations

import contextlib
import json
from types import SimpleNamespace
from typing import Any

from ma_frames import MemoryStore, said
from moorage import sse
from moorage.events_api import _frames
from moorage.ma_events import Projector, event_id
from moorage.ma_views import Listener, Projection
from moorage.pending import AgentTools


def message_previews(*parts: str) -> list[dict[str, Any]]:
    """The ``stream_event`` frames the CLI sends while the model writes one text block."""
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": {"id": "msg_1"}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        *({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}} for p in parts),
        {"type": "content_block_stop", "index": 0},
    ]
    return [{"type": "stream_event", "event": e} for e in events]


def kinds_in(chunk: bytes) -> list[tuple[str, str]]:
    """``(type, id)`` of each SSE frame: an event's own id, a preview's event id."""
    out = []
    for block in chunk.decode().split("\n\n"):
        data = next((line[6:] for line in block.splitlines() if line.startswith("data: ")), None)
        if data is not None:
            frame = json.loads(data)
            out.append((frame["type"], frame.get("id") or frame.get("event_id") or frame["event"]["id"]))
    return out


async def test_previews_come_first_even_when_another_stream_read_the_message_already() -> None:
    store = MemoryStore()
    store.add(
        said("hi"),  # seq 1
        {
            "type": "assistant",
            "message": {"id": "msg_1", "role": "assistant", "content": [{"type": "text", "text": "Hello"}]},
        },
    )
    projection = Projection("s1", Projector(AgentTools()))
    services: Any = SimpleNamespace(projections=SimpleNamespace(store=store), sessions=SimpleNamespace(draining=False))
    listener = Listener(previews=True)
    body = _frames(services, projection, listener, (0, 0), ["agent.message"], contextlib.ExitStack())
    assert await anext(body) == sse.keep_alive()
    # The news as the session broadcast it: seq 1, the previews of the next message, the message.
    listener.durable(1)
    for frame in message_previews("Hel", "lo"):
        listener.ephemeral(frame)
    listener.durable(2)
    await projection.catch_up(store)  # the session's other stream read both already
    sent = kinds_in(await anext(body))
    message = event_id(2)
    assert sent == [
        ("user.message", event_id(1)),
        ("event_start", message),
        ("event_delta", message),
        ("event_delta", message),
        ("agent.message", message),
    ]
    await body.aclose()
