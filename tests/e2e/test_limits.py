"""Limits on what one client can make the service do."""

from __future__ import annotations

import json

import pytest
import websockets
from moorage.testing.scripted_model import ScriptedModelServer
from support import Client, Service, result_of, run_service


async def test_an_oversize_frame_closes_only_its_connection(service: Service) -> None:
    """A frame over 1 MiB closes that connection with 1009; the service and other clients carry on."""
    bystander = await Client.connect(service)
    offender = await Client.connect(service)
    await offender.say("x" * (2 * 1024 * 1024))
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await offender.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    assert result_of(await bystander.turn("say unaffected"))["result"] == "unaffected"
    await bystander.close()


async def test_a_flooding_client_is_rate_limited_not_disconnected(model: ScriptedModelServer) -> None:
    """Frames past the per-connection rate get rate_limited errors; the connection stays usable."""
    with run_service(model.url, MOORAGE_FRAMES_PER_S="5", MOORAGE_FRAMES_BURST="5") as svc:
        client = await Client.connect(svc)
        for n in range(30):
            await client.send({"type": "ping", "id": n})
        replies = [await client.recv() for _ in range(30)]
        limited = [r for r in replies if r.get("type") == "error"]
        assert limited and all(r["code"] == "rate_limited" and r["fatal"] is False for r in limited)
        assert sum(r.get("type") == "pong" for r in replies) >= 5
        await client.close()


async def test_a_tenant_past_its_session_limit_is_told_to_retry(model: ScriptedModelServer) -> None:
    """Past MOORAGE_MAX_SESSIONS_PER_TENANT a new session is refused with too_many_sessions and close 1013."""
    with run_service(model.url, MOORAGE_MAX_SESSIONS_PER_TENANT="1") as svc:
        first = await Client.connect(svc)
        second = await Client.connect(svc)
        assert second.first["code"] == "too_many_sessions" and second.first["fatal"] is True
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await second.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        assert json.loads(json.dumps(first.first))["state"] == "new"
        await first.close()
