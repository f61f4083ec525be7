"""Database tokens issued by the real ``moorage tokens`` CLI, used against the service as a process,
and attacked: forged, replayed after revocation, expired, and during a database outage."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import websockets
from moorage.testing.scripted_model import ScriptedModelServer
from support import (
    Client,
    Cuttable,
    Service,
    events,
    free_port,
    moorage_chat,
    pg_available,
    pg_database,
    refused_start,
    result_of,
    run_service,
    scaled,
)

TOKEN_RE = re.compile(r"^mrg_([0-9a-f]{12})_([0-9a-f]{64})$")


async def tokens_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m moorage tokens ARGS`` with the service's settings; bounded."""
    full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "moorage",
        "tokens",
        *args,
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), scaled(60))
    assert proc.returncode is not None
    return subprocess.CompletedProcess(list(args), proc.returncode, out.decode(), err.decode())


async def create(env: dict[str, str], tenant: str, *extra: str) -> tuple[str, str]:
    """A new token for ``tenant``: (id, token)."""
    done = await tokens_cli(env, "create", "--tenant", tenant, *extra)
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    match = TOKEN_RE.match(token)
    assert match, "create must print the token alone on stdout"
    return match.group(1), token


async def listed(env: dict[str, str]) -> list[dict[str, Any]]:
    done = await tokens_cli(env, "list", "--json")
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


async def refusal(svc: Service, token: str | None, session_id: str | None = None) -> tuple[int, bytes]:
    """The HTTP status and body a handshake with ``token`` is refused with."""
    with pytest.raises(websockets.InvalidStatus) as info:
        await Client.connect(svc, session_id, token=token)
    return int(info.value.response.status_code), bytes(info.value.response.body or b"")


def database_bytes(state: Path) -> bytes:
    """The SQLite database as stored on disk: the file, its WAL and shared memory."""
    return b"".join(p.read_bytes() for p in sorted(state.glob("moorage.db*")))


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def test_a_cli_token_runs_a_session_and_forgeries_get_the_same_401(
    model: ScriptedModelServer, tmp_path: Path
) -> None:
    """A CLI token opens and runs a session; forged, random, truncated or cross-tenant tokens all get one 401."""
    env = {"MOORAGE_DATABASE_URL": f"sqlite:///{tmp_path / 'moorage.db'}", "MOORAGE_STATE_DIR": str(tmp_path)}
    acme_id, acme = await create(env, "acme", "--name", "acme bot")
    globex_id, globex = await create(env, "globex")
    with run_service(model.url, **env) as svc:
        client = await Client.connect(svc, token=acme)
        assert result_of(await client.turn("say hello acme"))["result"] == "hello acme"
        unauthorized = await refusal(svc, None)
        assert unauthorized[0] == 401 and json.loads(unauthorized[1])["code"] == "unauthorized"
        forgeries = [
            f"mrg_{acme_id}_{'0' * 64}",  # right prefix and a real id, wrong secret
            f"mrg_{acme_id}_{globex.rsplit('_', 1)[1]}",  # acme's id with another tenant's secret
            f"mrg_{'a' * 12}_{'b' * 64}",  # random, well-formed
            acme[:-1],  # truncated
            acme.upper(),
            "Bearer " + acme,
        ]
        for forged in forgeries:
            assert await refusal(svc, forged) == unauthorized, forged
        # Tenancy: globex's valid token attaching acme's session learns nothing beyond "unknown".
        theirs = await Client.connect(svc, client.session_id, token=globex)
        unknown = await Client.connect(svc, "11111111-1111-1111-1111-111111111111", token=globex)
        assert theirs.first == unknown.first and theirs.first["code"] == "session_not_found"
        await client.close()

        listing = await tokens_cli(env, "list")
        rows = {row["id"]: row for row in await listed(env)}
        assert rows[acme_id]["tenant"] == "acme" and rows[acme_id]["last_used_at"] is not None
        assert rows[globex_id]["state"] == "active"
        logs = svc.logs()
        reasons = {r.get("detail") for r in events(svc, "client_refused")}
        assert {"missing", "mismatch", "unknown", "malformed"} <= reasons
        secrets_ = [t.rsplit("_", 1)[1] for t in (acme, globex, *forgeries[:3])]
        for secret in secrets_:
            assert secret not in listing.stdout and secret not in logs
        for token in (acme, globex):
            assert sha256(token) not in listing.stdout and sha256(token) not in logs
        stored = database_bytes(tmp_path)
        assert sha256(acme).encode() in stored  # the digest is there, so the next check could fail
        assert acme.encode() not in stored and secrets_[0].encode() not in stored


