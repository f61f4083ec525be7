"""The Managed Agents projection of a session's log (service/moorage/ma_events.py).

The logs under tests/unit/data are real: captured from the WebSocket in
tests/e2e/test_approvals.py (an approval allowed, one denied, one allowed; a custom tool round
trip) against the real CLI and the scripted model. Every projected event is checked against the
official client's own types (``anthropic`` 2.10.0), strictly (pydantic validation) and as the
client parses a response (``construct_type``, which falls back to the first union member on an
unknown type — so the class it picks is asserted too).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx2
import pytest
from anthropic import Anthropic
from anthropic._models import construct_type
from anthropic.types.beta.sessions.beta_managed_agents_session_event import BetaManagedAgentsSessionEvent
from ma_frames import T0, Frame, frames_of, load
from moorage.ma_events import MAX_OPEN_SPANS, MaEvent, Projector, event_id, seq_of
from moorage.ma_query import TimeRange, order_of, select, time_range
from moorage.pending import AgentTools
from pydantic import TypeAdapter

ADAPTER: TypeAdapter[Any] = TypeAdapter(BetaManagedAgentsSessionEvent)


def wire(events: list[MaEvent]) -> list[dict[str, Any]]:
    return [e.wire() for e in events]


def types(events: list[MaEvent]) -> list[str]:
    return [e.type for e in events]


def of(events: list[MaEvent], kind: str) -> list[dict[str, Any]]:
    return [e.wire() for e in events if e.type == kind]


def assert_client_parses(events: list[MaEvent]) -> None:
    for data in wire(events):
        ADAPTER.validate_python(data)  # strict: every required field, every type
        parsed = construct_type(type_=BetaManagedAgentsSessionEvent, value=data)
        assert getattr(parsed, "type", None) == data["type"]
        assert type(parsed).__name__ != "BetaManagedAgentsUserMessageEvent" or data["type"] == "user.message"


BASH_ASKS = AgentTools(ask_tools=("Bash",))


def test_approvals_log_maps_onto_the_managed_agents_sequence() -> None:
    events = Projector(BASH_ASKS).project_all(load("ma_frames_approvals.jsonl"))
    first_turn = [
        "user.message",
        "session.status_running",
        "agent.tool_use",
        "session.status_idle",  # requires_action: waits for the confirmation
        "user.tool_confirmation",
        "session.status_running",
        "agent.tool_result",
        "agent.message",
        "session.usage",
        "session.status_idle",  # end_turn
    ]
    assert types(events) == first_turn * 3
    assert_client_parses(events)

    (message, *_) = of(events, "user.message")
    assert message["content"] == [{"type": "text", "text": "bash touch /workspace/allowed && echo made"}]
    assert message["id"] == "sevt_000000000001" and message["processed_at"] == "2026-12-02T02:21:01Z"

    uses = of(events, "agent.tool_use")
    assert uses[0]["name"] == "bash" and uses[0]["input"]["command"] == "touch /workspace/allowed && echo made"
    assert uses[0]["evaluated_permission"] == "ask" and uses[0]["evaluation"] == {"type": "always_ask"}
    idles = of(events, "session.status_idle")
    assert idles[0]["stop_reason"] == {"type": "requires_action", "event_ids": [uses[0]["id"]]}
    assert idles[1]["stop_reason"] == {"type": "end_turn"}

    confirmations = of(events, "user.tool_confirmation")
    assert [c["tool_use_id"] for c in confirmations] == [u["id"] for u in uses]
    assert [c["result"] for c in confirmations] == ["allow", "deny", "allow"]
    assert confirmations[1]["deny_message"] == "not today" and "deny_message" not in confirmations[0]

    results = of(events, "agent.tool_result")
    assert [r["tool_use_id"] for r in results] == [u["id"] for u in uses]
    assert results[0]["content"] == [{"type": "text", "text": "made"}] and results[0]["is_error"] is False
    assert results[1]["is_error"] is True and "not today" in results[1]["content"][0]["text"]
    assert of(events, "agent.message")[0]["content"] == [{"type": "text", "text": "tool said: made"}]

    usage = [u["usage"] for u in of(events, "session.usage")]
    assert [u["input_tokens"] for u in usage] == [22, 44, 66]  # summed over turns
    assert [u["list_cost"] for u in usage][-1] == {"amount": "0", "currency": "USD"}  # $0.0012: 0 cents


def test_without_the_policy_the_tool_use_carries_no_evaluated_permission() -> None:
    events = Projector().project_all(load("ma_frames_approvals.jsonl"))
    use = of(events, "agent.tool_use")[0]
    assert "evaluated_permission" not in use
    assert of(events, "session.status_idle")[0]["stop_reason"]["event_ids"] == [use["id"]]  # still asked
    allowed = Projector(AgentTools(ask_tools=("Read",))).project_all(load("ma_frames_approvals.jsonl"))
    assert of(allowed, "agent.tool_use")[0]["evaluated_permission"] == "allow"


def test_custom_tool_round_trip_shows_only_the_custom_tool_events() -> None:
    events = Projector().project_all(load("ma_frames_custom_tool.jsonl"))
    assert types(events) == [
        "user.message",
        "session.status_running",
        "agent.custom_tool_use",
        "session.status_idle",
        "user.custom_tool_result",
        "session.status_running",
        "agent.message",
        "session.usage",
        "session.status_idle",
    ]
    assert_client_parses(events)
    (use,) = of(events, "agent.custom_tool_use")
    assert use["name"] == "weather" and use["input"] == {"city": "Oslo"} and use["id"] == "sevt_000000000004"
    assert of(events, "session.status_idle")[0]["stop_reason"] == {"type": "requires_action", "event_ids": [use["id"]]}
    (result,) = of(events, "user.custom_tool_result")
    assert result["custom_tool_use_id"] == use["id"]
    assert result["content"] == [{"type": "text", "text": "22C and sunny"}] and result["is_error"] is False


def test_ids_are_stable_across_a_re_projection_and_a_resumed_one() -> None:
    frames = load("ma_frames_approvals.jsonl")
    once = wire(Projector(BASH_ASKS).project_all(frames))
    assert wire(Projector(BASH_ASKS).project_all(frames)) == once
    live = Projector(BASH_ASKS)  # the stream: frames arrive one at a time
    streamed = [e.wire() for f in frames for e in live.project(f)]
    assert streamed == once
    ids = [e["id"] for e in once]
    assert len(set(ids)) == len(ids) and ids == sorted(ids)  # unique, and in log order as strings


def test_event_ids_sort_in_log_order_and_read_back() -> None:
    ids = [event_id(9, 0), event_id(9, 1), event_id(9, 12), event_id(10, 0), event_id(100, 0)]
    assert ids == sorted(ids)
    assert ids[0] == "sevt_000000000009" and ids[1] == "sevt_000000000009_000001"
    assert [seq_of(i) for i in ids] == [(9, 0), (9, 1), (9, 12), (10, 0), (100, 0)]
    assert seq_of("sevt_07") is None and seq_of("toolu_01") is None


def test_frames_must_come_in_seq_order() -> None:
    projector = Projector()
    (first,) = frames_of({"type": "queued", "position": 1})
    projector.project(first)
    with pytest.raises(ValueError, match="in order"):
        projector.project(first)


def assistant(*content: dict[str, Any]) -> dict[str, Any]:
    return {"type": "assistant", "message": {"id": "msg_1", "role": "assistant", "content": list(content)}}


def tool_results(*content: dict[str, Any]) -> dict[str, Any]:
    return {"type": "user", "message": {"role": "user", "content": list(content)}}


INIT = {"type": "system", "subtype": "init", "cwd": "/workspace"}


def result(**extra: Any) -> dict[str, Any]:
    usage = {"input_tokens": 5, "output_tokens": 7, "cache_read_input_tokens": 1, "cache_creation_input_tokens": 2}
    return {"type": "result", "subtype": "success", "is_error": False, "usage": usage, "total_cost_usd": 0.25, **extra}


def test_thinking_text_and_mcp_tools() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    frames = frames_of(
        {"type": "user_message", "message": {"role": "user", "content": [{"type": "text", "text": "look"}, image]}},
        INIT,
        assistant(
            {"type": "thinking", "thinking": "hmm", "signature": "s"},
            {"type": "text", "text": "Let me "},
            {"type": "text", "text": "check."},
            {"type": "tool_use", "id": "toolu_1", "name": "mcp__github__search", "input": {"q": "x"}},
            {"type": "tool_use", "id": "toolu_2", "name": "Read", "input": {"file_path": "/workspace/a"}},
        ),
        tool_results(
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "3 hits"}]},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": "a", "is_error": False},
        ),
        assistant({"type": "text", "text": "Done."}),
        result(),
    )
    events = Projector().project_all(frames)
    assert_client_parses(events)
    assert types(events) == [
        "user.message",
        "session.status_running",
        "agent.thinking",
        "agent.message",
        "agent.mcp_tool_use",
        "agent.tool_use",
        "agent.mcp_tool_result",
        "agent.tool_result",
        "agent.message",
        "session.usage",
        "session.status_idle",
    ]
    assert of(events, "user.message")[0]["content"][1] == image
    assert of(events, "agent.thinking")[0]["id"] == "sevt_000000000003"
    assert of(events, "agent.message")[0]["content"] == [
        {"type": "text", "text": "Let me "},
        {"type": "text", "text": "check."},
    ]
    (mcp,) = of(events, "agent.mcp_tool_use")
    assert mcp["mcp_server_name"] == "github" and mcp["name"] == "search" and mcp["input"] == {"q": "x"}
    assert mcp["id"] == "sevt_000000000003_000002"
    assert of(events, "agent.mcp_tool_result")[0]["mcp_tool_use_id"] == mcp["id"]
    (read,) = of(events, "agent.tool_use")
    assert read["name"] == "read" and of(events, "agent.tool_result")[0]["tool_use_id"] == read["id"]
    usage = of(events, "session.usage")[0]["usage"]
    assert usage["output_tokens"] == 7 and usage["list_cost"] == {"amount": "25", "currency": "USD"}


def test_two_requests_waiting_then_answered_one_by_one() -> None:
    frames = frames_of(
        INIT,
        assistant(
            {"type": "tool_use", "id": "toolu_a", "name": "Bash", "input": {"command": "a"}},
            {"type": "tool_use", "id": "toolu_b", "name": "mcp__client__weather", "input": {}},
        ),
        {"type": "permission_request", "id": "toolu_a", "tool": "Bash", "input": {"command": "a"}},
        {"type": "custom_tool_use", "id": "ctu_1", "name": "weather", "input": {}},
        {"type": "custom_tool_result", "id": "ctu_1", "content": "sunny", "is_error": False, "source": "client"},
    )
    projector = Projector(BASH_ASKS)
    events = projector.project_all(frames)
    assert_client_parses(events)
    use, custom = of(events, "agent.tool_use")[0]["id"], of(events, "agent.custom_tool_use")[0]["id"]
    reasons = [i["stop_reason"] for i in of(events, "session.status_idle")]
    assert reasons == [
        {"type": "requires_action", "event_ids": [use]},
        {"type": "requires_action", "event_ids": [use, custom]},
        {"type": "requires_action", "event_ids": [use]},  # the custom tool answered: the rest still waits
    ]
    assert of(events, "user.custom_tool_result")[0]["content"] == [{"type": "text", "text": "sunny"}]
    waiting = projector.waiting_for(use)
    assert waiting is not None and waiting.request_id == "toolu_a" and waiting.kind == "permission_request"
    assert projector.waiting_for(custom) is None


def test_a_result_with_requests_still_waiting_requires_action() -> None:
    frames = frames_of(INIT, {"type": "custom_tool_use", "id": "ctu_1", "name": "w", "input": {}}, result())
    events = Projector().project_all(frames)
    custom = of(events, "agent.custom_tool_use")[0]["id"]
    assert of(events, "session.status_idle")[-1]["stop_reason"] == {"type": "requires_action", "event_ids": [custom]}


def test_a_failed_model_request_ends_with_retries_exhausted_and_a_session_error() -> None:
    failed = result(is_error=True, result="API Error: 529 overloaded", api_error_status=529)
    events = Projector().project_all(frames_of(INIT, failed))
    assert_client_parses(events)
    assert types(events) == ["session.status_running", "session.usage", "session.error", "session.status_idle"]
    (error,) = of(events, "session.error")
    assert error["error"]["type"] == "model_request_failed_error"
    assert error["error"]["retry_status"] == {"type": "exhausted"} and "529" in error["error"]["message"]
    assert of(events, "session.status_idle")[0]["stop_reason"] == {"type": "retries_exhausted"}


BUDGET = {"type": "error", "code": "budget_exceeded", "message": "this session's budget is spent", "fatal": False}


def test_budget_spent_after_the_turn_reports_budget_reached() -> None:
    # What sessions.py writes today: the turn's result, then the budget error.
    events = Projector().project_all(frames_of(INIT, result(), BUDGET))
    assert_client_parses(events)
    reasons = [i["stop_reason"]["type"] for i in of(events, "session.status_idle")]
    assert reasons == ["end_turn", "budget_reached"]
    assert of(events, "session.error")[0]["error"]["type"] == "billing_error"
    # A queued message dropped for the same reason says so again, without another idle.
    events = Projector().project_all(frames_of(INIT, result(), BUDGET, BUDGET))
    assert types(events)[-2:] == ["session.status_idle", "session.error"]


def test_budget_error_during_a_turn_makes_its_idle_budget_reached() -> None:
    events = Projector().project_all(frames_of(INIT, BUDGET, result()))
    assert [i["stop_reason"]["type"] for i in of(events, "session.status_idle")] == ["budget_reached"]
    refused = result(is_error=True, result="API Error: 400 budget_exceeded: the session budget is spent")
    events = Projector().project_all(frames_of(INIT, refused))
    assert of(events, "session.status_idle")[0]["stop_reason"] == {"type": "budget_reached"}
    assert of(events, "session.status_idle")[0]["stop_reason"] != {"type": "end_turn"}
    events = Projector().project_all(frames_of(INIT, result(subtype="error_max_budget_usd", is_error=True)))
    assert of(events, "session.status_idle")[0]["stop_reason"] == {"type": "budget_reached"}


def test_a_fatal_error_mid_turn_idles_the_session_and_notices_do_not() -> None:
    crash = {"type": "error", "code": "sandbox_crashed", "message": "the sandbox died", "fatal": True}
    events = Projector().project_all(frames_of(INIT, crash))
    assert_client_parses(events)
    assert types(events) == ["session.status_running", "session.error", "session.status_idle"]
    assert of(events, "session.error")[0]["error"] == {
        "type": "unknown_error",
        "message": "the sandbox died",
        "retry_status": {"type": "exhausted"},
    }
    assert of(events, "session.status_idle")[0]["stop_reason"] == {"type": "retries_exhausted"}
    notice = {"type": "error", "code": "workspace_full", "message": "the workspace is full", "fatal": False}
    assert types(Projector().project_all(frames_of(INIT, notice))) == ["session.status_running", "session.error"]


def test_a_rehydration_is_a_rescheduled_status_and_the_next_turn_runs_again() -> None:
    """A suspended session's sandbox starting again (the durable ``rescheduled`` frame) is
    ``session.status_rescheduled``; its next turn's init is ``session.status_running`` again."""
    done = {"type": "result", "subtype": "success", "is_error": False, "num_turns": 1, "usage": {}}
    rescheduled = {"type": "rescheduled", "reason": "rehydrated"}
    events = Projector().project_all(frames_of(SAY, INIT, done, rescheduled, SAY, INIT))
    assert_client_parses(events)
    assert types(events)[-4:] == [
        "session.status_idle",
        "session.status_rescheduled",
        "user.message",
        "session.status_running",
    ]


