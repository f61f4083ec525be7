"""Faults from outside: a sandbox killed by the host mid-turn, the database gone between turns."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
import websockets
from moorage.testing.scripted_model import ScriptedModelServer
from support import (
    Client,
    Cuttable,
    pg_database,
    prompts_seen,
    result_of,
    run_service,
    session_pids,
    tool_output,
    wait_suspended,
    wait_until,
)


async def test_a_sandbox_killed_from_outside_mid_turn_is_suspended_and_comes_back(model: ScriptedModelServer) -> None:
    """SIGKILL to every sandbox process (an operator, the kernel): a clear fatal error, then a clean rehydration."""
    with run_service(model.url) as svc:
        victim = await Client.connect(svc)
        bystander = await Client.connect(svc)
        await victim.turn("bash echo precious > kept.txt")
        await victim.turn("say remember the otter")
        await victim.say("bash python3 -c 'import time; time.sleep(120)'")
        await victim.until("assistant", timeout=30)
        pids = session_pids(victim.session_id)
        assert pids
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        error = (await victim.until("error", timeout=30))[-1]
        assert error["code"] == "sandbox_crashed" and error["fatal"] is True
        with pytest.raises(websockets.ConnectionClosed):
            await victim.recv(timeout=10)
        assert result_of(await bystander.turn("say unharmed"))["result"] == "unharmed"
        await wait_suspended(svc, victim.session_id)
        await asyncio.to_thread(wait_until, lambda: not session_pids(victim.session_id), 10, "no sandbox left")

        back = await Client.connect(svc, victim.session_id)
        assert back.first["state"] == "rehydrated"
        frames = await back.turn("bash cat kept.txt")
        assert "precious" in tool_output(frames)
        assert "remember the otter" in prompts_seen(model)
        await asyncio.gather(back.close(), bystander.close())


async def test_the_database_going_away_between_turns_costs_nothing(model: ScriptedModelServer) -> None:
    """Every pooled connection dies (a database restart) while idle: the next turns work and are stored."""
    proxy = Cuttable()
    proxy.restore()
    with pg_database() as name:
        url = f"postgresql://postgres@127.0.0.1:{proxy.port}/{name}"
        with run_service(model.url, MOORAGE_DATABASE_URL=url, MOORAGE_IDLE_TIMEOUT_S="1") as svc:
            client = await Client.connect(svc)
            assert result_of(await client.turn("say before the restart"))["result"] == "before the restart"
            proxy.cut()
            proxy.restore()
            assert result_of(await client.turn("say after the restart"))["result"] == "after the restart"
            await client.close()
            await wait_suspended(svc, client.session_id)
            again = await Client.connect(svc, client.session_id)
            assert again.first["state"] == "rehydrated"
            await again.turn("say third")
            assert "before the restart" in prompts_seen(model) and "after the restart" in prompts_seen(model)
            await again.close()
