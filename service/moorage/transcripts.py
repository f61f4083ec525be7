"""The service's end of the runner's SessionStore: scoped, and never losing
an entry it acknowledged.

A sandbox names whatever key it likes; the service pins every call to the
session's own tenant (``project_key``) and id, keeping only the subpath
(subagent transcripts). When the database is unreachable an ``append`` is
still acknowledged: the entries wait here, in order, and are written when the
database returns. The session holds a turn's ``result`` back until
``durable`` is true, so a result a client saw is always in the database.

Everything in a batch comes from the sandbox: a NUL character, which
PostgreSQL refuses in text columns (an entry's ``uuid``, a ``subpath``),
would fail the batch on every retry and hold the session's results forever.
NULs are replaced with U+FFFD before anything is queued, the same way every
time (so a retried batch still deduplicates by uuid). As a backstop, a batch
the database refuses for any reason other than being unreachable is retried
``POISON_ATTEMPTS`` times and then dropped (logged, counted): one bad entry
never stops the session.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import structlog
from claude_agent_sdk.types import SessionKey, SessionStoreEntry
from moorage_session_store.errors import DatabaseUnavailable
from sqlalchemy import exc as sa

from .seams import Meter, TranscriptStore

log = structlog.get_logger(__name__)


NUL = "\x00"
REPLACEMENT = "\ufffd"
POISON_ATTEMPTS = 3  # refusals (the database up) before a batch is dropped
# The database is away (keep the batch, retry), as opposed to refusing it.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    DatabaseUnavailable,
    OSError,
    TimeoutError,
    sa.OperationalError,
    sa.InterfaceError,
    sa.TimeoutError,
    sa.DisconnectionError,
)


def scrub(value: Any) -> Any:
    """``value`` (parsed JSON) with every NUL in its strings and keys replaced;
    iterative, so no nesting depth can exhaust the stack."""

    def clean(item: Any) -> Any:
        if isinstance(item, str):
            return item.replace(NUL, REPLACEMENT) if NUL in item else item
        if isinstance(item, dict):
            return {}
        if isinstance(item, list):
            return []
        return item

    root = clean(value)
    stack: list[tuple[Any, Any]] = [(value, root)]
    while stack:
        source, target = stack.pop()
        if isinstance(source, dict):
            for k, v in source.items():
                target[clean(k)] = copy = clean(v)
                if isinstance(v, dict | list):
                    stack.append((v, copy))
        elif isinstance(source, list):
            for v in source:
                target.append(copy := clean(v))
                if isinstance(v, dict | list):
                    stack.append((v, copy))
    return root


class RpcFailure(Exception):
    pass


class TranscriptSink:
    def __init__(self, store: TranscriptStore, tenant: str, session_id: str, metrics: Meter | None = None) -> None:
        self.store = store
        self.metrics = metrics
        self.tenant = tenant
        self.session_id = session_id
        self.unsaved: list[tuple[SessionKey, list[SessionStoreEntry]]] = []
        self._refusals = 0  # of the head batch, with the database up
        # One writer at a time: the background flusher and a new append must
        # not both write (and pop) the head batch.
        self._writing = asyncio.Lock()

    @property
    def durable(self) -> bool:
        return not self.unsaved

    def scope(self, key: Any) -> SessionKey:
        scoped: SessionKey = {"project_key": self.tenant, "session_id": self.session_id}
        subpath = key.get("subpath") if isinstance(key, dict) else None
        if isinstance(subpath, str) and subpath and ".." not in subpath.split("/"):
            scoped["subpath"] = subpath.replace(NUL, REPLACEMENT)
        return scoped

    async def handle(self, method: str, params: dict[str, Any]) -> Any:
        key = self.scope(params.get("key"))
        if method == "store.append":
            entries = params.get("entries")
            if not isinstance(entries, list):
                raise RpcFailure("entries must be a list")
            await self.append(key, [cast(SessionStoreEntry, scrub(e)) for e in entries if isinstance(e, dict)])
            return None
        try:
            if method == "store.load":
                return await self.store.load(key)
            if method == "store.list_subkeys":
                return await self.store.list_subkeys(key)
        except Exception as exc:
            raise RpcFailure(f"the session store is unavailable: {type(exc).__name__}") from exc
        raise RpcFailure(f"unknown method {method[:40]!r}")

    async def append(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
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
                if isinstance(exc, UNAVAILABLE):
                    return False  # the database is away: keep everything, retry
                self._refusals += 1
                if self._refusals < POISON_ATTEMPTS:
                    return False
                log.error(
                    "transcript_batch_dropped",
                    session_id=self.session_id,
                    error=type(exc).__name__,
                    entries=len(entries),
                    detail="the database refused this batch repeatedly while up; the session goes on without it",
                )
            self._refusals = 0
            self.unsaved.pop(0)
        return True
