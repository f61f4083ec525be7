"""Each tenant's model spend per UTC day, in the ``tenant_spend`` table.

Every replica adds what its model proxy metered (:meth:`TenantSpend.add`, an atomic
``INSERT … ON CONFLICT DO UPDATE SET usd = usd + :delta`` on SQLite and PostgreSQL alike) and
reads the day's totals back (:meth:`TenantSpend.day`), so a tenant's daily budget holds across
replicas and restarts.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from .database import Database
from .models import TENANT_SPEND

__all__ = ["TenantSpend"]


class TenantSpend:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, day: str, amounts: dict[str, float]) -> None:
        """Add ``amounts`` (tenant -> USD) to ``day``'s totals, in one transaction."""
        if not amounts:
            return
        dialect = postgresql if self._db.dialect == "postgresql" else sqlite
        stmt = dialect.insert(TENANT_SPEND)
        stmt = stmt.on_conflict_do_update(
            index_elements=[TENANT_SPEND.c.tenant, TENANT_SPEND.c.day],
            set_={"usd": TENANT_SPEND.c.usd + stmt.excluded.usd},
        )
        rows = [{"tenant": tenant, "day": day, "usd": usd} for tenant, usd in amounts.items()]
        with self._db.translate_errors():
            async with self._db.engine.begin() as conn:
                await conn.execute(stmt, rows)

    async def day(self, day: str) -> dict[str, float]:
        """Every tenant's total for ``day`` (tenants that spent nothing are absent)."""
        stmt = select(TENANT_SPEND.c.tenant, TENANT_SPEND.c.usd).where(TENANT_SPEND.c.day == day)
        with self._db.translate_errors():
            async with self._db.engine.connect() as conn:
                return {row[0]: float(row[1]) for row in (await conn.execute(stmt)).all()}
