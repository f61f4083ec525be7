"""Commands for a session, sent by whichever replica a client reached to the replica that runs the
session (the one holding its lease), in the ``session_commands`` table.

:class:`SessionCommands` is the repository. Its contract, held on SQLite and PostgreSQL by
``tests/integration/test_session_commands.py``:

- ``enqueue`` stores a command; on PostgreSQL the same transaction sends
  ``NOTIFY moorage_commands, '<session id>'`` (delivered at commit, so a listener that wakes finds
  the row). The notification is only a wake-up: an owner also polls ``waiting_sessions``.
- ``claim`` takes every unclaimed command of a session in one conditional ``UPDATE``: with
  several replicas claiming at once, each command is claimed by exactly one.
- ``complete`` stores the result; on PostgreSQL it sends ``NOTIFY moorage_command_done,
  '<command id>'`` in the same transaction, which wakes the sender waiting in ``get``.
- ``withdraw`` deletes a command nobody claimed yet (a sender that gives up: it will never run);
  once claimed it is the owner's, and only ``forget`` (after the result was read) or ``prune``
  (senders that died) remove it.
- Commands go with their session (``SessionRecords.delete``, and ``ON DELETE CASCADE``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection

from .columns import utcnow
from .database import Database
from .errors import SessionNotFound
from .events import EVENTS_CHANNEL
from .models import SESSION_COMMANDS, SESSIONS

__all__ = ["COMMANDS_CHANNEL", "DONE_CHANNEL", "EVENTS_CHANNEL", "Command", "SessionCommands"]

#: PostgreSQL channel of new commands; the payload is the session id.
COMMANDS_CHANNEL = "moorage_commands"
#: PostgreSQL channel of finished commands; the payload is the command id.
DONE_CHANNEL = "moorage_command_done"

_CMD = SESSION_COMMANDS
_COLUMNS = (
    _CMD.c.id,
    _CMD.c.session_id,
    _CMD.c.tenant,
    _CMD.c.body,
    _CMD.c.sender,
    _CMD.c.created_at,
    _CMD.c.claimed_by,
    _CMD.c.done_at,
    _CMD.c.result,
)


@dataclass(frozen=True)
class Command:
    """One stored command: what the sender asked (``body``) and, once run, its ``result``."""

    id: int
    session_id: str
    tenant: str
    body: dict[str, Any]
    sender: str
    created_at: datetime
    claimed_by: str | None
    done_at: datetime | None
    result: dict[str, Any] | None


def _command(row: Any) -> Command:
    return Command(**dict(row._mapping))


class SessionCommands:
    """Async repository for ``session_commands``. Safe to share between tasks."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def _notify(self, conn: AsyncConnection, channel: str, payload: str) -> None:
        """On PostgreSQL, ``pg_notify`` in ``conn``'s transaction (sent when it commits)."""
        if self._db.dialect == "postgresql":
            await conn.execute(select(func.pg_notify(channel, payload)))

    async def enqueue(self, session_id: str, tenant: str, body: dict[str, Any], sender: str) -> int:
        """Store a command for the session; its id. :class:`SessionNotFound` if there is no such session."""
        row = {"session_id": session_id, "tenant": tenant, "body": body, "sender": sender, "created_at": utcnow()}
        with self._db.translate_errors():
            try:
                async with self._db.engine.begin() as conn:
                    command_id = int((await conn.execute(insert(_CMD).returning(_CMD.c.id), row)).scalar_one())
                    await self._notify(conn, COMMANDS_CHANNEL, session_id)
            except sa_exc.IntegrityError as err:  # the foreign key: the only constraint a row can break
                raise SessionNotFound(f"no session {session_id!r}") from err
        return command_id

    async def claim(self, session_id: str, replica: str) -> list[Command]:
        """Mark every unclaimed command of the session as ``replica``'s and return them in id order.

        One ``UPDATE ... WHERE claimed_by IS NULL``: on PostgreSQL a racing claimer waits for the
        row lock and then re-checks the condition, on SQLite writers are serialized, so each
        command is returned to exactly one claimer.
        """
        stmt = (
            update(_CMD)
            .where(_CMD.c.session_id == session_id, _CMD.c.claimed_by.is_(None))
            .values(claimed_by=replica, claimed_at=utcnow())
            .returning(*_COLUMNS)
        )
        with self._db.translate_errors():
            async with self._db.engine.begin() as conn:
                rows = (await conn.execute(stmt)).all()
        return sorted((_command(row) for row in rows), key=lambda c: c.id)

    async def complete(self, command_id: int, result: dict[str, Any]) -> None:
        """Store the command's result (no-op if it is gone) and wake its sender."""
        stmt = update(_CMD).where(_CMD.c.id == command_id).values(done_at=utcnow(), result=result)
        with self._db.translate_errors():
            async with self._db.engine.begin() as conn:
                if (await conn.execute(stmt)).rowcount:
                    await self._notify(conn, DONE_CHANNEL, str(command_id))

    async def get(self, command_id: int) -> Command | None:
        """The command, or ``None`` if it is gone."""
        with self._db.translate_errors():
            async with self._db.engine.connect() as conn:
                row = (await conn.execute(select(*_COLUMNS).where(_CMD.c.id == command_id))).first()
        return None if row is None else _command(row)

    async def withdraw(self, command_id: int) -> bool:
        """Delete the command if nobody claimed it yet: ``True`` then (it will never run);
        ``False`` if it was claimed (it runs or ran) or is gone."""
        stmt = delete(_CMD).where(_CMD.c.id == command_id, _CMD.c.claimed_by.is_(None))
        with self._db.translate_errors():
            async with self._db.engine.begin() as conn:
                return bool((await conn.execute(stmt)).rowcount)

    async def forget(self, command_id: int) -> None:
        """Delete the command (its sender has read the result); no-op if gone."""
        with self._db.translate_errors():
            async with self._db.engine.begin() as conn:
                await conn.execute(delete(_CMD).where(_CMD.c.id == command_id))

    async def waiting_sessions(self, owner: str) -> list[str]:
        """Ids of the sessions whose lease ``owner`` holds that have unclaimed commands.

        An owner's fallback poll (every replica, often): the partial index of unclaimed commands
        is scanned (it only holds what nobody took yet) and each hit joined to its session's row.
        """
        stmt = (
            select(_CMD.c.session_id)
            .distinct()
            .select_from(_CMD.join(SESSIONS, _CMD.c.session_id == SESSIONS.c.id))
            .where(_CMD.c.claimed_by.is_(None), SESSIONS.c.owner == owner)
        )
        with self._db.translate_errors():
            async with self._db.engine.connect() as conn:
                return list((await conn.execute(stmt)).scalars().all())

    async def prune(self, before: datetime) -> int:
        """Delete the commands created before ``before`` (left by senders that died); how many."""
        with self._db.translate_errors():
            async with self._db.engine.begin() as conn:
                return int((await conn.execute(delete(_CMD).where(_CMD.c.created_at < before))).rowcount)
