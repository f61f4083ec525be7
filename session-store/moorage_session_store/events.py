"""Each session's event log: every client-visible frame, numbered per session (``seq`` 1, 2, 3 …
with no gaps), in the ``session_events`` table.

:class:`SessionEvents` is the repository. Its contract, held on SQLite and PostgreSQL by
``tests/integration/test_session_events.py``:

- ``append`` writes a batch in one transaction. The batch's seqs must be contiguous and follow the
  session's last stored seq exactly; anything else (a gap, a seq already stored, a second writer
  racing for the same seqs) raises :class:`EventConflict` and writes nothing. One writer per
  session is the service's job (the replica holding the lease); this check makes a broken one loud.
- ``read`` returns a bounded page in seq order; ``bounds`` the first and last seq stored, which
  tell a reader whether events it asks for were pruned (``first > after + 1``).
- ``prune`` deletes a session's oldest events but never its last one, so the next seq is always
  known from the table alone (``last_seq`` after a ``kill -9``).
- On PostgreSQL, ``append`` sends ``NOTIFY moorage_events, '<session id> <last seq>'`` in its
  transaction (delivered at commit), which wakes the streams of other replicas; it is only a
  wake-up, readers poll too.
- ``append`` also writes, in the same transaction, the webhook events its batch announces
  (``announce``: the service's pure mapping from logged frames to webhook event types) into the
  outbox of the session's tenant (``webhooks.enqueue``): a status that is logged is announced,
  and one that is not, is not, whatever crashes when.
- Events go with their session: ``ON DELETE CASCADE`` from ``sessions`` (``SessionRecords.delete``,
  ``purge`` and ``reap_suspended``), and they count toward ``tenant_storage_bytes``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection

from .database import Database
from .errors import MoorageStoreError, SessionNotFound
from .models import SESSION_EVENTS, SESSIONS
from .webhooks import Announcement, enqueue_for_session

__all__ = ["EVENTS_CHANNEL", "MAX_PAGE", "EventConflict", "NewEvent", "SessionEvents", "StoredEvent"]

#: PostgreSQL channel of appended events; the payload is ``"<session id> <last seq of the batch>"``.
EVENTS_CHANNEL = "moorage_events"

#: The most events one ``read`` returns.
MAX_PAGE = 1000

_EV = SESSION_EVENTS


_SQLITE_LAST = f"SELECT coalesce(max(seq), 0) FROM {_EV.name} WHERE session_id = ?"
_SQLITE_INSERT = f"INSERT INTO {_EV.name} (session_id, seq, type, body, created_at) VALUES (?, ?, ?, ?, ?)"


async def _sqlite_insert(conn: AsyncConnection, session_id: str, rows: list[dict[str, Any]]) -> int:
    """SQLite: the session's last stored seq, and ``rows`` inserted if they follow it, sent straight
    to the aiosqlite connection in SQLAlchemy's transaction (as ``_sqlite_append`` does for
    transcripts: one thread round trip per statement instead of three or four). Values are bound
    by the columns' own processors, so they read back through Core unchanged."""
    raw = (await conn.get_raw_connection()).driver_connection
    if raw is None:  # pragma: no cover - only after invalidation
        raise RuntimeError("the SQLite connection is closed")
    ((last,),) = await raw.execute_fetchall(_SQLITE_LAST, (session_id,))
    if rows and rows[0]["seq"] == int(last) + 1:
        body = _EV.c.body.type.bind_processor(conn.dialect)
        when = _EV.c.created_at.type.bind_processor(conn.dialect)
        await raw.executemany(
            _SQLITE_INSERT,
            [
                (
                    r["session_id"],
                    r["seq"],
                    r["type"],
                    body(r["body"]) if body else r["body"],
                    when(r["created_at"]) if when else r["created_at"],
                )
                for r in rows
            ],
        )
    return int(last)