def test_frames_with_no_managed_agents_event() -> None:
    output = {"type": "output_file", "name": "r.csv", "size": 8, "file_id": "file_1", "mime_type": "text/csv"}
    quiet = frames_of({"type": "queued", "position": 1}, {"type": "system", "subtype": "compact_boundary"}, output)
    assert Projector().project_all(quiet) == []  # outputs: listed by files.list(scope_id=…), not streamed


SCRIPTED = {"input_tokens": 11, "output_tokens": 7, "cache_read_input_tokens": 3, "cache_creation_input_tokens": 2}
SAY = {"type": "user_message", "message": {"role": "user", "content": "say hi"}}


def start(ident: str = "mreq_1") -> dict[str, Any]:
    return {"type": "model_request_start", "id": ident}


def end(ident: str = "mreq_1", usage: dict[str, Any] | None = None, is_error: bool = False) -> dict[str, Any]:
    return {"type": "model_request_end", "id": ident, "usage": usage or SCRIPTED, "is_error": is_error}


HOSTED_ORDER = [  # MANAGED_AGENTS.md §6.6
    "user.message",
    "session.status_running",
    "span.model_request_start",
    "agent.message",
    "span.model_request_end",
    "session.usage",
    "session.status_idle",
]


def test_a_model_request_is_a_span_pair_naming_its_start() -> None:
    frames = frames_of(SAY, INIT, start(), assistant({"type": "text", "text": "hi"}), end(), result())
    events = Projector().project_all(frames)
    assert_client_parses(events)
    assert types(events) == HOSTED_ORDER
    (opened,), (closed,) = of(events, "span.model_request_start"), of(events, "span.model_request_end")
    assert opened["id"] == "sevt_000000000003"
    assert closed["model_request_start_id"] == opened["id"] and closed["is_error"] is False
    assert closed["model_usage"] == {
        "input_tokens": 11,
        "output_tokens": 7,
        "cache_creation_input_tokens": 2,
        "cache_read_input_tokens": 3,
    }


