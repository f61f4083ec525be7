"""Usage read out of model responses: exact on real shapes, unbreakable on odd bytes."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from moorage.egress_meter import MAX_EVENT_BYTES, JsonUsageReader, ResponseMeter, SseUsageReader, usage_of


def sse(*events: dict[str, Any], newline: str = "\n") -> bytes:
    nl = newline
    return b"".join(f"event: {e['type']}{nl}data: {json.dumps(e)}{nl}{nl}".encode() for e in events)


START = {"type": "message_start", "message": {"model": "m", "usage": {"input_tokens": 3, "output_tokens": 1}}}
DELTA = {"type": "message_delta", "usage": {"output_tokens": 8}}


def test_sse_usage_reader_handles_arbitrary_chunking() -> None:
    """Usage is read correctly however the byte stream is split."""
    events = [
        {
            "type": "message_start",
            "message": {"model": "m", "usage": {"input_tokens": 3, "cache_read_input_tokens": 4}},
        },
        {"type": "content_block_delta", "delta": {"text": "x" * 100}},
        {"type": "message_delta", "usage": {"output_tokens": 8}},
    ]
    stream = sse(*events)
    for size in (1, 7, 64, len(stream)):
        reader = SseUsageReader()
        for i in range(0, len(stream), size):
            reader.feed(stream[i : i + size])
        assert (reader.model, reader.usage) == (
            "m",
            {"input_tokens": 3, "cache_read_input_tokens": 4, "output_tokens": 8},
        )


def test_crlf_and_cr_line_endings_are_sse_too() -> None:
    """SSE allows CRLF and CR line ends; a CRLF split across chunks still ends a line."""
    for newline in ("\r\n", "\r"):
        stream = sse(START, DELTA, newline=newline)
        for size in (1, 2, 5, len(stream)):
            reader = SseUsageReader()
            for i in range(0, len(stream), size):
                reader.feed(stream[i : i + size])
            assert reader.usage == {"input_tokens": 3, "output_tokens": 8}, (newline, size)


def test_hostile_shapes_never_raise_and_count_nothing() -> None:
    """Deep nesting, wrong types, bools, negatives and giants are not token counts."""
    odd = [
        b"data: " + b"[" * 100_000 + b'"message_start"' + b"]" * 100_000 + b"\n\n",
        b'data: {"type": "message_start", "message": 5}\n\n',
        b'data: {"type": "message_start", "message": {"usage": [1, 2], "model": {"x": 1}}}\n\n',
        b'data: {"type": "message_delta", "usage": "lots"}\n\n',
        b'data: {"type": "message_delta", "usage": {"output_tokens": true, "input_tokens": -5}}\n\n',
        b'data: {"type": "message_delta", "usage": {"output_tokens": 1e300, "input_tokens": 99999999999999999999}}\n\n',
        b'data: {"type": "message_delta", "usage": {"output_tokens": NaN}}\n\n',
        b"data: \xff\xfe message_delta\n\n",
    ]
    for event in odd:
        reader = SseUsageReader()
        reader.feed(event)
        assert reader.usage == {}, event[:80]
    body = JsonUsageReader()
    body.feed(b"[" * 100_000)
    body.finish()
    assert body.usage == {}
    assert usage_of({"input_tokens": 2**53, "output_tokens": 2**53 - 1}) == {"output_tokens": 2**53 - 1}


def test_an_oversized_event_is_dropped_whole_and_reading_resumes_after_it() -> None:
    """A separator-less flood is not buffered past the bound; the next event is read."""
    reader = SseUsageReader()
    flood = b"data: " + b"x" * 65536
    for _ in range(3 * MAX_EVENT_BYTES // len(flood)):
        reader.feed(flood)
        assert len(reader._buffer) <= MAX_EVENT_BYTES + len(flood)
    reader.feed(b'"message_delta"\n\n')  # the tail of the dropped event: not read as an event
    reader.feed(sse(START, DELTA))
    assert reader.usage == {"input_tokens": 3, "output_tokens": 8}


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.binary(max_size=2048) | st.sampled_from([sse(START), sse(DELTA), b"\n\n", b"\r", b"data:"]), max_size=40
    )
)
def test_any_bytes_in_any_chunks_never_raise_and_stay_bounded(chunks: list[bytes]) -> None:
    """Fuzz: the reader takes any byte stream without an exception or unbounded growth."""
    meter = ResponseMeter(streamed=True)
    for chunk in chunks:
        meter.feed(chunk)
        assert all(isinstance(v, int) and v >= 0 for v in meter.take().values())
    meter.finish()
    meter.take()


def test_deltas_add_up_to_the_final_figures() -> None:
    """Charged from message_start on: the deltas taken sum to what the upstream reported last."""
    meter = ResponseMeter(streamed=True)
    meter.feed(sse(START))
    first = meter.take()
    assert first == {"input_tokens": 3, "output_tokens": 1}
    assert meter.take() == {}
    meter.feed(sse(DELTA))
    second = meter.take()
    assert second == {"output_tokens": 7}
    meter.finish()
    assert meter.take() == {}
    plain = ResponseMeter(streamed=False)
    plain.feed(b'{"model": "m", "usage": {"input_tokens": 5, "output_tokens": 2}}')
    assert plain.take() == {}  # a body is read when it ends
    plain.finish()
    assert (plain.model, plain.take()) == ("m", {"input_tokens": 5, "output_tokens": 2})
