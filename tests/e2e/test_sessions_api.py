"""Managed Agents sessions and events driven by the unmodified official ``anthropic`` 2.10.0 client
against the service as a process: the §11 sequence (agent → environment → session → stream → send
→ idle), the list and the stream agreeing, custom tools, approvals allowed and denied, interrupt,
a budget reached, a background run read later, the errors, tenancy, the async client, and the two
views (HTTP and WebSocket) of one session. Only the model is scripted."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from ma_client import ACME, ASK_BASH, GLOBEX, KEYS, TOOLSET, client, code, say, text, until
from moorage.testing.scripted_model import ScriptedModelServer
from support import Client, Service, result_of, run_service, scaled

WEATHER: Any = {
    "type": "custom",
    "name": "weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
# Every model request costs about $1.80 here, so a 1-cent budget is spent by the first one.
PRICES = json.dumps({"pricey": {"input": 100_000.0, "output": 100_000.0, "cache_read": 0.0, "cache_creation": 0.0}})


@pytest.fixture(scope="module")
def svc(model: ScriptedModelServer) -> Iterator[Service]:
    with run_service(
        model.url,
        MOORAGE_API_KEYS=KEYS,
        MOORAGE_ALLOW_UNRESTRICTED_NETWORK="true",
        MOORAGE_PRICES=PRICES,
        MOORAGE_MAX_TURNS="5",
    ) as service:
        yield service


def setup(api: anthropic.Anthropic, *tools: Any, name: str = "Demo") -> tuple[str, str]:
    # The scripted model acts only for a CLI that has Bash (else it takes the call for a side request).
    toolset = [] if any(t["type"] == "agent_toolset_20260401" for t in tools) else [TOOLSET]
    agent = api.beta.agents.create(name=name, model="claude-opus-5", tools=[*toolset, *tools])
    env = api.beta.environments.create(name=f"{name}-{time.monotonic_ns()}")
    return agent.id, env.id


def test_the_official_example_runs_unchanged(svc: Service) -> None:
    """§11 of the shared doc, as a user would write it: the stream is opened first, the message
    sent, the loop ends at idle; the list (auto-paginated) holds the same events with the same ids."""
    api = client(svc)
    agent = api.beta.agents.create(
        name="Demo", model="claude-opus-5", system="Be brief.", tools=[{"type": "agent_toolset_20260401"}]
    )
    env = api.beta.environments.create(
        name="demo-env", config={"type": "cloud", "networking": {"type": "unrestricted"}}
    )
    session = api.beta.sessions.create(agent=agent.id, environment_id=env.id, title="demo")
    assert session.status in ("idle", "rescheduling") and session.title == "demo"
    assert session.agent.id == agent.id and session.agent.version == 1 and session.environment_id == env.id

    streamed: list[Any] = []
    with api.beta.sessions.events.stream(session.id) as stream:
        sent = api.beta.sessions.events.send(session.id, events=[say("bash echo report")])
        for ev in stream:
            streamed.append(ev)
            if ev.type == "session.status_idle":
                break
    types = [e.type for e in streamed]
    assert sent.data is not None and types[0] == "user.message" and streamed[0].id == sent.data[0].id
    assert types[1] == "session.status_running"
    assert "agent.tool_use" in types and "agent.tool_result" in types
    use = next(e for e in streamed if e.type == "agent.tool_use")
    result = next(e for e in streamed if e.type == "agent.tool_result")
    assert use.name == "bash" and result.tool_use_id == use.id
    assert text(next(e for e in streamed if e.type == "agent.message")) == "tool said: report"
    assert streamed[-1].stop_reason.type == "end_turn"

    history = list(api.beta.sessions.events.list(session.id, limit=3))  # follows next_page
    assert [e.id for e in history] == [e.id for e in streamed]
    assert [e.to_dict() for e in history] == [e.to_dict() for e in streamed]

    done = api.beta.sessions.retrieve(session.id)
    assert done.status == "idle"
    assert done.usage.input_tokens and done.usage.output_tokens and (done.stats.duration_seconds or 0) > 0


def test_a_custom_tool_round_trip(svc: Service) -> None:
    """The agent calls a client tool: idle with ``requires_action`` naming the call, the client's
    result resumes the turn, the model hears it."""
    api = client(svc)
    agent_id, env_id = setup(api, WEATHER, name="Weather")
    session = api.beta.sessions.create(agent=agent_id, environment_id=env_id)
    with api.beta.sessions.events.stream(session.id) as stream:
        api.beta.sessions.events.send(session.id, events=[say('tool mcp__client__weather {"city": "Oslo"}')])
        events = until(stream, "session.status_idle")
        call = next(e for e in events if e.type == "agent.custom_tool_use")
        assert call.name == "weather" and call.input == {"city": "Oslo"}
        assert events[-1].stop_reason.type == "requires_action" and events[-1].stop_reason.event_ids == [call.id]
        api.beta.sessions.events.send(
            session.id,
            events=[
                {
                    "type": "user.custom_tool_result",
                    "custom_tool_use_id": call.id,
                    "content": [{"type": "text", "text": "9C"}],
                }
            ],
        )
        events = until(stream, "session.status_idle")
    assert events[0].type == "user.custom_tool_result" and events[0].custom_tool_use_id == call.id
    assert text(next(e for e in events if e.type == "agent.message")) == "tool said: 9C"
    assert events[-1].stop_reason.type == "end_turn"
    with pytest.raises(anthropic.ConflictError) as stale:  # answered already
        api.beta.sessions.events.send(
            session.id, events=[{"type": "user.custom_tool_result", "custom_tool_use_id": call.id, "content": []}]
        )
    assert code(stale.value) == "request_not_pending" and stale.value.response.headers["x-should-retry"] == "false"


def test_an_approval_allowed_and_one_denied(svc: Service) -> None:
    """Bash ``always_ask``: the tool_use says so, the session waits; allowed it runs, denied the
    model hears the reason."""
    api = client(svc)
    agent_id, env_id = setup(api, ASK_BASH, name="Asker")
    session = api.beta.sessions.create(agent=agent_id, environment_id=env_id)
    with api.beta.sessions.events.stream(session.id) as stream:
        api.beta.sessions.events.send(session.id, events=[say("bash echo allowed")])
        events = until(stream, "session.status_idle")
        use = next(e for e in events if e.type == "agent.tool_use")
        assert use.evaluated_permission == "ask" and events[-1].stop_reason.event_ids == [use.id]
        api.beta.sessions.events.send(
            session.id, events=[{"type": "user.tool_confirmation", "tool_use_id": use.id, "result": "allow"}]
        )
        events = until(stream, "session.status_idle")
        assert text(next(e for e in events if e.type == "agent.message")) == "tool said: allowed"

        api.beta.sessions.events.send(session.id, events=[say("bash echo denied")])
        events = until(stream, "session.status_idle")
        use = next(e for e in events if e.type == "agent.tool_use")
        api.beta.sessions.events.send(
            session.id,
            events=[
                {"type": "user.tool_confirmation", "tool_use_id": use.id, "result": "deny", "deny_message": "not now"}
            ],
        )
        events = until(stream, "session.status_idle")
    confirmation = events[0]
    assert confirmation.type == "user.tool_confirmation" and confirmation.result == "deny"
    assert confirmation.deny_message == "not now"
    result = next(e for e in events if e.type == "agent.tool_result")
    assert result.is_error and "not now" in json.dumps([b.to_dict() for b in result.content])
    assert events[-1].stop_reason.type == "end_turn"


def test_interrupt_ends_the_running_turn(svc: Service) -> None:
    """A long turn, interrupted: the stream ends it at idle (``end_turn``) without the model's
    answer; an interrupt with nothing running is accepted and changes nothing."""
    api = client(svc)
    agent_id, env_id = setup(api, name="Sleeper")
    session = api.beta.sessions.create(agent=agent_id, environment_id=env_id)
    with api.beta.sessions.events.stream(session.id) as stream:
        api.beta.sessions.events.send(session.id, events=[say("sleep 20")])
        until(stream, "session.status_running")
        echo = api.beta.sessions.events.send(session.id, events=[{"type": "user.interrupt"}])
        assert echo.data is not None and echo.data[0].type == "user.interrupt"
        events = until(stream, "session.status_idle", timeout=30)
    assert events[-1].stop_reason.type == "end_turn"
    assert not [e for e in events if e.type == "agent.message" and text(e) == "slept"]  # cut short
    api.beta.sessions.events.send(session.id, events=[{"type": "user.interrupt"}])  # idle: a no-op


def test_a_budget_reached_stops_the_session(svc: Service) -> None:
    """``budget.max_list_cost`` is enforced at the model proxy: the first request spends it, the
    next is refused, the turn ends ``budget_reached``, and the usage shows the cost."""
    api = client(svc)
    agent_id, env_id = setup(api, name="Spender")
    budget: Any = {"type": "limit", "max_list_cost": {"amount": "1", "currency": "USD"}}
    session = api.beta.sessions.create(agent=agent_id, environment_id=env_id, budget=budget)
    assert session.budget is not None and session.budget.max_list_cost.amount == "1"
    with api.beta.sessions.events.stream(session.id) as stream:
        api.beta.sessions.events.send(session.id, events=[say("bash echo spend")])
        events = until(stream, "session.status_idle")
    assert events[-1].stop_reason.type == "budget_reached"
    spent = api.beta.sessions.retrieve(session.id)
    assert spent.usage.list_cost is not None and int(spent.usage.list_cost.amount) >= 1
    with pytest.raises(anthropic.APIStatusError) as refused:
        api.beta.sessions.events.send(session.id, events=[say("again")])
    assert refused.value.status_code == 402 and code(refused.value) == "budget_exceeded"


def test_a_background_run_is_read_later(svc: Service) -> None:
    """``initial_events``: the session works with no client attached; its answer is in the list."""
    api = client(svc)
    agent_id, env_id = setup(api, name="Background")
    session = api.beta.sessions.create(
        agent=agent_id, environment_id=env_id, initial_events=[say("say done in the background")]
    )
    deadline = time.monotonic() + scaled(60)
    while (status := api.beta.sessions.retrieve(session.id).status) != "idle":
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    history = list(api.beta.sessions.events.list(session.id))
    assert [e.type for e in history][:2] == ["user.message", "session.status_running"]
    assert text(next(e for e in history if e.type == "agent.message")) == "done in the background"
    assert history[-1].type == "session.status_idle" and history[-1].stop_reason.type == "end_turn"
    messages = list(api.beta.sessions.events.list(session.id, types=["agent.message"], order="desc"))
    assert [e.type for e in messages] == ["agent.message"]


def test_sessions_are_listed_updated_archived_and_deleted(svc: Service) -> None:
    """List with filters and ``page`` cursors, update (title, metadata patch), archive (read-only),
    delete (gone, 404 after)."""
    api = client(svc, token=GLOBEX)
    agent_id, env_id = setup(api, name="Lister")
    made = [api.beta.sessions.create(agent=agent_id, environment_id=env_id, title=f"s{i}") for i in range(3)]
    listed = list(api.beta.sessions.list(agent_id=agent_id, limit=2))
    assert [s.id for s in listed] == [s.id for s in reversed(made)]
    first = made[0]
    changed = api.beta.sessions.update(first.id, title="renamed", metadata={"k": "v"})
    assert changed.title == "renamed" and changed.metadata == {"k": "v"}
    assert api.beta.sessions.update(first.id, metadata={"k": None}).metadata == {}
    archived = api.beta.sessions.archive(first.id)
    assert archived.archived_at is not None
    assert first.id not in {s.id for s in api.beta.sessions.list(agent_id=agent_id)}
    assert first.id in {s.id for s in api.beta.sessions.list(agent_id=agent_id, include_archived=True)}
    with pytest.raises(anthropic.BadRequestError) as read_only:
        api.beta.sessions.events.send(first.id, events=[say("hello")])
    assert code(read_only.value) == "session_archived"
    deleted = api.beta.sessions.delete(made[1].id)
    assert deleted.id == made[1].id and deleted.type == "session_deleted"
    with pytest.raises(anthropic.NotFoundError):
        api.beta.sessions.retrieve(made[1].id)


def test_errors_raise_the_clients_typed_exceptions(svc: Service) -> None:
    """Unknown session and another tenant's: 404; a bad body: 400 naming the field; a feature not
    built here: 501, not retried."""
    api = client(svc)
    agent_id, env_id = setup(api, name="Errors")
    mine = api.beta.sessions.create(agent=agent_id, environment_id=env_id)
    other = client(svc, token=GLOBEX)
    for call in (
        lambda: other.beta.sessions.retrieve(mine.id),
        lambda: other.beta.sessions.events.list(mine.id),
        lambda: other.beta.sessions.events.send(mine.id, events=[say("hi")]),
        lambda: api.beta.sessions.retrieve("00000000-0000-0000-0000-000000000000"),
        lambda: api.beta.sessions.retrieve("sesn_nope"),
    ):
        with pytest.raises(anthropic.NotFoundError) as missing:
            call()
        assert code(missing.value) == "session_not_found"
    with pytest.raises(anthropic.NotFoundError) as no_stream, other.beta.sessions.events.stream(mine.id):
        pass
    assert code(no_stream.value) == "session_not_found"
    with pytest.raises(anthropic.BadRequestError) as bad:
        not_blocks: Any = {"type": "user.message", "content": "not blocks"}
        api.beta.sessions.events.send(mine.id, events=[not_blocks])
    assert code(bad.value) == "invalid_request" and "content" in bad.value.message
    with pytest.raises(anthropic.NotFoundError) as no_env:
        api.beta.sessions.create(agent=agent_id, environment_id="env_nope")
    assert code(no_env.value) == "environment_not_found"
    with pytest.raises(anthropic.NotFoundError) as vaults:
        api.beta.sessions.create(agent=agent_id, environment_id=env_id, vault_ids=["vlt_1"])
    assert code(vaults.value) == "vault_not_found"
    with pytest.raises(anthropic.APIStatusError) as later:
        api.beta.sessions.update(mine.id, vault_ids=[])
    assert later.value.status_code == 501 and code(later.value) == "not_supported"
    assert later.value.response.request.headers.get("x-stainless-retry-count") == "0"


def test_the_async_client_streams_and_sends(svc: Service) -> None:
    """``AsyncAnthropic``: the same loop."""

    async def run() -> list[str]:
        async with anthropic.AsyncAnthropic(base_url=svc.url, api_key=ACME) as api:
            agent = await api.beta.agents.create(name="Async", model="claude-opus-5", tools=[TOOLSET])
            env = await api.beta.environments.create(name=f"async-{time.monotonic_ns()}")
            session = await api.beta.sessions.create(agent=agent.id, environment_id=env.id)
            seen: list[str] = []
            async with asyncio.timeout(scaled(60)):
                async with await api.beta.sessions.events.stream(session.id) as stream:
                    await api.beta.sessions.events.send(session.id, events=[say("say async hello")])
                    async for ev in stream:
                        if ev.type == "agent.message":
                            seen.append(text(ev))
                        if ev.type == "session.status_idle":
                            break
            return seen

    assert asyncio.run(run()) == ["async hello"]


async def test_one_session_two_views(svc: Service) -> None:
    """A session made over HTTP is attached over the WebSocket (and replays its log), and a
    WebSocket session's turn is in the HTTP list."""
    api = client(svc)
    agent_id, env_id = setup(api, name="Views")
    session = await asyncio.to_thread(
        api.beta.sessions.create, agent=agent_id, environment_id=env_id, initial_events=[say("say from http")]
    )
    ws = await Client.connect(svc, session.id, token=ACME, query="?after=0")
    assert ws.session_id == session.id
    assert result_of(await ws.until("result"))["result"] == "from http"
    await ws.say("say from the socket")
    assert result_of(await ws.until("result"))["result"] == "from the socket"
    await ws.close()
    history = await asyncio.to_thread(lambda: list(api.beta.sessions.events.list(session.id, types=["agent.message"])))
    assert [text(e) for e in history] == ["from http", "from the socket"]