def test_a_request_that_overtakes_the_init_frame_opens_the_turn_first() -> None:
    """The proxy logs the start before the CLI's init reaches the log: the order is still §6.6's."""
    frames = frames_of(SAY, start(), INIT, assistant({"type": "text", "text": "hi"}), end(), result())
    events = Projector().project_all(frames)
    assert_client_parses(events)
    assert types(events) == HOSTED_ORDER
    running, opened = events[1], events[2]
    assert running.id == "sevt_000000000002" and opened.id == "sevt_000000000002_000001"
    assert of(events, "span.model_request_end")[0]["model_request_start_id"] == opened.id
    # A queued message's turn too: its start may come right after the previous result.
    second = {"type": "user_message", "message": {"role": "user", "content": "say again"}}
    frames = frames_of(SAY, INIT, second, {"type": "queued", "position": 1}, result(), start(), INIT, end(), result())
    events = Projector().project_all(frames)
    assert types(events)[-6:] == [
        "session.status_idle",
        "session.status_running",
        "span.model_request_start",
        "span.model_request_end",
        "session.usage",
        "session.status_idle",
    ]


def test_spans_outside_a_due_turn_change_no_status() -> None:
    """After the result (a late drain, a request the CLI makes on its own) and while a
    confirmation waits (a subagent still asking the model), spans are shown and nothing else."""
    after = Projector().project_all(frames_of(SAY, INIT, start(), result(), end(is_error=True), start("mreq_2")))
    assert types(after)[-3:] == ["session.status_idle", "span.model_request_end", "span.model_request_start"]
    assert of(after, "span.model_request_end")[0]["is_error"] is True
    waiting = frames_of(
        SAY,
        INIT,
        assistant({"type": "tool_use", "id": "toolu_a", "name": "Bash", "input": {}}),
        {"type": "permission_request", "id": "toolu_a", "tool": "Bash", "input": {}},
        start("mreq_sub"),
        end("mreq_sub"),
    )
    events = Projector().project_all(waiting)
    assert types(events)[-3:] == ["session.status_idle", "span.model_request_start", "span.model_request_end"]
    assert of(events, "session.status_idle")[-1]["stop_reason"]["type"] == "requires_action"


