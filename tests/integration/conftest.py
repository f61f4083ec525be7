"""Fixtures shared by the integration tests of the session-store repositories."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from moorage_session_store import Database
from moorage_session_store.models import (
    AGENTS,
    API_TOKENS,
    ENVIRONMENTS,
    FILES,
    REPLICAS,
    SESSION_COMMANDS,
    TENANT_SPEND,
    VAULT_CREDENTIALS,
    VAULTS,
)
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
    no session commands, no replicas, no files and no vaults (the PostgreSQL one is shared by a module's
    tests)."""
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
            await conn.execute(VAULT_CREDENTIALS.delete())
            await conn.execute(VAULTS.delete())
        yield database
    finally:
        await database.close()
