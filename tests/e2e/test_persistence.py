"""Hybrid sessions: suspend on idle, rehydrate on reconnect, survive kill -9,
survive the database going away. The service as a process, the real CLI in
real sandboxes, a real database."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from moorage.testing.scripted_model import ScriptedModelServer
from moorage.workspaces import remove_workspace
from moorage_session_store import Database, SQLModelSessionStore
from support import (
    Client,
    Cuttable,
    events,
    free_port,
    pg_available,
    pg_database,
    prompts_seen,
    refused_start,
    result_of,
    run_service,
    scaled,
    tool_output,
    wait_suspended,
    wait_until,
)

#: Replicas sharing a database share a PostgreSQL one (SQLite serves one replica).
PG_URL = "postgresql://postgres@127.0.0.1:5432/{}"


async def test_idle_session_suspends_and_rehydrates_with_history_and_files(model: ScriptedModelServer) -> None:
    """After the idle timeout a session is suspended; reconnecting rehydrates its files and conversation."""
    with run_service(model.url, MOORAGE_IDLE_TIMEOUT_S="1") as svc:
        client = await Client.connect(svc)
        await client.turn("bash echo kept-across-suspend > notes.txt")
        assert result_of(await client.turn("say remember the walrus"))["result"] == "remember the walrus"
        await client.close()
        await wait_suspended(svc, client.session_id)
        assert not any(d.name for d in (svc.state_dir / "workspaces").iterdir() if (d / "notes.txt").exists())

        again = await Client.connect(svc, client.session_id)
        assert again.first["state"] == "rehydrated" and again.first["session_id"] == client.session_id
        frames = await again.turn("bash cat notes.txt")
        assert "kept-across-suspend" in tool_output(frames)
        assert "remember the walrus" in prompts_seen(model), "the model must see the earlier conversation"
        await again.close()
        # Start progress: each client learned its sandbox was ready, from its first frame or a
        # status frame after it; a rehydrated session never claims a started agent (it resumes).
        for c in (client, again):
            ready = [s for s in c.statuses if s["status"] == "ready"]
            assert c.first["sandbox"] == "ready" or ready, (c.first, c.statuses)
            assert all(s["pool"] in ("started", "warm", "cold") and s["start_s"] >= 0 for s in ready)
        assert all(s["pool"] != "started" for s in again.statuses if s["status"] == "ready")


async def test_kill_9_mid_turn_then_restart_keeps_every_acknowledged_turn(model: ScriptedModelServer) -> None:
    """kill -9 during a turn, restart, reconnect: every turn whose result reached the client is in the store."""
    state = {"MOORAGE_DATABASE_URL": ""}
    with run_service(model.url, **state) as first:
        db_url = f"sqlite:///{first.state_dir / 'moorage.db'}"
        client = await Client.connect(first)
        acknowledged = await client.turn("bash echo durable > kept.txt")
        acknowledged += await client.turn("say second turn done")
        uuids = {f["uuid"] for f in acknowledged if f.get("type") in ("assistant", "user") and f.get("uuid")}
        assert uuids
        await client.say("bash python3 -c 'import time; time.sleep(60)'")
        await client.until("assistant", timeout=30)
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(scaled(10))
        state_dir = first.state_dir

    db = await Database.connect(db_url)
    try:
        entries = await SQLModelSessionStore(db).load({"project_key": "default", "session_id": client.session_id})
    finally:
        await db.close()
    stored = {e.get("uuid") for e in entries or []}
    assert uuids <= stored, f"lost acknowledged entries: {uuids - stored}"

    with run_service(model.url, MOORAGE_STATE_DIR=str(state_dir)) as second:
        again = await Client.connect(second, client.session_id)
        assert again.first["state"] == "rehydrated"
        frames = await again.turn("bash cat kept.txt")
        assert "durable" in tool_output(frames)
        assert "second turn done" in prompts_seen(model)
        await again.close()


async def test_racing_reconnects_share_one_rehydrated_sandbox(model: ScriptedModelServer) -> None:
    """Two connections attaching to a suspended session at once get one sandbox between them."""
    with run_service(model.url, MOORAGE_IDLE_TIMEOUT_S="1") as svc:
        client = await Client.connect(svc)
        await client.turn("say first life")
        await client.close()
        await wait_suspended(svc, client.session_id)

        a, b = await asyncio.gather(Client.connect(svc, client.session_id), Client.connect(svc, client.session_id))
        assert {a.first["state"], b.first["state"]} <= {"rehydrated", "attached"}
        await a.say("say shared")
        ra, rb = result_of(await a.until("result")), result_of(await b.until("result"))
        assert ra["result"] == rb["result"] == "shared"
        assert len(events(svc, "session_rehydrating", client.session_id)) == 1
        await a.close()
        await b.close()


def test_database_unreachable_at_start_exits_with_a_clear_message(model: ScriptedModelServer, tmp_path: Path) -> None:
    """No database: the service says which one it could not reach and exits non-zero."""
    env = {
        **os.environ,
        "MOORAGE_DATABASE_URL": "postgresql://moorage@127.0.0.1:1/moorage",
        "MOORAGE_STATE_DIR": str(tmp_path),
        "MOORAGE_PORT": str(free_port()),
        "ANTHROPIC_BASE_URL": model.url,
    }
    proc = subprocess.run(
        [sys.executable, "-m", "moorage", "serve"], env=env, capture_output=True, text=True, timeout=scaled(60)
    )
    assert proc.returncode != 0
    assert "127.0.0.1:1" in proc.stderr and "database" in proc.stderr.lower()


@pytest.mark.skipif(not pg_available(), reason="PostgreSQL is not reachable at 127.0.0.1:5432")
async def test_database_lost_during_a_turn_then_back(model: ScriptedModelServer) -> None:
    """The database vanishes mid-turn: the client is told, the result waits for durability, all recovers."""
    proxy = Cuttable()
    proxy.restore()
    with pg_database() as name:
        url = f"postgresql://postgres@127.0.0.1:{proxy.port}/{name}"
        with run_service(model.url, MOORAGE_DATABASE_URL=url) as svc:
            client = await Client.connect(svc)
            assert result_of(await client.turn("say before"))["result"] == "before"
            await client.say("bash python3 -c 'import time; time.sleep(2)'; echo after-cut")
            await client.until("assistant", timeout=30)
            proxy.cut()
            notice = (await client.until("error", timeout=30))[-1]
            assert notice["code"] == "store_unavailable" and notice["fatal"] is False
            assert await asyncio.to_thread(svc.healthy)
            proxy.restore()
            frames = await client.until("result", timeout=60)
            assert "after-cut" in tool_output(frames)
            assert result_of(await client.turn("say back again"))["result"] == "back again"
            await client.close()


@pytest.mark.skipif(not pg_available(), reason="PostgreSQL is not reachable at 127.0.0.1:5432")
async def test_two_replicas_never_run_one_session_at_once(model: ScriptedModelServer) -> None:
    """A second replica never runs a session the first one runs: a client reaching it while the
    first is in use follows the session there (its turn runs on the first); once the first lets
    the session go, the second one runs it."""
    with (
        pg_database() as name,
        run_service(model.url, MOORAGE_DATABASE_URL=PG_URL.format(name), MOORAGE_IDLE_TIMEOUT_S="1") as one,
        run_service(model.url, MOORAGE_DATABASE_URL=PG_URL.format(name), MOORAGE_HANDOVER_WAIT_S="1") as two,
    ):
        client = await Client.connect(one)
        await client.turn("say on replica one")
        other = await Client.connect(two, client.session_id)  # one's client is attached: in use
        assert other.first["type"] == "session" and other.first["state"] == "attached", other.first
        assert events(one, "handover_declined", client.session_id)
        assert result_of(await other.turn("say from replica two"))["result"] == "from replica two"
        assert not events(two, "session_rehydrating", client.session_id)
        await other.close()
        await client.close()
        await wait_suspended(one, client.session_id)
        moved = await Client.connect(two, client.session_id)
        assert moved.first["state"] == "rehydrated"
        assert result_of(await moved.turn("say on replica two"))["result"] == "on replica two"
        assert "on replica one" in prompts_seen(model)
        await moved.close()


@pytest.mark.skipif(not pg_available(), reason="PostgreSQL is not reachable at 127.0.0.1:5432")
async def test_a_reconnect_to_another_replica_gets_the_session_handed_over(model: ScriptedModelServer) -> None:
    """The owner gives up a session nobody uses there as soon as another replica asks: no idle-timeout wait."""
    with (
        pg_database() as name,
        run_service(model.url, MOORAGE_DATABASE_URL=PG_URL.format(name)) as one,
        run_service(model.url, MOORAGE_DATABASE_URL=PG_URL.format(name), MOORAGE_HANDOVER_WAIT_S="60") as two,
    ):
        client = await Client.connect(one)
        await client.turn("bash echo handed > over.txt")
        await client.close()  # still live on replica one: its idle timeout is a minute away
        moved = await Client.connect(two, client.session_id)
        assert moved.first["state"] == "rehydrated"
        assert "handed" in tool_output(await moved.turn("bash cat over.txt"))
        assert events(one, "session_handed_over", client.session_id)
        assert not events(one, "session_idle_timeout", client.session_id)
        await moved.close()


async def test_a_second_replica_on_one_sqlite_database_refuses_to_start(
    model: ScriptedModelServer, tmp_path: Path
) -> None:
    """SQLite serves one replica: another one (its own state dir) on the same file exits 2 saying
    which replica holds it and how to run more; the first one goes on serving."""
    shared = f"sqlite:///{tmp_path / 'shared.db'}"
    with run_service(model.url, MOORAGE_DATABASE_URL=shared) as one:
        client = await Client.connect(one)
        assert result_of(await client.turn("say before"))["result"] == "before"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "MOORAGE_HOST": "127.0.0.1",
            "MOORAGE_PORT": str(free_port()),
            "MOORAGE_STATE_DIR": str(tmp_path / "two"),
            "MOORAGE_DATABASE_URL": shared,
            "ANTHROPIC_BASE_URL": model.url,
        }
        two = await refused_start(env)
        assert two.returncode == 2, two.stderr
        (started,) = events(one, "service_started")
        assert f"moorage: cannot start: replica {started['replica']} uses this SQLite database" in two.stderr
        assert "MOORAGE_DATABASE_URL=postgresql://" in two.stderr
        assert result_of(await client.turn("say after"))["result"] == "after"
        await client.close()


async def test_a_host_crash_loses_no_more_of_the_workspace_than_the_last_checkpoint(
    model: ScriptedModelServer,
) -> None:
    """kill -9 with the workspace's tmpfs gone too (a reboot): the session comes back with its checkpointed files."""
    with run_service(model.url, MOORAGE_WORKSPACE_CHECKPOINT_S="0") as first:
        client = await Client.connect(first)
        await client.turn("bash echo survived > crash.txt")
        await asyncio.to_thread(
            wait_until,
            lambda: bool(events(first, "workspace_checkpointed", client.session_id)),
            10,
            "the workspace to be checkpointed after the turn",
        )
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(scaled(10))
        state_dir = first.state_dir
    # What a reboot leaves of a tmpfs workspace: an empty mount point.
    lost = [w for w in (state_dir / "workspaces").iterdir() if w.is_mount()]
    if not lost:
        pytest.skip("this host does not give workspaces a filesystem of their own")
    for workspace in lost:
        remove_workspace(workspace)
        workspace.mkdir()
    with run_service(model.url, MOORAGE_STATE_DIR=str(state_dir)) as second:
        assert events(second, "workspace_lost_with_host", client.session_id)
        again = await Client.connect(second, client.session_id)
        assert again.first["state"] == "rehydrated"
        assert "survived" in tool_output(await again.turn("bash cat crash.txt"))
        await again.close()