def test_a_refused_request_and_a_crash_after_a_span_opened_the_turn() -> None:
    zero = dict.fromkeys(SCRIPTED, 0)
    refused = result(is_error=True, result="API Error: 400 budget_exceeded: the session budget is spent")
    events = Projector().project_all(frames_of(SAY, start(), INIT, end(usage=zero, is_error=True), refused))
    assert_client_parses(events)
    (closed,) = of(events, "span.model_request_end")
    assert closed["is_error"] is True and set(closed["model_usage"].values()) == {0}
    assert of(events, "session.status_idle")[-1]["stop_reason"] == {"type": "budget_reached"}
    crash = {"type": "error", "code": "sandbox_crashed", "message": "the sandbox died", "fatal": True}
    events = Projector().project_all(frames_of(SAY, start(), end(is_error=True), crash))
    assert types(events)[-2:] == ["session.error", "session.status_idle"]  # the turn a span opened ends too


def test_span_ends_whose_start_is_gone_and_hostile_usage() -> None:
    """A pruned start: the end names the request id. Usage that is not a count counts as none."""
    bad = {"input_tokens": -1, "output_tokens": True, "cache_read_input_tokens": "3", "cache_creation_input_tokens": 2}
    events = Projector().project_all(frames_of(end("mreq_gone", usage=bad), {"type": "model_request_end"}))
    assert_client_parses(events)
    first, second = of(events, "span.model_request_end")
    assert first["model_request_start_id"] == "mreq_gone" and first["is_error"] is False
    assert first["model_usage"] == {
        "input_tokens": 0,
        "output_tokens": 0,
        "cache_creation_input_tokens": 2,
        "cache_read_input_tokens": 0,
    }
    assert second["model_usage"]["input_tokens"] == 0


