"""The public listener as ``moorage serve`` builds it: uvicorn's ``Config.bind_socket`` listener
and the guarded h11 protocol (``server.py``), on loopback."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import uvicorn
from moorage.server import guarded_protocol
from support import eventually
from uvicorn.server import ServerState


async def test_accepted_connections_have_nagle_off() -> None:
    """Every accepted TCP connection sends at once (``TCP_NODELAY``). uvicorn's listener is made
    with ``proto`` 0, so asyncio leaves Nagle on, and a response's body then waited for the
    client's delayed ACK: 40 ms on every request after the first on a kept-alive connection."""

    async def app(scope: Any, receive: Any, send: Any) -> None:  # never reached: nothing is sent
        raise AssertionError("no request was made")

    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None)
    config.load()
    protocol = guarded_protocol(10, 5.0)
    made: list[Any] = []

    def factory() -> Any:
        made.append(protocol(config=config, server_state=ServerState(), app_state={}))
        return made[-1]

    listener = config.bind_socket()
    assert listener.proto == 0  # as in production: asyncio would not set TCP_NODELAY itself
    server = await asyncio.get_running_loop().create_server(factory, sock=listener)
    try:
        _reader, writer = await asyncio.open_connection(*listener.getsockname()[:2])
        try:
            await eventually(lambda: bool(made) and made[0].transport is not None, 10, "the connection")
            accepted = made[0].transport.get_extra_info("socket")
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        finally:
            writer.close()
            await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()
