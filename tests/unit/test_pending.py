"""Approvals and custom tools without I/O (moorage.pending): open, answer,
stale and foreign answers, the deadline, interrupt, replay on attach, and the
agent's tool policy as the Start frame carries it."""

from __future__ import annotations

from typing import Any

import pytest
from moorage.channel import (
    ChannelViolation,
    CustomToolResult,
    CustomToolUse,
    PermissionRequest,
    PermissionResponse,
    Reason,
)
from moorage.errors import Code, ProtocolError
from moorage.pending import AgentTools, CustomTool, Pending
from moorage.protocol import CustomToolResultFrame, PermissionResponseFrame
from moorage.settings import Settings
from pydantic import ValidationError

ASK = PermissionRequest("toolu_01", "Bash", {"command": "touch /workspace/x"})
CALL = CustomToolUse("call_01", "weather", {"city": "Oslo"})
SCHEMA: dict[str, Any] = {"type": "object", "properties": {"city": {"type": "string"}}}
TOOLS = AgentTools(("Bash",), (CustomTool("weather", "", SCHEMA),))


def test_a_request_becomes_a_client_frame_and_an_answer_goes_to_the_runner_and_every_client() -> None:
    pending = Pending(30, TOOLS)
    assert pending.open(ASK, now=0) == {
        "type": "permission_request",
        "id": "toolu_01",
        "tool": "Bash",
        "input": {"command": "touch /workspace/x"},
    }
    assert pending.open(CALL, now=0) == {
        "type": "custom_tool_use",
        "id": "call_01",
        "name": "weather",
        "input": {"city": "Oslo"},
    }
    assert pending.ids() == ["toolu_01", "call_01"]
    allowed = pending.answer(PermissionResponseFrame("toolu_01", "allow"))
    assert allowed.to_runner == PermissionResponse("toolu_01", "allow", "")
    assert allowed.frame == {
        "type": "permission_response",
        "id": "toolu_01",
        "behavior": "allow",
        "message": "",
        "source": "client",
    }
    content = [{"type": "text", "text": "22C"}]
    result = pending.answer(CustomToolResultFrame("call_01", content))
    assert result.to_runner == CustomToolResult("call_01", content, False)
    assert result.frame["type"] == "custom_tool_result" and result.frame["content"] == content
    assert len(pending) == 0 and pending.next_deadline() is None


def test_a_denial_carries_its_message() -> None:
    pending = Pending(30, TOOLS)
    pending.open(ASK, now=0)
    denied = pending.answer(PermissionResponseFrame("toolu_01", "deny", "not in prod"))
    assert denied.to_runner == PermissionResponse("toolu_01", "deny", "not in prod")


@pytest.mark.parametrize(
    "answer",
    [
        PermissionResponseFrame("toolu_99", "allow"),  # never asked
        CustomToolResultFrame("toolu_01", []),  # foreign: the other kind of request
    ],
)
def test_unknown_and_foreign_answers_are_refused_and_change_nothing(
    answer: PermissionResponseFrame | CustomToolResultFrame,
) -> None:
    pending = Pending(30, TOOLS)
    pending.open(ASK, now=0)
    with pytest.raises(ProtocolError) as caught:
        pending.answer(answer)
    assert caught.value.code is Code.REQUEST_NOT_PENDING and not caught.value.fatal
    assert pending.ids() == ["toolu_01"]


def test_the_first_answer_wins_and_a_second_is_stale() -> None:
    pending = Pending(30, TOOLS)
    pending.open(ASK, now=0)
    pending.answer(PermissionResponseFrame("toolu_01", "deny"))
    with pytest.raises(ProtocolError, match="answered already") as caught:
        pending.answer(PermissionResponseFrame("toolu_01", "allow"))
    assert caught.value.code is Code.REQUEST_NOT_PENDING


def test_past_the_deadline_a_request_is_denied_with_a_reason_and_its_answer_is_stale() -> None:
    pending = Pending(30, TOOLS)
    pending.open(ASK, now=0)
    pending.open(CALL, now=10)
    assert pending.next_deadline() == 30
    assert pending.expire(29.9) == []
    (denied,) = pending.expire(30)
    assert denied.to_runner == PermissionResponse("toolu_01", "deny", denied.frame["message"])
    assert "no client answered within 30s" in denied.frame["message"] and denied.frame["source"] == "timeout"
    assert pending.next_deadline() == 40
    (failed,) = pending.expire(41)
    assert isinstance(failed.to_runner, CustomToolResult) and failed.to_runner.is_error
    assert "no client answered" in failed.to_runner.content[0]["text"]
    with pytest.raises(ProtocolError):
        pending.answer(PermissionResponseFrame("toolu_01", "allow"))


