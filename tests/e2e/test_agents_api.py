"""The agents API driven by the official ``anthropic`` 2.10.0 client against the service as a
process: create, retrieve (and by version), update with optimistic concurrency (a stale version is
a 409 the client does not retry), archive, versions, auto-pagination, tenancy, the error envelope."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import anthropic
import pytest
from anthropic.types.beta import BetaManagedAgentsAgentToolset20260401Params
from ma_client import ACME, GLOBEX, KEYS, client
from moorage.testing.scripted_model import ScriptedModelServer
from support import Service, run_service


@pytest.fixture(scope="module")
def svc(model: ScriptedModelServer) -> Iterator[Service]:
    with run_service(model.url, MOORAGE_API_KEYS=KEYS) as service:
        yield service


def toolset() -> BetaManagedAgentsAgentToolset20260401Params:
    return {"type": "agent_toolset_20260401"}


def test_create_retrieve_update_versions_archive(svc: Service) -> None:
    """The whole life of an agent through the client, with the server-filled defaults of §3.2."""
    api = client(svc)
    agent = api.beta.agents.create(
        name="Demo", model="claude-opus-5", system="Be brief.", tools=[toolset()], metadata={"team": "a"}
    )
    assert agent.id.startswith("agent_") and agent.version == 1 and agent.type == "agent"
    assert agent.model.id == "claude-opus-5" and agent.model.speed == "standard"
    assert agent.tools[0].default_config.permission_policy.type == "always_allow"  # type: ignore[union-attr]
    assert agent.execution_identity.type == "service_account" and agent.skills == [] and agent.archived_at is None

    same = api.beta.agents.retrieve(agent.id)
    assert same.to_dict() == agent.to_dict()

    updated = api.beta.agents.update(agent.id, version=1, system="Be terse.", metadata={"team": None, "x": "y"})
    assert updated.version == 2 and updated.system == "Be terse." and updated.metadata == {"x": "y"}
    assert updated.name == "Demo" and updated.created_at == agent.created_at

    noop = api.beta.agents.update(agent.id, system="Be terse.")
    assert noop.version == 2  # nothing changed: no new version

    assert api.beta.agents.retrieve(agent.id, version=1).system == "Be brief."
    versions = list(api.beta.agents.versions.list(agent.id))
    assert [v.version for v in versions] == [2, 1]

    archived = api.beta.agents.archive(agent.id)
    assert archived.archived_at is not None
    with pytest.raises(anthropic.BadRequestError) as caught:
        api.beta.agents.update(agent.id, system="again")
    assert caught.value.body["error"]["details"]["error_code"] == "agent_archived"  # type: ignore[index]
    assert agent.id not in {a.id for a in api.beta.agents.list()}
    assert agent.id in {a.id for a in api.beta.agents.list(include_archived=True)}


def test_a_stale_version_is_a_409_the_client_does_not_retry(svc: Service) -> None:
    """Optimistic concurrency: ``x-should-retry: false`` keeps the client from re-sending the update."""
    api = client(svc)
    agent = api.beta.agents.create(name="Race", model="claude-opus-5")
    api.beta.agents.update(agent.id, version=1, description="first")
    with pytest.raises(anthropic.ConflictError) as caught:
        api.beta.agents.update(agent.id, version=1, description="second")
    error = caught.value
    assert error.response.headers["x-should-retry"] == "false"
    assert error.response.request.headers.get("x-stainless-retry-count") == "0"  # the only attempt
    assert error.request_id and error.request_id.startswith("req_")
    assert error.body["error"]["type"] == "conflict_error"  # type: ignore[index]
    assert error.body["error"]["details"]["error_code"] == "version_conflict"  # type: ignore[index]
    assert api.beta.agents.retrieve(agent.id).description == "first"


def test_another_tenants_agent_is_not_found(svc: Service) -> None:
    """globex reads, updates, archives and lists acme's agent exactly like an unknown one."""
    mine = client(svc).beta.agents.create(name="Mine", model="claude-opus-5")
    theirs = client(svc, GLOBEX).beta.agents
    for call in (
        lambda: theirs.retrieve(mine.id),
        lambda: theirs.update(mine.id, name="stolen"),
        lambda: theirs.archive(mine.id),
        lambda: list(theirs.versions.list(mine.id)),
    ):
        with pytest.raises(anthropic.NotFoundError) as caught:
            call()
        assert caught.value.body["error"]["details"]["error_code"] == "agent_not_found"  # type: ignore[index]
    assert mine.id not in {a.id for a in theirs.list()}
    assert client(svc).beta.agents.retrieve(mine.id).name == "Mine"


def test_auto_pagination_walks_every_page(model: ScriptedModelServer) -> None:
    """``limit=2`` over five agents: the client follows ``next_page`` to the end, newest first."""
    tenant = "pager-0123456789abcdef"
    with run_service(model.url, MOORAGE_API_KEYS=f"pager:{tenant}") as svc:
        api = client(svc, tenant)
        made = [api.beta.agents.create(name=f"a{n}", model="claude-opus-5").id for n in range(5)]
        first = api.beta.agents.list(limit=2)
        assert len(first.data) == 2 and first.next_page
        assert [a.id for a in api.beta.agents.list(limit=2)] == list(reversed(made))
        since = api.beta.agents.list(created_at_gte=first.data[1].created_at)
        assert [a.id for a in since] == list(reversed(made))[:2]


def test_bad_bodies_auth_and_size_get_the_error_envelope(svc: Service) -> None:
    """400 with a clear message, 401 without a token, 413 past the cap; always a request-id."""
    api = client(svc)
    with pytest.raises(anthropic.BadRequestError) as caught:
        api.beta.agents.create(
            name="x", model="claude-opus-5", mcp_servers=[{"type": "url", "name": "gh", "url": "https://x"}]
        )
    assert "not referenced by any mcp_toolset" in caught.value.message
    with pytest.raises(anthropic.AuthenticationError):
        client(svc, "tok-nobody-0123456789abcdef").beta.agents.list()

    def post(body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, object], str]:
        request = urllib.request.Request(svc.url + "/v1/agents", data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read()), response.headers["request-id"]
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read()), exc.headers["request-id"]

    status, body, request_id = post(b"{nope", {"x-api-key": ACME, "content-type": "application/json"})
    assert status == 400 and body["type"] == "error" and request_id.startswith("req_")
    status, body, _ = post(b'{"name":"' + b"x" * (2 * 1024 * 1024) + b'"}', {"x-api-key": ACME})
    assert status == 413
    status, body, _ = post(b'{"name":"curl","model":"claude-opus-5"}', {"x-api-key": ACME})
    assert status == 200 and body["name"] == "curl"
