"""API tokens against real databases (a SQLite file and the local PostgreSQL): the ``Tokens``
repository, migration 0002, and the service's ``Authenticator`` (cache bound, open mode, outages).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from alembic import command
from moorage.auth import Authenticator, digest
from moorage_session_store import Database, DatabaseUnavailable, SessionRecords, Tokens
from moorage_session_store.columns import utcnow
from moorage_session_store.database import VERSION_TABLE, _alembic_config
from moorage_session_store.models import API_TOKENS
from moorage_session_store.tokens import parse_token
from sqlalchemy import select, text, update
from sqlalchemy.engine import Connection
from support import Cuttable, pg_available

TOKEN_RE = re.compile(r"^mrg_[0-9a-f]{12}_[0-9a-f]{64}$")


async def raw_rows(db: Database) -> list[dict[str, object]]:
    async with db.engine.connect() as conn:
        return [dict(r._mapping) for r in (await conn.execute(select(API_TOKENS))).all()]


async def test_a_token_is_returned_once_and_only_its_digest_is_stored(db: Database) -> None:
    """create() returns mrg_<12 hex>_<64 hex>; the row holds sha256(token), never the secret."""
    tokens = Tokens(db)
    record, token = await tokens.create("acme", "ci bot")
    assert TOKEN_RE.match(token) and parse_token(token) == record.id
    secret = token.rsplit("_", 1)[1]
    (row,) = await raw_rows(db)
    assert row["secret_sha256"] == hashlib.sha256(token.encode()).hexdigest()
    assert secret not in repr(row) and token not in repr(row)
    assert (row["tenant"], row["name"], row["revoked_at"], row["last_used_at"]) == ("acme", "ci bot", None, None)
    listed = await tokens.list()
    assert [r.id for r in listed] == [record.id] and "sha256" not in repr(listed)
    _, other = await tokens.create("acme")
    assert other != token and parse_token(other) != record.id


async def test_forged_tokens_are_refused(db: Database) -> None:
    """Right id + wrong secret, random, truncated, re-cased or padded tokens, another tenant's id: all refused."""
    tokens = Tokens(db)
    acme, acme_token = await tokens.create("acme")
    _, globex_token = await tokens.create("globex")
    assert (await tokens.check(acme_token)).ok
    forged = f"mrg_{acme.id}_{'0' * 64}"
    assert (await tokens.check(forged)).reason == "mismatch"
    assert (await tokens.check(f"mrg_{uuid.uuid4().hex[:12]}_{uuid.uuid4().hex * 2}")).reason == "unknown"
    for bad in (acme_token[:-1], acme_token + "0", acme_token.upper(), f" {acme_token}", "mrg_", "", "x" * 81):
        assert (await tokens.check(bad)).reason == "malformed", bad
    globex_secret = globex_token.rsplit("_", 1)[1]
    assert (await tokens.check(f"mrg_{acme.id}_{globex_secret}")).reason == "mismatch"


async def test_revoked_and_expired_tokens_fail_and_revoke_is_idempotent(db: Database) -> None:
    """A revoked token stays revoked (first revoked_at kept); an expired one fails; unknown ids are None."""
    tokens = Tokens(db)
    record, token = await tokens.create("acme")
    first = await tokens.revoke(record.id)
    assert first is not None and first.revoked_at is not None
    again = await tokens.revoke(record.id)
    assert again is not None and again.revoked_at == first.revoked_at
    assert (await tokens.check(token)).reason == "revoked"
    assert await tokens.revoke("000000000000") is None
    _, old = await tokens.create("acme", expires_at=utcnow() - timedelta(seconds=1))
    assert (await tokens.check(old)).reason == "expired"
    _, fresh = await tokens.create("acme", expires_at=utcnow() + timedelta(days=1))
    assert (await tokens.check(fresh)).ok


async def test_last_used_is_written_at_most_once_a_minute(db: Database) -> None:
    """Repeated checks within a minute keep last_used_at; one after a minute moves it."""
    tokens = Tokens(db)
    record, token = await tokens.create("acme")
    await tokens.check(token)
    used = (await tokens.get(record.id)).last_used_at  # type: ignore[union-attr]
    assert used is not None
    await tokens.check(token)
    assert (await tokens.get(record.id)).last_used_at == used  # type: ignore[union-attr]
    async with db.engine.begin() as conn:
        stmt = update(API_TOKENS).where(API_TOKENS.c.id == record.id).values(last_used_at=used - timedelta(minutes=2))
        await conn.execute(stmt)
    await tokens.check(token)
    assert (await tokens.get(record.id)).last_used_at > used  # type: ignore[operator, union-attr]


async def test_list_filters_by_tenant_and_any_sees_revoked_tokens(db: Database) -> None:
    """list(tenant) filters, oldest first; any() is true once a token was issued, even if revoked."""
    tokens = Tokens(db)
    assert not await tokens.any()
    a1, _ = await tokens.create("acme")
    await tokens.create("globex")
    a2, _ = await tokens.create("acme")
    assert [r.id for r in await tokens.list("acme")] == [a1.id, a2.id]
    assert len(await tokens.list()) == 3
    for r in await tokens.list():
        await tokens.revoke(r.id)
    assert await tokens.any()


