"""Managed Agents sessions, without I/O: the request bodies of ``/v1/sessions`` and
``POST /v1/sessions/{id}/events`` parsed into types, and the session object (§5.2 of
../shared/MANAGED_AGENTS.md) built from a stored record.

Every body is checked before anything happens: a field Moorage cannot honour is refused with a
stable code, never silently ignored (``not_supported`` 501 for a feature not built here —
repository and memory-store resources, outcomes, agent overrides, file-sourced blocks, a
session's ``vault_ids`` changed after create; ``invalid_request`` 400 for a
malformed body). Client events become the WebSocket's client frames (docs/protocol.md) through
the WebSocket's own parser, so the two views accept exactly the same messages and answers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from moorage_session_store import SessionRecord

from .bodies import MAX_NAME, as_list, as_object, fail, metadata, only, patch_metadata, text
from .errors import Code, MoorageError
from .ma_events import timestamp
from .protocol import (
    CustomToolResultFrame,
    PermissionResponseFrame,
    UserFrame,
    parse_client_frame,
)
from .resources import FileResource, parse_resources, resources_of
from .vaults import vault_ids as parse_vault_ids

Json = dict[str, Any]
Status = Literal["idle", "running", "rescheduling", "terminated"]

MAX_INITIAL_EVENTS = 50  # §5.1
MAX_EVENTS_PER_SEND = 50
MAX_TITLE = MAX_NAME
#: The highest budget a session may ask for: $1,000,000 (in cents).
MAX_BUDGET_CENTS = 100_000_000
_CREATE_FIELDS = frozenset(
    {"agent", "environment_id", "title", "metadata", "budget", "initial_events", "resources", "vault_ids"}
)
_UPDATE_FIELDS = frozenset({"title", "metadata", "budget", "agent", "vault_ids"})


def unsupported(what: str) -> MoorageError:
    return MoorageError(f"{what} is not supported by this server", code=Code.NOT_SUPPORTED)


# -- create / update ------------------------------------------------------------


@dataclass(frozen=True)
class AgentRef:
    id: str
    version: int | None = None  # None: the latest


@dataclass(frozen=True)
class SessionCreate:
    agent: AgentRef
    environment_id: str
    title: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    budget_cents: int | None = None
    initial_events: tuple[UserFrame, ...] = ()
    resources: tuple[FileResource, ...] = ()
    vault_ids: tuple[str, ...] = ()  # checked against the store by sessions_api

    def api_fields(self, resources: list[Json] | None = None) -> Json:
        """What the record's ``api`` column keeps (``resources``: as ``resources.stored`` made them;
        ``vault_ids`` too: a rehydration uses them)."""
        return {
            "title": self.title,
            "metadata": self.metadata,
            "environment_id": self.environment_id,
            "budget_cents": self.budget_cents,
            "resources": resources or [],
            "vault_ids": list(self.vault_ids),
        }


def parse_create(body: object) -> SessionCreate:
    obj = as_object(body, "the request body")
    only(obj, _CREATE_FIELDS, "session")
    resources = parse_resources(obj.get("resources"))
    env = obj.get("environment_id")
    if not isinstance(env, str) or not env:
        raise fail("environment_id is required")
    events = as_list(obj.get("initial_events"), "initial_events")
    if len(events) > MAX_INITIAL_EVENTS:
        raise fail(f"initial_events: at most {MAX_INITIAL_EVENTS}")
    messages: list[UserFrame] = []
    for i, item in enumerate(events):
        event = as_object(item, f"initial_events[{i}]")
        if event.get("type") == "user.define_outcome":
            raise unsupported("user.define_outcome (outcomes)")
        if event.get("type") != "user.message":
            raise fail(f"initial_events[{i}]: only user.message events start a session")
        messages.append(user_message(event, f"initial_events[{i}]"))
    return SessionCreate(
        agent=_agent_ref(obj.get("agent")),
        environment_id=env,
        title=text(obj.get("title"), "title", MAX_TITLE),
        metadata=metadata(obj.get("metadata")),
        budget_cents=_budget(obj.get("budget")),
        initial_events=tuple(messages),
        resources=resources,
        vault_ids=parse_vault_ids(obj.get("vault_ids")),
    )


def _agent_ref(value: object) -> AgentRef:
    if isinstance(value, str) and value:
        return AgentRef(value)
    ref = as_object(value, "agent")
    kind = ref.get("type")
    if kind == "agent_with_overrides":
        raise unsupported("agent_with_overrides (make a new agent version instead)")
    if kind != "agent":
        raise fail("agent must be an agent id or {type: agent, id, version?}")
    only(ref, {"type", "id", "version"}, "agent")
    ident = ref.get("id")
    if not isinstance(ident, str) or not ident:
        raise fail("agent.id is required")
    version = ref.get("version")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 1):
        raise fail("agent.version must be a positive integer")
    return AgentRef(ident, version)


def _budget(value: object) -> int | None:
    if value is None:
        return None
    budget = as_object(value, "budget")
    only(budget, {"type", "max_list_cost"}, "budget")
    if budget.get("type") != "limit":
        raise fail("budget.type must be 'limit'")
    cost = as_object(budget.get("max_list_cost"), "budget.max_list_cost")
    only(cost, {"amount", "currency"}, "budget.max_list_cost")
    if cost.get("currency", "USD") != "USD":
        raise fail("budget.max_list_cost.currency must be 'USD'")
    amount = cost.get("amount")
    cents = 0
    if isinstance(amount, int) and not isinstance(amount, bool):
        cents = amount
    # ASCII digits only, and short: int() refuses some strings isdigit() takes ("²") and very long ones.
    elif isinstance(amount, str) and amount.isascii() and amount.isdigit() and len(amount) <= 12:
        cents = int(amount)
    if not 0 < cents <= MAX_BUDGET_CENTS:
        raise fail(f"budget.max_list_cost.amount must be whole US cents as a string, 1 to {MAX_BUDGET_CENTS}")
    return cents


def budget_object(cents: int | None) -> Json | None:
    if cents is None:
        return None
    return {"type": "limit", "max_list_cost": {"amount": str(cents), "currency": "USD"}}


def apply_update(api: Mapping[str, Any], body: object) -> Json:
    """The record's ``api`` fields after the update ``body`` (§5.3)."""
    obj = as_object(body, "the request body")
    only(obj, _UPDATE_FIELDS, "session update")
    if "vault_ids" in obj:
        raise unsupported("changing a session's vault_ids (they are set at create)")
    if obj.get("agent") is not None:
        raise unsupported("changing a session's agent (start a new session)")
    out = dict(api)
    if "title" in obj:
        out["title"] = text(obj["title"], "title", MAX_TITLE)
    if "metadata" in obj:
        out["metadata"] = metadata(patch_metadata(api.get("metadata"), obj["metadata"]))
    if "budget" in obj:
        if obj["budget"] is not None and api.get("budget_cents") is None:
            raise fail("budget cannot be added to a session created without one")
        out["budget_cents"] = _budget(obj["budget"])
    return out


