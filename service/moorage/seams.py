"""The service's collaborators, as Protocols: what a session, the manager
and the accounting need from the record store, the transcript store, the
spend store and the meter. The session-store package's classes
(``SessionRecords``, ``SQLModelSessionStore``, ``TenantSpend``) satisfy them
structurally; tests may hand in anything that does."""

from __future__ import annotations

import builtins
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from datetime import datetime
from typing import Any, Protocol

from claude_agent_sdk.types import SessionKey, SessionListSubkeysKey, SessionStoreEntry
from moorage_session_store.agents import AgentRecord
from moorage_session_store.files import FileRecord
from moorage_session_store.records import SessionRecord, SessionState, TurnUsage


class RecordStore(Protocol):
    """A session's row: state, owner lease, usage, workspace archive."""

    async def create(
        self,
        id: str,
        tenant: str,
        options: dict[str, Any],
        api: dict[str, Any] | None = None,
        agent: tuple[str, int] | None = None,
    ) -> SessionRecord: ...

    async def get(self, id: str) -> SessionRecord | None: ...

    async def update(self, id: str, /, **fields: Any) -> None: ...

    async def add_usage(self, id: str, turns: int, cost_usd: float, usage: TurnUsage | None = None) -> None: ...

    async def list(
        self, state: SessionState | None = None, owner: str | None = None, tenant: str | None = None
    ) -> builtins.list[SessionRecord]: ...

    async def orphans(self, now: datetime, excluding: str, limit: int) -> builtins.list[SessionRecord]: ...

    async def acquire_lease(self, id: str, owner: str, ttl_s: float) -> bool: ...

    async def renew_lease(self, id: str, owner: str, ttl_s: float) -> bool: ...

    async def release_lease(self, id: str, owner: str) -> None: ...

    async def request_handover(self, id: str, requester: str) -> bool: ...

    async def decline_handover(self, id: str, owner: str) -> None: ...

    async def handover_requests(self, owner: str, since: datetime) -> builtins.list[str]: ...

    async def save_workspace_stream(self, id: str, chunks: AsyncIterable[bytes]) -> int: ...

    def load_workspace_stream(self, id: str) -> AsyncGenerator[bytes, None]: ...

    async def workspace_bytes(self, id: str) -> int: ...

    async def tenant_storage_bytes(self, tenant: str) -> int: ...

    async def purge(self, id: str, owner: str | None = None) -> bool: ...

    async def reap_suspended(self, before: datetime, limit: int) -> builtins.list[str]: ...


class TranscriptStore(Protocol):
    """The SDK's SessionStore, as the service's ``TranscriptSink`` uses it."""

    async def append(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None: ...

    async def load(self, key: SessionKey) -> list[SessionStoreEntry] | None: ...

    async def list_subkeys(self, key: SessionListSubkeysKey) -> list[str]: ...


class SpendStore(Protocol):
    """Tenant spend per UTC day, shared by every replica."""

    async def add(self, day: str, amounts: dict[str, float]) -> None: ...

    async def day(self, day: str) -> dict[str, float]: ...


class Counter(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class Meter(Protocol):
    """The metrics a transcript sink counts (``metrics.Metrics`` is one)."""

    @property
    def store_errors(self) -> Counter: ...


class FileStore(Protocol):
    """A tenant's files (``moorage_session_store.Files``): the retention sweep deletes expired
    ones; a session reads its resources from it and stores its outputs in it."""

    async def delete_expired(self, now: datetime) -> int: ...

    async def put(
        self,
        tenant: str,
        *,
        filename: str,
        mime_type: str,
        chunks: AsyncIterable[bytes],
        max_bytes: int,
        scope_session_id: str | None = None,
        downloadable: bool = True,
        expires_at: datetime | None = None,
    ) -> FileRecord: ...

    async def get(self, tenant: str, file_id: str) -> FileRecord | None: ...

    def read(self, tenant: str, file_id: str) -> AsyncIterator[bytes]: ...


class AgentVersions(Protocol):
    """Stored agents (``moorage_session_store.Agents``), read by the manager for the agents the
    operator marked for warm-up (warm_marks.py)."""

    async def get(self, tenant: str, agent_id: str, version: int | None = None) -> AgentRecord | None: ...