async def test_migrations_upgrade_a_0001_database_keeping_its_rows(tmp_path: Path) -> None:
    """A database left at 0001 with a session in it gains api_tokens (and later columns) and keeps the session."""
    db = await Database.connect(f"sqlite:///{tmp_path / 'old.db'}")
    try:

        def to_0001(conn: Connection) -> None:
            config = _alembic_config()
            config.attributes["connection"] = conn
            command.upgrade(config, "0001")

        async with db.engine.begin() as conn:
            await conn.run_sync(to_0001)
            # A row as the 0001 code wrote it (today's code writes today's columns).
            await conn.execute(
                text(
                    "INSERT INTO sessions (id, tenant, state, created_at, updated_at, last_active_at, turns, "
                    "cost_usd, options) VALUES ('s1', 'acme', 'suspended', :t, :t, :t, 0, 0.0, '{}')"
                ),
                {"t": "2026-11-01 00:00:00.000000"},
            )
        await db.migrate()
        async with db.engine.connect() as conn:
            version = (await conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))).scalars().all()
        assert version == ["0014"]
        assert (await SessionRecords(db).get("s1")) is not None
        assert not await Tokens(db).any()
    finally:
        await db.close()


# --- the service's Authenticator over a real table -----------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.connect(f"sqlite:///{tmp_path / 'auth.db'}")
    try:
        await database.migrate()
        yield database
    finally:
        await database.close()


async def test_env_keys_work_without_the_database_and_table_tokens_after_it(sqlite_db: Database) -> None:
    """An env key needs no query; a table token maps to its tenant; anything else is refused."""
    tokens = Tokens(sqlite_db)
    _, token = await tokens.create("globex")
    auth = Authenticator({digest("env-token-0123456789"): "acme"}, tokens)
    assert await auth.tenant("env-token-0123456789") == "acme"
    assert await auth.tenant(token) == "globex"
    assert (await auth.verdict(None)).reason == "missing"
    assert (await auth.verdict("nonsense")).reason == "malformed"


async def test_a_revocation_lags_at_most_the_cache_ttl(sqlite_db: Database) -> None:
    """A revoked token is still accepted from cache until the TTL passes, then refused; failures are not cached."""
    tokens, clock = Tokens(sqlite_db), Clock()
    record, token = await tokens.create("acme")
    auth = Authenticator({}, tokens, cache_ttl_s=5, clock=clock)
    assert await auth.tenant(token) == "acme"
    await tokens.revoke(record.id)
    clock.now += 4.9
    assert await auth.tenant(token) == "acme"  # the documented lag
    clock.now += 0.2
    verdict = await auth.verdict(token)
    assert (verdict.tenant, verdict.reason, verdict.token_id) == (None, "revoked", record.id)


async def test_a_cached_token_is_not_trusted_past_its_expiry(sqlite_db: Database) -> None:
    """The cache entry of a token that expires in under a TTL lasts only until its expiry."""
    tokens = Tokens(sqlite_db)
    _, token = await tokens.create("acme", expires_at=utcnow() + timedelta(seconds=0.5))
    auth = Authenticator({}, tokens, cache_ttl_s=60)
    assert await auth.tenant(token) == "acme"
    await asyncio.sleep(0.6)  # real time: expiry is wall-clock
    assert (await auth.verdict(token)).reason == "expired"


async def test_open_mode_ends_with_the_first_issued_token(sqlite_db: Database) -> None:
    """No keys, no tokens, loopback: open; a token exists (within the TTL): closed; never open off loopback."""
    tokens, clock = Tokens(sqlite_db), Clock()
    auth = Authenticator({}, tokens, cache_ttl_s=5, clock=clock)
    assert await auth.tenant(None) == "default"
    assert not await Authenticator({}, tokens, allow_open=False).open()
    assert (await Authenticator({}, tokens, allow_open=False).verdict(None)).reason == "missing"
    record, token = await tokens.create("acme")
    clock.now += 5
    assert await auth.tenant(None) is None and await auth.tenant(token) == "acme"
    await tokens.revoke(record.id)
    clock.now += 5
    assert await auth.tenant(None) is None  # revoking every token does not reopen the service


@pytest.mark.skipif(not pg_available(), reason="PostgreSQL is not reachable at 127.0.0.1:5432")
async def test_a_database_outage_refuses_with_database_unavailable(pg_name: str) -> None:
    """With the database cut, an uncached table token raises DatabaseUnavailable (never a pass); env keys still work."""
    proxy = Cuttable()
    proxy.restore()
    db = await Database.connect(f"postgresql://postgres@127.0.0.1:{proxy.port}/{pg_name}")
    try:
        await db.migrate()
        tokens = Tokens(db)
        _, token = await tokens.create("acme")
        auth = Authenticator({digest("env-token-0123456789"): "ops"}, tokens, cache_ttl_s=0)
        assert await auth.tenant(token) == "acme"
        proxy.cut()
        with pytest.raises(DatabaseUnavailable):
            await auth.verdict(token)
        assert await auth.tenant("env-token-0123456789") == "ops"
        proxy.restore()
        assert await auth.tenant(token) == "acme"
    finally:
        proxy.cut()
        await db.close()
