"""Each service replica's heartbeat, in the ``replicas`` table: which processes use this database
and when each last said it was alive. The service beats every third of its lease TTL and leaves
at a clean stop; on SQLite it starts with :meth:`Replicas.join`, which refuses while another
replica's heartbeat is recent, since SQLite serves one replica (``moorage.heartbeat``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, text
from sqlalchemy.dialects import postgresql, sqlite

from .columns import utcnow
from .database import Database
from .models import REPLICAS

__all__ = ["Replicas"]


class Replicas:
    """Async repository for ``replicas``. Safe to share between tasks."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def _beat(self, replica: str) -> Any:
        now = utcnow()
        dialect = postgresql if self._db.dialect == "postgresql" else sqlite
        stmt = dialect.insert(REPLICAS).values(id=replica, started_at=now, heartbeat_at=now)
        return stmt.on_conflict_do_update(index_elements=[REPLICAS.c.id], set_={"heartbeat_at": now})

    @staticmethod
    def _alive(since: datetime, excluding: str) -> Any:
        return (
            select(REPLICAS.c.id, REPLICAS.c.heartbeat_at)
            .where(REPLICAS.c.heartbeat_at >= since, REPLICAS.c.id != excluding)
            .order_by(REPLICAS.c.heartbeat_at.desc(), REPLICAS.c.id)
        )

    async def beat(self, replica: str) -> None:
        """Say ``replica`` is alive now (its row is created on its first beat, with ``started_at``)."""
        with self._db.translate_errors():
            async with self._db.engine.begin() as conn:
                await conn.execute(self._beat(replica))

    async def alive(self, since: datetime, excluding: str) -> list[tuple[str, datetime]]:
        """The replicas other than ``excluding`` that beat at or after ``since``: ``(id, last beat)``,
        most recent first."""
        with self._db.translate_errors():
            async with self._db.engine.connect() as conn:
                return [(id_, at) for id_, at in (await conn.execute(self._alive(since, excluding))).all()]

    async def join(self, replica: str, since: datetime) -> list[tuple[str, datetime]]:
        """Beat for ``replica`` unless other replicas beat at or after ``since``: then return them
        (as :meth:`alive` does) and write nothing. Atomic: of two replicas joining at once, the
        second sees the first (``BEGIN IMMEDIATE`` on SQLite, a table lock on PostgreSQL)."""
        with self._db.translate_errors():
            async with self._db.engine.connect() as conn:
                if self._db.dialect == "sqlite":
                    await conn.exec_driver_sql("BEGIN IMMEDIATE")
                else:
                    await conn.execute(text("LOCK TABLE replicas IN SHARE ROW EXCLUSIVE MODE"))
                others = [(id_, at) for id_, at in (await conn.execute(self._alive(since, replica))).all()]
                if not others:
                    await conn.execute(self._beat(replica))
                await conn.commit()
        return others

    async def leave(self, replica: str) -> None:
        """Forget ``replica`` (a clean stop); no-op if it has no row."""
        with self._db.translate_errors():
            async with self._db.engine.begin() as conn:
                await conn.execute(delete(REPLICAS).where(REPLICAS.c.id == replica))
