"""Vaults: the ``vaults`` and ``vault_credentials`` tables and their repository.

A vault is a tenant's collection of credentials; sessions name vaults (``vault_ids``) and the
service injects the matching credential into the requests their sandboxes make
(service/moorage/vault_proxy.py). Every read and write names the tenant; another tenant's vault
answers exactly like an unknown one. This package never sees a secret in clear: a credential's
secrets arrive sealed (``sealed``, made by the service's ``vault_crypto.SecretBox``) and leave the
same way; what the API may show is the ``public`` document.

Rules kept here: a vault holds at most ``MAX_CREDENTIALS`` live credentials, and their
``match_key``s (the normalised MCP server URL, or an environment variable's name) are distinct
(a partial unique index, so two racing creates get one winner on SQLite and PostgreSQL alike;
the loser gets :class:`CredentialConflict`). Archiving sets ``archived_at`` once and makes the
row read-only; an archived vault's credentials are never used. Deleting a vault deletes its
credentials. Lists are newest first, paged by keyset (``created_at``, ``id``), like agents.
"""

from __future__ import annotations

import builtins
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from .columns import utcnow
from .database import Database
from .errors import CredentialConflict, VaultArchived, VaultFull, VaultNotFound
from .models import VAULT_CREDENTIALS, VAULTS

__all__ = ["MAX_CREDENTIALS", "CredentialRecord", "VaultRecord", "Vaults"]

MAX_CREDENTIALS = 20  # live credentials per vault (the Managed Agents limit)
V = VAULTS.c
C = VAULT_CREDENTIALS.c


def _new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


@dataclass(frozen=True, slots=True)
class VaultRecord:
    id: str
    tenant: str
    display_name: str
    metadata: dict[str, str]
    created_at: datetime
    updated_at: datetime
    archived_at: datetime | None


@dataclass(frozen=True, slots=True)
class CredentialRecord:
    """One credential; ``sealed`` is its secrets as the service sealed them."""

    id: str
    vault_id: str
    tenant: str
    kind: str
    match_key: str
    public: dict[str, Any]
    sealed: str
    created_at: datetime
    updated_at: datetime
    archived_at: datetime | None


_VAULT_COLUMNS = (V.id, V.tenant, V.display_name, V.metadata, V.created_at, V.updated_at, V.archived_at)
_CRED_COLUMNS = (
    C.id,
    C.vault_id,
    C.tenant,
    C.kind,
    C.match_key,
    C.public,
    C.sealed,
    C.created_at,
    C.updated_at,
    C.archived_at,
)


def _vault(row: Any) -> VaultRecord:
    return VaultRecord(*row)


def _credential(row: Any) -> CredentialRecord:
    return CredentialRecord(*row)


def _older_than(created: Any, ident: Any, after: tuple[datetime, str] | None) -> Any:
    if after is None:
        return True
    at, last_id = after
    return or_(created < at, and_(created == at, ident < last_id))