async def test_revoking_a_token_closes_the_connections_it_opened(model: ScriptedModelServer, tmp_path: Path) -> None:
    """An open connection whose token is revoked gets a fatal unauthorized and close 1008; the session lives on."""
    env = {"MOORAGE_DATABASE_URL": f"sqlite:///{tmp_path / 'moorage.db'}", "MOORAGE_STATE_DIR": str(tmp_path)}
    revoked_id, doomed = await create(env, "acme")
    _, kept = await create(env, "acme")
    with run_service(model.url, **env, MOORAGE_AUTH_CACHE_TTL_S="1") as svc:
        victim = await Client.connect(svc, token=doomed)
        other = await Client.connect(svc, token=kept)
        assert result_of(await victim.turn("say before"))["result"] == "before"
        assert (await tokens_cli(env, "revoke", revoked_id)).returncode == 0
        error = (await victim.until("error", timeout=scaled(10)))[-1]
        assert error["code"] == "unauthorized" and error["fatal"] is True
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await victim.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        # Only that token's connection: the tenant's other client, and the session, go on.
        assert result_of(await other.turn("say still here"))["result"] == "still here"
        again = await Client.connect(svc, victim.session_id, token=kept)
        assert again.first["state"] == "attached"
        await asyncio.gather(again.close(), other.close())


async def test_revoked_and_expired_tokens_are_refused_within_the_cache_bound(
    model: ScriptedModelServer, tmp_path: Path
) -> None:
    """After `revoke` a replayed token gets 401 within MOORAGE_AUTH_CACHE_TTL_S; an expired token gets 401."""
    env = {"MOORAGE_DATABASE_URL": f"sqlite:///{tmp_path / 'moorage.db'}", "MOORAGE_STATE_DIR": str(tmp_path)}
    acme_id, acme = await create(env, "acme")
    _, short = await create(env, "acme", "--expires-in-days", "0.00001")  # under a second
    with run_service(model.url, **env, MOORAGE_AUTH_CACHE_TTL_S="2") as svc:
        client = await Client.connect(svc, token=acme)
        assert client.first["state"] == "new"
        await client.close()
        assert (await refusal(svc, short))[0] == 401
        assert "expired" in {r.get("detail") for r in events(svc, "client_refused")}

        revoked = await tokens_cli(env, "revoke", acme_id)
        assert revoked.returncode == 0, revoked.stderr
        revoked_at = time.monotonic()
        while True:  # replay the revoked token until the replica's cache entry lapses (bounded)
            try:
                replayed = await Client.connect(svc, token=acme)
            except websockets.InvalidStatus as exc:
                assert exc.response.status_code == 401
                break
            await replayed.close()
            assert time.monotonic() - revoked_at < 2 + scaled(3), "revocation took longer than the cache TTL"
            await asyncio.sleep(0.2)
        assert (await refusal(svc, acme))[0] == 401
        assert "revoked" in {r.get("detail") for r in events(svc, "client_refused")}
        assert (await tokens_cli(env, "revoke", "000000000000")).returncode == 1


@pytest.mark.skipif(not pg_available(), reason="PostgreSQL is not reachable at 127.0.0.1:5432")
async def test_a_database_outage_at_the_handshake_is_a_503_not_a_crash(model: ScriptedModelServer) -> None:
    """With the database cut, a table token is refused with 503 store_unavailable and a log line; then recovers."""
    proxy = Cuttable()
    proxy.restore()
    with pg_database() as name:
        env = {"MOORAGE_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{proxy.port}/{name}"}
        _, acme = await create(env, "acme")
        with run_service(model.url, **env, MOORAGE_AUTH_CACHE_TTL_S="0") as svc:
            client = await Client.connect(svc, token=acme)
            await client.close()
            proxy.cut()
            status, body = await refusal(svc, acme)
            assert status == 503 and json.loads(body)["code"] == "store_unavailable"
            (line,) = [r for r in events(svc, "client_refused") if r.get("reason") == "store_unavailable"]
            assert line["level"] == "warning" and "127.0.0.1" in line["error"]
            assert await asyncio.to_thread(svc.healthy)
            proxy.restore()
            again = await Client.connect(svc, token=acme)
            assert again.first["type"] == "session"
            await again.close()


async def test_a_non_loopback_service_without_credentials_refuses_to_start_until_a_token_exists(
    model: ScriptedModelServer, tmp_path: Path
) -> None:
    """Beyond loopback with no keys and no token: exit 2 naming the fix; once a token exists, only it gets in."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "MOORAGE_HOST": "0.0.0.0",
        "MOORAGE_PORT": str(free_port()),
        "MOORAGE_STATE_DIR": str(tmp_path),
    }
    refused = await refused_start(env)
    assert refused.returncode == 2
    assert "without authentication" in refused.stderr and "moorage tokens create" in refused.stderr
    _, token = await create({k: v for k, v in env.items() if k.startswith("MOORAGE_")}, "acme")
    with run_service(model.url, MOORAGE_HOST="0.0.0.0", MOORAGE_STATE_DIR=str(tmp_path)) as svc:
        assert not events(svc, "auth_disabled")
        assert (await refusal(svc, None))[0] == 401
        client = await Client.connect(svc, token=token)
        assert client.first["state"] == "new"
        await client.close()
        refused = await moorage_chat(svc, "")
        assert refused.returncode == 1 and "HTTP 401" in refused.stderr
        accepted = await moorage_chat(svc, "", "--token", token)
        assert accepted.returncode == 0, accepted.stderr
        assert token not in accepted.stderr + accepted.stdout
