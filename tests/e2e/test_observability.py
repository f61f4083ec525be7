"""Metrics, cost, budgets, health and logs, read from the running service
after real turns through real sandboxes."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

from moorage.testing.scripted_model import USAGE, ScriptedModelServer
from prometheus_client.parser import text_string_to_metric_families
from support import (
    REAL_KEY,
    Client,
    Cuttable,
    Service,
    events,
    http_status,
    pg_available,
    pg_database,
    result_of,
    run_service,
    wait_suspended,
    wait_until,
)

# The service's default price table, USD per million tokens, for claude-opus-*.
OPUS = {"input_tokens": 5.0, "output_tokens": 25.0, "cache_read_input_tokens": 0.5, "cache_creation_input_tokens": 6.25}


def scrape(svc: Service) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(svc.url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def test_metrics_count_tokens_and_cost_as_the_model_reported(model: ScriptedModelServer) -> None:
    """Tokens and proxy-metered cost in /metrics match exactly what the scripted model reported."""
    with run_service(model.url) as svc:
        before = scrape(svc)
        assert value(before, "moorage_turns_total", outcome="success") == 0, "series exist from start"
        assert value(before, "moorage_tokens_total", model="claude-opus", kind="input") == 0
        requests_before = len(model.model.requests)
        client = await Client.connect(svc)
        assert result_of(await client.turn("bash echo metered"))["subtype"] == "success"
        requests = len(model.model.requests) - requests_before
        after = scrape(svc)
        kinds = {
            "input": "input_tokens",
            "output": "output_tokens",
            "cache_read": "cache_read_input_tokens",
            "cache_creation": "cache_creation_input_tokens",
        }
        for kind, key in kinds.items():
            assert value(after, "moorage_tokens_total", model="claude-opus", kind=kind) == requests * USAGE[key]
        expected_cost = requests * sum(USAGE[k] * OPUS[k] for k in OPUS) / 1_000_000
        proxy_cost = value(after, "moorage_cost_usd_total", model="claude-opus", source="proxy")
        assert abs(proxy_cost - expected_cost) < 1e-12
        assert value(after, "moorage_cost_usd_total", model="claude-opus", source="sdk") > 0
        assert value(after, "moorage_turns_total", outcome="success") == 1
        assert value(after, "moorage_sessions_active", backend="local") == 1
        assert value(after, "moorage_ws_connections_active") == 1
        assert value(after, "moorage_ws_frames_total", direction="in") >= 1
        starts = [
            value(after, "moorage_sandbox_start_seconds_count", backend="local", pool=p) for p in ("warm", "cold")
        ]
        assert sum(starts) == 1
        assert value(after, "moorage_sandbox_seconds_total", backend="local") > 0
        await client.close()


async def test_idle_timeouts_and_max_turns_stops_are_counted(model: ScriptedModelServer) -> None:
    """A max-turns stop and an idle suspension each show up in their counters."""
    with run_service(model.url, MOORAGE_IDLE_TIMEOUT_S="1") as svc:
        client = await Client.connect(svc)
        assert result_of(await client.turn("loop"))["subtype"] == "error_max_turns"
        await client.close()
        await wait_suspended(svc, client.session_id)
        samples = scrape(svc)
        assert value(samples, "moorage_max_turns_exceeded_total") == 1
        assert value(samples, "moorage_turns_total", outcome="error_max_turns") == 1
        assert value(samples, "moorage_sandbox_idle_timeouts_total", backend="local") == 1
        assert value(samples, "moorage_session_idle_seconds_count") >= 1
        assert value(samples, "moorage_sessions_active", backend="local") == 0


async def test_session_budget_stops_model_requests_and_survives_rehydration(model: ScriptedModelServer) -> None:
    """Once a session's budget is spent the proxy refuses, the client gets budget_exceeded, even after rehydration."""
    with run_service(model.url, MOORAGE_MAX_BUDGET_USD="0.0001", MOORAGE_IDLE_TIMEOUT_S="1") as svc:
        client = await Client.connect(svc)
        frames = await client.turn("bash echo spend")
        result = result_of(frames)
        error = (await client.until("error", timeout=10))[-1]
        assert error["code"] == "budget_exceeded" and error["fatal"] is False
        assert result["is_error"] is True or result["subtype"] != "success"
        await client.say("say more")
        refused = await client.recv()
        assert refused["code"] == "budget_exceeded"
        assert value(scrape(svc), "moorage_budget_exceeded_total", scope="session") >= 1
        await client.close()
        await wait_suspended(svc, client.session_id)

        again = await Client.connect(svc, client.session_id)
        assert again.first["state"] == "rehydrated"
        await again.say("say after rehydration")
        assert (await again.until("error", timeout=60))[-1]["code"] == "budget_exceeded"
        await again.close()


