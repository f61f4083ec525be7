"""make chat's approvals: what it shows and what it answers (moorage.chat, pure parts)."""

from __future__ import annotations

from typing import Any

from moorage.chat import Conversation, answer, render, session_path

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


def test_a_reconnect_replays_from_the_last_seq_shown_and_shows_nothing_twice() -> None:
    talk = Conversation("s1", None)
    assert session_path("s1", None) == "/v1/sessions/s1" and session_path(None, 3) == "/v1/sessions"
    talk.take({"type": "session", "session_id": "s1", "state": "attached", "last_seq": 4})
    assert talk.last_seq == 4  # live from here
    assert talk.take({"type": "assistant", "message": {"content": [{"type": "text", "text": "hi"}]}, "seq": 5}) == "hi"
    assert session_path(talk.session_id, talk.last_seq) == "/v1/sessions/s1?after=5"
    assert talk.take({"type": "assistant", "message": {"content": [{"type": "text", "text": "hi"}]}, "seq": 5}) is None
    assert talk.take({"type": "pong", "id": 1}) is None and talk.last_seq == 5  # ephemera carry no seq


def test_it_quits_only_once_every_turn_has_its_result_and_the_replay_is_shown() -> None:
    """So ``echo 'hi' | moorage chat`` prints the answer, and ``--after 0`` the whole conversation."""
    talk = Conversation("s1", 0)
    talk.take({"type": "session", "session_id": "s1", "state": "attached", "last_seq": 3})
    assert not talk.settled.is_set()  # the replay (seq 1..3) is still to come
    talk.take({"type": "user_message", "message": {"role": "user", "content": "say a"}, "seq": 1})
    assert talk.take({"type": "result", "subtype": "success", "num_turns": 1, "seq": 2}) is not None
    talk.take({"type": "queued", "position": 1, "seq": 3})
    assert talk.settled.is_set()
    talk.sent()
    assert not talk.settled.is_set()
    talk.take({"type": "error", "code": "queue_full", "message": "full", "fatal": False})  # refused: will not run
    assert talk.settled.is_set()
    talk.sent()
    talk.take({"type": "user_message", "message": {"role": "user", "content": "say b"}, "seq": 4})
    assert not talk.settled.is_set() and talk.running == 1
    talk.take({"type": "result", "subtype": "success", "num_turns": 1, "seq": 5})
    assert talk.settled.is_set()
    assert render({"type": "user_message", "message": {"role": "user", "content": "say b"}}) == "> say b"


def test_the_sandboxs_start_is_shown_as_it_goes() -> None:
    assert render({"type": "status", "status": "starting", "rehydrated": True}) == "[starting the sandbox…]"
    assert render({"type": "status", "status": "restoring"}) == "[restoring the workspace…]"
    assert render({"type": "status", "status": "ready", "start_s": 0.012, "pool": "started"}) == (
        "[sandbox ready in 0.012s (started)]"
    )
