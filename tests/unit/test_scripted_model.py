"""The scripted model decides replies from the last prompt."""

from __future__ import annotations

from typing import Any

from moorage.testing.scripted_model import decide, sse_events

TOOLS = [{"name": "Bash"}]


def body(*messages: dict[str, Any]) -> dict[str, Any]:
    return {"tools": TOOLS, "messages": list(messages)}


def test_bash_prompt_calls_the_tool_then_reports_its_output() -> None:
    """'bash CMD' calls Bash; once the tool result is in, the model quotes it."""
    prompt = {"role": "user", "content": [{"type": "text", "text": "bash echo hi"}]}
    assert decide(body(prompt)).bash == "echo hi"
    result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "hi\n"}]}
    assert decide(body(prompt, {"role": "assistant", "content": []}, result)).text == "tool said: hi"


def test_a_trailing_system_message_does_not_hide_the_tool_result() -> None:
    """For some models the CLI ends the messages with a system-role note; the tool result before it counts."""
    prompt = {"role": "user", "content": [{"type": "text", "text": "bash echo hi"}]}
    result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "hi\n"}]}
    note = {"role": "system", "content": [{"type": "text", "text": "<total_tokens>9 tokens left</total_tokens>"}]}
    assert decide(body(prompt, {"role": "assistant", "content": []}, result, note)).text == "tool said: hi"


def test_system_reminders_are_not_prompts() -> None:
    """Text blocks the CLI adds as reminders do not count as the user's command."""
    prompt = {
        "role": "user",
        "content": [
            {"type": "text", "text": "say yes"},
            {"type": "text", "text": "<system-reminder>x</system-reminder>"},
        ],
    }
    assert decide(body(prompt)).text == "yes"


def test_a_new_prompt_next_to_a_tool_result_wins() -> None:
    """After an interrupted tool loop the next prompt is answered, not the stale tool result."""
    mixed = {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "t", "content": "x"}, {"type": "text", "text": "say again"}],
    }
    assert decide(body(mixed)).text == "again"


def test_streamed_events_follow_the_messages_api_order() -> None:
    """message_start, block start/delta/stop, message_delta, message_stop."""
    names = [name for name, _ in sse_events(decide(body({"role": "user", "content": "say x"})), "m")]
    assert names == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