# -- client events ----------------------------------------------------------------


@dataclass(frozen=True)
class Interrupt:
    pass


@dataclass(frozen=True)
class Confirmation:
    """``user.tool_confirmation``: answers the ``agent.tool_use`` event ``event_id``."""

    event_id: str
    allow: bool
    deny_message: str = ""

    def frame(self, request_id: str) -> PermissionResponseFrame:
        return PermissionResponseFrame(request_id, "allow" if self.allow else "deny", self.deny_message)


@dataclass(frozen=True)
class CustomResult:
    """``user.custom_tool_result``: answers the ``agent.custom_tool_use`` event ``event_id``."""

    event_id: str
    body: Json  # the WebSocket frame without its id

    def frame(self, request_id: str) -> CustomToolResultFrame:
        parsed = _client_frame({**self.body, "id": request_id}, "user.custom_tool_result")
        assert isinstance(parsed, CustomToolResultFrame)
        return parsed


ClientEvent = UserFrame | Interrupt | Confirmation | CustomResult


def parse_send(body: object) -> list[ClientEvent]:
    """The ``events`` of ``POST /v1/sessions/{id}/events``, in order; all or nothing."""
    obj = as_object(body, "the request body")
    only(obj, {"events"}, "the request body")
    events = as_list(obj.get("events"), "events")
    if not events:
        raise fail("events must hold at least one event")
    if len(events) > MAX_EVENTS_PER_SEND:
        raise fail(f"events: at most {MAX_EVENTS_PER_SEND} per request")
    return [_client_event(as_object(item, f"events[{i}]"), f"events[{i}]") for i, item in enumerate(events)]


