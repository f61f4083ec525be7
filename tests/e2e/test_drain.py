"""SIGTERM drains: no new work, running turns finish (or are checkpointed), sessions suspend, exit 0."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
import websockets
from moorage.testing.scripted_model import ScriptedModelServer
from support import Client, events, http_status, prompts_seen, result_of, run_service, scaled, session_pids, wait_until


async def closed_with(client: Client) -> tuple[int | None, str]:
    """Drain the client until the server closes it; the close code and reason."""
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            await client.recv(timeout=60)
    rcvd = closed.value.rcvd
    return (rcvd.code, rcvd.reason) if rcvd else (None, "")


async def test_sigterm_lets_a_running_turn_finish_then_suspends_and_exits_0(model: ScriptedModelServer) -> None:
    """The running turn's result arrives, clients get service_draining + 1012, the process exits 0."""
    with run_service(model.url, MOORAGE_DRAIN_GRACE_S="60") as svc:
        busy = await Client.connect(svc)
        idle = await Client.connect(svc)
        await busy.say("sleep 3")
        await busy.until("system", timeout=30)  # the turn is under way
        svc.proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(wait_until, lambda: http_status(svc.url + "/readyz")[0] == 503, 10, "readyz to say 503")
        with pytest.raises(websockets.InvalidStatus) as refused:
            await Client.connect(svc)
        assert refused.value.response.status_code == 503
        frames = await busy.until("result", timeout=60)
        assert result_of(frames)["result"] == "slept"
        notice = (await busy.until("error", timeout=30))[-1]
        assert notice["code"] == "service_draining"
        assert (await closed_with(busy))[0] == 1012
        assert (await closed_with(idle))[0] == 1012
        assert await asyncio.to_thread(svc.proc.wait, scaled(60)) == 0
        assert events(svc, "service_drained")[-1]["unfinished_turns"] == 0
        assert not session_pids(busy.session_id) and not session_pids(idle.session_id)
        state_dir = svc.state_dir

    with run_service(model.url, MOORAGE_STATE_DIR=str(state_dir)) as again:
        back = await Client.connect(again, busy.session_id)
        assert back.first["state"] == "rehydrated"
        assert result_of(await back.turn("say after the restart"))["result"] == "after the restart"
        await back.close()


async def test_a_turn_past_the_drain_grace_is_checkpointed_and_the_service_still_exits_0(
    model: ScriptedModelServer, tmp_path: Path
) -> None:
    """A turn that outlives the grace is stopped; its session is suspended with its transcript so far."""
    with run_service(model.url, MOORAGE_DRAIN_GRACE_S="1") as svc:
        client = await Client.connect(svc)
        await client.turn("say remember the heron")
        await client.say("bash python3 -c 'import time; time.sleep(120)'")
        await client.until("assistant", timeout=30)
        svc.proc.send_signal(signal.SIGTERM)
        assert (await closed_with(client))[0] == 1012
        assert await asyncio.to_thread(svc.proc.wait, scaled(60)) == 0
        assert events(svc, "drain_grace_expired")
        assert not session_pids(client.session_id)
        state_dir = svc.state_dir

    with run_service(model.url, MOORAGE_STATE_DIR=str(state_dir)) as again:
        back = await Client.connect(again, client.session_id)
        assert back.first["state"] == "rehydrated"
        await back.turn("say still here")
        assert "remember the heron" in prompts_seen(model)
        await back.close()
