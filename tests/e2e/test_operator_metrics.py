"""The operator's metrics read from /metrics of the service as a process, while real clients
make them move: HTTP API requests by route template and status class, an open SSE stream, a
turn queued behind one that waits for an approval in a real sandbox, and files per tenant."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator

import anthropic
import pytest
from ma_client import ACME, KEYS, client
from moorage.testing.scripted_model import ScriptedModelServer
from prometheus_client.parser import text_string_to_metric_families
from support import Client, Service, eventually, result_of, run_service, scaled

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def svc(model: ScriptedModelServer) -> Iterator[Service]:
    with run_service(
        model.url,
        MOORAGE_API_KEYS=KEYS,
        MOORAGE_WARM_SANDBOXES="0",
        MOORAGE_WARM_AGENTS="0",
        MOORAGE_DEFAULT_AGENT=json.dumps({"ask_tools": ["Bash"]}),
        MOORAGE_PERMISSION_TIMEOUT_S=str(scaled(120)),
    ) as service:
        yield service


def scrape(svc: Service) -> Samples:
    with urllib.request.urlopen(svc.url + "/metrics", timeout=scaled(5)) as r:
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def requests(samples: Samples, method: str, route: str, status: str) -> float | None:
    return value(samples, "moorage_http_requests_total", method=method, route=route, status=status)


async def test_http_requests_are_counted_by_route_template_and_status_class(svc: Service) -> None:
    before = scrape(svc)
    assert requests(before, "GET", "/v1/agents/{agent_id}", "4xx") == 0, "series exist from start"
    api = client(svc)
    await asyncio.to_thread(lambda: list(api.beta.agents.list()))
    with pytest.raises(anthropic.NotFoundError):
        await asyncio.to_thread(api.beta.agents.retrieve, "agent_000000000000000000000000")
    unauthorized = client(svc, "not-a-token")
    with pytest.raises(anthropic.AuthenticationError):
        await asyncio.to_thread(lambda: list(unauthorized.beta.agents.list()))
    after = scrape(svc)
    assert requests(after, "GET", "/v1/agents", "2xx") == (requests(before, "GET", "/v1/agents", "2xx") or 0) + 1
    assert requests(after, "GET", "/v1/agents", "4xx") == (requests(before, "GET", "/v1/agents", "4xx") or 0) + 1
    assert requests(after, "GET", "/v1/agents/{agent_id}", "4xx") == 1
    assert not any(
        name == "moorage_http_requests_total" and "agent_0000" in dict(labels)["route"] for name, labels in after
    ), "never a real id in a label"


async def test_files_stored_per_tenant_follow_uploads_and_deletes(svc: Service) -> None:
    api = client(svc)
    made = await asyncio.to_thread(lambda: api.beta.files.upload(file=("notes.txt", b"eleven byte", "text/plain")))
    assert value(scrape(svc), "moorage_tenant_file_bytes", tenant="acme") == 11
    await asyncio.to_thread(api.beta.files.delete, made.id)
    after = scrape(svc)
    assert value(after, "moorage_tenant_file_bytes", tenant="acme") is None
    assert value(after, "moorage_tenant_file_bytes", tenant="_other") == 0
    assert requests(after, "POST", "/v1/files", "2xx") == 1


async def test_a_queued_turn_a_pending_approval_and_an_open_stream_are_gauged(svc: Service) -> None:
    ws = await Client.connect(svc, token=ACME)
    try:
        await ws.say("bash echo approved")
        frames = await ws.until("permission_request", "result", "error")
        asked = frames[-1]
        assert asked["type"] == "permission_request", frames
        await ws.say("say queued behind it")
        frames = await ws.until("queued", "error")
        assert frames[-1]["type"] == "queued", frames
        waiting = scrape(svc)
        assert value(waiting, "moorage_turns_queued") == 1
        assert value(waiting, "moorage_approvals_pending", kind="permission_request") == 1
        assert value(waiting, "moorage_approvals_pending", kind="custom_tool_use") == 0

        request = urllib.request.Request(
            f"{svc.url}/v1/sessions/{ws.session_id}/events/stream", headers={"Authorization": f"Bearer {ACME}"}
        )
        stream = await asyncio.to_thread(urllib.request.urlopen, request, None, scaled(10))
        try:
            assert await asyncio.to_thread(stream.read, 1) == b":"  # the first keep-alive: the stream is open
            assert value(scrape(svc), "moorage_sse_streams_active") == 1
        finally:
            stream.close()
        await eventually(
            lambda: value(scrape(svc), "moorage_sse_streams_active") == 0, 30, "the closed stream to be counted out"
        )

        await ws.send({"type": "permission_response", "id": asked["id"], "behavior": "allow"})
        first = await ws.until("result")
        assert result_of(first)["result"] == "tool said: approved"
        second = await ws.until("result")
        assert result_of(second)["subtype"] == "success"
        settled = scrape(svc)
        assert value(settled, "moorage_turns_queued") == 0
        assert value(settled, "moorage_approvals_pending", kind="permission_request") == 0
    finally:
        await ws.close()