def test_previews_come_before_the_message_they_preview(model: ScriptedModelServer) -> None:
    """``event_deltas[]=agent.message`` with ``MOORAGE_STREAM_DELTAS`` on: ``event_start`` and
    ``event_delta`` name the id of the ``agent.message`` that follows and concludes them; a stream
    that did not ask gets none."""
    with run_service(model.url, MOORAGE_API_KEYS=KEYS, MOORAGE_STREAM_DELTAS="true") as deltas:
        api = client(deltas)
        agent_id, env_id = setup(api, name="Previews")
        session = api.beta.sessions.create(agent=agent_id, environment_id=env_id)
        with (
            api.beta.sessions.events.stream(session.id, event_deltas=["agent.message"]) as previewed,
            api.beta.sessions.events.stream(session.id) as plain,
        ):
            api.beta.sessions.events.send(session.id, events=[say("say previewed words")])
            events = until(previewed, "session.status_idle")
            plain_types = [e.type for e in until(plain, "session.status_idle")]
    start = next(i for i, e in enumerate(events) if e.type == "event_start")
    message = next(i for i, e in enumerate(events) if e.type == "agent.message")
    assert start < message and events[start].event.id == events[message].id
    deltas_text = "".join(e.delta.content.text for e in events[start:message] if e.type == "event_delta")
    assert deltas_text == "previewed words" == text(events[message])
    assert "event_start" not in plain_types and "event_delta" not in plain_types
