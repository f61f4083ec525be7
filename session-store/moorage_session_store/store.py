"""``SQLModelSessionStore``: claude-agent-sdk's ``SessionStore`` protocol on SQLite or PostgreSQL.

Schema (see ``models.py``): one ``session_store_keys`` row per transcript (main or subagent) with its
storage mtime and, for main transcripts, the SDK's folded summary; one ``session_store_entries`` row
per transcript line, ordered by an increasing integer id, with a partial unique index on
``(key_id, uuid)`` so a retried batch never duplicates.

Every ``append`` is one transaction that starts by upserting the key row. The upsert locks that row
(PostgreSQL row lock; SQLite's single writer lock), so appends to one session are serialized and the
read-fold-write of the summary cannot race.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, cast

from claude_agent_sdk import fold_session_summary
from claude_agent_sdk.types import (
    SessionKey,
    SessionListSubkeysKey,
    SessionStore,
    SessionStoreEntry,
    SessionStoreListEntry,
    SessionSummaryEntry,
)
from sqlalchemy import ColumnElement, bindparam, case, delete, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection

from ._sqlite_append import encode_entries, sqlite_append
from .database import Database
from .models import ENTRIES, KEYS, entry_uuid

if TYPE_CHECKING:
    from sqlalchemy.sql.dml import ReturningInsert

__all__ = ["SQLModelSessionStore"]

_MAIN = ""  # subpath of a main transcript (the SDK forbids an empty subpath, so "" is free)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _pg_upsert_key() -> ReturningInsert[Any]:
    stmt = postgresql.insert(KEYS)
    return stmt.on_conflict_do_update(
        index_elements=[KEYS.c.project_key, KEYS.c.session_id, KEYS.c.subpath],
        # Storage write time, strictly increasing per key even if the clock stalls or steps back.
        set_={"mtime": case((stmt.excluded.mtime > KEYS.c.mtime, stmt.excluded.mtime), else_=KEYS.c.mtime + 1)},
    ).returning(KEYS.c.id, KEYS.c.mtime, KEYS.c.summary)


# Built once: building an upsert costs about a millisecond, the cached compiled form almost nothing.
_PG_UPSERT_KEY = _pg_upsert_key()
_PG_INSERT_ENTRIES = postgresql.insert(ENTRIES).on_conflict_do_nothing()
_SET_SUMMARY = update(KEYS).where(KEYS.c.id == bindparam("key_id")).values(summary=bindparam("summary"))


def _key_filter(key: SessionKey) -> list[ColumnElement[bool]]:
    return [
        KEYS.c.project_key == key["project_key"],
        KEYS.c.session_id == key["session_id"],
        KEYS.c.subpath == (key.get("subpath") or _MAIN),
    ]


class SQLModelSessionStore(SessionStore):
    """A durable :class:`claude_agent_sdk.types.SessionStore` backed by a :class:`Database`.

    Implements every optional method (``list_sessions``, ``list_session_summaries``, ``delete``,
    ``list_subkeys``). The caller owns ``db``: run ``await db.migrate()`` once before use and
    ``await db.close()`` at the end; the store itself holds no resources.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    @property
    def db(self) -> Database:
        """The database this store writes to."""
        return self._db

    async def append(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        """Append a batch in one transaction; entries whose ``uuid`` is already stored are skipped."""
        if not entries:
            return
        now_ms = _now_ms()
        encoded = encode_entries(entries) if self._db.dialect == "sqlite" else None
        with self._db.translate_errors():
            async with self._db.engine.begin() as conn:
                if encoded is not None:
                    await sqlite_append(conn, key, entries, encoded, now_ms)
                else:
                    await self._core_append(conn, key, key.get("subpath") or _MAIN, entries, now_ms)

    async def _core_append(
        self, conn: AsyncConnection, key: SessionKey, subpath: str, entries: list[SessionStoreEntry], now_ms: int
    ) -> None:
        # On PostgreSQL the upsert row-locks the key row until commit: appends to one transcript
        # queue behind each other, so entry ids follow commit order and the summary fold is serialized.
        params = {
            "project_key": key["project_key"],
            "session_id": key["session_id"],
            "subpath": subpath,
            "mtime": now_ms,
        }
        key_id, mtime, summary = (await conn.execute(_PG_UPSERT_KEY, params)).one()
        rows = [{"key_id": key_id, "uuid": entry_uuid(entry), "entry": entry} for entry in entries]
        await conn.execute(_PG_INSERT_ENTRIES, rows)
        if subpath:
            return
        prev: SessionSummaryEntry | None = (
            None if summary is None else {"session_id": key["session_id"], "mtime": mtime, "data": summary}
        )
        folded = fold_session_summary(prev, key, entries)
        await conn.execute(_SET_SUMMARY, {"key_id": key_id, "summary": folded["data"]})

    async def load(self, key: SessionKey) -> list[SessionStoreEntry] | None:
        """All entries of ``key`` in append order, or ``None`` if nothing was ever stored under it."""
        stmt = (
            select(ENTRIES.c.entry)
            .join(KEYS, ENTRIES.c.key_id == KEYS.c.id)
            .where(*_key_filter(key))
            .order_by(ENTRIES.c.id)
        )
        with self._db.translate_errors():
            async with self._db.engine.connect() as conn:
                entries = (await conn.execute(stmt)).scalars().all()
        return cast("list[SessionStoreEntry]", list(entries)) if entries else None

    async def list_sessions(self, project_key: str) -> list[SessionStoreListEntry]:
        """Main transcripts of ``project_key`` with their storage mtime (epoch ms); order unspecified."""
        stmt = select(KEYS.c.session_id, KEYS.c.mtime).where(KEYS.c.project_key == project_key, KEYS.c.subpath == _MAIN)
        with self._db.translate_errors():
            async with self._db.engine.connect() as conn:
                rows = (await conn.execute(stmt)).all()
        return [{"session_id": session_id, "mtime": int(mtime)} for session_id, mtime in rows]

    async def list_session_summaries(self, project_key: str) -> list[SessionSummaryEntry]:
        """The summaries ``append`` folded, one per main transcript of ``project_key``."""
        stmt = select(KEYS.c.session_id, KEYS.c.mtime, KEYS.c.summary).where(
            KEYS.c.project_key == project_key, KEYS.c.subpath == _MAIN, KEYS.c.summary.is_not(None)
        )
        with self._db.translate_errors():
            async with self._db.engine.connect() as conn:
                rows = (await conn.execute(stmt)).all()
        return [{"session_id": session_id, "mtime": int(mtime), "data": data} for session_id, mtime, data in rows]

    async def delete(self, key: SessionKey) -> None:
        """Delete one transcript; deleting a main transcript also deletes all its subagent transcripts."""
        where: list[ColumnElement[bool]] = (
            _key_filter(key)
            if key.get("subpath")
            else [KEYS.c.project_key == key["project_key"], KEYS.c.session_id == key["session_id"]]
        )
        with self._db.translate_errors():
            async with self._db.engine.begin() as conn:
                # Entries go by ON DELETE CASCADE (SQLite: foreign_keys=ON is set on every connection).
                await conn.execute(delete(KEYS).where(*where))

    async def list_subkeys(self, key: SessionListSubkeysKey) -> list[str]:
        """Subpaths stored under a session (subagent transcripts), sorted; never the main transcript."""
        stmt = (
            select(KEYS.c.subpath)
            .where(
                KEYS.c.project_key == key["project_key"],
                KEYS.c.session_id == key["session_id"],
                KEYS.c.subpath != _MAIN,
            )
            .order_by(KEYS.c.subpath)
        )
        with self._db.translate_errors():
            async with self._db.engine.connect() as conn:
                return list((await conn.execute(stmt)).scalars().all())
