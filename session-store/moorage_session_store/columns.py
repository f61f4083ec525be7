"""Column types shared by the models and the migrations, portable across SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Dialect, Integer
from sqlalchemy.types import TypeDecorator, TypeEngine

#: Auto-incrementing 64-bit key; on SQLite it must be spelled INTEGER to alias the rowid.
BIG_PK: TypeEngine[int] = BigInteger().with_variant(Integer(), "sqlite")

#: JSON documents. Plain ``json`` on PostgreSQL (not ``jsonb``): entries are opaque blobs we never
#: query into, ``json`` skips the binary conversion and also accepts ``\u0000`` escapes that
#: ``jsonb`` rejects.
JSON_DOC: TypeEngine[Any] = JSON(none_as_null=True)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    PostgreSQL stores ``timestamptz``; SQLite has no time zones, so values are stored as naive UTC
    and given ``tzinfo=UTC`` again on the way out. Naive datetimes passed in are taken as UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)
