"""Started agents (pool.py, warm_plan.py): the service keeps sandboxes whose Claude Code CLI already
runs for the operator's default agent, and for an agent that was just used, so a new session of
that spec claims one instead of starting the CLI. Driven as a client would, over the WebSocket API
and the official client, against the service as a process with real sandboxes."""

from __future__ import annotations

import json
from pathlib import Path

import anthropic
from moorage.testing.scripted_model import ScriptedModelServer
from support import Client, Service, events, eventually, metric_value, result_of, run_service

ACME = "tok-acme-0123456789abcdef"


def ready_lines(svc: Service) -> dict[str, dict[str, object]]:
    """The service's ``session_ready`` log lines, by session id."""
    found = {}
    for line in svc.logs().splitlines():
        if '"session_ready"' in line:
            entry = json.loads(line)
            found[str(entry["session_id"])] = entry
    return found


def claims(svc: Service, result: str) -> float:
    return metric_value(svc, "moorage_warm_agent_claims_total", result=result)


async def test_new_sessions_claim_started_agents_each_its_own(service: Service) -> None:
    """The default spec's agent is started before anyone connects; a session claims it (its
    sandbox was ready before the connect: ``warm: started``) and takes its session id; the pool
    starts the next one, which a second session, open at the same time, claims: two sandboxes."""
    hits, misses = claims(service, "hit"), claims(service, "miss")  # the service is the suite's
    await eventually(lambda: metric_value(service, "moorage_warm_agents") >= 1, 60, "a started agent")
    opened: list[Client] = []
    try:
        opened.append(first := await Client.connect(service))
        assert result_of(await first.turn("say hi"))["subtype"] == "success"
        await eventually(lambda: metric_value(service, "moorage_warm_agents") >= 1, 60, "the pool's refill")
        opened.append(second := await Client.connect(service))
        assert result_of(await second.turn("say hi"))["subtype"] == "success"
        assert (claims(service, "hit") - hits, claims(service, "miss") - misses) == (2, 0)

        ready = ready_lines(service)
        one, two = ready[first.session_id], ready[second.session_id]
        assert one["warm"] == two["warm"] == "started"
        assert one["sandbox_id"] != two["sandbox_id"], "a started agent is claimed by one session only"
    finally:  # the suite's service: leave no connection to it behind
        for client in opened:
            await client.close()


async def test_an_agent_used_once_is_started_ahead_for_its_next_session(model: ScriptedModelServer) -> None:
    """A session of a stored agent misses (nothing was started for it); the pool then starts one
    with that agent's spec, and the next session of the agent claims it and runs the agent's
    prompt."""
    with run_service(model.url, MOORAGE_API_KEYS=f"acme:{ACME}", MOORAGE_DATABASE_URL="") as svc:
        with anthropic.Anthropic(base_url=svc.url, api_key=ACME) as api:
            agent = api.beta.agents.create(
                name="Heron",
                model="claude-opus-5",
                system="You are the heron agent.",
                tools=[{"type": "agent_toolset_20260401"}],
            )
        first = await Client.connect(svc, token=ACME, query=f"?agent={agent.id}")
        assert result_of(await first.turn("say heron-one"))["subtype"] == "success"
        assert claims(svc, "miss") == 1
        await first.close()
        await eventually(lambda: metric_value(svc, "moorage_warm_agents") >= 2, 60, "the agent's own started agent")

        second = await Client.connect(svc, token=ACME, query=f"?agent={agent.id}")
        assert result_of(await second.turn("say heron-two"))["subtype"] == "success"
        assert claims(svc, "hit") == 1
        assert ready_lines(svc)[second.session_id]["warm"] == "started"
        body = next(b for b in reversed(model.model.requests) if "heron-two" in str(b.get("messages")))
        assert "You are the heron agent." in json.dumps(body.get("system"))
        await second.close()


async def test_an_agent_the_operator_marked_is_started_before_its_first_session(
    model: ScriptedModelServer, tmp_path: Path
) -> None:
    """MOORAGE_WARM_AGENT_IDS (warm_marks.py): restarted with an agent marked, the service starts
    that agent's spec before any session of it came, and the first one claims it; an unknown mark
    is logged and skipped, never fatal."""
    state = tmp_path / "state"
    with (
        run_service(model.url, MOORAGE_API_KEYS=f"acme:{ACME}", MOORAGE_STATE_DIR=str(state)) as svc,
        anthropic.Anthropic(base_url=svc.url, api_key=ACME) as api,
    ):
        agent = api.beta.agents.create(name="Egret", model="claude-opus-5", tools=[{"type": "agent_toolset_20260401"}])
    marks = f"{agent.id}@acme,agent_nosuch@acme"
    with run_service(
        model.url, MOORAGE_API_KEYS=f"acme:{ACME}", MOORAGE_STATE_DIR=str(state), MOORAGE_WARM_AGENT_IDS=marks
    ) as svc:
        assert [e["agent_id"] for e in events(svc, "warm_agent_pinned")] == [agent.id]
        assert [(e["agent_id"], e["reason"]) for e in events(svc, "warm_agent_skipped")] == [
            ("agent_nosuch", "not_found")
        ]
        # The default spec's and the marked agent's: both started before anyone asks.
        await eventually(lambda: metric_value(svc, "moorage_warm_agents") >= 2, 60, "the marked agent's started agent")
        first = await Client.connect(svc, token=ACME, query=f"?agent={agent.id}")
        assert result_of(await first.turn("say egret"))["subtype"] == "success"
        assert claims(svc, "hit") == 1 and claims(svc, "miss") == 0
        assert ready_lines(svc)[first.session_id]["warm"] == "started"
        await first.close()
