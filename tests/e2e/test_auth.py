"""Authentication and tenancy at the WebSocket handshake, against the
service as a process."""

from __future__ import annotations

import pytest
import websockets
from moorage.testing.scripted_model import ScriptedModelServer
from support import Client, Service, events, result_of, run_service

ACME = "tok-acme-0123456789abcdef"
GLOBEX = "tok-globex-0123456789abcdef"
KEYS = f"acme:{ACME},globex:{GLOBEX}"


async def refused_status(svc: Service, **kwargs: object) -> int:
    with pytest.raises(websockets.InvalidStatus) as info:
        await Client.connect(svc, **kwargs)  # type: ignore[arg-type]
    return int(info.value.response.status_code)


async def test_missing_bad_and_forged_tokens_are_refused_before_any_sandbox(model: ScriptedModelServer) -> None:
    """No token, a wrong token or a forged one: HTTP 401 at the handshake, and no session is created."""
    with run_service(model.url, MOORAGE_API_KEYS=KEYS) as svc:
        assert await refused_status(svc) == 401
        assert await refused_status(svc, token="tok-acme-0123456789abcdeX") == 401
        assert await refused_status(svc, query="?token=" + "A" * 40) == 401
        assert await refused_status(svc, subprotocols=["moorage.v1", "bearer.nope-nope-nope-nope"]) == 401
        assert not events(svc, "session_ready") and not events(svc, "session_rehydrating")
        assert ACME not in svc.logs() and GLOBEX not in svc.logs()


async def test_a_token_works_as_header_query_or_subprotocol(model: ScriptedModelServer) -> None:
    """Header for servers, ?token= or a bearer.<token> subprotocol for browsers; the token is never echoed."""
    with run_service(model.url, MOORAGE_API_KEYS=KEYS) as svc:
        by_header = await Client.connect(svc, token=ACME)
        assert result_of(await by_header.turn("say hello acme"))["result"] == "hello acme"
        by_query = await Client.connect(svc, by_header.session_id, query=f"?token={ACME}")
        assert by_query.first["state"] == "attached"
        by_proto = await Client.connect(svc, subprotocols=["moorage.v1", f"bearer.{ACME}"])
        assert by_proto.ws.subprotocol == "moorage.v1"
        assert by_proto.first["state"] == "new"
        for client in (by_header, by_query, by_proto):
            await client.close()


async def test_another_tenants_session_answers_like_an_unknown_one(model: ScriptedModelServer) -> None:
    """globex attaching to acme's session id gets exactly what an unknown id gets."""
    with run_service(model.url, MOORAGE_API_KEYS=KEYS) as svc:
        acme = await Client.connect(svc, token=ACME)
        await acme.turn("say mine")
        theirs = await Client.connect(svc, acme.session_id, token=GLOBEX)
        unknown = await Client.connect(svc, "11111111-1111-1111-1111-111111111111", token=GLOBEX)
        assert theirs.first == unknown.first
        assert theirs.first["code"] == "session_not_found"
        await acme.close()


async def test_an_open_service_says_so_loudly(service: Service) -> None:
    """An open (loopback) service logs a warning that authentication is off."""
    warnings = events(service, "auth_disabled")
    assert warnings and warnings[0]["level"] == "warning"