def test_span_ids_are_stable_and_open_spans_are_bounded() -> None:
    frames = frames_of(SAY, start("a"), INIT, start("b"), end("b"), end("a"), result())
    once = wire(Projector().project_all(frames))
    live = Projector()
    assert [e.wire() for f in frames for e in live.project(f)] == once
    starts = {e["id"] for e in once if e["type"] == "span.model_request_start"}
    assert {e["model_request_start_id"] for e in once if e["type"] == "span.model_request_end"} == starts
    projector = Projector()
    projector.project_all(frames_of(*(start(f"m{i}") for i in range(MAX_OPEN_SPANS + 10))))
    assert len(projector._spans) == MAX_OPEN_SPANS


def test_filters_types_times_and_order() -> None:
    events = Projector(BASH_ASKS).project_all(load("ma_frames_approvals.jsonl"))
    chosen = select(events, types=["agent.message", "user.message"])
    assert types(chosen) == ["user.message", "agent.message"] * 3
    window = time_range({"created_at[gte]": "2026-12-02T02:21:09Z", "created_at[lt]": "2026-12-02T02:21:17+00:00"})
    assert {seq_of(e.id)[0] for e in select(events, when=window)} == set(range(9, 17))  # type: ignore[index]
    naive = time_range({"created_at[gt]": "2026-12-02T02:21:23"})  # the client sends naive times so: UTC
    assert [e.id for e in select(events, when=naive)] == [e.id for e in events if e.at > T0 + timedelta(seconds=23)]
    newest = select(events, types=["session.status_idle"], order="desc")
    assert [e.id for e in newest] == sorted((e.id for e in newest), reverse=True)
    assert select(events) == events and TimeRange().holds(T0)
    with pytest.raises(ValueError, match=r"created_at\[lte\]"):
        time_range({"created_at[lte]": "yesterday"})
    assert order_of(None) == "asc" and order_of("desc") == "desc"
    with pytest.raises(ValueError, match="order"):
        order_of("sideways")


