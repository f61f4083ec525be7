"""Resource limits: what one session's agent does to itself stays in its sandbox."""

from __future__ import annotations

import asyncio
import time

import pytest
import websockets
from moorage.testing.scripted_model import ScriptedModelServer
from support import Client, events, result_of, run_service, tool_output, wait_suspended

MIB = 1024 * 1024


async def test_a_memory_bomb_is_killed_and_only_its_session_hears_of_it(model: ScriptedModelServer) -> None:
    """Past the memory limit the hog is OOM-killed, its client gets sandbox_out_of_memory, others keep streaming."""
    with run_service(model.url, MOORAGE_SANDBOX_MEMORY_BYTES=str(768 * MIB)) as svc:
        if events(svc, "sandbox_limits_unavailable"):
            pytest.skip("this host offers no writable cgroup controllers")
        bomb = await Client.connect(svc)
        bystander = await Client.connect(svc)
        await bomb.say("bash python3 -c 'a = bytearray(3 * 1024**3); print(len(a))'; echo exit=$?")
        t0 = time.monotonic()
        calm = result_of(await bystander.turn("say still streaming"))
        assert calm["result"] == "still streaming" and time.monotonic() - t0 < 30
        frames = await bomb.until("result", timeout=60)
        assert "exit=137" in tool_output(frames)
        notice = (await bomb.until("error", timeout=10))[-1]
        assert notice["code"] == "sandbox_out_of_memory" and notice["fatal"] is False
        assert result_of(await bomb.turn("say survived"))["result"] == "survived"
        await asyncio.gather(bomb.close(), bystander.close())


async def test_a_fork_bomb_hits_the_process_limit(model: ScriptedModelServer) -> None:
    """Forks past the pids limit are refused inside the sandbox; the session and the service go on."""
    with run_service(model.url, MOORAGE_SANDBOX_PIDS="128") as svc:
        if events(svc, "sandbox_limits_unavailable"):
            pytest.skip("this host offers no writable cgroup controllers")
        client = await Client.connect(svc)
        bystander = await Client.connect(svc)
        await client.say("bash for i in $(seq 300); do sleep 3 & done 2>/dev/null; echo forked; wait")
        notice = (await client.until("error", timeout=60))[-1]
        assert notice["code"] == "sandbox_pids_exhausted"
        assert result_of(await bystander.turn("say unaffected"))["result"] == "unaffected"
        if notice["fatal"]:
            # The bomb took the pids the agent itself needed for a thread:
            # its sandbox ended; the session comes back in a fresh one.
            with pytest.raises(websockets.ConnectionClosed):
                await client.recv(timeout=10)
            await wait_suspended(svc, client.session_id)
            client = await Client.connect(svc, client.session_id)
            assert client.first["state"] == "rehydrated"
        assert result_of(await client.turn("say fine"))["result"] == "fine"
        assert await asyncio.to_thread(svc.healthy)
        await asyncio.gather(client.close(), bystander.close())


async def test_a_disk_filler_fills_only_its_own_workspace(model: ScriptedModelServer) -> None:
    """Past the workspace size, writes fail with ENOSPC, the client gets workspace_full, the rest is unaffected."""
    with run_service(
        model.url, MOORAGE_WORKSPACE_MAX_BYTES=str(32 * MIB), MOORAGE_SANDBOX_TMP_BYTES=str(16 * MIB)
    ) as svc:
        if events(svc, "workspace_quota_unavailable"):
            pytest.skip("this host does not let the service mount a sized workspace")
        filler = await Client.connect(svc)
        bystander = await Client.connect(svc)
        await filler.say(
            "bash head -c 100000000 /dev/zero > /workspace/fill; echo ws=$?; "
            # /tmp is freed again at once: the CLI keeps its tool output there.
            "head -c 100000000 /dev/zero > /tmp/fill; echo tmp=$?; rm -f /tmp/fill; ls -l /workspace/fill"
        )
        calm = result_of(await bystander.turn("bash echo hello > /workspace/note && cat /workspace/note"))
        assert calm["subtype"] == "success"
        frames = await filler.until("result", timeout=60)
        output = tool_output(frames)
        assert "No space left on device" in output and "ws=1" in output and "tmp=1" in output
        notice = (await filler.until("error", timeout=10))[-1]
        assert notice["code"] == "workspace_full" and notice["fatal"] is False
        # Freeing space makes the workspace usable again; the session never ended.
        after = await filler.turn("bash rm /workspace/fill && echo small > /workspace/kept && echo freed")
        assert "freed" in tool_output(after)
        assert await asyncio.to_thread(svc.healthy)
        await asyncio.gather(filler.close(), bystander.close())
