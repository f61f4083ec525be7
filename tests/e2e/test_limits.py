"""Limits on what one client can make the service do."""

from __future__ import annotations

import asyncio
import datetime
import json

import pytest
import websockets
from moorage.testing.scripted_model import ScriptedModelServer
from support import Client, Service, events, result_of, run_service


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


async def test_sandboxes_start_one_after_another_past_the_start_gate(model: ScriptedModelServer) -> None:
    """With one start slot, a second new session starts its sandbox only once the first is ready; both work."""
    with run_service(
        model.url, MOORAGE_MAX_STARTING_SANDBOXES="1", MOORAGE_WARM_SANDBOXES="0", MOORAGE_WARM_AGENTS="0"
    ) as svc:
        a, b = await asyncio.gather(Client.connect(svc), Client.connect(svc))
        assert a.first["state"] == b.first["state"] == "new"
        for client in (a, b):
            assert result_of(await client.turn("say ok"))["result"] == "ok"
        ready = sorted(events(svc, "session_ready"), key=lambda r: str(r["timestamp"]))
        assert len(ready) == 2

        def began(record: dict[str, object]) -> float:
            ts = datetime.datetime.fromisoformat(str(record["timestamp"]).replace("Z", "+00:00")).timestamp()
            return ts - float(str(record["start_s"]))

        # The second sandbox began starting after the first was ready (log timestamps are to the microsecond).
        first_ready = datetime.datetime.fromisoformat(str(ready[0]["timestamp"]).replace("Z", "+00:00")).timestamp()
        assert began(ready[1]) >= first_ready - 0.05
        await a.close()
        await b.close()