def test_the_official_client_lists_the_projection() -> None:
    """``client.beta.sessions.events.list`` over a page of projected events (in-memory transport)."""
    events = Projector(BASH_ASKS).project_all(load("ma_frames_approvals.jsonl"))

    def handler(request: httpx2.Request) -> httpx2.Response:
        assert request.url.path == "/v1/sessions/sesn_1/events"
        return httpx2.Response(200, json={"data": wire(events), "next_page": None})

    http = httpx2.Client(transport=httpx2.MockTransport(handler))
    client = Anthropic(api_key="test", base_url="http://moorage.test", http_client=http)
    listed = list(client.beta.sessions.events.list("sesn_1"))
    assert [e.id for e in listed] == [e.id for e in events]
    assert [e.type for e in listed] == types(events)
    assert [type(e).__name__ for e in listed][:3] == [
        "BetaManagedAgentsUserMessageEvent",
        "BetaManagedAgentsSessionStatusRunningEvent",
        "BetaManagedAgentsAgentToolUseEvent",
    ]
    assert listed[0].processed_at == T0 + timedelta(seconds=1)


def test_a_request_settled_after_its_turn_ended_leaves_the_session_idle() -> None:
    late = {"type": "permission_response", "id": "toolu_a", "behavior": "deny", "message": "interrupted"}
    frames = frames_of(
        INIT,
        assistant({"type": "tool_use", "id": "toolu_a", "name": "Bash", "input": {}}),
        {"type": "permission_request", "id": "toolu_a", "tool": "Bash", "input": {}},
        result(subtype="error_during_execution", is_error=True),
        {**late, "source": "interrupted"},
    )
    events = Projector().project_all(frames)
    use = of(events, "agent.tool_use")[0]["id"]
    assert types(events)[-2:] == ["user.tool_confirmation", "session.status_idle"]
    reasons = [i["stop_reason"] for i in of(events, "session.status_idle")]
    assert reasons == [
        {"type": "requires_action", "event_ids": [use]},
        {"type": "requires_action", "event_ids": [use]},  # the result came while it waited
        {"type": "end_turn"},
    ]
    assert of(events, "user.tool_confirmation")[0]["deny_message"] == "interrupted"


