"""Resource limits: what one session's agent does to itself stays in its sandbox."""

from __future__ import annotations

import asyncio
import time

from moorage.testing.scripted_model import ScriptedModelServer
from support import Client, events, result_of, run_service, tool_output

MIB = 1024 * 1024


async def test_a_memory_bomb_is_killed_and_only_its_session_hears_of_it(model: ScriptedModelServer) -> None:
    """Past the memory limit the hog is OOM-killed, its client gets sandbox_out_of_memory, others keep streaming."""
    with run_service(model.url, MOORAGE_SANDBOX_MEMORY_BYTES=str(768 * MIB)) as svc:
        if events(svc, "sandbox_limits_unavailable"):
            import pytest

            pytest.skip("this host offers no writable cgroup v1 controllers")
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
            import pytest

            pytest.skip("this host offers no writable cgroup v1 controllers")
        client = await Client.connect(svc)
        await client.say("bash for i in $(seq 300); do sleep 3 & done 2>/dev/null; echo forked; wait")
        frames = await client.until("result", timeout=60)
        assert "forked" in tool_output(frames)
        notice = (await client.until("error", timeout=10))[-1]
        assert notice["code"] == "sandbox_pids_exhausted" and notice["fatal"] is False
        assert result_of(await client.turn("say fine"))["result"] == "fine"
        assert await asyncio.to_thread(svc.healthy)
        await client.close()
