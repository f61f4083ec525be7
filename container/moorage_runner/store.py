"""A SessionStore that lives on the other side of the channel.

The sandbox never holds database credentials: every ``append``/``load`` the
SDK makes is sent to the service as an ``rpc`` frame and answered with
``rpc_result`` (``load`` results may arrive in several chunks, ``more: true``)
or ``rpc_error``. The service scopes every call to this sandbox's own session,
whatever key the SDK passes.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from claude_agent_sdk.types import SessionKey, SessionListSubkeysKey, SessionStoreEntry

from .channel import ChannelOut

RPC_TIMEOUT_S = 60.0


class RpcError(Exception):
    pass


class Rpc:
    """Request/response over the channel, matched by id."""

    def __init__(self, out: ChannelOut) -> None:
        self.out = out
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[asyncio.Future[Any], list[Any]]] = {}

    async def call(self, method: str, params: dict[str, Any]) -> Any:
        rpc_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rpc_id] = (future, [])
        try:
            await self.out.send({"kind": "rpc", "id": rpc_id, "method": method, "params": params})
            return await asyncio.wait_for(future, RPC_TIMEOUT_S)
        finally:
            self._pending.pop(rpc_id, None)

    def resolve(self, frame: dict[str, Any]) -> None:
        """Feed an ``rpc_result``/``rpc_error`` frame from the service."""
        entry = self._pending.get(int(frame.get("id", -1)))
        if entry is None or entry[0].done():
            return
        future, chunks = entry
        if frame.get("kind") == "rpc_error":
            future.set_exception(RpcError(str(frame.get("message", "rpc failed"))))
        elif frame.get("more"):
            chunks.extend(frame.get("result") or [])
        elif chunks:
            future.set_result(chunks + list(frame.get("result") or []))
        else:
            future.set_result(frame.get("result"))


class ChannelSessionStore:
    """Duck-typed SessionStore: append, load and list_subkeys (the SDK probes
    for the optional methods; the service keeps summaries itself)."""

    def __init__(self, rpc: Rpc) -> None:
        self.rpc = rpc

    async def append(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        await self.rpc.call("store.append", {"key": dict(key), "entries": entries})

    async def load(self, key: SessionKey) -> list[SessionStoreEntry] | None:
        result = await self.rpc.call("store.load", {"key": dict(key)})
        return None if result is None else list(result)

    async def list_subkeys(self, key: SessionListSubkeysKey) -> list[str]:
        return list(await self.rpc.call("store.list_subkeys", {"key": dict(key)}))
