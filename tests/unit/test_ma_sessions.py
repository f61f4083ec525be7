"""The Managed Agents session bodies (service/moorage/ma_sessions.py), without I/O: what
``POST /v1/sessions``, ``POST /v1/sessions/{id}`` and ``POST /v1/sessions/{id}/events`` accept,
what they refuse and with which code (a feature not built here: ``not_supported``; a malformed
body: ``invalid_request``, its message naming the field), and the session object's shape."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from moorage.errors import Code, MoorageError
from moorage.ma_sessions import (
    MAX_BUDGET_CENTS,
    MAX_EVENTS_PER_SEND,
    MAX_INITIAL_EVENTS,
    MAX_TITLE,
    AgentRef,
    Confirmation,
    CustomResult,
    Interrupt,
    agent_snapshot,
    apply_update,
    budget_object,
    parse_create,
    parse_send,
    session_object,
)
from moorage.protocol import CustomToolResultFrame, PermissionResponseFrame, UserFrame
from moorage.resources import FileResource
from moorage_session_store import SessionRecord

Json = dict[str, Any]
T0 = datetime(2026, 12, 2, 2, 0, tzinfo=UTC)
HELLO: Json = {"type": "user.message", "content": [{"type": "text", "text": "hello"}]}
PNG: Json = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}


def create(**fields: Any) -> Json:
    return {"agent": "agent_01", "environment_id": "env_01", **fields}


def budget(amount: object, **cost: Any) -> Json:
    return {"type": "limit", "max_list_cost": {"amount": amount, **cost}}


def refused(code: Code, call: Any, *args: Any) -> str:
    """``call(*args)`` raises a MoorageError with ``code``; its message."""
    with pytest.raises(MoorageError) as caught:
        call(*args)
    assert caught.value.code == code, caught.value.message
    return caught.value.message


# -- create -----------------------------------------------------------------------


def test_the_agent_is_an_id_or_a_reference_with_an_optional_version() -> None:
    assert parse_create(create()).agent == AgentRef("agent_01", None)
    assert parse_create(create(agent={"type": "agent", "id": "agent_02"})).agent == AgentRef("agent_02")
    assert parse_create(create(agent={"type": "agent", "id": "agent_02", "version": 3})).agent == AgentRef(
        "agent_02", 3
    )


@pytest.mark.parametrize(
    ("agent", "named"),
    [
        (None, "agent"),
        ("", "agent"),
        (7, "agent"),
        ({"id": "agent_01"}, "agent"),
        ({"type": "agent"}, "agent.id"),
        ({"type": "agent", "id": ""}, "agent.id"),
        ({"type": "agent", "id": "a", "version": 0}, "agent.version"),
        ({"type": "agent", "id": "a", "version": "2"}, "agent.version"),
        ({"type": "agent", "id": "a", "version": True}, "agent.version"),
        ({"type": "agent", "id": "a", "model": "x"}, "model"),
    ],
)
def test_a_malformed_agent_is_refused_naming_it(agent: object, named: str) -> None:
    assert named in refused(Code.INVALID_REQUEST, parse_create, create(agent=agent))


def test_an_agent_with_overrides_is_not_supported() -> None:
    agent = {"type": "agent_with_overrides", "id": "agent_01", "model": "claude-x"}
    assert "agent_with_overrides" in refused(Code.NOT_SUPPORTED, parse_create, create(agent=agent))


@pytest.mark.parametrize("env", [None, "", 5])
def test_the_environment_is_required(env: object) -> None:
    body = create(environment_id=env)
    assert "environment_id" in refused(Code.INVALID_REQUEST, parse_create, body)
    del body["environment_id"]
    assert "environment_id" in refused(Code.INVALID_REQUEST, parse_create, body)


def test_a_bare_create_has_no_title_metadata_budget_or_events() -> None:
    parsed = parse_create(create())
    assert parsed.environment_id == "env_01"
    assert (parsed.title, parsed.metadata, parsed.budget_cents, parsed.initial_events) == (None, {}, None, ())
    assert parsed.api_fields() == {
        "title": None,
        "metadata": {},
        "environment_id": "env_01",
        "budget_cents": None,
        "resources": [],
        "vault_ids": [],
    }


def test_title_and_metadata_are_bounded() -> None:
    parsed = parse_create(create(title="t" * MAX_TITLE, metadata={"k": "v"}))
    assert parsed.title == "t" * MAX_TITLE and parsed.metadata == {"k": "v"}
    assert parse_create(create(title="")).title is None
    assert "title" in refused(Code.INVALID_REQUEST, parse_create, create(title="t" * (MAX_TITLE + 1)))
    assert "title" in refused(Code.INVALID_REQUEST, parse_create, create(title=3))
    too_many = {f"k{i}": "v" for i in range(17)}
    assert "metadata" in refused(Code.INVALID_REQUEST, parse_create, create(metadata=too_many))
    assert "metadata" in refused(Code.INVALID_REQUEST, parse_create, create(metadata={"k": 1}))
    assert "metadata" in refused(Code.INVALID_REQUEST, parse_create, create(metadata={"k" * 65: "v"}))
    assert "metadata" in refused(Code.INVALID_REQUEST, parse_create, create(metadata=["k"]))


@pytest.mark.parametrize(
    ("amount", "currency", "cents"),
    [("2500", None, 2500), (2500, None, 2500), ("1", "USD", 1), (MAX_BUDGET_CENTS, "USD", MAX_BUDGET_CENTS)],
)
def test_a_budget_is_whole_us_cents_as_a_string_or_an_integer(amount: object, currency: str | None, cents: int) -> None:
    cost = {} if currency is None else {"currency": currency}
    assert parse_create(create(budget=budget(amount, **cost))).budget_cents == cents


@pytest.mark.parametrize(
    "amount",
    [
        *["0", 0, -5, "-5", "12.50", 12.5, "", None, True, "1e3", " 12"],
        *[MAX_BUDGET_CENTS + 1, str(MAX_BUDGET_CENTS + 1)],
        # Strings str.isdigit() takes that int() refuses, or reads only below a size limit.
        *["²", "1" * 5000, "١٢"],
    ],
)
def test_a_budget_amount_out_of_bounds_or_not_whole_cents_is_refused(amount: object) -> None:
    message = refused(Code.INVALID_REQUEST, parse_create, create(budget=budget(amount)))
    assert "budget.max_list_cost.amount" in message


def test_a_budget_is_a_limit_in_usd_with_no_other_fields() -> None:
    cases: list[tuple[object, str]] = [
        ({"type": "cap", "max_list_cost": {"amount": "1"}}, "budget.type"),
        ({"max_list_cost": {"amount": "1"}}, "budget.type"),
        (budget("1", currency="EUR"), "currency"),
        ({"type": "limit"}, "budget.max_list_cost"),
        ({"type": "limit", "max_list_cost": "1"}, "budget.max_list_cost"),
        ({**budget("1"), "period": "day"}, "period"),
        (budget("1", unit="cents"), "unit"),
        ("2500", "budget"),
    ]
    for value, named in cases:
        assert named in refused(Code.INVALID_REQUEST, parse_create, create(budget=value)), value
    assert parse_create(create(budget=None)).budget_cents is None


def test_initial_events_are_user_messages_in_order() -> None:
    second = {"type": "user.message", "content": [{"type": "text", "text": "and then"}, PNG]}
    parsed = parse_create(create(initial_events=[HELLO, second]))
    assert parsed.initial_events == (
        UserFrame({"role": "user", "content": HELLO["content"]}),
        UserFrame({"role": "user", "content": second["content"]}),
    )
    assert parse_create(create(initial_events=[HELLO] * MAX_INITIAL_EVENTS)).initial_events[-1].message["content"]
    message = refused(Code.INVALID_REQUEST, parse_create, create(initial_events=[HELLO] * (MAX_INITIAL_EVENTS + 1)))
    assert "initial_events" in message


def test_initial_events_other_than_user_messages_are_refused() -> None:
    outcome = {"type": "user.define_outcome", "description": "d", "rubric": {"type": "text", "content": "c"}}
    assert "define_outcome" in refused(Code.NOT_SUPPORTED, parse_create, create(initial_events=[HELLO, outcome]))
    interrupt = {"type": "user.interrupt"}
    assert "initial_events[1]" in refused(Code.INVALID_REQUEST, parse_create, create(initial_events=[HELLO, interrupt]))
    assert "initial_events[0]" in refused(Code.INVALID_REQUEST, parse_create, create(initial_events=["hi"]))
    assert "initial_events" in refused(Code.INVALID_REQUEST, parse_create, create(initial_events=HELLO))
    file_image = {"type": "user.message", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}
    assert "initial_events[0].content[0]" in refused(
        Code.NOT_SUPPORTED, parse_create, create(initial_events=[file_image])
    )


def test_non_file_resources_are_not_supported_but_empty_lists_are_accepted() -> None:
    parsed = parse_create(create(vault_ids=[], resources=[]))
    assert parsed.agent == AgentRef("agent_01")
    repo = {"type": "github_repository", "url": "https://github.com/o/r"}
    assert "github_repository" in refused(Code.NOT_SUPPORTED, parse_create, create(resources=[repo]))
    file = {"type": "file", "file_id": "file_01"}
    assert parse_create(create(resources=[file])).resources == (
        FileResource("file_01", "/mnt/session/uploads/file_01"),
    )


def test_vault_ids_are_kept_in_order_and_malformed_ones_refused() -> None:
    parsed = parse_create(create(vault_ids=["vlt_b", "vlt_a"]))
    assert parsed.vault_ids == ("vlt_b", "vlt_a") and parsed.api_fields()["vault_ids"] == ["vlt_b", "vlt_a"]
    assert "vault_ids" in refused(Code.INVALID_REQUEST, parse_create, create(vault_ids="vlt_01"))
    assert "twice" in refused(Code.INVALID_REQUEST, parse_create, create(vault_ids=["vlt_a", "vlt_a"]))
    assert "vault_ids" in refused(Code.INVALID_REQUEST, parse_create, create(vault_ids=[""]))
    assert "at most" in refused(Code.INVALID_REQUEST, parse_create, create(vault_ids=[f"v{n}" for n in range(21)]))


def test_unknown_fields_are_refused_naming_them() -> None:
    assert "deployment_id" in refused(Code.INVALID_REQUEST, parse_create, create(deployment_id="d"))
    message = refused(Code.INVALID_REQUEST, parse_create, create(zeta=1, alpha=2))
    assert "alpha, zeta" in message
    assert "request body" in refused(Code.INVALID_REQUEST, parse_create, ["not", "an", "object"])


# -- update -----------------------------------------------------------------------

API: Json = {"title": "old", "metadata": {"a": "1", "b": "2"}, "environment_id": "env_01", "budget_cents": 500}


def test_an_update_changes_only_what_it_names_and_not_its_input() -> None:
    before = {**API, "metadata": dict(API["metadata"])}
    assert apply_update(API, {}) == API
    assert apply_update(API, {"title": "new"}) == {**API, "title": "new"}
    assert before == API  # not changed in place


@pytest.mark.parametrize("title", [None, ""])
def test_an_update_clears_the_title(title: str | None) -> None:
    assert apply_update(API, {"title": title})["title"] is None


def test_an_update_patches_metadata_and_null_deletes_a_key() -> None:
    out = apply_update(API, {"metadata": {"a": None, "c": "3", "missing": None}})
    assert out["metadata"] == {"b": "2", "c": "3"}
    assert apply_update(API, {"metadata": None})["metadata"] == API["metadata"]
    assert apply_update({**API, "metadata": None}, {"metadata": {"x": "y"}})["metadata"] == {"x": "y"}
    assert "metadata" in refused(Code.INVALID_REQUEST, apply_update, API, {"metadata": {"a": 5}})
    full = {f"k{i}": "v" for i in range(16)}
    assert "metadata" in refused(
        Code.INVALID_REQUEST, apply_update, {**API, "metadata": full}, {"metadata": {"x": "y"}}
    )


def test_an_update_replaces_or_removes_a_budget_but_cannot_add_one() -> None:
    assert apply_update(API, {"budget": budget("900")})["budget_cents"] == 900
    assert apply_update(API, {"budget": None})["budget_cents"] is None
    unbudgeted = {**API, "budget_cents": None}
    assert "budget" in refused(Code.INVALID_REQUEST, apply_update, unbudgeted, {"budget": budget("900")})
    assert apply_update(unbudgeted, {"budget": None})["budget_cents"] is None
    message = refused(Code.INVALID_REQUEST, apply_update, API, {"budget": budget("0")})
    assert "budget.max_list_cost.amount" in message


def test_an_update_cannot_change_the_agent_or_vaults_or_unknown_fields() -> None:
    assert "agent" in refused(Code.NOT_SUPPORTED, apply_update, API, {"agent": {"tools": []}})
    assert apply_update(API, {"agent": None}) == API
    assert "vault_ids" in refused(Code.NOT_SUPPORTED, apply_update, API, {"vault_ids": []})
    assert "environment_id" in refused(Code.INVALID_REQUEST, apply_update, API, {"environment_id": "env_02"})
    assert "title" in refused(Code.INVALID_REQUEST, apply_update, API, {"title": "t" * (MAX_TITLE + 1)})


# -- client events ----------------------------------------------------------------


def send(*events: object) -> list[Any]:
    return parse_send({"events": list(events)})


def test_each_client_event_type_is_parsed_in_order() -> None:
    confirm = {"type": "user.tool_confirmation", "tool_use_id": "sevt_000000000003", "result": "allow"}
    deny = {**confirm, "result": "deny", "deny_message": "not that"}
    result = {"type": "user.custom_tool_result", "custom_tool_use_id": "sevt_000000000009", "content": "42"}
    parsed = send(HELLO, {"type": "user.interrupt"}, confirm, deny, result)
    assert parsed == [
        UserFrame({"role": "user", "content": HELLO["content"]}),
        Interrupt(),
        Confirmation("sevt_000000000003", True, ""),
        Confirmation("sevt_000000000003", False, "not that"),
        CustomResult("sevt_000000000009", {"type": "custom_tool_result", "content": "42"}),
    ]
    assert parsed[3].frame("req_1") == PermissionResponseFrame("req_1", "deny", "not that")
    assert parsed[2].frame("req_2") == PermissionResponseFrame("req_2", "allow", "")
    assert parsed[4].frame("req_3") == CustomToolResultFrame("req_3", [{"type": "text", "text": "42"}], False)


def test_a_custom_tool_result_keeps_its_blocks_and_error_flag() -> None:
    event = {
        "type": "user.custom_tool_result",
        "custom_tool_use_id": "sevt_000000000009",
        "content": [{"type": "text", "text": "no"}, PNG],
        "is_error": True,
    }
    (parsed,) = send(event)
    assert isinstance(parsed, CustomResult)
    assert parsed.frame("r") == CustomToolResultFrame("r", [{"type": "text", "text": "no"}, PNG], True)
    (empty,) = send({"type": "user.custom_tool_result", "custom_tool_use_id": "sevt_000000000009"})
    assert isinstance(empty, CustomResult) and empty.frame("r") == CustomToolResultFrame("r", [], False)


@pytest.mark.parametrize(
    "bad",
    [
        {"content": [{"type": "image", "source": {"type": "url", "url": "https://x"}}]},
        {"content": [{"type": "text"}]},
        {"content": [{"type": "document", "source": {"type": "base64"}}]},
        {"content": 5},
        {"is_error": "yes"},
    ],
)
def test_a_bad_custom_tool_result_is_refused_when_sent_before_anything_is_applied(bad: Json) -> None:
    event = {"type": "user.custom_tool_result", "custom_tool_use_id": "sevt_000000000009", **bad}
    message = refused(Code.INVALID_REQUEST, send, HELLO, event)
    assert message.startswith("events[1]")


def test_a_tool_confirmation_is_allow_or_deny_with_a_bounded_deny_message() -> None:
    base = {"type": "user.tool_confirmation", "tool_use_id": "sevt_000000000003"}
    assert "events[0].result" in refused(Code.INVALID_REQUEST, send, {**base, "result": "maybe"})
    assert "events[0].result" in refused(Code.INVALID_REQUEST, send, base)
    too_long = {**base, "result": "deny", "deny_message": "x" * 4097}
    assert "events[0].deny_message" in refused(Code.INVALID_REQUEST, send, too_long)
    assert "events[0].deny_message" in refused(
        Code.INVALID_REQUEST, send, {**base, "result": "deny", "deny_message": 1}
    )
    assert "events[0].tool_use_id" in refused(Code.INVALID_REQUEST, send, {"type": base["type"], "result": "allow"})
    long_id = {**base, "result": "allow", "tool_use_id": "x" * 65}
    assert "events[0].tool_use_id" in refused(Code.INVALID_REQUEST, send, long_id)
    custom = {"type": "user.custom_tool_result", "custom_tool_use_id": 3}
    assert "events[0].custom_tool_use_id" in refused(Code.INVALID_REQUEST, send, custom)


@pytest.mark.parametrize(
    "event",
    [
        {"type": "user.interrupt", "session_thread_id": "sthr_01"},
        {"type": "user.tool_confirmation", "tool_use_id": "sevt_1", "result": "allow", "session_thread_id": "sthr_01"},
        {"type": "user.custom_tool_result", "custom_tool_use_id": "sevt_1", "session_thread_id": "sthr_01"},
    ],
)
def test_thread_ids_are_not_supported_and_a_null_one_is_accepted(event: Json) -> None:
    assert "session_thread_id" in refused(Code.NOT_SUPPORTED, send, event)
    assert len(send({**event, "session_thread_id": None})) == 1


def test_user_message_content_is_checked() -> None:
    def message(*blocks: object) -> Json:
        return {"type": "user.message", "content": list(blocks)}

    file_image = {"type": "image", "source": {"type": "file", "file_id": "file_01"}}
    file_doc = {"type": "document", "source": {"type": "file", "file_id": "file_01"}}
    assert "events[0].content[1]" in refused(Code.NOT_SUPPORTED, send, message(PNG, file_image))
    assert "events[0].content[0]" in refused(Code.NOT_SUPPORTED, send, message(file_doc))
    assert "events[0].content[0].type" in refused(Code.INVALID_REQUEST, send, message({"type": "tool_result"}))
    assert "events[0].content" in refused(Code.INVALID_REQUEST, send, message())
    assert "events[0].content" in refused(Code.INVALID_REQUEST, send, {"type": "user.message", "content": "hi"})
    assert "events[0]" in refused(Code.INVALID_REQUEST, send, message("hi"))
    assert "events[0]" in refused(Code.INVALID_REQUEST, send, {**HELLO, "extra": 1})


def test_unsupported_and_unknown_event_types() -> None:
    for kind in ("user.define_outcome", "user.tool_result", "system.message"):
        assert kind in refused(Code.NOT_SUPPORTED, send, {"type": kind})
    assert "events[1].type" in refused(Code.INVALID_REQUEST, send, HELLO, {"type": "user.shout"})
    assert "events[0]" in refused(Code.INVALID_REQUEST, send, "user.message")


def test_a_send_holds_one_to_a_bounded_number_of_events() -> None:
    assert "events" in refused(Code.INVALID_REQUEST, send)
    assert "events" in refused(Code.INVALID_REQUEST, parse_send, {})
    assert "events" in refused(Code.INVALID_REQUEST, parse_send, {"events": HELLO})
    assert len(send(*[HELLO] * MAX_EVENTS_PER_SEND)) == MAX_EVENTS_PER_SEND
    assert "events" in refused(Code.INVALID_REQUEST, send, *[HELLO] * (MAX_EVENTS_PER_SEND + 1))
    assert "more" in refused(Code.INVALID_REQUEST, parse_send, {"events": [HELLO], "more": True})


# -- the session object -----------------------------------------------------------

PINNED: Json = {
    "id": "agent_01",
    "version": 2,
    "name": "Demo",
    "model": {"id": "claude-x"},
    "system": "Be brief.",
    "tools": [],
    "created_at": "2026-12-01T00:00:00Z",
    "archived_at": None,
}


def record(**fields: Any) -> SessionRecord:
    values: Json = {
        "id": "sesn_01",
        "tenant": "t",
        "state": "active",
        "created_at": T0,
        "updated_at": T0 + timedelta(seconds=5),
        "last_active_at": T0,
        "turns": 1,
        "cost_usd": 0.1234,
        "options": {"agent": PINNED},
        "sandbox": None,
        "owner": None,
        "lease_expires_at": None,
        "api": {"title": "demo", "metadata": {"k": "v"}, "environment_id": "env_01", "budget_cents": 2500},
        "input_tokens": 10,
        "output_tokens": 20,
        "cache_read_tokens": 30,
        "cache_creation_tokens": 40,
        "active_seconds": 1.23456,
    }
    return SessionRecord(**{**values, **fields})


def test_the_session_object_shows_the_record() -> None:
    out = session_object(record(), "idle", T0 + timedelta(seconds=90))
    assert out == {
        "type": "session",
        "id": "sesn_01",
        "status": "idle",
        "title": "demo",
        "environment_id": "env_01",
        "agent": {
            "type": "agent",
            "id": "agent_01",
            "version": 2,
            "name": "Demo",
            "model": {"id": "claude-x"},
            "system": "Be brief.",
            "tools": [],
        },
        "resources": [],
        "vault_ids": [],
        "metadata": {"k": "v"},
        "budget": {"type": "limit", "max_list_cost": {"amount": "2500", "currency": "USD"}},
        "outcome_evaluations": [],
        "stats": {"active_seconds": 1.235, "duration_seconds": 90.0},
        "usage": {
            "input_tokens": 10,
            "output_tokens": 20,
            "cache_read_input_tokens": 30,
            "cache_creation": {"ephemeral_5m_input_tokens": 40, "ephemeral_1h_input_tokens": 0},
            "server_tool_use": {"web_search_requests": 0, "web_fetch_requests": 0},
            "list_cost": {"amount": "12", "currency": "USD"},
            "active_seconds": 1.235,
        },
        "deployment_id": None,
        "created_at": "2026-12-02T02:00:00Z",
        "updated_at": "2026-12-02T02:00:05Z",
        "archived_at": None,
    }


def test_a_session_without_http_fields_or_an_agent_still_has_every_field() -> None:
    archived = T0 + timedelta(hours=1)
    out = session_object(record(api=None, options={}, archived_at=archived), "terminated", T0 - timedelta(seconds=3))
    assert (out["title"], out["environment_id"], out["agent"], out["metadata"], out["budget"]) == (
        None,
        None,
        None,
        {},
        None,
    )
    assert out["archived_at"] == "2026-12-02T03:00:00Z" and out["status"] == "terminated"
    assert out["stats"]["duration_seconds"] == 0.0  # a clock behind the record is not a negative duration
    assert out["vault_ids"] == []


def test_the_session_object_shows_the_vaults_it_was_made_with() -> None:
    api: dict[str, Any] = {"title": None, "metadata": {}, "environment_id": "env_01", "vault_ids": ["vlt_b", "vlt_a"]}
    assert session_object(record(api=api), "idle", T0)["vault_ids"] == ["vlt_b", "vlt_a"]


def test_the_agent_snapshot_is_the_pinned_version_without_timestamps() -> None:
    assert agent_snapshot(None) is None
    assert agent_snapshot({"name": "no id"}) is None
    assert agent_snapshot("agent_01") is None
    snapshot = agent_snapshot(PINNED)
    assert snapshot is not None and "created_at" not in snapshot and "archived_at" not in snapshot
    assert snapshot["type"] == "agent" and snapshot["version"] == 2
    assert agent_snapshot({"id": "agent_01"}) == {"type": "agent", "id": "agent_01", "version": None}


def test_a_budget_object_round_trips_through_the_parser() -> None:
    assert budget_object(None) is None
    shown = budget_object(2500)
    assert shown == {"type": "limit", "max_list_cost": {"amount": "2500", "currency": "USD"}}
    assert parse_create(create(budget=shown)).budget_cents == 2500
