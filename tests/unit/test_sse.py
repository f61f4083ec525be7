"""SSE framing (service/moorage/sse.py), read back by the official client's own code: its
``SSEDecoder`` and its ``Stream`` (``client.beta.sessions.events.stream`` over an in-memory
transport), so what it accepts, skips and raises on is the real client's behaviour."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx2
import pytest
from anthropic import Anthropic
from anthropic._streaming import SSEDecoder
from ma_frames import T0, load
from moorage import sse
from moorage.ma_events import MaEvent, Projector, event_id


def client_for(body: bytes) -> Anthropic:
    def handler(request: httpx2.Request) -> httpx2.Response:
        assert request.url.path == "/v1/sessions/sesn_1/events/stream"
        return httpx2.Response(200, headers=sse.HEADERS, content=body)

    http = httpx2.Client(transport=httpx2.MockTransport(handler))
    return Anthropic(api_key="test", base_url="http://moorage.test", http_client=http, max_retries=0)


def streamed(body: bytes) -> list[Any]:
    with client_for(body).beta.sessions.events.stream("sesn_1") as stream:
        return list(stream)


def test_a_frame_is_event_line_one_data_line_and_a_blank_line() -> None:
    event = MaEvent(event_id(3), "agent.message", T0, {"content": [{"type": "text", "text": "Hi\nthere\u2028é"}]})
    frame = sse.encode_event(event)
    head, data, end = frame.split(b"\n", 2)
    assert head == b"event: agent.message" and end == b"\n"
    assert data.startswith(b"data: {") and b" " not in data.removeprefix(b"data: ").replace(b"Hi\\nthere", b"")
    (decoded,) = SSEDecoder().iter_bytes(iter([frame]))
    assert decoded.event == "agent.message" and decoded.json() == event.wire()


def test_the_decoder_reads_frames_split_anywhere() -> None:
    events = Projector().project_all(load("ma_frames_custom_tool.jsonl"))
    body = b"".join(sse.encode_event(e) for e in events)
    chunks: Iterator[bytes] = (body[i : i + 7] for i in range(0, len(body), 7))  # the network splits as it likes
    decoded = list(SSEDecoder().iter_bytes(chunks))
    assert [d.json() for d in decoded] == [e.wire() for e in events]
    assert [d.event for d in decoded] == [e.type for e in events]


def test_the_client_streams_projected_events_and_ignores_keep_alives() -> None:
    events = Projector().project_all(load("ma_frames_approvals.jsonl"))
    body = sse.keep_alive() + b"".join(sse.encode_event(e) + sse.keep_alive() for e in events)
    got = streamed(body)
    assert [e.id for e in got] == [e.id for e in events]
    assert [e.type for e in got] == [e.type for e in events]
    idle = next(e for e in got if e.type == "session.status_idle")
    assert type(idle).__name__ == "BetaManagedAgentsSessionStatusIdleEvent"
    assert idle.stop_reason.type == "requires_action"
    assert idle.stop_reason.event_ids == [next(e.id for e in got if e.type == "agent.tool_use")]
    assert streamed(sse.keep_alive() * 3) == []


def test_an_error_frame_raises_the_clients_status_error() -> None:
    envelope = {"type": "error", "error": {"type": "api_error", "message": "the session ended"}}
    body = sse.encode(MaEvent(event_id(1), "session.status_running", T0).wire()) + sse.error(envelope)
    with pytest.raises(anthropic.APIStatusError) as raised:
        streamed(body)
    assert raised.value.body == envelope


def test_encode_refuses_a_frame_the_client_would_drop() -> None:
    for bad in ({"id": "x"}, {"type": ""}, {"type": "a\nb"}):
        with pytest.raises(ValueError, match="type"):
            sse.encode(bad)


def text_block_stream(index: int, *parts: str) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = [
        {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}
    ]
    frames += [
        {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": p}} for p in parts
    ]
    frames.append({"type": "content_block_stop", "index": index})
    return [{"type": "stream_event", "event": e} for e in frames]


def test_preview_frames_for_agent_message() -> None:
    preview = sse.Preview(["agent.message"])
    start = [{"type": "stream_event", "event": {"type": "message_start", "message": {"id": "msg_1"}}}]
    thinking = [
        {
            "type": "stream_event",
            "event": {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking"}},
        }
    ]
    out: list[dict[str, Any]] = []
    for frame in start + thinking + text_block_stream(1, "Hel", "lo"):
        out += preview.feed(frame, next_id=event_id(7))
    assert out == [
        {"type": "event_start", "event": {"type": "agent.message", "id": "sevt_000000000007"}},
        {
            "type": "event_delta",
            "event_id": "sevt_000000000007",
            "delta": {"type": "content_delta", "index": 0, "content": {"type": "text", "text": "Hel"}},
        },
        {
            "type": "event_delta",
            "event_id": "sevt_000000000007",
            "delta": {"type": "content_delta", "index": 0, "content": {"type": "text", "text": "lo"}},
        },
    ]
    final = MaEvent(event_id(7), "agent.message", T0, {"content": [{"type": "text", "text": "Hello"}]})
    got = streamed(b"".join(sse.encode(f) for f in out) + sse.encode_event(final))
    assert [type(e).__name__ for e in got] == [
        "BetaManagedAgentsStartEvent",
        "BetaManagedAgentsDeltaEvent",
        "BetaManagedAgentsDeltaEvent",
        "BetaManagedAgentsAgentMessageEvent",
    ]
    assert got[0].event.id == got[1].event_id == got[3].id
    assert "".join(e.delta.content.text for e in got[1:3]) == got[3].content[0].text


def test_preview_only_what_was_asked() -> None:
    frames = [
        {
            "type": "stream_event",
            "event": {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking"}},
        },
        *text_block_stream(1, "x"),
    ]
    thinking_only = sse.Preview(["agent.thinking", "bogus"])
    out = [f for frame in frames for f in thinking_only.feed(frame, event_id(2))]
    assert out == [{"type": "event_start", "event": {"type": "agent.thinking", "id": "sevt_000000000002"}}]
    assert [f for frame in frames for f in sse.Preview([]).feed(frame, event_id(2))] == []
    junk: list[dict[str, Any]] = [
        {"type": "stream_event", "event": "x"},
        {"type": "stream_event", "event": {"type": "content_block_delta"}},
    ]
    assert [f for frame in junk for f in sse.Preview(["agent.message"]).feed(frame, event_id(2))] == []
    assert json.loads(sse.encode(out[0]).split(b"\n")[1].removeprefix(b"data: ")) == out[0]
