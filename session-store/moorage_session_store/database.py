"""``Database``: one async SQLAlchemy engine for SQLite (aiosqlite) or PostgreSQL (asyncpg), its
migrations, and the mapping of driver errors onto :class:`DatabaseUnavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

from alembic import command
from alembic.config import Config
from sqlalchemy import event, exc, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from .errors import DatabaseUnavailable, UnsupportedDatabaseURL

VERSION_TABLE = "moorage_store_version"
"""Alembic's version table for this package (not the default name, so it cannot collide)."""

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_MIGRATE_LOCK_KEY = 0x6D6F6F72  # pg_advisory_xact_lock key: two replicas never migrate at once
_SQLITE_BUSY_TIMEOUT_MS = 10_000


def async_url(url: str | URL) -> URL:
    """Map ``sqlite://`` and ``postgresql://`` (or ``postgres://``, ``+psycopg``…) to the async drivers."""
    try:
        parsed = make_url(url)
    except exc.ArgumentError as err:
        raise UnsupportedDatabaseURL("cannot parse the database URL") from err
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite")
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+asyncpg")
    raise UnsupportedDatabaseURL(f"unsupported database {backend!r}: use sqlite:///PATH or postgresql://HOST/DB")


def describe(url: URL) -> str:
    """Where the database is, for messages: the SQLite path or PostgreSQL host:port/db (no credentials)."""
    if url.get_backend_name() == "sqlite":
        return f"SQLite database {url.database or ':memory:'}"
    return f"PostgreSQL at {url.host or 'localhost'}:{url.port or 5432}/{url.database or ''}"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # page_size only takes effect when the file is created (a no-op afterwards); 16 KiB pages
        # halve the pages a batch of random-uuid index inserts dirties, i.e. the WAL written per commit.
        cursor.execute("PRAGMA page_size=16384")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        # WAL + NORMAL: no fsync per commit (a power cut may lose the last commits, never corrupts).
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA wal_autocheckpoint=4000")
        cursor.execute("PRAGMA cache_size=-16000")
    finally:
        cursor.close()


def _make_engine(url: URL, connect_timeout_s: float) -> AsyncEngine:
    if url.get_backend_name() == "sqlite":
        # Every transaction is ended by its context manager, so the pool's extra ROLLBACK on return
        # (one more thread round trip per operation with aiosqlite) is not needed.
        engine = create_async_engine(
            url, connect_args={"timeout": _SQLITE_BUSY_TIMEOUT_MS / 1000}, pool_reset_on_return=None
        )
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(
        url,
        pool_pre_ping=True,
        connect_args={"timeout": connect_timeout_s, "server_settings": {"application_name": "moorage"}},
    )


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    return config


_MIGRATE_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


def _migrate_lock() -> asyncio.Lock:
    return _MIGRATE_LOCKS.setdefault(asyncio.get_running_loop(), asyncio.Lock())


def _upgrade(connection: Connection, config: Config) -> None:
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


class Database:
    """An async engine plus the things every user of it needs: ping, migrate, close, error mapping.

    Build one with :meth:`connect`; share it between a :class:`~moorage_session_store.SQLModelSessionStore`
    and :class:`~moorage_session_store.SessionRecords`; :meth:`close` it once.
    """

    def __init__(self, engine: AsyncEngine, url: URL) -> None:
        self.engine = engine
        self.url = url
        self.location = describe(url)

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self.engine.dialect.name

    @classmethod
    async def connect(cls, url: str | URL, *, connect_timeout_s: float = 10.0) -> Self:
        """Create the engine and check that the database answers; raise :class:`DatabaseUnavailable` if not."""
        parsed = async_url(url)
        db = cls(_make_engine(parsed, connect_timeout_s), parsed)
        try:
            await db.ping(timeout_s=connect_timeout_s)
        except BaseException:
            await db.close()
            raise
        return db

    async def ping(self, *, timeout_s: float = 10.0) -> None:
        """Run ``SELECT 1``; raise :class:`DatabaseUnavailable` on any connection failure or timeout."""
        with self.translate_errors(connecting=True):
            async with asyncio.timeout(timeout_s), self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))

    async def migrate(self) -> None:
        """Bring the schema to the newest revision (``alembic upgrade head``); safe to run repeatedly.

        Runs on this engine's own connection through ``run_sync``, so it works inside a running event
        loop. Concurrent migrations are serialized: in this process by a lock (Alembic's context is
        process-global), across processes by ``BEGIN IMMEDIATE`` on SQLite and an advisory lock on
        PostgreSQL; the migration runs in that one transaction.
        """
        config = _alembic_config()
        async with _migrate_lock():
            with self.translate_errors():
                async with self.engine.connect() as conn:
                    if self.dialect == "sqlite":
                        await conn.exec_driver_sql("BEGIN IMMEDIATE")
                    else:
                        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATE_LOCK_KEY})
                    await conn.run_sync(_upgrade, config)
                    await conn.commit()

    async def close(self) -> None:
        """Close every pooled connection. The object cannot be used afterwards."""
        await self.engine.dispose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    @contextlib.contextmanager
    def translate_errors(self, *, connecting: bool = False) -> Iterator[None]:
        """Turn connection failures into :class:`DatabaseUnavailable`; other errors pass unchanged.

        With ``connecting``, every driver error counts (unknown database, role, bad password…).
        """
        try:
            yield
        except exc.DBAPIError as err:
            if connecting or err.connection_invalidated or isinstance(err, exc.OperationalError | exc.InterfaceError):
                raise DatabaseUnavailable(f"{self.location} is unavailable: {self._reason(err)}") from err
            raise
        except (exc.TimeoutError, sqlite3.OperationalError, OSError, TimeoutError) as err:
            raise DatabaseUnavailable(f"{self.location} is unavailable: {self._reason(err)}") from err

    def _reason(self, err: BaseException) -> str:
        cause: BaseException = err.orig if isinstance(err, exc.DBAPIError) and err.orig is not None else err
        lines = str(cause).strip().splitlines()
        reason = f"{type(cause).__name__}: {lines[0]}" if lines else type(cause).__name__
        if self.url.password:
            reason = reason.replace(str(self.url.password), "***")
        return reason[:300]
