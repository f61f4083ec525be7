"""The service's end of the runner's SessionStore: scoped, and never losing
an entry it acknowledged.

A sandbox names whatever key it likes; the service pins every call to the
session's own tenant (``project_key``) and id, keeping only the subpath
(subagent transcripts). When the database is unreachable an ``append`` is
still acknowledged: the entries wait here, in order, and are written when the
database returns. The session holds a turn's ``result`` back until
``durable`` is true, so a result a client saw is always in the database.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

log = structlog.get_logger(__name__)

# A SessionStore, as the SDK defines it (the service uses the SQLModel one).
Store = Any


class RpcFailure(Exception):
    pass


class TranscriptSink:
    def __init__(self, store: Store, tenant: str, session_id: str, metrics: Any = None) -> None:
        self.store = store
        self.metrics = metrics
        self.tenant = tenant
        self.session_id = session_id
        self.unsaved: list[tuple[dict[str, str], list[dict[str, Any]]]] = []
        # One writer at a time: the background flusher and a new append must
        # not both write (and pop) the head batch.
        self._writing = asyncio.Lock()

    @property
    def durable(self) -> bool:
        return not self.unsaved

    def scope(self, key: Any) -> dict[str, str]:
        scoped = {"project_key": self.tenant, "session_id": self.session_id}
        subpath = key.get("subpath") if isinstance(key, dict) else None
        if isinstance(subpath, str) and subpath and ".." not in subpath.split("/"):
            scoped["subpath"] = subpath
        return scoped

    async def handle(self, method: str, params: dict[str, Any]) -> Any:
        key = self.scope(params.get("key"))
        if method == "store.append":
            entries = params.get("entries")
            if not isinstance(entries, list):
                raise RpcFailure("entries must be a list")
            await self.append(key, [e for e in entries if isinstance(e, dict)])
            return None
        try:
            if method == "store.load":
                return await self.store.load(key)
            if method == "store.list_subkeys":
                return await self.store.list_subkeys(key)
        except Exception as exc:
            raise RpcFailure(f"the session store is unavailable: {type(exc).__name__}") from exc
        raise RpcFailure(f"unknown method {method[:40]!r}")

    async def append(self, key: dict[str, str], entries: list[dict[str, Any]]) -> None:
        self.unsaved.append((key, entries))
        await self.flush()

    async def flush(self) -> bool:
        """Write what waits, in order; True once nothing is left unsaved."""
        async with self._writing:
            return await self._write_unsaved()

    async def _write_unsaved(self) -> bool:
        while self.unsaved:
            key, entries = self.unsaved[0]
            try:
                await self.store.append(key, entries)
            except Exception as exc:
                if self.metrics is not None:
                    self.metrics.store_errors.inc()
                log.warning(
                    "transcript_write_failed",
                    session_id=self.session_id,
                    error=type(exc).__name__,
                    pending_batches=len(self.unsaved),
                )
                return False
            self.unsaved.pop(0)
        return True
