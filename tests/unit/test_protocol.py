"""Client frame parsing and the per-turn guard, without I/O."""

from __future__ import annotations

import json

import pytest
from moorage.errors import Code, ProtocolError
from moorage.protocol import (
    Action,
    CustomToolResultFrame,
    InterruptFrame,
    PermissionResponseFrame,
    PingFrame,
    TurnGuard,
    UserFrame,
    parse_client_frame,
    user_message_line,
)


def test_user_frame_with_text_becomes_a_cli_input_line() -> None:
    """A user frame is passed to the CLI in its stream-json input shape."""
    frame = parse_client_frame(json.dumps({"type": "user", "message": {"role": "user", "content": "hi"}}))
    assert frame == UserFrame({"role": "user", "content": "hi"})
    assert user_message_line(frame) == {
        "type": "user",
        "message": {"role": "user", "content": "hi"},
        "parent_tool_use_id": None,
    }


def test_user_frame_with_content_blocks_is_accepted() -> None:
    """Content may be a list of blocks (text, image, ...), as the Messages API allows."""
    blocks = [{"type": "text", "text": "look"}, {"type": "image", "source": {"type": "base64", "data": "AA=="}}]
    frame = parse_client_frame(json.dumps({"type": "user", "message": {"content": blocks}}))
    assert isinstance(frame, UserFrame) and frame.message["content"] == blocks


def test_user_frame_drops_unknown_message_fields() -> None:
    """Only role and content reach the runner; a client cannot smuggle other fields in."""
    frame = parse_client_frame(
        json.dumps({"type": "user", "message": {"role": "user", "content": "x", "model": "evil"}})
    )
    assert isinstance(frame, UserFrame) and set(frame.message) == {"role", "content"}


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"\xff\xfe", Code.INVALID_JSON),
        ("{", Code.INVALID_JSON),
        ("null", Code.INVALID_FRAME),
        ('"user"', Code.INVALID_FRAME),
        ('{"type": 3}', Code.INVALID_FRAME),
        ('{"type": "user"}', Code.INVALID_FRAME),
        ('{"type": "user", "message": {"role": "assistant", "content": "x"}}', Code.INVALID_FRAME),
        ('{"type": "user", "message": {"content": "   "}}', Code.INVALID_FRAME),
        ('{"type": "user", "message": {"content": []}}', Code.INVALID_FRAME),
        ('{"type": "user", "message": {"content": [1]}}', Code.INVALID_FRAME),
        ('{"type": "launch"}', Code.UNKNOWN_FRAME_TYPE),
        ('{"type": "permission_response"}', Code.INVALID_FRAME),
        ('{"type": "permission_response", "id": "t", "behavior": "maybe"}', Code.INVALID_FRAME),
        ('{"type": "permission_response", "id": "", "behavior": "allow"}', Code.INVALID_FRAME),
        ('{"type": "permission_response", "id": "t", "behavior": "deny", "message": 5}', Code.INVALID_FRAME),
        ('{"type": "custom_tool_result", "id": 3, "content": "x"}', Code.INVALID_FRAME),
        ('{"type": "custom_tool_result", "id": "c", "content": [{"type": "tool_use"}]}', Code.INVALID_FRAME),
        ('{"type": "custom_tool_result", "id": "c", "content": {"a": 1}}', Code.INVALID_FRAME),
        ('{"type": "custom_tool_result", "id": "c", "is_error": "yes"}', Code.INVALID_FRAME),
    ],
)
def test_bad_frames_raise_protocol_errors_with_stable_codes(raw: str | bytes, code: Code) -> None:
    """Every malformed frame maps to one stable, non-fatal error code."""
    with pytest.raises(ProtocolError) as info:
        parse_client_frame(raw)
    assert info.value.code is code and info.value.fatal is False
    frame = info.value.frame()
    assert frame["type"] == "error" and frame["code"] == str(code)