def _client_event(event: Json, where: str) -> ClientEvent:
    kind = event.get("type")
    if kind == "user.message":
        return user_message(event, where)
    if kind == "user.interrupt":
        only(event, {"type", "session_thread_id"}, where)
        _no_thread(event, where)
        return Interrupt()
    if kind == "user.tool_confirmation":
        only(event, {"type", "tool_use_id", "result", "deny_message", "session_thread_id"}, where)
        _no_thread(event, where)
        if event.get("result") not in ("allow", "deny"):
            raise fail(f"{where}.result must be 'allow' or 'deny'")
        message = text(event.get("deny_message"), f"{where}.deny_message", 4096) or ""
        return Confirmation(
            _event_ref(event.get("tool_use_id"), f"{where}.tool_use_id"), event["result"] == "allow", message
        )
    if kind == "user.custom_tool_result":
        only(event, {"type", "custom_tool_use_id", "content", "is_error", "session_thread_id"}, where)
        _no_thread(event, where)
        frame: Json = {"type": "custom_tool_result", "content": event.get("content") or []}
        if event.get("is_error") is not None:
            frame["is_error"] = event["is_error"]
        _client_frame({**frame, "id": "check"}, where)  # the content is checked now, not when answered
        return CustomResult(_event_ref(event.get("custom_tool_use_id"), f"{where}.custom_tool_use_id"), frame)
    if kind in ("user.define_outcome", "user.tool_result", "system.message"):
        raise unsupported(f"{kind} events")
    raise fail(f"{where}.type: unknown client event type {kind!r}")


def _no_thread(event: Json, where: str) -> None:
    """A thread id (multi-agent threads) is refused, not ignored: this server runs one thread."""
    if event.get("session_thread_id") is not None:
        raise unsupported(f"{where}.session_thread_id (threads)")


def _event_ref(value: object, where: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        raise fail(f"{where} must be the id of the event it answers")
    return value


def user_message(event: Json, where: str) -> UserFrame:
    only(event, {"type", "content"}, where)
    content = as_list(event.get("content"), f"{where}.content")
    if not content:
        raise fail(f"{where}.content must hold at least one block")
    for i, block in enumerate(content):
        source = block.get("source") if isinstance(block, dict) else None
        if isinstance(source, dict) and source.get("type") == "file":
            raise unsupported(f"{where}.content[{i}]: a file source (the Files API)")
        if isinstance(block, dict) and block.get("type") not in ("text", "image", "document"):
            raise fail(f"{where}.content[{i}].type must be text, image or document")
    frame = _client_frame({"type": "user", "message": {"role": "user", "content": content}}, where)
    assert isinstance(frame, UserFrame)
    return frame


def _client_frame(frame: Json, where: str) -> Any:
    """The WebSocket's parser decides (the same checks for both views); its error names ``where``."""
    try:
        return parse_client_frame(json.dumps(frame))
    except MoorageError as exc:
        raise fail(f"{where}: {exc.message}") from None


# -- the session object -----------------------------------------------------------


def session_object(record: SessionRecord, status: Status, now: datetime) -> Json:
    """§5.2 for one stored session."""
    api = record.api or {}
    usage = {
        "input_tokens": record.input_tokens,
        "output_tokens": record.output_tokens,
        "cache_read_input_tokens": record.cache_read_tokens,
        "cache_creation": {"ephemeral_5m_input_tokens": record.cache_creation_tokens, "ephemeral_1h_input_tokens": 0},
        "server_tool_use": {"web_search_requests": 0, "web_fetch_requests": 0},
        "list_cost": {"amount": str(round(record.cost_usd * 100)), "currency": "USD"},
        "active_seconds": round(record.active_seconds, 3),
    }
    return {
        "type": "session",
        "id": record.id,
        "status": status,
        "title": api.get("title"),
        "environment_id": api.get("environment_id"),
        "agent": agent_snapshot(record.options.get("agent")),
        "resources": resources_of(api),
        "vault_ids": session_vault_ids(api),
        "metadata": api.get("metadata") or {},
        "budget": budget_object(api.get("budget_cents")),
        "outcome_evaluations": [],
        "stats": {
            "active_seconds": round(record.active_seconds, 3),
            "duration_seconds": round(max(0.0, (now - record.created_at).total_seconds()), 3),
        },
        "usage": usage,
        "deployment_id": None,
        "created_at": timestamp(record.created_at),
        "updated_at": timestamp(record.updated_at),
        "archived_at": timestamp(record.archived_at) if record.archived_at is not None else None,
    }


def session_vault_ids(api: Mapping[str, Any] | None) -> list[str]:
    """The vaults a session was made with (its record's ``api``; none for a WebSocket session)."""
    ids = (api or {}).get("vault_ids") or []
    return [str(v) for v in ids] if isinstance(ids, list) else []


_SNAPSHOT_FIELDS = ("name", "description", "model", "system", "tools", "mcp_servers", "skills", "metadata")


def agent_snapshot(pinned: object) -> Json | None:
    """The session's agent as it runs (the pinned version, without timestamps); ``None`` for a
    session on the operator's default agent (a WebSocket session opened without ``agent=``)."""
    if not isinstance(pinned, dict) or "id" not in pinned:
        return None
    snapshot: Json = {"type": "agent", "id": pinned["id"], "version": pinned.get("version")}
    snapshot.update({key: pinned[key] for key in _SNAPSHOT_FIELDS if key in pinned})
    return snapshot
