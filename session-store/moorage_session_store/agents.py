"""Agents: the ``agents`` and ``agent_versions`` tables and their repository.

An agent belongs to one tenant; every read and write names the tenant, and another tenant's agent
answers exactly like an unknown one. Its spec (a JSON document the service validates; this package
does not look inside) is stored once per version and never changed: ``update`` adds version
``n + 1`` and moves ``agents.version`` to it in one transaction, by a conditional ``UPDATE … WHERE
version = n`` judged by its row count, so two writers racing from version ``n`` get exactly one
winner (the other gets :class:`VersionConflict`) on SQLite and PostgreSQL alike. Archiving sets
``archived_at`` once; an archived agent is read-only.

Lists are newest first and paged by keyset (``created_at``, ``id``), so a page never shifts when
agents are created meanwhile.
"""

from __future__ import annotations

import builtins
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, insert, or_, select, update

from .columns import utcnow
from .database import Database
from .errors import AgentArchived, AgentNotFound, VersionConflict
from .models import AGENT_VERSIONS, AGENTS

__all__ = ["AgentRecord", "Agents", "new_agent_id"]

ID_PREFIX = "agent_"


def new_agent_id() -> str:
    """``agent_`` and 24 lowercase hex characters (96 random bits)."""
    return ID_PREFIX + secrets.token_hex(12)


@dataclass(frozen=True, slots=True)
class AgentRecord:
    """One version of one agent: its spec, and the agent's times (``updated_at`` is when this
    version was made; ``archived_at`` is the agent's, whichever version is read)."""

    id: str
    tenant: str
    version: int
    spec: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    archived_at: datetime | None
    latest: int  # the agent's current version


_COLUMNS = (
    AGENTS.c.id,
    AGENTS.c.tenant,
    AGENT_VERSIONS.c.version,
    AGENT_VERSIONS.c.spec,
    AGENTS.c.created_at,
    AGENT_VERSIONS.c.created_at.label("updated_at"),
    AGENTS.c.archived_at,
    AGENTS.c.version.label("latest"),
)


def _record(row: Any) -> AgentRecord:
    return AgentRecord(**dict(row._mapping))


def _joined(on_version: Any) -> Any:
    return select(*_COLUMNS).select_from(
        AGENTS.join(AGENT_VERSIONS, and_(AGENT_VERSIONS.c.agent_id == AGENTS.c.id, on_version))
    )


class Agents:
    """Async repository for agents. Safe to share between tasks."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, tenant: str, spec: dict[str, Any]) -> AgentRecord:
        """A new agent at version 1."""
        now = utcnow()
        agent_id = new_agent_id()
        with self._db.translate_errors():
            async with self._db.engine.begin() as conn:
                await conn.execute(
                    insert(AGENTS).values(id=agent_id, tenant=tenant, version=1, created_at=now, updated_at=now)
                )
                await conn.execute(
                    insert(AGENT_VERSIONS).values(agent_id=agent_id, version=1, spec=spec, created_at=now)
                )
        return AgentRecord(agent_id, tenant, 1, spec, now, now, None, 1)

    async def get(self, tenant: str, agent_id: str, version: int | None = None) -> AgentRecord | None:
        """The agent's current version (or ``version``), or ``None``."""
        on = AGENT_VERSIONS.c.version == (AGENTS.c.version if version is None else version)
        stmt = _joined(on).where(AGENTS.c.id == agent_id, AGENTS.c.tenant == tenant)
        with self._db.translate_errors():
            async with self._db.engine.connect() as conn:
                row = (await conn.execute(stmt)).first()
        return None if row is None else _record(row)

    async def list(
        self,
        tenant: str,
        *,
        limit: int,
        after: tuple[datetime, str] | None = None,
        include_archived: bool = False,
        created_gte: datetime | None = None,
        created_lte: datetime | None = None,
    ) -> builtins.list[AgentRecord]:
        """Up to ``limit`` agents (current versions), newest first, older than the ``after`` key."""
        stmt = _joined(AGENT_VERSIONS.c.version == AGENTS.c.version).where(AGENTS.c.tenant == tenant)
        if not include_archived:
            stmt = stmt.where(AGENTS.c.archived_at.is_(None))
        if created_gte is not None:
            stmt = stmt.where(AGENTS.c.created_at >= created_gte)
        if created_lte is not None:
            stmt = stmt.where(AGENTS.c.created_at <= created_lte)
        if after is not None:
            at, last_id = after
            stmt = stmt.where(or_(AGENTS.c.created_at < at, and_(AGENTS.c.created_at == at, AGENTS.c.id < last_id)))
        stmt = stmt.order_by(AGENTS.c.created_at.desc(), AGENTS.c.id.desc()).limit(limit)
        with self._db.translate_errors():
            async with self._db.engine.connect() as conn:
                rows = (await conn.execute(stmt)).all()
        return [_record(row) for row in rows]

    async def versions(
        self, tenant: str, agent_id: str, *, limit: int, before: int | None = None
    ) -> builtins.list[AgentRecord] | None:
        """Up to ``limit`` versions, newest first, below ``before``; ``None`` if no such agent."""
        stmt = _joined(True).where(AGENTS.c.id == agent_id, AGENTS.c.tenant == tenant)
        if before is not None:
            stmt = stmt.where(AGENT_VERSIONS.c.version < before)
        stmt = stmt.order_by(AGENT_VERSIONS.c.version.desc()).limit(limit)
        with self._db.translate_errors():
            async with self._db.engine.connect() as conn:
                rows = (await conn.execute(stmt)).all()
        if not rows and await self.get(tenant, agent_id) is None:
            return None
        return [_record(row) for row in rows]

    async def update(self, tenant: str, agent_id: str, base: int, spec: dict[str, Any]) -> AgentRecord:
        """Add version ``base + 1`` with ``spec``, if ``base`` is still the current version.

        Raises :class:`AgentNotFound`, :class:`AgentArchived` or :class:`VersionConflict`."""
        now = utcnow()
        with self._db.translate_errors():
            async with self._db.engine.begin() as conn:
                moved = await conn.execute(
                    update(AGENTS)
                    .where(
                        AGENTS.c.id == agent_id,
                        AGENTS.c.tenant == tenant,
                        AGENTS.c.version == base,
                        AGENTS.c.archived_at.is_(None),
                    )
                    .values(version=base + 1, updated_at=now)
                )
                if moved.rowcount == 1:
                    await conn.execute(
                        insert(AGENT_VERSIONS).values(agent_id=agent_id, version=base + 1, spec=spec, created_at=now)
                    )
                    row = (await conn.execute(select(AGENTS.c.created_at).where(AGENTS.c.id == agent_id))).one()
                    return AgentRecord(agent_id, tenant, base + 1, spec, row.created_at, now, None, base + 1)
        current = await self.get(tenant, agent_id)
        if current is None:
            raise AgentNotFound(f"agent {agent_id} not found")
        if current.archived_at is not None:
            raise AgentArchived(f"agent {agent_id} is archived")
        raise VersionConflict(f"agent {agent_id} is at version {current.version}, not {base}")

    async def archive(self, tenant: str, agent_id: str) -> AgentRecord | None:
        """Archive the agent (idempotent: the first ``archived_at`` stays); ``None`` if no such agent."""
        with self._db.translate_errors():
            async with self._db.engine.begin() as conn:
                await conn.execute(
                    update(AGENTS)
                    .where(AGENTS.c.id == agent_id, AGENTS.c.tenant == tenant, AGENTS.c.archived_at.is_(None))
                    .values(archived_at=utcnow())
                )
        return await self.get(tenant, agent_id)
