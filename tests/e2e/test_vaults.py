"""Vaults (issue 13 item 5) with the unmodified official client and a real MCP server: a
``static_bearer`` credential is sent to the agent's MCP server by the service's model proxy, and the
token is nowhere in the sandbox (environment, readable files, /proc), in any API answer, in the
logs or in clear in the database; another tenant sees and uses none of it; the session keeps its
vaults across a restart (the service refuses to start without the key once credentials exist);
archiving the credential revokes it at once; without a key no credential can be made.
``environment_variable`` credentials: tests/e2e/test_vault_env.py."""

from __future__ import annotations

import base64
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from attacker_probes import FIND_SECRET, halves, run_probe
from ma_client import ACME, GLOBEX, KEYS, TOOLSET, client, code
from mcp_bearer import BearerMcpServer
from moorage.testing.scripted_model import ScriptedModelServer
from support import Client, refused_start, result_of, run_service

TOKEN = "mcp-tok-" + secrets.token_hex(16)
KEY = base64.b64encode(os.urandom(32)).decode()
ANSWER = "secret-ok-" + secrets.token_hex(4)
TREES = ["/home", "/tmp", "/run", "/workspace", "/etc", "/dev/shm", "/opt/moorage/lib"]


@pytest.fixture
def mcp_server() -> Iterator[BearerMcpServer]:
    server = BearerMcpServer(TOKEN, ANSWER).start()
    yield server
    server.stop()


def agent_and_environment(api: anthropic.Anthropic, url: str) -> tuple[str, str]:
    """An agent whose MCP server ``secure`` is at ``url`` (its tools allowed without asking), in an
    environment whose networking allows its MCP servers and nothing else."""
    mcp_toolset: Any = {
        "type": "mcp_toolset",
        "mcp_server_name": "secure",
        "default_config": {"permission_policy": {"type": "always_allow"}},
    }
    agent = api.beta.agents.create(
        name="Vaulted",
        model="claude-opus-5",
        tools=[TOOLSET, mcp_toolset],
        mcp_servers=[{"type": "url", "name": "secure", "url": url}],
    )
    env = api.beta.environments.create(
        name=f"vaulted-{time.monotonic_ns()}",
        config={"type": "cloud", "networking": {"type": "limited", "allowed_hosts": [], "allow_mcp_servers": True}},
    )
    return agent.id, env.id


def database_bytes(state_dir: Any) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(state_dir.glob("moorage.db*")))


