"""make chat's approvals: what it shows and what it answers (moorage.chat, pure parts)."""

from __future__ import annotations

from typing import Any

from moorage.chat import answer, render

ASK = {"type": "permission_request", "id": "toolu_1", "tool": "Bash", "input": {"command": "rm -rf x"}}
CALL = {"type": "custom_tool_use", "id": "ctu_1", "name": "weather", "input": {"city": "Oslo"}}


def test_requests_and_answers_are_shown() -> None:
    assert "approve? Bash" in str(render(ASK)) and "/allow" in str(render(ASK))
    assert "client tool weather" in str(render(CALL))
    shown = render({"type": "permission_response", "behavior": "deny", "source": "timeout", "message": "late"})
    assert shown == "[deny (timeout): late]"


def test_commands_answer_the_oldest_request_of_their_kind() -> None:
    pending: dict[str, dict[str, Any]] = {"ctu_1": CALL, "toolu_1": ASK}
    assert answer("/allow\n", pending) == {"type": "permission_response", "id": "toolu_1", "behavior": "allow"}
    assert answer("/deny not now", pending) == {
        "type": "permission_response",
        "id": "toolu_1",
        "behavior": "deny",
        "message": "not now",
    }
    assert answer("/result 22C", pending) == {
        "type": "custom_tool_result",
        "id": "ctu_1",
        "content": [{"type": "text", "text": "22C"}],
        "is_error": False,
    }
    assert answer("/error no network", pending)["is_error"] is True  # type: ignore[index]
    assert answer("/allow", {"ctu_1": CALL}) == "no permission_request is pending"