async def test_logs_carry_session_context_and_never_the_key_or_a_prompt(model: ScriptedModelServer) -> None:
    """JSON logs name session, tenant and backend; no API key, prompt or model output ever appears."""
    with run_service(model.url) as svc:
        client = await Client.connect(svc)
        secret_prompt = "say the-launch-code-is-8675309"
        assert "8675309" in result_of(await client.turn(secret_prompt))["result"]
        await client.turn("bash echo tool-output-4242")
        await client.close()
        await asyncio.sleep(0)
        svc.proc.terminate()
        svc.proc.wait(30)
        logs = svc.logs()
        assert REAL_KEY not in logs
        assert "8675309" not in logs and "4242" not in logs
        ready = events(svc, "session_ready", client.session_id)
        assert ready and {"session_id", "tenant", "backend"} <= set(ready[0])
        wait_until(lambda: bool(events(svc, "session_ended", client.session_id)), 10, "the session summary line")
        ended = events(svc, "session_ended", client.session_id)[0]
        assert ended["turns"] == 2 and ended["input_tokens"] > 0 and ended["cost_usd"] > 0


async def test_readiness_follows_the_database() -> None:
    """/readyz is 200 with the database, 503 naming it without, 200 again once it is back; /healthz stays 200."""
    if not pg_available():
        import pytest

        pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432")
    proxy = Cuttable()
    proxy.restore()
    model = ScriptedModelServer().start()
    try:
        with (
            pg_database() as name,
            run_service(model.url, MOORAGE_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{proxy.port}/{name}") as svc,
        ):
            assert http_status(svc.url + "/readyz")[0] == 200
            proxy.cut()
            status, body = await asyncio.to_thread(http_status, svc.url + "/readyz")
            assert status == 503 and "database" in body["failed"]  # type: ignore[operator]
            assert http_status(svc.url + "/healthz")[0] == 200
            proxy.restore()
            await asyncio.to_thread(
                wait_until, lambda: http_status(svc.url + "/readyz")[0] == 200, 30, "readiness to come back"
            )
    finally:
        model.stop()


async def test_a_tenants_daily_budget_survives_a_restart(model: ScriptedModelServer) -> None:
    """What a tenant spent today is in the database: after a restart its new sessions are still refused."""
    budget = {"MOORAGE_TENANT_DAILY_BUDGET_USD": "0.0001"}
    with run_service(model.url, **budget) as svc:
        client = await Client.connect(svc)
        await client.turn("say spend it all")
        error = (await client.until("error", timeout=10))[-1]
        assert error["code"] == "budget_exceeded" and "daily" in error["message"]
        await client.close()
        state_dir = svc.state_dir
    with run_service(model.url, MOORAGE_STATE_DIR=str(state_dir), **budget) as again:
        fresh = await Client.connect(again)
        requests = len(model.model.requests)
        await fresh.say("say one more")
        refused = await fresh.recv()  # refused up front: no turn runs, no model request is made
        assert refused["type"] == "error" and refused["code"] == "budget_exceeded" and "daily" in refused["message"]
        assert len(model.model.requests) == requests
        assert value(scrape(again), "moorage_budget_exceeded_total", scope="tenant") >= 1
        await fresh.close()
