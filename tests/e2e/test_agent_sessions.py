"""Sessions of an agent: ``WS /v1/sessions?agent=ID[&version=N]``. The agent's system prompt,
model and tool restrictions reach the real CLI (the scripted model sees its requests), the
session pins the version it started with through a kill -9 and rehydration, and an unknown,
foreign or archived agent is refused with a clear code."""

from __future__ import annotations

import signal
from typing import Any

import anthropic
from moorage.testing.scripted_model import ScriptedModelServer
from support import Client, Service, result_of, run_service, scaled

ACME = "tok-acme-0123456789abcdef"
GLOBEX = "tok-globex-0123456789abcdef"
KEYS = f"acme:{ACME},globex:{GLOBEX}"


def request_with(model: ScriptedModelServer, marker: str) -> dict[str, Any]:
    """The last model request (with tools: the main loop, not a side query) whose messages hold ``marker``."""
    for body in reversed(model.model.requests):
        if marker in str(body.get("messages")) and body.get("tools"):
            return dict(body)
    raise AssertionError(f"no model request carried {marker!r}")


def system_text(body: dict[str, Any]) -> str:
    system = body.get("system")
    if isinstance(system, list):
        return "\n".join(block.get("text", "") for block in system if isinstance(block, dict))
    return str(system or "")


def tool_names(body: dict[str, Any]) -> set[str]:
    return {tool.get("name", "") for tool in body.get("tools") or []}


async def open_refused(svc: Service, query: str, token: str = ACME) -> dict[str, Any]:
    client = await Client.connect(svc, token=token, query=query)
    await client.close()
    return client.first


async def test_an_agents_prompt_model_and_tool_limits_reach_the_cli_and_stay_pinned(model: ScriptedModelServer) -> None:
    """v1's system prompt is in ``system``, its disabled Bash is absent from ``tools``; after an
    update to v2, a kill -9 and a restart, the session still runs v1 while a new one runs v2."""
    with run_service(model.url, MOORAGE_API_KEYS=KEYS, MOORAGE_DATABASE_URL="") as first:
        with anthropic.Anthropic(base_url=first.url, api_key=ACME) as api:
            agent = api.beta.agents.create(
                name="Walrus",
                model="claude-opus-5",
                system="You are the walrus agent, version one.",
                tools=[{"type": "agent_toolset_20260401", "configs": [{"name": "bash", "enabled": False}]}],
            )
        client = await Client.connect(first, token=ACME, query=f"?agent={agent.id}")
        assert client.first["type"] == "session" and client.first["agent"] == {"id": agent.id, "version": 1}
        # (Without Bash the scripted model takes it for a side request and answers "ok".)
        assert result_of(await client.turn("say marker-v1-first"))["subtype"] == "success"
        body = request_with(model, "marker-v1-first")
        assert "You are the walrus agent, version one." in system_text(body)
        assert "Bash" not in tool_names(body) and "Read" in tool_names(body)
        assert body["model"] == "claude-opus-5"

        with anthropic.Anthropic(base_url=first.url, api_key=ACME) as api:
            api.beta.agents.update(agent.id, version=1, system="You are the walrus agent, version two.")
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(scaled(10))
        state_dir = first.state_dir

    with run_service(model.url, MOORAGE_API_KEYS=KEYS, MOORAGE_STATE_DIR=str(state_dir)) as second:
        again = await Client.connect(second, client.session_id, token=ACME)
        assert again.first["state"] == "rehydrated"
        assert result_of(await again.turn("say marker-v1-again"))["subtype"] == "success"
        pinned = request_with(model, "marker-v1-again")
        assert "version one" in system_text(pinned) and "version two" not in system_text(pinned)
        assert "Bash" not in tool_names(pinned)
        await again.close()

        fresh = await Client.connect(second, token=ACME, query=f"?agent={agent.id}")
        assert fresh.first["agent"] == {"id": agent.id, "version": 2}
        await fresh.turn("say marker-v2")
        assert "version two" in system_text(request_with(model, "marker-v2"))
        await fresh.close()

        old = await Client.connect(second, token=ACME, query=f"?agent={agent.id}&version=1")
        assert old.first["agent"] == {"id": agent.id, "version": 1}
        await old.close()


async def test_unknown_foreign_and_archived_agents_are_refused(model: ScriptedModelServer) -> None:
    """Each gets an error frame with a stable code and the socket closes; no session is made."""
    with run_service(model.url, MOORAGE_API_KEYS=KEYS) as svc:
        with anthropic.Anthropic(base_url=svc.url, api_key=ACME) as api:
            agent = api.beta.agents.create(name="Gone", model="claude-opus-5")
        unknown = await open_refused(svc, "?agent=agent_000000000000000000000000")
        assert unknown["type"] == "error" and unknown["code"] == "agent_not_found" and unknown["fatal"]
        foreign = await open_refused(svc, f"?agent={agent.id}", token=GLOBEX)
        assert foreign == {**unknown, "message": foreign["message"]} and agent.id in foreign["message"]
        missing_version = await open_refused(svc, f"?agent={agent.id}&version=9")
        assert missing_version["code"] == "agent_not_found"
        bad_version = await open_refused(svc, f"?agent={agent.id}&version=x")
        assert bad_version["code"] == "invalid_request"
        with anthropic.Anthropic(base_url=svc.url, api_key=ACME) as api:
            api.beta.agents.archive(agent.id)
        archived = await open_refused(svc, f"?agent={agent.id}")
        assert archived["code"] == "agent_archived" and "archived" in archived["message"]


async def test_a_stored_agents_always_ask_bash_and_custom_tool_reach_the_client(model: ScriptedModelServer) -> None:
    """An agent made through the API with Bash ``always_ask`` and a custom tool: the session
    asks before Bash and hands the custom tool's call to the client (agents.tool_policy)."""
    weather: Any = {
        "type": "custom",
        "name": "weather",
        "description": "The weather in a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    toolset: Any = {
        "type": "agent_toolset_20260401",
        "configs": [{"name": "bash", "permission_policy": {"type": "always_ask"}}],
    }
    with run_service(model.url, MOORAGE_API_KEYS=KEYS, MOORAGE_DATABASE_URL="") as svc:
        with anthropic.Anthropic(base_url=svc.url, api_key=ACME) as api:
            agent = api.beta.agents.create(name="Asker", model="claude-opus-5", tools=[toolset, weather])
        client = await Client.connect(svc, token=ACME, query=f"?agent={agent.id}")
        await client.say("bash echo asked-first")
        request = (await client.until("permission_request", "result"))[-1]
        assert request["type"] == "permission_request" and request["tool"] == "Bash"
        await client.send({"type": "permission_response", "id": request["id"], "behavior": "allow"})
        assert result_of(await client.until("result"))["result"] == "tool said: asked-first"

        await client.say('tool mcp__client__weather {"city": "Oslo"}')
        call = (await client.until("custom_tool_use", "result"))[-1]
        assert call["type"] == "custom_tool_use" and call["name"] == "weather"
        await client.send({"type": "custom_tool_result", "id": call["id"], "content": [{"type": "text", "text": "9C"}]})
        assert result_of(await client.until("result"))["result"] == "tool said: 9C"
        await client.close()