def test_answers_parse() -> None:
    """permission_response and custom_tool_result: the id, and the answer in one shape."""
    assert parse_client_frame('{"type":"permission_response","id":"t1","behavior":"allow"}') == (
        PermissionResponseFrame("t1", "allow", "")
    )
    assert parse_client_frame('{"type":"permission_response","id":"t1","behavior":"deny","message":"no"}') == (
        PermissionResponseFrame("t1", "deny", "no")
    )
    assert parse_client_frame('{"type":"custom_tool_result","id":"c","content":"22C"}') == (
        CustomToolResultFrame("c", [{"type": "text", "text": "22C"}], False)
    )
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "QQ=="}}
    raw = json.dumps({"type": "custom_tool_result", "id": "c", "content": [image], "is_error": True})
    assert parse_client_frame(raw) == CustomToolResultFrame("c", [image], True)


def test_control_frames_parse() -> None:
    """interrupt and ping are recognised; ping echoes its id."""
    assert parse_client_frame('{"type": "interrupt"}') == InterruptFrame()
    assert parse_client_frame('{"type": "ping", "id": "a"}') == PingFrame("a")


def assistant(msg_id: str) -> dict[str, object]:
    return {"type": "assistant", "message": {"id": msg_id, "content": []}}


def test_guard_interrupts_once_past_max_turns() -> None:
    """The backstop trips on the first model response past the limit, and only once."""
    guard = TurnGuard(max_turns=2, timeout_s=100, grace_s=5)
    guard.start(0)
    assert guard.on_message(assistant("m1"), 1) is Action.NONE
    assert guard.on_message(assistant("m1"), 1) is Action.NONE  # same response, second block
    assert guard.on_message(assistant("m2"), 2) is Action.NONE
    assert guard.on_message(assistant("m3"), 3) is Action.INTERRUPT
    assert guard.on_message(assistant("m4"), 3) is Action.NONE
    assert guard.tripped is Code.MAX_TURNS_EXCEEDED


def test_guard_rewrites_the_result_of_a_turn_it_stopped() -> None:
    """A turn the backstop stopped ends with error_max_turns, like one the SDK stopped."""
    guard = TurnGuard(max_turns=1, timeout_s=100, grace_s=5)
    guard.start(0)
    guard.on_message(assistant("a"), 0)
    guard.on_message(assistant("b"), 0)
    result = guard.finish_result({"type": "result", "subtype": "error_during_execution", "is_error": True})
    assert result["subtype"] == "error_max_turns" and result["is_error"] is True


def test_guard_leaves_normal_results_alone() -> None:
    """An untripped turn's result passes through unchanged and ends the turn."""
    guard = TurnGuard(max_turns=5, timeout_s=100, grace_s=5)
    guard.start(0)
    result = {"type": "result", "subtype": "success"}
    guard.on_message(result, 1)
    assert guard.finish_result(result) is result and not guard.running


def test_guard_times_out_then_kills_after_grace() -> None:
    """Past the wall clock it asks for an interrupt; if the turn ignores it, a kill after the grace."""
    guard = TurnGuard(max_turns=5, timeout_s=10, grace_s=3)
    guard.start(100)
    assert guard.next_deadline() == 110
    assert guard.tick(109.9) is Action.NONE
    assert guard.tick(110) is Action.INTERRUPT and guard.tripped is Code.TURN_TIMEOUT
    assert guard.next_deadline() == 113
    assert guard.tick(112) is Action.NONE
    assert guard.tick(113) is Action.KILL
    assert not guard.running and guard.next_deadline() is None


def test_guard_kills_a_turn_that_ignores_a_user_interrupt() -> None:
    """A user interrupt starts the same grace clock."""
    guard = TurnGuard(max_turns=5, timeout_s=100, grace_s=2)
    guard.start(0)
    guard.user_interrupt(5)
    assert guard.tick(6) is Action.NONE
    assert guard.tick(7) is Action.KILL
    assert guard.tripped is None


def test_guard_is_quiet_between_turns() -> None:
    """Nothing is watched and nothing counted while no turn runs."""
    guard = TurnGuard(max_turns=1, timeout_s=1, grace_s=1)
    assert guard.tick(1000) is Action.NONE
    assert guard.on_message(assistant("x"), 0) is Action.NONE
    assert guard.next_deadline() is None
