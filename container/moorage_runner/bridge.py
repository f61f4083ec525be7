"""The model bridge: a loopback TCP port inside the sandbox that leads to the
service's model proxy.

The sandbox has no network. The service hands it one way out, the model
proxy, as a unix socket bind-mounted into the sandbox (local and Docker
backends) or as a host:port reachable by policy (Kubernetes). The CLI speaks
HTTP to ``ANTHROPIC_BASE_URL``, so the runner listens on 127.0.0.1 (the
sandbox's own loopback) and splices every connection to that target.
"""

from __future__ import annotations

import asyncio
import contextlib


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()


async def _open_target(target: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    scheme, _, address = target.partition(":")
    if scheme == "unix":
        return await asyncio.open_unix_connection(address)
    if scheme == "tcp":
        host, _, port = address.rpartition(":")
        return await asyncio.open_connection(host, int(port))
    raise ValueError(f"unknown model proxy address {target!r}")


class ModelBridge:
    """Listens on 127.0.0.1:<ephemeral> and forwards to ``target``."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await _open_target(self.target)
        except OSError:
            client_w.close()
            return
        try:
            await asyncio.gather(_pipe(client_r, up_w), _pipe(up_r, client_w))
        finally:
            for w in (up_w, client_w):
                w.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2)
