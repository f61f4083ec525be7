"""Bounded storage against the service as a process: the per-tenant quota
(MOORAGE_TENANT_STORAGE_BYTES) and deleting a session with everything it
stored (DELETE /v1/sessions/{id})."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import urllib.error
import urllib.request
from typing import Any

import websockets
from moorage.testing.scripted_model import ScriptedModelServer
from support import Client, Service, events, prompts_seen, result_of, run_service, tool_output, wait_suspended

ACME = "tok-acme-0123456789abcdef"
GLOBEX = "tok-globex-0123456789abcdef"
KEYS = f"acme:{ACME},globex:{GLOBEX}"
UNKNOWN = "11111111-1111-1111-1111-111111111111"


def http_delete(svc: Service, session_id: str, token: str | None) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"{svc.url}/v1/sessions/{session_id}", method="DELETE", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        body = json.loads(err.read())
        # Every answer has its own request id (the header and the body agree); the rest is compared.
        assert body.pop("request_id") == err.headers["request-id"]
        return err.code, body


def stored_rows(svc: Service, session_id: str) -> dict[str, int]:
    """What the session has in each table of the service's SQLite database."""
    queries = {
        "sessions": "SELECT count(*) FROM sessions WHERE id = ?",
        "workspaces": "SELECT count(*) FROM workspaces WHERE session_id = ?",
        "transcripts": "SELECT count(*) FROM session_store_keys WHERE session_id = ?",
        "entries": "SELECT count(*) FROM session_store_entries e JOIN session_store_keys k ON e.key_id = k.id "
        "WHERE k.session_id = ?",
    }
    with sqlite3.connect(svc.state_dir / "moorage.db") as db:
        return {name: int(db.execute(sql, (session_id,)).fetchone()[0]) for name, sql in queries.items()}


async def close_code_of(client: Client) -> int | None:
    try:
        while True:
            await client.recv()
    except websockets.ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd is not None else None


async def test_a_tenant_over_its_quota_cannot_open_sessions_but_keeps_reading_and_deleting(
    model: ScriptedModelServer,
) -> None:
    """acme's transcript takes it past a 1-byte quota: its new sessions are refused with
    storage_quota_exceeded (close 1008) while globex opens sessions as before; acme's existing session
    still rehydrates with its conversation (its grown workspace was not saved, and it is told so), and
    deleting it brings acme back under the quota."""
    with run_service(
        model.url, MOORAGE_API_KEYS=KEYS, MOORAGE_TENANT_STORAGE_BYTES="1", MOORAGE_IDLE_TIMEOUT_S="1"
    ) as svc:
        mine = await Client.connect(svc, token=ACME)
        assert mine.first["state"] == "new"
        await mine.turn("bash echo first-file > a.txt")
        assert result_of(await mine.turn("say the quota walrus"))["result"] == "the quota walrus"

        refused = await Client.connect(svc, token=ACME)
        assert refused.first["type"] == "error" and refused.first["code"] == "storage_quota_exceeded"
        assert refused.first["fatal"] is True
        assert await close_code_of(refused) == 1008

        theirs = await Client.connect(svc, token=GLOBEX)
        assert theirs.first["state"] == "new"
        assert result_of(await theirs.turn("say hello globex"))["result"] == "hello globex"
        await theirs.close()

        await mine.close()
        await wait_suspended(svc, mine.session_id)
        assert any(e.get("reason") == "storage_quota_exceeded" for e in events(svc, "workspace_not_saved"))

        again = await Client.connect(svc, mine.session_id, token=ACME)
        assert again.first["state"] == "rehydrated"
        told = [await again.recv(), await again.recv()]
        assert {f["code"] for f in told} == {"storage_quota_exceeded"} and not any(f["fatal"] for f in told)
        assert "first-file" not in tool_output(await again.turn("bash cat a.txt || echo no-such-file"))
        assert "the quota walrus" in prompts_seen(model), "the transcript was kept"

        assert (await asyncio.to_thread(http_delete, svc, mine.session_id, ACME))[0] == 200
        fresh = await Client.connect(svc, token=ACME)
        assert fresh.first["state"] == "new"
        await fresh.close()


async def test_delete_removes_the_session_and_everything_it_stored(model: ScriptedModelServer) -> None:
    """DELETE stops a live session (its client hears session_deleted, close 4410), removes its record,
    transcript and workspace rows, and the id then answers exactly like an unknown one; another tenant
    cannot delete it."""
    with run_service(model.url, MOORAGE_API_KEYS=KEYS, MOORAGE_IDLE_TIMEOUT_S="1") as svc:
        client = await Client.connect(svc, token=ACME)
        session_id = client.session_id
        await client.turn("bash echo doomed > d.txt")
        await client.close()
        await wait_suspended(svc, session_id)
        before = await asyncio.to_thread(stored_rows, svc, session_id)
        assert before["sessions"] == before["workspaces"] == 1 and before["entries"] > 0

        unknown_status, unknown_body = await asyncio.to_thread(http_delete, svc, UNKNOWN, GLOBEX)
        assert unknown_status == 404 and unknown_body["error"]["details"]["error_code"] == "session_not_found"
        assert await asyncio.to_thread(http_delete, svc, session_id, GLOBEX) == (unknown_status, unknown_body)
        assert await asyncio.to_thread(http_delete, svc, session_id, None) == (
            401,
            {
                "type": "error",
                "error": {
                    "type": "authentication_error",
                    "message": "a valid bearer token is required",
                    "details": {"error_code": "unauthorized"},
                },
            },
        )
        assert await asyncio.to_thread(stored_rows, svc, session_id) == before

        live = await Client.connect(svc, session_id, token=ACME)  # rehydrated: the session runs again
        assert live.first["state"] == "rehydrated"
        assert await asyncio.to_thread(http_delete, svc, session_id, ACME) == (
            200,
            {"id": session_id, "type": "session_deleted"},
        )
        frames = []
        try:
            while True:
                frames.append(await live.recv())
        except websockets.ConnectionClosed as closed:
            assert closed.rcvd is not None and closed.rcvd.code == 4410
        assert frames[-1]["code"] == "session_deleted" and frames[-1]["fatal"] is True

        assert await asyncio.to_thread(stored_rows, svc, session_id) == {
            "sessions": 0,
            "workspaces": 0,
            "transcripts": 0,
            "entries": 0,
        }
        assert await asyncio.to_thread(http_delete, svc, session_id, ACME) == (unknown_status, unknown_body)
        gone = await Client.connect(svc, session_id, token=ACME)
        nothing = await Client.connect(svc, UNKNOWN, token=ACME)
        assert gone.first == nothing.first and gone.first["code"] == "session_not_found"
        assert not [d for d in (svc.state_dir / "workspaces").iterdir() if (d / "d.txt").exists()]