def test_interrupt_denies_everything_pending() -> None:
    pending = Pending(30, TOOLS)
    pending.open(ASK, now=0)
    pending.open(CALL, now=0)
    resolutions = pending.interrupt()
    assert [r.frame["source"] for r in resolutions] == ["interrupted", "interrupted"]
    assert resolutions[0].to_runner == PermissionResponse("toolu_01", "deny", "interrupted")
    assert isinstance(resolutions[1].to_runner, CustomToolResult) and resolutions[1].to_runner.is_error
    assert len(pending) == 0 and pending.interrupt() == []


def test_replay_is_every_waiting_request_oldest_first() -> None:
    """A client that attaches (or comes back) is asked again."""
    pending = Pending(30, TOOLS)
    assert pending.replay() == []
    pending.open(ASK, now=0)
    pending.open(CALL, now=1)
    assert [f["id"] for f in pending.replay()] == ["toolu_01", "call_01"]
    pending.answer(PermissionResponseFrame("toolu_01", "allow"))
    assert [f["id"] for f in pending.replay()] == ["call_01"]
    pending.clear()
    assert pending.replay() == []


def test_a_runner_that_repeats_an_id_or_floods_breaks_the_channel() -> None:
    pending = Pending(30, TOOLS, limit=2)
    pending.open(ASK, now=0)
    with pytest.raises(ChannelViolation) as caught:
        pending.open(PermissionRequest("toolu_01", "Bash", {}), now=0)
    assert caught.value.reason is Reason.BAD_FIELD
    pending.open(CALL, now=0)
    with pytest.raises(ChannelViolation, match="more than 2"):
        pending.open(CustomToolUse("call_02", "weather", {}), now=0)


@pytest.mark.parametrize(
    "frame",
    [PermissionRequest("toolu_02", "Write", {}), CustomToolUse("call_02", "rm_everything", {})],
)
def test_a_runner_asking_about_a_tool_the_agent_does_not_ask_about_breaks_the_channel(
    frame: PermissionRequest | CustomToolUse,
) -> None:
    """Clients must never be asked to run a custom tool they did not offer."""
    pending = Pending(30, TOOLS)
    with pytest.raises(ChannelViolation, match=r"agent|always_ask"):
        pending.open(frame, now=0)
    assert len(pending) == 0


def test_agent_tools_parse_and_wire() -> None:
    assert AgentTools.parse(None) == AgentTools() and AgentTools.parse({}).wire() is None
    spec = {
        "ask_tools": ["Bash", "Write", "Bash"],
        "custom_tools": [{"name": "weather", "description": "Weather of a city", "input_schema": SCHEMA}],
        "model": "ignored here",
    }
    tools = AgentTools.parse(spec)
    assert tools == AgentTools(("Bash", "Write"), (CustomTool("weather", "Weather of a city", SCHEMA),))
    assert tools.wire() == {"ask_tools": ["Bash", "Write"], "allow_tools": [], "custom_tools": spec["custom_tools"]}


@pytest.mark.parametrize(
    "spec",
    [
        [],
        {"ask_tools": "Bash"},
        {"ask_tools": [1]},
        {"custom_tools": [{"name": "has space", "input_schema": {}}]},
        {"custom_tools": [{"name": "w"}]},
        {"custom_tools": [{"name": "w", "input_schema": {"type": "string"}}]},
        {"custom_tools": [{"name": "w", "input_schema": {}}, {"name": "w", "input_schema": {}}]},
        {"custom_tools": [{"name": "w", "description": 5, "input_schema": {}}]},
    ],
)
def test_malformed_agent_tools_are_refused(spec: object) -> None:
    with pytest.raises(ValueError):
        AgentTools.parse(spec)


def test_a_malformed_default_agent_stops_the_service_at_start() -> None:
    with pytest.raises(ValidationError, match="ask_tools"):
        Settings(default_agent={"ask_tools": "Bash"})
    assert Settings(default_agent=AGENT_SPEC).default_agent == AGENT_SPEC


AGENT_SPEC = {"ask_tools": ["Bash"], "custom_tools": [{"name": "w", "input_schema": {"type": "object"}}]}
