"""Fuzzing the client frame parser: whatever a client sends, the answer is a
parsed frame or a ProtocolError with a stable code, never another exception,
and whatever we accept can be sent on (to the runner, or echoed back) as
strict JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from moorage.errors import Code, ProtocolError
from moorage.protocol import ClientFrame, PingFrame, UserFrame, parse_client_frame, user_message_line

FUZZ = settings(max_examples=2000, deadline=500, database=None, suppress_health_check=[HealthCheck.too_slow])
KNOWN_TYPES = ("user", "interrupt", "ping", "permission_response", "custom_tool_result")
PARSE_CODES = {Code.INVALID_JSON, Code.INVALID_FRAME, Code.UNKNOWN_FRAME_TYPE}

# Every JSON value, including the awkward ones: huge and negative numbers,
# floats near the limits, control characters and non-BMP text in keys and values.
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=30,
)
content = st.one_of(
    json_values,
    st.text(max_size=40),
    st.lists(st.dictionaries(st.sampled_from(["type", "text", "source"]), json_values, max_size=3), max_size=4),
)
messages = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"content": content},
        optional={"role": st.sampled_from(["user", "assistant", "system", ""]) | json_values, "model": json_values},
    ),
)
frame_shaped = st.fixed_dictionaries(
    {"type": st.sampled_from(KNOWN_TYPES) | st.text(max_size=80) | json_values},
    optional={
        "message": messages | st.text(max_size=20),
        "id": json_values,
        "extra": json_values,
        "behavior": st.sampled_from(["allow", "deny"]) | json_values,
        "content": json_values,
        "is_error": st.booleans() | json_values,
    },
)


def strict(value: Any) -> bytes:
    """What goes on the wire: strict JSON (no NaN), valid UTF-8."""
    return json.dumps(value, allow_nan=False, ensure_ascii=False).encode()


def check(raw: str | bytes) -> ClientFrame | ProtocolError:
    """Parse ``raw``; assert the outcome is one the service can answer with."""
    try:
        frame = parse_client_frame(raw)
    except ProtocolError as exc:
        assert exc.code in PARSE_CODES and exc.fatal is False
        reply = exc.frame()
        assert len(exc.message) < 1024
        assert json.loads(strict(reply)) == reply
        return exc
    if isinstance(frame, UserFrame):
        assert set(frame.message) == {"role", "content"} and frame.message["role"] == "user"
        strict(user_message_line(frame))
    elif isinstance(frame, PingFrame):
        strict({"type": "pong", "id": frame.id})
    return frame


@FUZZ
@given(st.binary(max_size=512))
@example(b"\xff\xfe")
@example(b"\xef\xbb\xbf{}")
@example('{"type":"ping","id":"\ud800"}'.encode("utf-16", "surrogatepass"))
@example(b"\x00")
def test_arbitrary_bytes_never_escape_the_parser(raw: bytes) -> None:
    """Any byte string: a frame or a ProtocolError with a stable code."""
    check(raw)


@FUZZ
@given(st.text(alphabet=st.characters(codec=None), max_size=256))
@example('{"type":"ping","id":"\ud800"}')
@example('{"type":"ping","id":"\\ud800"}')
@example('{"type":"ping","id":"\\udfff\\ud800"}')
@example('{"type":"ping","id":NaN}')
@example('{"type":"ping","id":-Infinity}')
@example('{"type":"ping","id":1e999}')
@example('{"type":"ping","id":' + "9" * 5000 + "}")
@example('{"type":"ping","type":"user"}')
def test_arbitrary_text_never_escapes_the_parser(raw: str) -> None:
    """Any text, lone surrogates and non-standard JSON literals included: a frame or a coded error."""
    check(raw)


@settings(FUZZ, max_examples=600)
@given(json_values)
def test_every_json_value_is_a_frame_or_a_coded_error(value: Any) -> None:
    """Any JSON document: non-objects are invalid_frame, objects are judged by their type."""
    outcome = check(json.dumps(value))
    if not isinstance(value, dict):
        assert isinstance(outcome, ProtocolError) and outcome.code is Code.INVALID_FRAME


@settings(FUZZ, max_examples=800)
@given(frame_shaped)
def test_frame_shaped_objects_get_the_code_their_type_calls_for(value: dict[str, Any]) -> None:
    """Unknown types are unknown_frame_type, non-string types invalid_frame, known ones parse or are invalid_frame."""
    outcome = check(json.dumps(value))
    kind = value["type"]
    if not isinstance(kind, str):
        assert isinstance(outcome, ProtocolError) and outcome.code is Code.INVALID_FRAME
    elif kind not in KNOWN_TYPES:
        assert isinstance(outcome, ProtocolError) and outcome.code is Code.UNKNOWN_FRAME_TYPE
    elif kind in ("permission_response", "custom_tool_result"):
        assert not isinstance(outcome, ProtocolError) or outcome.code is Code.INVALID_FRAME
    elif kind == "user" and isinstance(outcome, UserFrame):
        assert outcome.message["content"] == value["message"]["content"]
    elif kind in ("interrupt", "ping"):
        assert not isinstance(outcome, ProtocolError)


mutations = st.lists(
    st.tuples(st.integers(0, 90), st.sampled_from(["cut", "insert", "flip"]), st.binary(min_size=1, max_size=4)),
    min_size=1,
    max_size=6,
)


@settings(FUZZ, max_examples=1000)
@given(st.sampled_from(KNOWN_TYPES), mutations)
def test_mutated_valid_frames_never_escape_the_parser(kind: str, edits: list[tuple[int, str, bytes]]) -> None:
    """A valid frame with bytes cut, inserted or flipped: a frame or a coded error."""
    raw = bytearray(json.dumps({"type": kind, "message": {"role": "user", "content": "hello"}, "id": 1}).encode())
    for at, op, blob in edits:
        at = min(at, len(raw))
        if op == "cut":
            del raw[at : at + len(blob)]
        elif op == "insert":
            raw[at:at] = blob
        elif at < len(raw):
            raw[at] ^= blob[0] or 1
    check(bytes(raw))


NESTERS = {
    "arrays": lambda d: "[" * d + "1" + "]" * d,
    "objects": lambda d: '{"a":' * d + "1" + "}" * d,
    "ping id": lambda d: '{"type":"ping","id":' + "[" * d + "]" * d + "}",
    "user content": lambda d: '{"type":"user","message":{"content":[{"type":"text","x":' + "[" * d + "]" * d + "}]}}",
}


@pytest.mark.parametrize("depth", [100, 10_000, 200_000])
@pytest.mark.parametrize("shape", list(NESTERS))
def test_deep_nesting_is_an_error_or_a_frame_never_a_crash(depth: int, shape: str) -> None:
    """Nesting past what the JSON parser can recurse into is invalid_json, not a RecursionError."""
    outcome = check(NESTERS[shape](depth))
    if depth >= 10_000:
        assert isinstance(outcome, ProtocolError) and outcome.code is Code.INVALID_JSON
