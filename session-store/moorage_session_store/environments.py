"""Environments: the ``environments`` table and its repository.

An environment is a sandbox template of one tenant (the Managed Agents environment: networking,
packages, limits). Every read and write names the tenant; another tenant's environment answers
exactly like an unknown one. Its spec (a JSON document the service validates; this package does not
look inside, except for its ``name``) is changed in place — environments are not versioned; an
update is compare-and-set on a hidden ``revision`` (like an agent's version), so two writers
racing from one read get one winner (the other :class:`RevisionConflict`, to re-read). Names
are unique within a tenant (a unique index, so two racing creates get one winner on SQLite and
PostgreSQL alike; the loser gets :class:`EnvironmentNameTaken`). Archiving sets ``archived_at``
once; an archived environment is read-only. Deleting removes the row.

Lists are newest first and paged by keyset (``created_at``, ``id``), like agents.
"""

from __future__ import annotations

import builtins
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from .columns import utcnow
from .database import Database
from .errors import EnvironmentArchived, EnvironmentNameTaken, EnvironmentNotFound, RevisionConflict
from .models import ENVIRONMENTS

__all__ = ["EnvironmentRecord", "Environments", "new_environment_id"]

ID_PREFIX = "env_"


def new_environment_id() -> str:
    """``env_`` and 24 lowercase hex characters (96 random bits)."""
    return ID_PREFIX + secrets.token_hex(12)


@dataclass(frozen=True, slots=True)
class EnvironmentRecord:
    """One environment: its spec (``spec["name"]`` is its name) and times."""

    id: str
    tenant: str
    spec: dict[str, Any]
    revision: int
    created_at: datetime
    updated_at: datetime
    archived_at: datetime | None


_COLUMNS = (
    ENVIRONMENTS.c.id,
    ENVIRONMENTS.c.tenant,
    ENVIRONMENTS.c.spec,
    ENVIRONMENTS.c.revision,
    ENVIRONMENTS.c.created_at,
    ENVIRONMENTS.c.updated_at,
    ENVIRONMENTS.c.archived_at,
)


def _record(row: Any) -> EnvironmentRecord:
    return EnvironmentRecord(**dict(row._mapping))


def _name(spec: dict[str, Any]) -> str:
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("an environment spec needs a non-empty name")
    return name


class Environments:
    """Async repository for environments. Safe to share between tasks."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, tenant: str, spec: dict[str, Any]) -> EnvironmentRecord:
        """A new environment. Raises :class:`EnvironmentNameTaken`."""
        now = utcnow()
        env_id = new_environment_id()
        try:
            with self._db.translate_errors():
                async with self._db.engine.begin() as conn:
                    await conn.execute(
                        insert(ENVIRONMENTS).values(
                            id=env_id,
                            tenant=tenant,
                            name=_name(spec),
                            spec=spec,
                            revision=1,
                            created_at=now,
                            updated_at=now,
                        )
                    )
        except IntegrityError:
            raise EnvironmentNameTaken(f"an environment named {_name(spec)!r} already exists") from None
        return EnvironmentRecord(env_id, tenant, spec, 1, now, now, None)

    async def get(self, tenant: str, env_id: str) -> EnvironmentRecord | None:
        """The environment, or ``None``."""
        stmt = select(*_COLUMNS).where(ENVIRONMENTS.c.id == env_id, ENVIRONMENTS.c.tenant == tenant)
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
    ) -> builtins.list[EnvironmentRecord]:
        """Up to ``limit`` environments, newest first, older than the ``after`` key."""
        stmt = select(*_COLUMNS).where(ENVIRONMENTS.c.tenant == tenant)
        if not include_archived:
            stmt = stmt.where(ENVIRONMENTS.c.archived_at.is_(None))
        if after is not None:
            at, last_id = after
            stmt = stmt.where(
                or_(ENVIRONMENTS.c.created_at < at, and_(ENVIRONMENTS.c.created_at == at, ENVIRONMENTS.c.id < last_id))
            )
        stmt = stmt.order_by(ENVIRONMENTS.c.created_at.desc(), ENVIRONMENTS.c.id.desc()).limit(limit)
        with self._db.translate_errors():
            async with self._db.engine.connect() as conn:
                rows = (await conn.execute(stmt)).all()
        return [_record(row) for row in rows]

    async def update(self, tenant: str, env_id: str, base: int, spec: dict[str, Any]) -> EnvironmentRecord:
        """Replace the spec of a live environment, if ``base`` is still its revision.

        Raises :class:`EnvironmentNotFound`, :class:`EnvironmentArchived`, :class:`RevisionConflict`
        or :class:`EnvironmentNameTaken`."""
        now = utcnow()
        mine = (ENVIRONMENTS.c.id == env_id, ENVIRONMENTS.c.tenant == tenant)
        try:
            with self._db.translate_errors():
                async with self._db.engine.begin() as conn:
                    moved = await conn.execute(
                        update(ENVIRONMENTS)
                        .where(*mine, ENVIRONMENTS.c.revision == base, ENVIRONMENTS.c.archived_at.is_(None))
                        .values(name=_name(spec), spec=spec, revision=base + 1, updated_at=now)
                    )
                    if moved.rowcount == 1:
                        row = (await conn.execute(select(*_COLUMNS).where(*mine))).one()
                        return _record(row)
        except IntegrityError:
            raise EnvironmentNameTaken(f"an environment named {_name(spec)!r} already exists") from None
        current = await self.get(tenant, env_id)
        if current is None:
            raise EnvironmentNotFound(f"environment {env_id} not found")
        if current.archived_at is not None:
            raise EnvironmentArchived(f"environment {env_id} is archived")
        raise RevisionConflict(f"environment {env_id} changed since it was read")

    async def archive(self, tenant: str, env_id: str) -> EnvironmentRecord | None:
        """Archive the environment (idempotent: the first ``archived_at`` stays); ``None`` if none."""
        with self._db.translate_errors():
            async with self._db.engine.begin() as conn:
                await conn.execute(
                    update(ENVIRONMENTS)
                    .where(
                        ENVIRONMENTS.c.id == env_id,
                        ENVIRONMENTS.c.tenant == tenant,
                        ENVIRONMENTS.c.archived_at.is_(None),
                    )
                    .values(archived_at=utcnow())
                )
        return await self.get(tenant, env_id)

    async def delete(self, tenant: str, env_id: str) -> bool:
        """Delete the environment; ``False`` if there was none."""
        with self._db.translate_errors():
            async with self._db.engine.begin() as conn:
                gone = await conn.execute(
                    delete(ENVIRONMENTS).where(ENVIRONMENTS.c.id == env_id, ENVIRONMENTS.c.tenant == tenant)
                )
        return bool(gone.rowcount == 1)