class EventConflict(MoorageStoreError):
    """An ``append`` whose seqs do not follow the session's log exactly (a gap, or taken)."""

    code = "event_conflict"


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append: its seq, the frame's type, the frame (without ``seq``) and its time."""

    seq: int
    type: str
    body: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One stored event, as ``read`` returns it."""

    seq: int
    type: str
    body: dict[str, Any]
    created_at: datetime


#: What a batch of a session's log announces to webhooks (the session id, the batch).
Announce = Callable[[str, Sequence["NewEvent"]], list[Announcement]]


class SessionEvents:
    """Async repository for ``session_events``. Safe to share between tasks. ``announce``: the
    webhook events a batch causes, written with it (none without it)."""

    def __init__(self, db: Database, announce: Announce | None = None) -> None:
        self._db = db
        self._announce = announce

    async def append(self, session_id: str, events: Sequence[NewEvent]) -> None:
        """Append ``events`` (seqs contiguous, the first one past the last stored) in one
        transaction. :class:`EventConflict` if the seqs do not follow exactly (nothing written);
        :class:`SessionNotFound` if there is no such session."""
        if not events:
            return
        first = events[0].seq
        for i, event in enumerate(events):
            if event.seq != first + i:
                raise EventConflict(f"seqs of a batch must be contiguous: {event.seq} at position {i} after {first}")
        rows = [
            {"session_id": session_id, "seq": e.seq, "type": e.type, "body": e.body, "created_at": e.created_at}
            for e in events
        ]
        last_stored = select(func.coalesce(func.max(_EV.c.seq), 0)).where(_EV.c.session_id == session_id)
        with self._db.translate_errors():
            try:
                async with self._db.engine.begin() as conn:
                    if self._db.dialect == "sqlite":  # the same statements, one thread round trip each
                        last = await _sqlite_insert(conn, session_id, rows)
                    else:
                        last = int((await conn.execute(last_stored)).scalar_one())
                        if first == last + 1:
                            await conn.execute(insert(_EV), rows)
                    if first != last + 1:
                        raise EventConflict(f"session {session_id!r}: batch starts at {first}, last stored is {last}")
                    if self._announce is not None and (said := self._announce(session_id, events)):
                        await enqueue_for_session(conn, session_id, said)
                    if self._db.dialect == "postgresql":
                        await conn.execute(select(func.pg_notify(EVENTS_CHANNEL, f"{session_id} {events[-1].seq}")))
            except (sa_exc.IntegrityError, sqlite3.IntegrityError) as err:
                # The primary key (a writer raced us to these seqs) or the foreign key (no session).
                if await self._session_exists(session_id):
                    raise EventConflict(f"session {session_id!r}: seqs from {first} were taken") from err
                raise SessionNotFound(f"no session {session_id!r}") from err

    async def _session_exists(self, session_id: str) -> bool:
        async with self._db.engine.connect() as conn:
            found = await conn.execute(select(SESSIONS.c.id).where(SESSIONS.c.id == session_id))
            return found.first() is not None

    async def read(self, session_id: str, after: int, limit: int = MAX_PAGE) -> list[StoredEvent]:
        """Up to ``limit`` (at most :data:`MAX_PAGE`) events with seq > ``after``, in seq order."""
        limit = max(1, min(limit, MAX_PAGE))
        stmt = (
            select(_EV.c.seq, _EV.c.type, _EV.c.body, _EV.c.created_at)
            .where(_EV.c.session_id == session_id, _EV.c.seq > after)
            .order_by(_EV.c.seq)
            .limit(limit)
        )
        with self._db.translate_errors():
            async with self._db.engine.connect() as conn:
                rows = (await conn.execute(stmt)).all()
        return [StoredEvent(int(seq), type_, body, created_at) for seq, type_, body, created_at in rows]

    async def bounds(self, session_id: str) -> tuple[int, int]:
        """``(first, last)`` seq stored for the session; ``(0, 0)`` when it has none."""
        stmt = select(func.coalesce(func.min(_EV.c.seq), 0), func.coalesce(func.max(_EV.c.seq), 0)).where(
            _EV.c.session_id == session_id
        )
        with self._db.translate_errors():
            async with self._db.engine.connect() as conn:
                first, last = (await conn.execute(stmt)).one()
        return int(first), int(last)

    async def last_seq(self, session_id: str) -> int:
        """The session's last stored seq (0 when none): where a new life of the session continues."""
        return (await self.bounds(session_id))[1]

    async def prune(self, session_id: str, keep: int) -> int:
        """Delete all but the newest ``keep`` (at least 1) events of the session; how many went."""
        keep = max(1, keep)
        last = select(func.max(_EV.c.seq)).where(_EV.c.session_id == session_id).scalar_subquery()
        stmt = delete(_EV).where(_EV.c.session_id == session_id, _EV.c.seq <= last - keep)
        with self._db.translate_errors():
            async with self._db.engine.begin() as conn:
                return int((await conn.execute(stmt)).rowcount)