class Vaults:
    """Async repository for vaults and their credentials. Safe to share between tasks."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # -- vaults ------------------------------------------------------------------------

    async def create(self, tenant: str, display_name: str, metadata: dict[str, str]) -> VaultRecord:
        now = utcnow()
        record = VaultRecord(_new_id("vlt_"), tenant, display_name, metadata, now, now, None)
        with self._db.translate_errors():
            async with self._db.engine.begin() as conn:
                await conn.execute(
                    insert(VAULTS).values(
                        id=record.id,
                        tenant=tenant,
                        display_name=display_name,
                        metadata=metadata,
                        created_at=now,
                        updated_at=now,
                    )
                )
        return record

    async def get(self, tenant: str, vault_id: str) -> VaultRecord | None:
        stmt = select(*_VAULT_COLUMNS).where(V.id == vault_id, V.tenant == tenant)
        with self._db.translate_errors():
            async with self._db.engine.connect() as conn:
                row = (await conn.execute(stmt)).first()
        return None if row is None else _vault(row)

    async def get_many(self, tenant: str, vault_ids: Sequence[str]) -> dict[str, VaultRecord]:
        """The tenant's vaults among ``vault_ids``, by id (unknown and foreign ones are absent)."""
        if not vault_ids:
            return {}
        stmt = select(*_VAULT_COLUMNS).where(V.id.in_(list(vault_ids)), V.tenant == tenant)
        with self._db.translate_errors():
            async with self._db.engine.connect() as conn:
                rows = (await conn.execute(stmt)).all()
        return {row.id: _vault(row) for row in rows}

    async def list(
        self, tenant: str, *, limit: int, after: tuple[datetime, str] | None = None, include_archived: bool = False
    ) -> builtins.list[VaultRecord]:
        stmt = select(*_VAULT_COLUMNS).where(V.tenant == tenant, _older_than(V.created_at, V.id, after))
        if not include_archived:
            stmt = stmt.where(V.archived_at.is_(None))
        stmt = stmt.order_by(V.created_at.desc(), V.id.desc()).limit(limit)
        with self._db.translate_errors():
            async with self._db.engine.connect() as conn:
                rows = (await conn.execute(stmt)).all()
        return [_vault(row) for row in rows]

    async def update(self, tenant: str, vault_id: str, display_name: str, metadata: dict[str, str]) -> VaultRecord:
        """Set a live vault's name and metadata. Raises :class:`VaultNotFound`, :class:`VaultArchived`."""
        with self._db.translate_errors():
            async with self._db.engine.begin() as conn:
                moved = await conn.execute(
                    update(VAULTS)
                    .where(V.id == vault_id, V.tenant == tenant, V.archived_at.is_(None))
                    .values(display_name=display_name, metadata=metadata, updated_at=utcnow())
                )
        current = await self.get(tenant, vault_id)
        if current is None:
            raise VaultNotFound(f"vault {vault_id} not found")
        if moved.rowcount != 1:
            raise VaultArchived(f"vault {vault_id} is archived")
        return current

    async def archive(self, tenant: str, vault_id: str) -> VaultRecord | None:
        """Archive the vault (idempotent: the first ``archived_at`` stays); ``None`` if none."""
        with self._db.translate_errors():
            async with self._db.engine.begin() as conn:
                await conn.execute(
                    update(VAULTS)
                    .where(V.id == vault_id, V.tenant == tenant, V.archived_at.is_(None))
                    .values(archived_at=utcnow())
                )
        return await self.get(tenant, vault_id)

    async def delete(self, tenant: str, vault_id: str) -> bool:
        """Delete the vault and its credentials; ``False`` if there was none."""
        with self._db.translate_errors():
            async with self._db.engine.begin() as conn:
                gone = await conn.execute(delete(VAULTS).where(V.id == vault_id, V.tenant == tenant))
                if gone.rowcount == 1:
                    await conn.execute(delete(VAULT_CREDENTIALS).where(C.vault_id == vault_id))
        return bool(gone.rowcount == 1)

    async def any_credential(self) -> bool:
        """Does any tenant hold any credential (the service's start-up check for a key)?"""
        with self._db.translate_errors():
            async with self._db.engine.connect() as conn:
                return (await conn.execute(select(C.id).limit(1))).first() is not None

    # -- credentials --------------------------------------------------------------------

    @staticmethod
    def new_credential_id() -> str:
        """An id for a credential about to be made (its secrets are sealed for that id)."""
        return _new_id("vcrd_")

    async def add_credential(self, record: CredentialRecord) -> CredentialRecord:
        """Store a new credential (its id from :meth:`new_credential_id`) in a live vault. Raises
        :class:`VaultNotFound`, :class:`VaultArchived`, :class:`VaultFull`, :class:`CredentialConflict`."""
        now = utcnow()
        try:
            with self._db.translate_errors():
                async with self._db.engine.begin() as conn:
                    vault = (
                        await conn.execute(
                            select(V.archived_at).where(V.id == record.vault_id, V.tenant == record.tenant)
                        )
                    ).first()
                    if vault is None:
                        raise VaultNotFound(f"vault {record.vault_id} not found")
                    if vault.archived_at is not None:
                        raise VaultArchived(f"vault {record.vault_id} is archived")
                    live = (
                        await conn.execute(
                            select(func.count())
                            .select_from(VAULT_CREDENTIALS)
                            .where(C.vault_id == record.vault_id, C.archived_at.is_(None))
                        )
                    ).scalar_one()
                    if live >= MAX_CREDENTIALS:
                        raise VaultFull(f"vault {record.vault_id} holds {MAX_CREDENTIALS} credentials already")
                    await conn.execute(
                        insert(VAULT_CREDENTIALS).values(
                            id=record.id,
                            vault_id=record.vault_id,
                            tenant=record.tenant,
                            kind=record.kind,
                            match_key=record.match_key,
                            public=record.public,
                            sealed=record.sealed,
                            created_at=now,
                            updated_at=now,
                        )
                    )
        except IntegrityError:
            raise CredentialConflict(
                f"vault {record.vault_id} already holds a live credential for {record.match_key}"
            ) from None
        return CredentialRecord(
            record.id,
            record.vault_id,
            record.tenant,
            record.kind,
            record.match_key,
            record.public,
            record.sealed,
            now,
            now,
            None,
        )

    async def get_credential(self, tenant: str, vault_id: str, credential_id: str) -> CredentialRecord | None:
        stmt = select(*_CRED_COLUMNS).where(C.id == credential_id, C.vault_id == vault_id, C.tenant == tenant)
        with self._db.translate_errors():
            async with self._db.engine.connect() as conn:
                row = (await conn.execute(stmt)).first()
        return None if row is None else _credential(row)

    async def list_credentials(
        self,
        tenant: str,
        vault_id: str,
        *,
        limit: int,
        after: tuple[datetime, str] | None = None,
        include_archived: bool = False,
    ) -> builtins.list[CredentialRecord]:
        stmt = select(*_CRED_COLUMNS).where(
            C.vault_id == vault_id, C.tenant == tenant, _older_than(C.created_at, C.id, after)
        )
        if not include_archived:
            stmt = stmt.where(C.archived_at.is_(None))
        stmt = stmt.order_by(C.created_at.desc(), C.id.desc()).limit(limit)
        with self._db.translate_errors():
            async with self._db.engine.connect() as conn:
                rows = (await conn.execute(stmt)).all()
        return [_credential(row) for row in rows]

    async def update_credential(
        self, tenant: str, vault_id: str, credential_id: str, base: datetime, public: dict[str, Any], sealed: str
    ) -> CredentialRecord | None:
        """Replace a live credential's public document and secrets if it is still as read at
        ``base`` (its ``updated_at``); ``None`` if another writer changed it first (re-read).
        Raises :class:`VaultNotFound` or :class:`VaultArchived`."""
        mine = (C.id == credential_id, C.vault_id == vault_id, C.tenant == tenant)
        with self._db.translate_errors():
            async with self._db.engine.begin() as conn:
                moved = await conn.execute(
                    update(VAULT_CREDENTIALS)
                    .where(*mine, C.archived_at.is_(None), C.updated_at == base)
                    .values(public=public, sealed=sealed, updated_at=utcnow())
                )
        current = await self.get_credential(tenant, vault_id, credential_id)
        if current is None:
            raise VaultNotFound(f"credential {credential_id} not found")
        if current.archived_at is not None:
            raise VaultArchived(f"credential {credential_id} is archived")
        return current if moved.rowcount == 1 else None

    async def archive_credential(self, tenant: str, vault_id: str, credential_id: str) -> CredentialRecord | None:
        with self._db.translate_errors():
            async with self._db.engine.begin() as conn:
                await conn.execute(
                    update(VAULT_CREDENTIALS)
                    .where(C.id == credential_id, C.vault_id == vault_id, C.tenant == tenant, C.archived_at.is_(None))
                    .values(archived_at=utcnow())
                )
        return await self.get_credential(tenant, vault_id, credential_id)

    async def delete_credential(self, tenant: str, vault_id: str, credential_id: str) -> bool:
        with self._db.translate_errors():
            async with self._db.engine.begin() as conn:
                gone = await conn.execute(
                    delete(VAULT_CREDENTIALS).where(C.id == credential_id, C.vault_id == vault_id, C.tenant == tenant)
                )
        return bool(gone.rowcount == 1)

    async def live_credentials(
        self, tenant: str, vault_ids: Sequence[str], match_key: str | None = None
    ) -> builtins.list[CredentialRecord]:
        """The live credentials (live vault, live credential) of the tenant's vaults among
        ``vault_ids`` — only those for ``match_key`` if given — in ``vault_ids`` order."""
        if not vault_ids:
            return []
        stmt = (
            select(*_CRED_COLUMNS)
            .join(VAULTS, V.id == C.vault_id)
            .where(
                C.vault_id.in_(list(vault_ids)),
                C.tenant == tenant,
                V.tenant == tenant,
                C.archived_at.is_(None),
                V.archived_at.is_(None),
            )
        )
        if match_key is not None:
            stmt = stmt.where(C.match_key == match_key)
        with self._db.translate_errors():
            async with self._db.engine.connect() as conn:
                rows = (await conn.execute(stmt.order_by(C.created_at, C.id))).all()
        order = {vault_id: n for n, vault_id in enumerate(vault_ids)}
        return sorted((_credential(row) for row in rows), key=lambda r: order.get(r.vault_id, len(order)))
