"""Moorage's session records: one ``sessions`` row per service session (state, usage, options,
sandbox handle, replica lease) and its latest workspace snapshot (``workspaces`` names the current
generation, ``workspace_chunks`` holds it in ordered chunks, streamed in and out).

:class:`SessionRecords` is a small async repository over a :class:`~moorage_session_store.Database`.
It returns :class:`SessionRecord`, a frozen dataclass (a snapshot: it never changes or lazy-loads
after it is returned). All times are timezone-aware UTC.

Leases: ``acquire_lease`` is a single conditional ``UPDATE ... WHERE owner IS NULL OR owner = :me
OR lease_expires_at < :now``, judged by the row count, so two replicas racing on one database get
exactly one winner (PostgreSQL re-checks the condition after the row lock; SQLite has one writer).
``now`` is the caller's clock: replicas sharing a database need NTP-synchronised clocks, and a TTL
well above the expected skew.
"""

from __future__ import annotations

import builtins
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal, get_args

from sqlalchemy import ColumnElement, LargeBinary, Text, cast, delete, func, insert, or_, select, tuple_, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite

from .columns import utcnow
from .database import Database
from .errors import InvalidRecord, RevisionConflict, SessionExists, SessionNotFound
from .files import queue_blob_deletions
from .models import (
    ENTRIES,
    FILES,
    KEYS,
    SESSION_COMMANDS,
    SESSION_EVENTS,
    SESSIONS,
    WORKSPACE_CHUNKS,
    WORKSPACES,
    SessionRow,
    WorkspaceRow,
)
from .webhooks import Announcement, enqueue

__all__ = [
    "SESSION_STATES",
    "SessionQuery",
    "SessionRecord",
    "SessionRecords",
    "SessionRow",
    "SessionState",
    "TurnUsage",
    "WorkspaceRow",
]

#: Attempts of ``change_api`` against concurrent writers.
CHANGE_ATTEMPTS = 16
#: Bytes per ``workspace_chunks`` row written by ``save_workspace``.
WORKSPACE_CHUNK_BYTES = 1024 * 1024

SessionState = Literal["active", "suspended", "closed"]
SESSION_STATES: frozenset[str] = frozenset(get_args(SessionState))

#: Fields ``update`` may set (``id`` and ``created_at`` are fixed; ``updated_at`` is always stamped).
UPDATABLE_FIELDS = frozenset(
    {"tenant", "state", "last_active_at", "turns", "cost_usd", "options", "sandbox", "owner", "lease_expires_at"}
)


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """A snapshot of one ``sessions`` row."""

    id: str
    tenant: str
    state: SessionState
    created_at: datetime
    updated_at: datetime
    last_active_at: datetime
    turns: int
    cost_usd: float
    options: dict[str, Any]
    sandbox: dict[str, Any] | None
    owner: str | None
    lease_expires_at: datetime | None
    handover_requested_at: datetime | None = None
    api: dict[str, Any] | None = None  # the HTTP view's fields (title, metadata, environment_id, budget)
    agent_id: str | None = None
    agent_version: int | None = None
    archived_at: datetime | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    active_seconds: float = 0.0


@dataclass(frozen=True)
class TurnUsage:
    """What one turn adds to a session's counters."""

    turns: int = 0
    cost_usd: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    active_seconds: float = 0.0


@dataclass(frozen=True)
class SessionQuery:
    """Which of a tenant's sessions ``page`` returns (``None``: any)."""

    agent_id: str | None = None
    agent_version: int | None = None
    include_archived: bool = False
    created_after: datetime | None = None  # strictly after
    created_from: datetime | None = None  # at or after
    created_before: datetime | None = None  # strictly before
    created_until: datetime | None = None  # at or before
    newest_first: bool = True


def _record(row: Any) -> SessionRecord:
    return SessionRecord(**dict(row._mapping))


