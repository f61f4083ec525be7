"""The environments API driven by the official ``anthropic`` 2.10.0 client against the service as a
process: create with the §4.2 defaults, retrieve, update, list with auto-pagination, archive,
delete; another tenant's environment is a 404; unrestricted networking (not allowed here),
packages and the self-hosted work queue are refused with the client's typed exceptions."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import pytest
from ma_client import GLOBEX, KEYS, PAGER, client, code
from moorage.testing.scripted_model import ScriptedModelServer
from support import Service, run_service


@pytest.fixture(scope="module")
def svc(model: ScriptedModelServer) -> Iterator[Service]:
    with run_service(model.url, MOORAGE_API_KEYS=KEYS) as service:
        yield service


def test_create_retrieve_update_archive_delete(svc: Service) -> None:
    """The whole life of an environment, with the server-filled defaults of §4.2."""
    api = client(svc).beta.environments
    env = api.create(
        name="dev",
        config={
            "type": "cloud",
            "networking": {"type": "limited", "allowed_hosts": ["API.example.com", "h.io:8443"]},
        },
        metadata={"team": "a"},
    )
    assert env.id.startswith("env_") and env.type == "environment" and env.archived_at is None
    assert env.config.type == "cloud"
    net = env.config.networking
    assert net.type == "limited" and net.allowed_hosts == ["api.example.com", "h.io:8443"]
    assert net.allow_mcp_servers is False and net.allow_package_managers is False
    assert env.config.packages.pip == [] and env.config.packages.apt == []
    assert env.description is None and env.metadata == {"team": "a"}

    assert api.retrieve(env.id).to_dict() == env.to_dict()

    updated = api.update(env.id, description="Builds", metadata={"team": None, "x": "y"})
    assert updated.description == "Builds" and updated.metadata == {"x": "y"} and updated.name == "dev"
    assert updated.config.networking.allowed_hosts == ["api.example.com", "h.io:8443"]  # type: ignore[union-attr]
    assert updated.created_at == env.created_at

    with pytest.raises(anthropic.ConflictError) as taken:
        api.create(name="dev")
    assert code(taken.value) == "environment_name_taken"
    assert taken.value.response.request.headers.get("x-stainless-retry-count") == "0"  # not retried

    archived = api.archive(env.id)
    assert archived.archived_at is not None
    with pytest.raises(anthropic.BadRequestError) as caught:
        api.update(env.id, description="again")
    assert code(caught.value) == "environment_archived"
    assert env.id not in {e.id for e in api.list()}
    assert env.id in {e.id for e in api.list(include_archived=True)}

    deleted = api.delete(env.id)
    assert deleted.id == env.id and deleted.type == "environment_deleted"
    with pytest.raises(anthropic.NotFoundError) as gone:
        api.retrieve(env.id)
    assert code(gone.value) == "environment_not_found"
    assert gone.value.request_id and gone.value.request_id.startswith("req_")


def test_another_tenants_environment_is_not_found(svc: Service) -> None:
    """globex reads, updates, archives, deletes and lists acme's environment like an unknown one."""
    mine = client(svc).beta.environments.create(name="mine")
    theirs = client(svc, GLOBEX).beta.environments
    for call in (
        lambda: theirs.retrieve(mine.id),
        lambda: theirs.update(mine.id, name="stolen"),
        lambda: theirs.archive(mine.id),
        lambda: theirs.delete(mine.id),
    ):
        with pytest.raises(anthropic.NotFoundError) as caught:
            call()
        assert code(caught.value) == "environment_not_found"
    assert mine.id not in {e.id for e in theirs.list()}
    assert client(svc).beta.environments.retrieve(mine.id).name == "mine"


def test_auto_pagination_walks_every_page(svc: Service) -> None:
    """``limit=2`` over five environments: the client follows ``next_page`` to the end, newest first."""
    api = client(svc, PAGER).beta.environments
    made = [api.create(name=f"e{n}").id for n in range(5)]
    first = api.list(limit=2)
    assert len(first.data) == 2 and first.next_page
    assert [e.id for e in api.list(limit=2)] == list(reversed(made))


def test_what_moorage_cannot_honour_is_refused(svc: Service) -> None:
    """Unrestricted networking (the operator has not allowed it), packages other than pip and npm, a self-hosted config:
    400 with a stable code, nothing stored; the work queue: 501, not retried."""
    api = client(svc).beta.environments
    with pytest.raises(anthropic.BadRequestError) as caught:
        api.create(name="open", config={"type": "cloud", "networking": {"type": "unrestricted"}})
    assert code(caught.value) == "unrestricted_network_not_allowed"
    assert "MOORAGE_ALLOW_UNRESTRICTED_NETWORK" in caught.value.message
    with pytest.raises(anthropic.BadRequestError) as caught:
        api.create(name="pkgs", config={"type": "cloud", "packages": {"type": "packages", "apt": ["jq"]}})
    assert code(caught.value) == "packages_not_supported"  # pip and npm are built (test_environment_packages.py)
    with pytest.raises(anthropic.BadRequestError) as caught:
        api.create(name="worker", config={"type": "self_hosted"})
    assert code(caught.value) == "invalid_request"
    with pytest.raises(anthropic.BadRequestError) as caught:
        api.create(
            name="bad", config={"type": "cloud", "networking": {"type": "limited", "allowed_hosts": ["https://x.io/"]}}
        )
    assert "allowed_hosts[0]" in caught.value.message
    assert not {"open", "pkgs", "worker", "bad"} & {e.name for e in api.list(include_archived=True)}

    env = api.create(name="queue")
    with pytest.raises(anthropic.InternalServerError) as refused:
        api.work.poll(env.id)
    assert refused.value.status_code == 501 and code(refused.value) == "not_supported"
    assert refused.value.response.request.headers.get("x-stainless-retry-count") == "0"


def test_unrestricted_networking_where_the_operator_allows_it(model: ScriptedModelServer) -> None:
    """``MOORAGE_ALLOW_UNRESTRICTED_NETWORK=true`` reaches the rules: the same body is accepted."""
    with run_service(model.url, MOORAGE_API_KEYS=KEYS, MOORAGE_ALLOW_UNRESTRICTED_NETWORK="true") as open_svc:
        api = client(open_svc).beta.environments
        env = api.create(name="open", config={"type": "cloud", "networking": {"type": "unrestricted"}})
        assert env.config.networking.type == "unrestricted"  # type: ignore[union-attr]
        assert api.retrieve(env.id).config.networking.type == "unrestricted"  # type: ignore[union-attr]