def test_a_fatal_error_while_a_request_waits_drops_it() -> None:
    crash = {"type": "error", "code": "sandbox_out_of_memory", "message": "out of memory", "fatal": True}
    frames = frames_of(INIT, {"type": "custom_tool_use", "id": "ctu_1", "name": "w", "input": {}}, crash)
    projector = Projector()
    events = projector.project_all(frames)
    assert of(events, "session.status_idle")[-1]["stop_reason"] == {"type": "retries_exhausted"}
    assert projector.waiting == [] and not projector.turn_open
    rehydrated = [Frame(4, "system", INIT, T0), Frame(5, "result", result(), T0)]  # the next turn
    after = projector.project_all(rehydrated)
    assert types(after) == ["session.status_running", "session.usage", "session.status_idle"]
    assert after[-1].fields["stop_reason"] == {"type": "end_turn"}


def test_usage_sums_turns_and_splits_cache_writes_by_lifetime() -> None:
    split = {"ephemeral_1h_input_tokens": 1, "ephemeral_5m_input_tokens": 0}
    second = result(total_cost_usd=0.5)
    second["usage"] = {**second["usage"], "cache_creation": split}
    events = Projector().project_all(frames_of(INIT, result(), INIT, second))
    assert_client_parses(events)
    usage = of(events, "session.usage")[-1]["usage"]
    assert usage["input_tokens"] == 10 and usage["output_tokens"] == 14 and usage["cache_read_input_tokens"] == 2
    assert usage["cache_creation"] == {"ephemeral_5m_input_tokens": 3, "ephemeral_1h_input_tokens": 1}
    assert usage["list_cost"] == {"amount": "50", "currency": "USD"}  # total_cost_usd is cumulative already


def test_a_subagents_messages_stay_off_the_session_but_its_approvals_surface() -> None:
    inner = {"parent_tool_use_id": "toolu_task"}
    frames = frames_of(
        INIT,
        assistant({"type": "tool_use", "id": "toolu_task", "name": "Task", "input": {"prompt": "p"}}),
        {**assistant({"type": "tool_use", "id": "toolu_in", "name": "Bash", "input": {"command": "x"}}), **inner},
        {"type": "permission_request", "id": "toolu_in", "tool": "Bash", "input": {"command": "x"}},
        {"type": "permission_response", "id": "toolu_in", "behavior": "allow", "message": "", "source": "client"},
        {**tool_results({"type": "tool_result", "tool_use_id": "toolu_in", "content": "ok"}), **inner},
        tool_results({"type": "tool_result", "tool_use_id": "toolu_task", "content": "done"}),
    )
    events = Projector().project_all(frames)
    assert_client_parses(events)
    uses = of(events, "agent.tool_use")
    assert [u["name"] for u in uses] == ["Task", "bash"]
    assert uses[1]["id"] == "sevt_000000000004" and uses[1]["evaluated_permission"] == "ask"
    assert of(events, "user.tool_confirmation")[0]["tool_use_id"] == uses[1]["id"]
    assert [r["tool_use_id"] for r in of(events, "agent.tool_result")] == [uses[0]["id"]]


def test_a_span_ends_after_the_message_its_response_carried() -> None:
    """The proxy sees a response end before the CLI logs the message it carried; the projection
    keeps the hosted order (§6.6): start, the message (or tool use), end — then the tool result."""
    text = {"type": "text", "text": "hi"}
    call = {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "true"}}
    answer = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}
    said = Projector().project_all(frames_of(SAY, INIT, start(), end(), assistant(text), result()))
    assert types(said)[2:5] == ["span.model_request_start", "agent.message", "span.model_request_end"]
    used = Projector().project_all(frames_of(SAY, INIT, start(), end(), assistant(call), tool_results(answer)))
    assert types(used)[2:] == [
        "span.model_request_start",
        "agent.tool_use",
        "span.model_request_end",
        "agent.tool_result",
    ]
    late = Projector().project_all(frames_of(SAY, INIT, start(), assistant(text), end(), result()))
    assert types(late)[2:5] == ["span.model_request_start", "agent.message", "span.model_request_end"]
