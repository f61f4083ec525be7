"""``environment_variable`` vault credentials end to end (issue 13 item 5), with the unmodified
official client, the real CLI and its Bash tool in a real sandbox, and a real HTTPS server on the
host: the sandbox's ``$MY_TOKEN`` is a placeholder, ``curl`` through the egress tunnel reaches the
server with the real secret (the tunnel terminated TLS with the sandbox's own CA, which the sandbox
trusts), the tool result comes back; the attacker's probe finds the secret nowhere in the sandbox
(environment, command lines, readable files, /proc), and no private key either (the CA's stays in
the service)."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from attacker_probes import FIND_SECRET, halves, run_probe
from ma_client import ACME, KEYS, TOOLSET, client, close_all
from moorage.egress_ca import SessionCA
from moorage.testing.scripted_model import ScriptedModelServer
from support import Client, free_port, run_service, tool_output

SECRET = "sk-env-" + secrets.token_hex(16)
KEY = base64.b64encode(os.urandom(32)).decode()
ANSWER = "upstream-says-" + secrets.token_hex(4)
HOST = "127.0.0.2"  # loopback, but not in the sandbox's NO_PROXY: curl goes through the tunnel
TREES = ["/home", "/tmp", "/run", "/workspace", "/etc", "/dev/shm", "/opt/moorage/lib"]


class Upstream:
    """An HTTPS server on ``HOST`` whose certificate comes from a test CA; it records Authorization."""

    def __init__(self) -> None:
        self.ca = SessionCA("e2e upstream")
        self.port = free_port()
        self.seen: list[str] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(request.headers.get("Authorization", ""))
        return web.Response(text=ANSWER + "\n")


@pytest.fixture
async def upstream(tmp_path: Path) -> AsyncIterator[tuple[Upstream, Path]]:
    up = Upstream()
    ca_file = tmp_path / "upstream-ca.pem"
    ca_file.write_text(up.ca.cert_pem)
    app = web.Application()
    app.router.add_get("/", up.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, HOST, up.port, ssl_context=up.ca.context(HOST)).start()
    yield up, ca_file
    await runner.cleanup()
    close_all()


async def test_an_environment_variable_credential_reaches_its_host_and_never_the_sandbox(
    model: ScriptedModelServer, upstream: tuple[Upstream, Path]
) -> None:
    up, ca_file = upstream
    env = {
        "MOORAGE_API_KEYS": KEYS,
        "MOORAGE_SECRET_KEY": KEY,
        "MOORAGE_EGRESS_ALLOW_NETWORKS": "127.0.0.0/8",  # the test's "internet" is this host's loopback
        "MOORAGE_EGRESS_UPSTREAM_CA_FILE": str(ca_file),  # the test server's CA, for the tunnel only
        "MOORAGE_WARM_SANDBOXES": "0",
        "MOORAGE_WARM_AGENTS": "0",
    }
    with run_service(model.url, **env) as svc:
        api = client(svc)
        agent = api.beta.agents.create(name="Curler", model="claude-opus-5", tools=[TOOLSET])
        networking: Any = {"type": "limited", "allowed_hosts": [f"{HOST}:{up.port}"]}
        environment = api.beta.environments.create(
            name=f"env-{time.monotonic_ns()}", config={"type": "cloud", "networking": networking}
        )
        vault = api.beta.vaults.create(display_name="Dana")
        credential = api.beta.vaults.credentials.create(
            vault.id,
            auth={
                "type": "environment_variable",
                "secret_name": "MY_TOKEN",
                "secret_value": SECRET,
                "networking": {"type": "limited", "allowed_hosts": [HOST]},
            },
        )
        assert SECRET not in str(credential.to_dict())
        session = api.beta.sessions.create(agent=agent.id, environment_id=environment.id, vault_ids=[vault.id])
        ws = await Client.connect(svc, session.id, token=ACME)

        command = f'curl -sS -H "Authorization: Bearer $MY_TOKEN" https://{HOST}:{up.port}/; echo "held=$MY_TOKEN"'
        out = tool_output(await ws.turn(f"bash {command}"))
        assert ANSWER in out, out  # the tool result came back through the tunnel
        assert up.seen == [f"Bearer {SECRET}"]  # the server saw the real secret
        held = out.split("held=")[1].split()[0]
        assert held.startswith("moorage-secret-my-token-") and SECRET not in out

        # The attacker's view: the secret is nowhere in the sandbox; neither is any private key
        # (the sandbox's CA key, and every leaf's, stay in the service's memory).
        for needle in (SECRET, KEY, "PRIVATE KEY-----"):
            canary = "canary-" + secrets.token_hex(8)
            found = await run_probe(ws, FIND_SECRET, secret=halves(needle), canary=halves(canary), trees=TREES)
            assert found["hits"]["secret"] == [] and "/home/agent/canary.txt" in found["hits"]["canary"]
            assert "SECRET" not in found["env"].values()
        bundle = tool_output(
            await ws.turn('bash grep -c "BEGIN CERTIFICATE" "$SSL_CERT_FILE"; echo "ca=$CURL_CA_BUNDLE"')
        )
        assert "ca=/home/agent/.moorage/ca-bundle.pem" in bundle

        # Archived: the next connection is a blind pipe, so curl meets the server's own certificate,
        # which the sandbox does not trust (here: a test CA only the tunnel trusts), and sends nothing.
        api.beta.vaults.credentials.archive(credential.id, vault_id=vault.id)
        after = tool_output(await ws.turn(f"bash {command}"))
        assert ANSWER not in after and "certificate" in after.lower() and up.seen == [f"Bearer {SECRET}"]
        await ws.close()
        await asyncio.sleep(0)
        assert SECRET not in svc.logs()
