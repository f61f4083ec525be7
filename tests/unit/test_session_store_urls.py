"""moorage-session-store pieces that need no database: URL mapping, messages, the error tree."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace
from typing import cast

import pytest
from moorage_session_store import (
    DatabaseUnavailable,
    InvalidRecord,
    MoorageStoreError,
    SessionExists,
    SessionNotFound,
    UnsupportedDatabaseURL,
)
from moorage_session_store.columns import UTCDateTime
from moorage_session_store.database import async_url, describe
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Dialect


@pytest.mark.parametrize(
    ("given", "driver"),
    [
        ("sqlite:///var/moorage.db", "sqlite+aiosqlite"),
        ("sqlite+aiosqlite:///var/moorage.db", "sqlite+aiosqlite"),
        ("sqlite+pysqlite:////abs/moorage.db", "sqlite+aiosqlite"),
        ("postgresql://u:p@db:5433/moorage", "postgresql+asyncpg"),
        ("postgresql+psycopg://u@db/moorage", "postgresql+asyncpg"),
        ("postgresql+asyncpg://u@db/moorage", "postgresql+asyncpg"),
        ("postgres://u@db/moorage", "postgresql+asyncpg"),
    ],
)
def test_urls_map_to_the_async_drivers(given: str, driver: str) -> None:
    """Plain and sync-driver URLs are mapped to aiosqlite / asyncpg, keeping everything else."""
    url = async_url(given)
    assert url.drivername == driver
    assert url.database in ("var/moorage.db", "/abs/moorage.db", "moorage")


@pytest.mark.parametrize("given", ["mysql://u@h/db", "not a url"])
def test_other_databases_are_refused(given: str) -> None:
    """Anything but SQLite or PostgreSQL is a configuration error with its own code."""
    with pytest.raises(UnsupportedDatabaseURL) as info:
        async_url(given)
    assert info.value.code == "store_config" and isinstance(info.value, ValueError)


def test_descriptions_name_the_place_never_the_password() -> None:
    """Messages name host:port/db or the SQLite path; credentials never appear."""
    assert describe(async_url("postgresql://me:hunter2@db.internal:6543/app")) == "PostgreSQL at db.internal:6543/app"
    assert describe(async_url("postgresql://me:hunter2@db.internal/app")) == "PostgreSQL at db.internal:5432/app"
    assert describe(async_url("sqlite:////var/lib/m.db")) == "SQLite database /var/lib/m.db"


def test_error_tree_is_rooted_with_stable_codes() -> None:
    """Every store error is a MoorageStoreError with a stable code."""
    codes = {
        DatabaseUnavailable: "store_unavailable",
        SessionNotFound: "session_not_found",
        SessionExists: "session_exists",
        InvalidRecord: "invalid_record",
        UnsupportedDatabaseURL: "store_config",
    }
    for cls, code in codes.items():
        err = cls("x")
        assert isinstance(err, MoorageStoreError) and err.code == code and err.message == "x"


def test_utc_datetime_column_is_aware_on_both_dialects() -> None:
    """Datetimes go in as UTC (naive taken as UTC) and come out timezone-aware UTC."""
    column = UTCDateTime()
    pg = cast(Dialect, SimpleNamespace(name="postgresql"))  # the type only looks at the dialect's name
    plus_two = datetime(2025, 1, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    stored = column.process_bind_param(plus_two, sqlite.dialect())
    assert stored == datetime(2025, 1, 1, 12, 0)
    assert column.process_result_value(stored, sqlite.dialect()) == datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    assert column.process_bind_param(plus_two, pg) == datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    assert column.process_bind_param(datetime(2025, 1, 1), pg) == datetime(2025, 1, 1, tzinfo=UTC)
