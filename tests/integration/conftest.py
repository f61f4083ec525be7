"""Fixtures shared by the integration tests of the session-store repositories."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from moorage_session_store import Database, Files
from moorage_session_store.models import (
    AGENTS,
    API_TOKENS,
    ENVIRONMENTS,
    FILE_BLOB_DELETIONS,
    FILES,
    REPLICAS,
    SESSION_COMMANDS,
    TENANT_SPEND,
    VAULT_CREDENTIALS,
    VAULTS,
)
from s3_server import moto_s3, new_bucket
from support import pg_available, pg_database


@pytest.fixture(scope="module")
def pg_name() -> Iterator[str]:
    """A temp PostgreSQL database for one module, dropped afterwards."""
    if not pg_available():
        pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432")
    with pg_database() as name:
        yield name


@pytest.fixture(params=["sqlite", "postgresql"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """A migrated database, per backend, with no tokens, no tenant spend, no agents, no environments,
    no session commands, no replicas, no files (nor queued object deletions) and no vaults (the
    PostgreSQL one is shared by a module's tests)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
    else:
        url = f"postgresql://postgres@127.0.0.1:5432/{request.getfixturevalue('pg_name')}"
    database = await Database.connect(url)
    try:
        await database.migrate()
        async with database.engine.begin() as conn:
            await conn.execute(API_TOKENS.delete())
            await conn.execute(TENANT_SPEND.delete())
            await conn.execute(AGENTS.delete())
            await conn.execute(ENVIRONMENTS.delete())
            await conn.execute(SESSION_COMMANDS.delete())
            await conn.execute(REPLICAS.delete())
            await conn.execute(FILES.delete())  # their chunks by cascade
            await conn.execute(FILE_BLOB_DELETIONS.delete())
            await conn.execute(VAULT_CREDENTIALS.delete())
            await conn.execute(VAULTS.delete())
        yield database
    finally:
        await database.close()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real local S3-compatible server (moto's) for the session: its endpoint URL."""
    with moto_s3() as endpoint:
        yield endpoint


@pytest.fixture(params=["chunks", "s3"])
async def files(request: pytest.FixtureRequest, db: Database) -> AsyncIterator[Files]:
    """The files repository on ``db``, its bytes in ``file_chunks`` rows or in a new bucket of the
    S3-compatible server."""
    if request.param == "chunks":
        yield Files(db)
        return
    blobs = await new_bucket(request.getfixturevalue("s3_endpoint"))
    try:
        yield Files(db, blobs)
    finally:
        await blobs.close()