class SessionRecords:
    """Async repository for ``sessions`` and ``workspaces``. Safe to share between tasks."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._generation = 0

    async def create(
        self,
        id: str,
        tenant: str,
        options: dict[str, Any],
        api: dict[str, Any] | None = None,
        agent: tuple[str, int] | None = None,
    ) -> SessionRecord:
        """Insert an ``active`` session with zero usage; raise :class:`SessionExists` if ``id`` is taken.
        ``api``: the HTTP view's fields; ``agent``: the (id, version) it runs, for listing by agent."""
        now = utcnow()
        record = SessionRecord(
            id=id,
            tenant=tenant,
            state="active",
            created_at=now,
            updated_at=now,
            last_active_at=now,
            turns=0,
            cost_usd=0.0,
            options=options,
            sandbox=None,
            owner=None,
            lease_expires_at=None,
            api=api,
            agent_id=agent[0] if agent is not None else None,
            agent_version=agent[1] if agent is not None else None,
        )
        with self._db.translate_errors():
            try:
                async with self._db.engine.begin() as conn:
                    await conn.execute(insert(SESSIONS).values(**asdict(record)))
                    await enqueue(conn, tenant, [Announcement("session.created", id, now)])
            except sa_exc.IntegrityError as err:
                raise SessionExists(f"session {id!r} already exists") from err
        return record

    async def get(self, id: str) -> SessionRecord | None:
        """The session, or ``None``."""
        with self._db.translate_errors():
            async with self._db.engine.connect() as conn:
                row = (await conn.execute(select(SESSIONS).where(SESSIONS.c.id == id))).first()
        return None if row is None else _record(row)

    async def update(self, id: str, /, **fields: Any) -> None:
        """Set ``fields`` (names from :data:`UPDATABLE_FIELDS`) and ``updated_at``.

        Raises :class:`InvalidRecord` for an unknown field or state, :class:`SessionNotFound` if no row.
        """
        unknown = set(fields) - UPDATABLE_FIELDS
        if unknown:
            raise InvalidRecord(f"cannot update {', '.join(sorted(unknown))}")
        if "state" in fields and fields["state"] not in SESSION_STATES:
            raise InvalidRecord(f"unknown session state {fields['state']!r}")
        await self._update_one(id, {**fields, "updated_at": utcnow()})

    async def add_usage(self, id: str, turns: int, cost_usd: float, usage: TurnUsage | None = None) -> None:
        """Atomically add to ``turns``, ``cost_usd`` and the counters in ``usage`` (in SQL, so
        concurrent adds never lose one)."""
        values: dict[str, Any] = {
            "turns": SESSIONS.c.turns + turns,
            "cost_usd": SESSIONS.c.cost_usd + cost_usd,
            "updated_at": utcnow(),
        }
        if usage is not None:
            for name in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_creation_tokens"):
                values[name] = SESSIONS.c[name] + getattr(usage, name)
            values["active_seconds"] = SESSIONS.c.active_seconds + usage.active_seconds
        await self._update_one(id, values)

    async def change_api(
        self, id: str, tenant: str, change: Callable[[SessionRecord], dict[str, Any]]
    ) -> SessionRecord | None:
        """Replace the HTTP view's fields with ``change(record)``, compare-and-set on ``updated_at``:
        a concurrent writer makes this one read again and re-apply ``change`` (up to
        ``CHANGE_ATTEMPTS`` times, then :class:`RevisionConflict`), so no update is lost.
        ``change`` may raise to refuse. ``None``: no such session of ``tenant``."""
        for _ in range(CHANGE_ATTEMPTS):
            with self._db.translate_errors():
                async with self._db.engine.connect() as conn:
                    stmt = select(SESSIONS).where(SESSIONS.c.id == id, SESSIONS.c.tenant == tenant)
                    row = (await conn.execute(stmt)).first()
            if row is None or row.state == "closed":
                return None
            record = _record(row)
            api = change(record)
            if api == record.api:
                return record
            now = max(utcnow(), record.updated_at + timedelta(microseconds=1))  # a new value, always
            with self._db.translate_errors():
                async with self._db.engine.begin() as conn:
                    result = await conn.execute(
                        update(SESSIONS)
                        .where(SESSIONS.c.id == id, SESSIONS.c.updated_at == record.updated_at)
                        .values(api=api, updated_at=now)
                    )
            if result.rowcount == 1:
                return replace(record, api=api, updated_at=now)
        raise RevisionConflict(f"session {id!r} kept changing under this update")

    async def archive(self, id: str, tenant: str) -> SessionRecord | None:
        """Set ``archived_at`` (once; archiving again keeps the first time). ``None``: no such session."""
        now = utcnow()
        with self._db.translate_errors():
            async with self._db.engine.begin() as conn:
                archived = await conn.execute(
                    update(SESSIONS)
                    .where(SESSIONS.c.id == id, SESSIONS.c.tenant == tenant, SESSIONS.c.archived_at.is_(None))
                    .values(archived_at=now, updated_at=now)
                )
                if archived.rowcount == 1:
                    await enqueue(conn, tenant, [Announcement("session.archived", id, now)])
                row = (
                    await conn.execute(select(SESSIONS).where(SESSIONS.c.id == id, SESSIONS.c.tenant == tenant))
                ).first()
        return None if row is None or row.state == "closed" else _record(row)

    async def page(
        self, tenant: str, query: SessionQuery, after: tuple[datetime, str] | None, limit: int
    ) -> builtins.list[SessionRecord]:
        """Up to ``limit`` of ``tenant``'s sessions matching ``query``, ordered by
        ``(created_at, id)`` (newest first unless ``query.newest_first`` is false), starting past
        the cursor ``after`` (the last ``(created_at, id)`` of the previous page)."""
        c = SESSIONS.c
        stmt = select(SESSIONS).where(c.tenant == tenant, c.state != "closed")
        if query.agent_id is not None:
            stmt = stmt.where(c.agent_id == query.agent_id)
        if query.agent_version is not None:
            stmt = stmt.where(c.agent_version == query.agent_version)
        if not query.include_archived:
            stmt = stmt.where(c.archived_at.is_(None))
        for bound, op in (
            (query.created_after, "__gt__"),
            (query.created_from, "__ge__"),
            (query.created_before, "__lt__"),
            (query.created_until, "__le__"),
        ):
            if bound is not None:
                stmt = stmt.where(getattr(c.created_at, op)(bound))
        key = tuple_(c.created_at, c.id)
        if after is not None:
            stmt = stmt.where(key < tuple_(*after) if query.newest_first else key > tuple_(*after))
        order = (c.created_at.desc(), c.id.desc()) if query.newest_first else (c.created_at, c.id)
        with self._db.translate_errors():
            async with self._db.engine.connect() as conn:
                rows = (await conn.execute(stmt.order_by(*order).limit(limit))).all()
        return [_record(row) for row in rows]

    async def _update_one(self, id: str, values: dict[str, Any]) -> None:
        with self._db.translate_errors():
            async with self._db.engine.begin() as conn:
                result = await conn.execute(update(SESSIONS).where(SESSIONS.c.id == id).values(**values))
        if result.rowcount == 0:
            raise SessionNotFound(f"no session {id!r}")

    async def list(
        self, state: SessionState | None = None, owner: str | None = None, tenant: str | None = None
    ) -> builtins.list[SessionRecord]:
        """Sessions, oldest first, optionally only those in ``state``, held by ``owner``, of ``tenant``."""
        stmt = select(SESSIONS).order_by(SESSIONS.c.created_at, SESSIONS.c.id)
        if state is not None:
            stmt = stmt.where(SESSIONS.c.state == state)
        if owner is not None:
            stmt = stmt.where(SESSIONS.c.owner == owner)
        if tenant is not None:
            stmt = stmt.where(SESSIONS.c.tenant == tenant)
        with self._db.translate_errors():
            async with self._db.engine.connect() as conn:
                rows = (await conn.execute(stmt)).all()
        return [_record(row) for row in rows]

    async def orphans(self, now: datetime, excluding: str, limit: int) -> builtins.list[SessionRecord]:
        """Active sessions whose lease another replica than ``excluding`` let expire before ``now``
        (that replica stopped renewing it), oldest expiry first, at most ``limit``."""
        stmt = (
            select(SESSIONS)
            .where(
                SESSIONS.c.state == "active",
                SESSIONS.c.owner.is_not(None),
                SESSIONS.c.owner != excluding,
                SESSIONS.c.lease_expires_at < now,
            )
            .order_by(SESSIONS.c.lease_expires_at)
            .limit(limit)
        )
        with self._db.translate_errors():
            async with self._db.engine.connect() as conn:
                rows = (await conn.execute(stmt)).all()
        return [_record(row) for row in rows]

    async def acquire_lease(self, id: str, owner: str, ttl_s: float) -> bool:
        """Take (or extend) the lease if it is free, already ours, or expired. ``False`` if held or no row."""
        now = utcnow()
        free = or_(SESSIONS.c.owner.is_(None), SESSIONS.c.owner == owner, SESSIONS.c.lease_expires_at < now)
        return await self._set_lease(id, free, owner, now + timedelta(seconds=ttl_s), now)

    async def renew_lease(self, id: str, owner: str, ttl_s: float) -> bool:
        """Push our lease's expiry to now + ``ttl_s``; ``False`` if another owner holds it (or no row)."""
        now = utcnow()
        return await self._set_lease(id, SESSIONS.c.owner == owner, owner, now + timedelta(seconds=ttl_s), now)

    async def release_lease(self, id: str, owner: str) -> None:
        """Give the lease up if we hold it (no-op otherwise); a pending handover request is answered by it."""
        stmt = (
            update(SESSIONS)
            .where(SESSIONS.c.id == id, SESSIONS.c.owner == owner)
            .values(owner=None, lease_expires_at=None, handover_requested_at=None, updated_at=utcnow())
        )
        with self._db.translate_errors():
            async with self._db.engine.begin() as conn:
                await conn.execute(stmt)

    async def request_handover(self, id: str, requester: str) -> bool:
        """Ask the replica holding ``id``'s lease to give the session up once nobody uses it there, so
        ``requester`` can take it. ``False`` when no other replica holds it (nothing to ask)."""
        now = utcnow()
        stmt = (
            update(SESSIONS)
            .where(SESSIONS.c.id == id, SESSIONS.c.owner.is_not(None), SESSIONS.c.owner != requester)
            .values(handover_requested_at=now)
        )
        with self._db.translate_errors():
            async with self._db.engine.begin() as conn:
                result = await conn.execute(stmt)
        return result.rowcount == 1

    async def decline_handover(self, id: str, owner: str) -> None:
        """``owner`` keeps the session (it is in use there): the request is cleared, which tells
        the asking replica at once instead of when its wait runs out."""
        stmt = update(SESSIONS).where(SESSIONS.c.id == id, SESSIONS.c.owner == owner).values(handover_requested_at=None)
        with self._db.translate_errors():
            async with self._db.engine.begin() as conn:
                await conn.execute(stmt)

    async def handover_requests(self, owner: str, since: datetime) -> builtins.list[str]:
        """Ids of sessions ``owner`` holds that another replica asked for at or after ``since``."""
        stmt = select(SESSIONS.c.id).where(SESSIONS.c.owner == owner, SESSIONS.c.handover_requested_at >= since)
        with self._db.translate_errors():
            async with self._db.engine.connect() as conn:
                return [row[0] for row in (await conn.execute(stmt)).all()]

    async def _set_lease(
        self, id: str, condition: ColumnElement[bool], owner: str | None, expires: datetime | None, now: datetime
    ) -> bool:
        stmt = (
            update(SESSIONS)
            .where(SESSIONS.c.id == id, condition)
            .values(owner=owner, lease_expires_at=expires, updated_at=now)
        )
        with self._db.translate_errors():
            async with self._db.engine.begin() as conn:
                result = await conn.execute(stmt)
        return result.rowcount == 1

    async def save_workspace_stream(self, id: str, chunks: AsyncIterable[bytes]) -> int:
        """Store (replace) the session's workspace archive as it streams in; returns its bytes.

        Each chunk becomes one ``workspace_chunks`` row of a new generation, in its own short
        transaction, so nothing holds the whole archive and no write lock is held while the source
        is slow. The replace is one transaction: the ``workspaces`` row moves to the new generation
        (forward only: a save that started earlier and finishes later changes nothing) and every
        older generation's chunks are deleted. If ``chunks`` raises, or a write fails, this
        generation's chunks are deleted, the current archive stays, and the error propagates
        unchanged. :class:`SessionNotFound` if no session.
        """
        generation = self._next_generation()
        seq = size = 0
        try:
            async for chunk in chunks:  # outside translate_errors: the source's errors are its own
                if not chunk:
                    continue
                row = {"session_id": id, "generation": generation, "seq": seq, "size": len(chunk), "data": chunk}
                await self._write(id, insert(WORKSPACE_CHUNKS).values(**row))
                seq, size = seq + 1, size + len(chunk)
            values = {"session_id": id, "generation": generation, "size": size, "updated_at": utcnow()}
            upsert = (postgresql.insert if self._db.dialect == "postgresql" else sqlite.insert)(WORKSPACES).values(
                **values
            )
            stmt = upsert.on_conflict_do_update(
                index_elements=[WORKSPACES.c.session_id],
                set_={name: upsert.excluded[name] for name in ("generation", "size", "updated_at")},
                where=WORKSPACES.c.generation < upsert.excluded.generation,
            )
            older = delete(WORKSPACE_CHUNKS).where(
                WORKSPACE_CHUNKS.c.session_id == id, WORKSPACE_CHUNKS.c.generation < generation
            )
            moved = await self._write(id, stmt, older)
        except BaseException:
            with contextlib.suppress(Exception):
                await self._discard(id, generation)
            raise
        if not moved:  # a newer save is already current
            await self._discard(id, generation)
        return size

    def _next_generation(self) -> int:
        """Increasing: the caller's clock in ns (one replica saves a session at a time: its lease
        holder), never repeating within this process."""
        self._generation = max(time.time_ns(), self._generation + 1)
        return self._generation

    async def _write(self, id: str, stmt: Any, then: Any = None) -> bool:
        """Run ``stmt`` (and, if it changed a row, ``then``) in one transaction; True if it did."""
        with self._db.translate_errors():
            try:
                async with self._db.engine.begin() as conn:
                    changed = (await conn.execute(stmt)).rowcount > 0
                    if changed and then is not None:
                        await conn.execute(then)
            except sa_exc.IntegrityError as err:  # the foreign key: no such session
                raise SessionNotFound(f"no session {id!r}") from err
        return changed

    async def _discard(self, id: str, generation: int) -> None:
        stmt = delete(WORKSPACE_CHUNKS).where(
            WORKSPACE_CHUNKS.c.session_id == id, WORKSPACE_CHUNKS.c.generation == generation
        )
        with self._db.translate_errors():
            async with self._db.engine.begin() as conn:
                await conn.execute(stmt)

    async def load_workspace_stream(self, id: str) -> AsyncGenerator[bytes, None]:
        """The current archive's chunks in order, fetched one at a time (nothing if none was saved),
        all from one snapshot of the database, so a replace that commits meanwhile cannot cut it
        short. PostgreSQL: one REPEATABLE READ transaction, a query per chunk (asyncpg's cursors
        prefetch 50 rows); SQLite: one statement, stepped row by row."""
        chunks = WORKSPACE_CHUNKS
        current = select(WORKSPACES.c.generation).where(WORKSPACES.c.session_id == id).scalar_subquery()
        with self._db.translate_errors():
            async with self._db.engine.connect() as conn:
                if self._db.dialect == "postgresql":
                    await conn.execution_options(isolation_level="REPEATABLE READ")
                    async with conn.begin():
                        seq = 0
                        one = select(chunks.c.data).where(chunks.c.session_id == id, chunks.c.generation == current)
                        while (data := (await conn.execute(one.where(chunks.c.seq == seq))).scalar()) is not None:
                            yield bytes(data)
                            seq += 1
                    return
                stmt = select(chunks.c.data).where(chunks.c.session_id == id, chunks.c.generation == current)
                result = await conn.stream(stmt.order_by(chunks.c.seq).execution_options(yield_per=1))
                async for row in result:
                    yield bytes(row[0])

    async def workspace_bytes(self, id: str) -> int:
        """Bytes of workspace archive the session holds in the database: every stored chunk,
        a save in flight included (what it costs, for storage quotas)."""
        stmt = select(func.coalesce(func.sum(WORKSPACE_CHUNKS.c.size), 0)).where(WORKSPACE_CHUNKS.c.session_id == id)
        with self._db.translate_errors():
            async with self._db.engine.connect() as conn:
                return int((await conn.execute(stmt)).scalar_one())

    async def save_workspace(self, id: str, data: bytes) -> None:
        """``save_workspace_stream`` of an archive already in memory (tests, small archives)."""

        async def pieces() -> AsyncIterator[bytes]:
            for start in range(0, len(data), WORKSPACE_CHUNK_BYTES):
                yield data[start : start + WORKSPACE_CHUNK_BYTES]

        await self.save_workspace_stream(id, pieces())

    async def load_workspace(self, id: str) -> bytes | None:
        """The whole current archive in memory, or ``None`` if none was saved (tests, small archives)."""
        parts = [chunk async for chunk in self.load_workspace_stream(id)]
        return b"".join(parts) if parts else None

    async def delete(self, id: str) -> None:
        """Delete the session and everything it stored here: its workspace archives (every
        generation), its event log, its commands, its files and record (no-op if absent)."""
        with self._db.translate_errors():
            async with self._db.engine.begin() as conn:
                await conn.execute(delete(SESSION_COMMANDS).where(SESSION_COMMANDS.c.session_id == id))
                await conn.execute(delete(SESSION_EVENTS).where(SESSION_EVENTS.c.session_id == id))
                await conn.execute(delete(WORKSPACE_CHUNKS).where(WORKSPACE_CHUNKS.c.session_id == id))
                await conn.execute(delete(WORKSPACES).where(WORKSPACES.c.session_id == id))
                await queue_blob_deletions(conn, FILES.c.scope_session_id == id)
                await conn.execute(delete(FILES).where(FILES.c.scope_session_id == id))  # chunks: cascade
                await conn.execute(delete(SESSIONS).where(SESSIONS.c.id == id))

    # --- storage: what a tenant keeps, and deleting it -----------------------------------------

    async def tenant_storage_bytes(self, tenant: str) -> int:
        """Bytes ``tenant`` has stored: its sessions' workspace snapshots, its transcript entries
        (each entry's JSON text, subagent transcripts included), its sessions' event logs (each
        event's JSON body) and its files (their sizes, the bytes stored so far of uploads in flight included). The one
        place storage is counted.

        Cost: a sum over the tenant's transcript rows (the ``(project_key, ...)`` and ``(key_id, id)``
        indexes find them); callers ask once per new session or workspace save, not per entry.
        """
        if self._db.dialect == "postgresql":
            entry_bytes = func.octet_length(cast(ENTRIES.c.entry, Text))  # ``json`` is stored as its text
            event_bytes = func.octet_length(cast(SESSION_EVENTS.c.body, Text))
        else:
            entry_bytes = func.length(cast(ENTRIES.c.entry, LargeBinary))  # bytes, not characters
            event_bytes = func.length(cast(SESSION_EVENTS.c.body, LargeBinary))
        workspaces = (  # every stored chunk, a save in flight included
            select(func.coalesce(func.sum(WORKSPACE_CHUNKS.c.size), 0))
            .select_from(WORKSPACE_CHUNKS.join(SESSIONS, WORKSPACE_CHUNKS.c.session_id == SESSIONS.c.id))
            .where(SESSIONS.c.tenant == tenant)
            .scalar_subquery()
        )
        transcripts = (
            select(func.coalesce(func.sum(entry_bytes), 0))
            .select_from(ENTRIES.join(KEYS, ENTRIES.c.key_id == KEYS.c.id))
            .where(KEYS.c.project_key == tenant)  # the service keys transcripts by tenant
            .scalar_subquery()
        )
        events = (
            select(func.coalesce(func.sum(event_bytes), 0))
            .select_from(SESSION_EVENTS.join(SESSIONS, SESSION_EVENTS.c.session_id == SESSIONS.c.id))
            .where(SESSIONS.c.tenant == tenant)
            .scalar_subquery()
        )
        files = (  # ``size_bytes`` grows as an upload's bytes are stored, wherever they are
            select(func.coalesce(func.sum(FILES.c.size_bytes), 0)).where(FILES.c.tenant == tenant).scalar_subquery()
        )
        with self._db.translate_errors():
            async with self._db.engine.connect() as conn:
                total = (await conn.execute(select(workspaces, transcripts, events, files))).one()
        return sum(int(part) for part in total)

    async def purge(self, id: str, owner: str | None = None) -> bool:
        """Delete the session and everything it stored (record, workspace, transcripts with their
        subagent transcripts) in one transaction, unless a replica other than ``owner`` holds an
        unexpired lease on it. ``False`` when there is no such session or it is held elsewhere.

        The caller makes sure nothing of the session still runs (a live session would write its
        transcript again). The condition is part of the ``DELETE``, so a replica that takes the
        lease at the same moment either wins (nothing is deleted) or finds no row.
        """
        now = utcnow()
        free = [SESSIONS.c.owner.is_(None), SESSIONS.c.lease_expires_at < now]
        if owner is not None:
            free.append(SESSIONS.c.owner == owner)
        which = [SESSIONS.c.id == id, or_(*free)]
        stmt = delete(SESSIONS).where(*which).returning(SESSIONS.c.id, SESSIONS.c.tenant)
        return bool(await self._delete_with_transcripts(stmt, select(SESSIONS.c.id).where(*which)))

    async def reap_suspended(self, before: datetime, limit: int) -> builtins.list[str]:
        """Delete up to ``limit`` sessions suspended since before ``before`` (their last update) that
        no replica holds a lease on, with everything they stored; the ids deleted.

        Safe with several replicas on one database: the condition is re-checked by the ``DELETE``
        itself (on PostgreSQL after the row lock), so a session another replica is leasing right
        now is never deleted, and two reapers never both count one session.
        """
        now = utcnow()
        expired = [
            SESSIONS.c.state == "suspended",
            SESSIONS.c.updated_at < before,
            or_(SESSIONS.c.owner.is_(None), SESSIONS.c.lease_expires_at < now),
        ]
        oldest = select(SESSIONS.c.id).where(*expired).order_by(SESSIONS.c.updated_at, SESSIONS.c.id).limit(limit)
        stmt = (
            delete(SESSIONS)
            .where(SESSIONS.c.id.in_(oldest.scalar_subquery()), *expired)
            .returning(SESSIONS.c.id, SESSIONS.c.tenant)
        )
        return await self._delete_with_transcripts(stmt, oldest)

    async def _delete_with_transcripts(self, stmt: Any, sessions: Any) -> builtins.list[str]:
        """Run a ``DELETE ... RETURNING id, tenant`` on ``sessions`` (workspaces, event logs,
        commands and session-scoped files go by ON DELETE CASCADE) and delete the transcripts of
        the rows it removed, in the same transaction; the objects of the files of ``sessions`` (a
        ``SELECT`` of the ids it may delete) are queued for deletion first (files.py)."""
        with self._db.translate_errors():
            async with self._db.engine.begin() as conn:
                await queue_blob_deletions(conn, FILES.c.scope_session_id.in_(sessions.scalar_subquery()))
                rows = (await conn.execute(stmt)).all()
                if rows:
                    pairs = [(tenant, session_id) for session_id, tenant in rows]
                    # Entries go with their key rows (ON DELETE CASCADE).
                    await conn.execute(delete(KEYS).where(tuple_(KEYS.c.project_key, KEYS.c.session_id).in_(pairs)))
                    now = utcnow()
                    for session_id, tenant in rows:
                        await enqueue(conn, tenant, [Announcement("session.deleted", session_id, now)])
        return [session_id for session_id, _tenant in rows]
