"""Approvals and client-executed custom tools end to end: the real CLI asks
through the runner's ``can_use_tool`` and in-process MCP server, real
clients answer over the WebSocket; only the model is scripted."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from moorage.testing.scripted_model import ScriptedModelServer
from support import Client, Service, result_of, run_service, scaled

WEATHER = {
    "name": "weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
AGENT = {"ask_tools": ["Bash"], "custom_tools": [WEATHER]}
TIMEOUT_S = 4.0  # unscaled: how long a request waits for a client


@pytest.fixture(scope="module")
def asking(model: ScriptedModelServer) -> Iterator[Service]:
    """A service whose default agent asks before Bash and has a client tool."""
    with run_service(
        model.url,
        MOORAGE_DEFAULT_AGENT=json.dumps(AGENT),
        MOORAGE_PERMISSION_TIMEOUT_S=str(scaled(TIMEOUT_S)),
    ) as svc:
        yield svc


def of_type(frames: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [f for f in frames if f.get("type") == kind]


async def ask(client: Client, command: str) -> dict[str, Any]:
    """Send a Bash turn; the permission request it waits on (no result before it)."""
    await client.say(f"bash {command}")
    frames = await client.until("permission_request", "result", "error")
    request = frames[-1]
    assert request["type"] == "permission_request", frames
    assert request["tool"] == "Bash" and request["input"]["command"] == command
    # Its id is the model's tool_use id (agent.tool_use <-> user.tool_confirmation).
    calls = [b for f in of_type(frames, "assistant") for b in f["message"]["content"] if b["type"] == "tool_use"]
    assert calls[-1]["id"] == request["id"]
    return request


async def test_always_ask_bash_runs_only_when_allowed(asking: Service) -> None:
    """Allowed: the command runs. Denied: it does not (no side effect), the
    model hears the reason, and a second answer is stale."""
    client = await Client.connect(asking)
    allowed = await ask(client, "touch /workspace/allowed && echo made")
    # Still waiting: the session answers other frames, and no result comes first.
    await client.send({"type": "ping", "id": 1})
    assert await client.recv() == {"type": "pong", "id": 1}
    await client.send({"type": "permission_response", "id": allowed["id"], "behavior": "allow"})
    frames = await client.until("result")
    (answer,) = of_type(frames, "permission_response")
    assert answer == {
        "type": "permission_response",
        "id": allowed["id"],
        "behavior": "allow",
        "message": "",
        "source": "client",
    }
    assert result_of(frames)["result"] == "tool said: made"

    denied = await ask(client, "touch /workspace/denied && echo made")
    await client.send({"type": "permission_response", "id": denied["id"], "behavior": "deny", "message": "not today"})
    frames = await client.until("result")
    assert of_type(frames, "permission_response")[0]["behavior"] == "deny"
    assert "not today" in result_of(frames)["result"]
    await client.send({"type": "permission_response", "id": denied["id"], "behavior": "allow"})
    stale = await client.recv()
    assert stale["type"] == "error" and stale["code"] == "request_not_pending" and stale["fatal"] is False

    listing = await ask(client, "ls /workspace")
    await client.send({"type": "permission_response", "id": listing["id"], "behavior": "allow"})
    files = result_of(await client.until("result"))["result"].split()
    assert "allowed" in files and "denied" not in files
    await client.close()


async def test_a_pending_request_survives_a_disconnect_and_any_client_may_answer(asking: Service) -> None:
    first = await Client.connect(asking)
    request = await ask(first, "echo answered-later")
    await first.close()
    second = await Client.connect(asking, first.session_id)
    assert second.first["state"] == "attached"
    replayed = (await second.until("permission_request"))[-1]
    assert replayed == request
    await second.send({"type": "permission_response", "id": request["id"], "behavior": "allow"})
    assert result_of(await second.until("result"))["result"] == "tool said: answered-later"
    await second.close()


async def test_an_unanswered_request_is_denied_after_the_timeout(asking: Service) -> None:
    client = await Client.connect(asking)
    request = await ask(client, "touch /workspace/late && echo made")
    frames = await client.until("result", timeout=TIMEOUT_S + 60)
    (denial,) = of_type(frames, "permission_response")
    assert denial["id"] == request["id"] and denial["behavior"] == "deny" and denial["source"] == "timeout"
    assert "no client answered" in denial["message"]
    assert "no client answered" in result_of(frames)["result"]
    await client.close()


async def test_interrupt_denies_a_pending_request(asking: Service) -> None:
    client = await Client.connect(asking)
    request = await ask(client, "touch /workspace/interrupted")
    await client.send({"type": "interrupt"})
    frames = await client.until("result")
    (denial,) = of_type(frames, "permission_response")
    assert denial["id"] == request["id"] and denial["source"] == "interrupted"
    await client.close()


async def test_a_custom_tool_round_trips_through_a_client(asking: Service, model: ScriptedModelServer) -> None:
    """The model calls the agent's custom tool; a client runs it; the model's
    next request carries exactly the result the client gave."""
    client = await Client.connect(asking)
    await client.say('tool mcp__client__weather {"city": "Oslo"}')
    call = (await client.until("custom_tool_use"))[-1]
    assert call["name"] == "weather" and call["input"] == {"city": "Oslo"} and call["id"]
    result = {"type": "custom_tool_result", "id": call["id"], "content": [{"type": "text", "text": "22C and sunny"}]}
    await client.send(result)
    frames = await client.until("result")
    assert of_type(frames, "custom_tool_result")[0]["content"] == result["content"]
    assert result_of(frames)["result"] == "tool said: 22C and sunny"
    tool_results = [
        block
        for body in model.model.requests
        for message in body.get("messages", [])
        if isinstance(message.get("content"), list)
        for block in message["content"]
        if isinstance(block, dict) and block.get("type") == "tool_result"
    ]
    assert any("22C and sunny" in json.dumps(block) for block in tool_results)
    await client.send(result)  # answered already
    assert (await client.recv())["code"] == "request_not_pending"
    await client.close()