async def test_a_vault_credential_reaches_the_mcp_server_and_never_the_sandbox(
    model: ScriptedModelServer, mcp_server: BearerMcpServer
) -> None:
    env = {
        "MOORAGE_API_KEYS": KEYS,
        "MOORAGE_SECRET_KEY": KEY,
        # The test's MCP server is on this host's loopback, which is otherwise refused.
        "MOORAGE_EGRESS_ALLOW_NETWORKS": "127.0.0.0/8",
        "MOORAGE_WARM_SANDBOXES": "0",
        "MOORAGE_WARM_AGENTS": "0",
    }
    with run_service(model.url, **env) as first:
        api = client(first)
        agent_id, env_id = agent_and_environment(api, mcp_server.url)
        vault = api.beta.vaults.create(display_name="Alice", metadata={"user": "alice"})
        # Matched by the normalised URL: with a trailing slash it is the same server.
        credential = api.beta.vaults.credentials.create(
            vault.id,
            auth={"type": "static_bearer", "mcp_server_url": mcp_server.url + "/", "token": TOKEN},
            display_name="Alice's MCP",
        )
        shown = [
            credential.to_dict(),
            api.beta.vaults.credentials.retrieve(credential.id, vault_id=vault.id).to_dict(),
            [c.to_dict() for c in api.beta.vaults.credentials.list(vault.id)],
            api.beta.vaults.credentials.update(credential.id, vault_id=vault.id, metadata={"k": "v"}).to_dict(),
        ]
        assert credential.auth.type == "static_bearer" and credential.auth.to_dict() == {
            "type": "static_bearer",
            "mcp_server_url": mcp_server.url + "/",
        }
        assert TOKEN not in json.dumps(shown, default=str)

        # Another tenant: the vault is unknown, and cannot be named by a session.
        other = client(first, GLOBEX)
        with pytest.raises(anthropic.NotFoundError) as foreign:
            other.beta.vaults.retrieve(vault.id)
        assert code(foreign.value) == "vault_not_found"
        with pytest.raises(anthropic.NotFoundError):
            other.beta.vaults.credentials.list(vault.id)
        assert [v.id for v in other.beta.vaults.list()] == []
        their_agent, their_env = agent_and_environment(other, mcp_server.url)
        with pytest.raises(anthropic.NotFoundError) as borrowed:
            other.beta.sessions.create(agent=their_agent, environment_id=their_env, vault_ids=[vault.id])
        assert code(borrowed.value) == "vault_not_found"

        session = api.beta.sessions.create(agent=agent_id, environment_id=env_id, vault_ids=[vault.id])
        assert session.vault_ids == [vault.id]
        ws = await Client.connect(first, session.id, token=ACME)
        said = result_of(await ws.turn("tool mcp__secure__whoami {}"))["result"]
        assert said.startswith("tool said: ") and ANSWER in said  # the tool's result, from the server
        assert mcp_server.calls == 1 and f"Bearer {TOKEN}" in mcp_server.seen

        # The attacker's view: the token is in no process's environment, command line or mounts,
        # and in no file the sandbox can read; nor is the key that seals it.
        for secret in (TOKEN, KEY):
            canary = "canary-" + secrets.token_hex(8)
            found = await run_probe(ws, FIND_SECRET, secret=halves(secret), canary=halves(canary), trees=TREES)
            assert found["hits"]["secret"] == [] and "/home/agent/canary.txt" in found["hits"]["canary"]
            assert "SECRET" not in found["env"].values()
        await ws.close()

        # At rest: sealed, never in clear (the WAL included); in the logs: nowhere.
        with sqlite3.connect(first.state_dir / "moorage.db") as db:
            (sealed,) = db.execute("select sealed from vault_credentials where id = ?", (credential.id,)).fetchone()
        assert sealed.startswith("v1.") and TOKEN not in sealed
        assert TOKEN.encode() not in database_bytes(first.state_dir)
        assert TOKEN not in first.logs() and KEY not in first.logs()
        state_dir = first.state_dir

    # Credentials exist: without the key the service refuses to start.
    without_key = {k: v for k, v in first.env.items() if k != "MOORAGE_SECRET_KEY"}
    refused = await refused_start(without_key)
    assert refused.returncode == 2 and "MOORAGE_SECRET_KEY" in refused.stderr

    with run_service(model.url, **env, MOORAGE_STATE_DIR=str(state_dir)) as second:
        api = client(second)
        assert api.beta.sessions.retrieve(session.id).vault_ids == [vault.id]
        again = await Client.connect(second, session.id, token=ACME)
        assert again.first["state"] == "rehydrated"
        assert ANSWER in result_of(await again.turn("tool mcp__secure__whoami {}"))["result"]
        assert mcp_server.calls == 2
        # Archived: revoked for the next request, though the sandbox still runs.
        api.beta.vaults.credentials.archive(credential.id, vault_id=vault.id)
        revoked = result_of(await again.turn("tool mcp__secure__whoami {}"))["result"]
        assert ANSWER not in revoked and mcp_server.calls == 2
        await again.close()
        assert TOKEN not in second.logs()


async def test_unsupported_credentials_and_a_missing_key_are_refused_clearly(model: ScriptedModelServer) -> None:
    """A session naming a vault with an ``environment_variable`` credential is accepted here (local
    backend; Kubernetes refuses it: tests/unit/test_vaults.py); a second credential for one key: 409; the rest of
    the API (update, pages, delete, ``mcp_oauth_validate`` 501); an archived vault: 400 ``vault_archived``; a
    server without ``MOORAGE_SECRET_KEY`` keeps vaults but refuses credentials (503, not retried);
    a malformed key refuses the start."""
    with run_service(
        model.url, MOORAGE_API_KEYS=KEYS, MOORAGE_SECRET_KEY=KEY, MOORAGE_WARM_SANDBOXES="0", MOORAGE_WARM_AGENTS="0"
    ) as svc:
        api = client(svc)
        agent = api.beta.agents.create(name="Plain", model="claude-opus-5", tools=[TOOLSET])
        env_id = api.beta.environments.create(name="plain").id
        vault = api.beta.vaults.create(display_name="Bob")
        api.beta.vaults.credentials.create(
            vault.id,
            auth={
                "type": "environment_variable",
                "secret_name": "API_KEY",
                "secret_value": TOKEN,
                "networking": {"type": "limited", "allowed_hosts": ["api.example.com"]},
            },
        )
        # Injected by the egress tunnel on this backend (tests/e2e/test_vault_env.py): accepted.
        assert api.beta.sessions.create(agent=agent.id, environment_id=env_id, vault_ids=[vault.id]).vault_ids == [
            vault.id
        ]
        with pytest.raises(anthropic.ConflictError) as twice:
            api.beta.vaults.credentials.create(
                vault.id,
                auth={
                    "type": "environment_variable",
                    "secret_name": "API_KEY",
                    "secret_value": "other",
                    "networking": {"type": "unrestricted"},
                },
            )
        assert code(twice.value) == "credential_conflict"
        # The rest of the API as the client sends it: update (metadata patch), pages, delete, validate.
        renamed = api.beta.vaults.update(vault.id, display_name="Bobby", metadata={"team": "x"})
        assert (renamed.display_name, renamed.metadata) == ("Bobby", {"team": "x"})
        assert api.beta.vaults.update(vault.id, metadata={"team": None}).metadata == {}
        extra = [api.beta.vaults.create(display_name=f"page-{n}") for n in range(3)]
        paged = [v.id for v in api.beta.vaults.list(limit=1)]  # auto-paginated, one per page
        assert paged == [v.id for v in reversed(extra)] + [vault.id]
        bearer = api.beta.vaults.credentials.create(
            extra[0].id, auth={"type": "static_bearer", "mcp_server_url": "https://mcp.example.com", "token": TOKEN}
        )
        with pytest.raises(anthropic.APIStatusError) as validate:
            api.beta.vaults.credentials.mcp_oauth_validate(bearer.id, vault_id=extra[0].id)
        assert validate.value.status_code == 501 and code(validate.value) == "not_supported"
        gone = api.beta.vaults.credentials.delete(bearer.id, vault_id=extra[0].id)
        assert (gone.id, gone.type) == (bearer.id, "vault_credential_deleted")
        with pytest.raises(anthropic.NotFoundError) as deleted:
            api.beta.vaults.credentials.retrieve(bearer.id, vault_id=extra[0].id)
        assert code(deleted.value) == "credential_not_found"
        api.beta.vaults.archive(vault.id)
        with pytest.raises(anthropic.BadRequestError) as archived:
            api.beta.sessions.create(agent=agent.id, environment_id=env_id, vault_ids=[vault.id])
        assert code(archived.value) == "vault_archived"
        assert api.beta.vaults.delete(vault.id).type == "vault_deleted"
        assert TOKEN not in svc.logs()

    with run_service(model.url, MOORAGE_API_KEYS=KEYS, MOORAGE_WARM_SANDBOXES="0", MOORAGE_WARM_AGENTS="0") as keyless:
        api = client(keyless)
        vault = api.beta.vaults.create(display_name="Carol")
        with pytest.raises(anthropic.APIStatusError) as no_key:
            api.beta.vaults.credentials.create(
                vault.id, auth={"type": "static_bearer", "mcp_server_url": "https://mcp.example.com", "token": TOKEN}
            )
        assert no_key.value.status_code == 503 and code(no_key.value) == "secret_key_unavailable"
        assert no_key.value.response.request.headers.get("x-stainless-retry-count") == "0"
        assert list(api.beta.vaults.credentials.list(vault.id)) == []
    short = base64.b64encode(os.urandom(16)).decode()
    malformed = await refused_start({**keyless.env, "MOORAGE_SECRET_KEY": short})
    assert malformed.returncode == 2 and "MOORAGE_SECRET_KEY must decode to 32 bytes" in malformed.stderr
