"""moorage-session-store against real databases: a SQLite file and the local PostgreSQL.

PostgreSQL tests use a temp database (``moorage_test_<hex>``) created next to
``MOORAGE_TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``) and dropped
at the end; they skip when that server cannot be reached.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from claude_agent_sdk import get_session_messages_from_store, list_sessions_from_store, project_key_for_directory
from claude_agent_sdk.testing import run_session_store_conformance
from claude_agent_sdk.types import SessionKey, SessionStoreEntry
from moorage_session_store import (
    Database,
    DatabaseUnavailable,
    InvalidRecord,
    SessionExists,
    SessionNotFound,
    SessionQuery,
    SessionRecord,
    SessionRecords,
    SQLModelSessionStore,
    TurnUsage,
)
from moorage_session_store.database import VERSION_TABLE
from moorage_session_store.models import metadata
from sqlalchemy import text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import create_async_engine

PG_ADMIN_URL = os.environ.get("MOORAGE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
TABLES = ("workspace_chunks", "workspaces", "sessions", "session_store_entries", "session_store_keys")
BACKENDS = ["sqlite", "postgresql"]


def _pg_reachable() -> bool:
    url = make_url(PG_ADMIN_URL)
    try:
        with socket.create_connection((url.host or "localhost", url.port or 5432), timeout=2):
            return True
    except OSError:
        return False


async def _admin(sql: str) -> None:
    engine = create_async_engine(make_url(PG_ADMIN_URL).set(drivername="postgresql+asyncpg"))
    try:
        async with engine.connect() as conn:
            await (await conn.execution_options(isolation_level="AUTOCOMMIT")).exec_driver_sql(sql)
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A temp PostgreSQL database for this test run, dropped afterwards."""
    if not _pg_reachable():
        pytest.skip(f"PostgreSQL unreachable at {PG_ADMIN_URL} (set MOORAGE_TEST_POSTGRES_URL)")
    name = f"moorage_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL per backend: a fresh SQLite file, or the run's PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return str(request.getfixturevalue("pg_url"))


async def _truncate(db: Database) -> None:
    async with db.engine.begin() as conn:
        if db.dialect == "postgresql":
            await conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        else:
            for table in TABLES:
                await conn.execute(text(f"DELETE FROM {table}"))


@pytest.fixture
async def db(url: str) -> AsyncIterator[Database]:
    """A connected, migrated, empty database."""
    database = await Database.connect(url)
    try:
        await database.migrate()
        await _truncate(database)
        yield database
    finally:
        await database.close()


def entry(n: int, uuid_: str | None = None, **extra: Any) -> SessionStoreEntry:
    """A transcript-like entry; ``uuid_=None`` leaves the uuid out."""
    e: dict[str, Any] = {"type": "user", "n": n, **extra}
    if uuid_ is not None:
        e["uuid"] = uuid_
    return e  # type: ignore[return-value]


KEY: SessionKey = {"project_key": "proj", "session_id": "sess"}


async def test_sdk_conformance(url: str, tmp_path: Path) -> None:
    """The SDK's 14 SessionStore contracts pass with no optional method skipped, each on an isolated store."""
    dbs: list[Database] = []

    async def make_store() -> SQLModelSessionStore:
        if url.startswith("sqlite"):
            db = await Database.connect(f"sqlite:///{tmp_path / f'conformance-{len(dbs)}.db'}")
            dbs.append(db)
            await db.migrate()
        else:
            if not dbs:
                dbs.append(await Database.connect(url))
                await dbs[0].migrate()
            db = dbs[0]
            await _truncate(db)
        return SQLModelSessionStore(db)

    try:
        await run_session_store_conformance(make_store)
    finally:
        for db in dbs:
            await db.close()


async def test_retried_batch_and_repeated_uuid_never_duplicate(db: Database) -> None:
    """A uuid is an idempotency key across and within batches; entries without uuid always append."""
    store = SQLModelSessionStore(db)
    batch = [entry(1, "a"), entry(2, "b"), entry(3)]
    await store.append(KEY, batch)
    await store.append(KEY, batch)  # the SDK retrying a batch that did land
    await store.append(KEY, [entry(4, "c"), entry(5, "c"), entry(6, "b"), entry(7)])
    assert await store.load(KEY) == [entry(1, "a"), entry(2, "b"), entry(3), entry(3), entry(4, "c"), entry(7)]


async def test_entries_round_trip_deep_equal_in_append_order(db: Database) -> None:
    """Odd JSON (unicode, NUL escapes, big ints, floats, nesting, nulls) loads back deep-equal and in order."""
    store = SQLModelSessionStore(db)
    odd = [
        entry(0, "u0", text="héllo ✓ \U0001f600", nul="a\u0000b", big=2**62, neg=-(2**40), f=0.1, e=1e-300),
        entry(1, "u1", nested={"a": [1, {"b": None, "c": [True, False]}], "": "empty key"}, none=None),
        entry(2, None, message={"content": [{"type": "text", "text": "x" * 10_000}]}),
    ]
    await store.append(KEY, odd[:2])
    await store.append(KEY, odd[2:])
    assert await store.load(KEY) == odd


async def test_concurrent_appends_from_two_replicas_keep_every_summary_field(url: str, db: Database) -> None:
    """Appends to one session from two Database instances are serialized: no folded summary field is lost."""
    other = await Database.connect(url)
    try:
        stores = [SQLModelSessionStore(db), SQLModelSessionStore(other)]
        fields: list[dict[str, Any]] = [
            {"cwd": "/w"},
            {"gitBranch": "dev"},
            {"type": "tag", "tag": "t1"},
            {"aiTitle": "title"},
            {"summary": "s"},
            {"lastPrompt": "p"},
            {"timestamp": "2025-01-01T00:00:00.000Z"},
            {"message": {"content": "first prompt"}},
        ]
        await asyncio.gather(*(stores[i % 2].append(KEY, [entry(i, f"u{i}", **f)]) for i, f in enumerate(fields)))
        loaded = await stores[0].load(KEY)
        assert loaded is not None and sorted(e["uuid"] for e in loaded) == sorted(f"u{i}" for i in range(len(fields)))
        (summary,) = await stores[1].list_session_summaries("proj")
        data = summary["data"]
        assert (data["cwd"], data["git_branch"], data["tag"], data["ai_title"]) == ("/w", "dev", "t1", "title")
        assert (data["summary_hint"], data["last_prompt"], data["first_prompt"]) == ("s", "p", "first prompt")
        assert "created_at" in data
        (listed,) = await stores[0].list_sessions("proj")
        assert summary["mtime"] == listed["mtime"]
    finally:
        await other.close()


async def test_mtime_is_epoch_ms_and_strictly_increasing(db: Database) -> None:
    """Every append moves the session's mtime forward, even within one millisecond."""
    store = SQLModelSessionStore(db)
    before = int(time.time() * 1000)
    seen = []
    for i in range(5):
        await store.append(KEY, [entry(i)])
        (listed,) = await store.list_sessions("proj")
        seen.append(listed["mtime"])
    assert seen == sorted(set(seen)) and before <= seen[0] <= int(time.time() * 1000) + 1000


async def test_sdk_store_helpers_read_what_was_appended(db: Database, tmp_path: Path) -> None:
    """The SDK's list_sessions_from_store / get_session_messages_from_store work on this store."""
    store = SQLModelSessionStore(db)
    directory = str(tmp_path)
    key: SessionKey = {"project_key": project_key_for_directory(directory), "session_id": str(uuid.uuid4())}
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    common: dict[str, Any] = {
        "sessionId": key["session_id"],
        "cwd": directory,
        "isSidechain": False,
        "userType": "external",
    }
    lines: list[dict[str, Any]] = [
        {
            **common,
            "type": "user",
            "uuid": first,
            "parentUuid": None,
            "timestamp": "2025-01-01T00:00:00.000Z",
            "message": {"role": "user", "content": "what is in this repo?"},
        },
        {
            **common,
            "type": "assistant",
            "uuid": second,
            "parentUuid": first,
            "timestamp": "2025-01-01T00:00:01.000Z",
            "message": {"role": "assistant", "content": [{"type": "text", "text": "a README"}]},
        },
    ]
    await store.append(key, lines)  # type: ignore[arg-type]
    (info,) = await list_sessions_from_store(store, directory=directory)
    assert (info.session_id, info.summary) == (key["session_id"], "what is in this repo?")
    assert info.created_at == 1735689600000  # the first entry's timestamp
    messages = await get_session_messages_from_store(store, key["session_id"], directory=directory)
    assert [m.uuid for m in messages] == [first, second]


async def test_migrate_is_idempotent_and_matches_the_models(db: Database) -> None:
    """migrate() twice is harmless, stamps the newest revision, and leaves a schema identical to the SQLModel models."""
    await db.migrate()
    await db.migrate()

    def diff(conn: Connection) -> list[Any]:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        return list(compare_metadata(context, metadata))

    async with db.engine.connect() as conn:
        version = (await conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))).scalars().all()
        differences = await conn.run_sync(diff)
    assert version == ["0014"]
    assert differences == []


@pytest.mark.parametrize("backend", BACKENDS)
async def test_concurrent_migrations_of_a_fresh_database_all_succeed(backend: str, tmp_path: Path) -> None:
    """Three replicas migrating one empty database at once: all succeed, the newest revision once."""
    if backend == "sqlite":
        url, name = f"sqlite:///{tmp_path / 'fresh.db'}", None
    else:
        if not _pg_reachable():
            pytest.skip(f"PostgreSQL unreachable at {PG_ADMIN_URL}")
        name = f"moorage_test_{uuid.uuid4().hex[:12]}"
        await _admin(f'CREATE DATABASE "{name}"')
        url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    dbs = [await Database.connect(url) for _ in range(3)]
    try:
        await asyncio.gather(*(db.migrate() for db in dbs))
        async with dbs[0].engine.connect() as conn:
            version = (await conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))).scalars().all()
        assert version == ["0014"]
    finally:
        for db in dbs:
            await db.close()
        if name is not None:
            await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_connect_to_unreachable_postgres_fails_fast_without_the_password() -> None:
    """Nothing listening on the port: DatabaseUnavailable within seconds, naming host:port, hiding the password."""
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable) as info:
        await Database.connect("postgresql://moorage:s3cret-pw@127.0.0.1:1/moorage", connect_timeout_s=5)
    assert time.monotonic() - started < 5
    assert "127.0.0.1:1" in str(info.value) and "s3cret-pw" not in str(info.value)
    assert info.value.code == "store_unavailable"


async def test_connect_to_missing_postgres_database_or_sqlite_dir_is_unavailable(tmp_path: Path) -> None:
    """A SQLite path in a missing directory is DatabaseUnavailable naming the path (so is a missing PG database)."""
    path = tmp_path / "missing" / "store.db"
    with pytest.raises(DatabaseUnavailable, match=str(path)):
        await Database.connect(f"sqlite:///{path}")
    if _pg_reachable():
        with pytest.raises(DatabaseUnavailable, match="no_such_db_"):
            await Database.connect(make_url(PG_ADMIN_URL).set(database=f"no_such_db_{uuid.uuid4().hex[:8]}"))


# --- session records ------------------------------------------------------------------------


async def test_records_create_get_update_list(db: Database) -> None:
    """Records round-trip with UTC-aware times; update stamps updated_at; list filters by state and owner."""
    records = SessionRecords(db)
    created = await records.create("s1", "tenant-a", {"model": "m"})
    await records.create("s2", "tenant-b", {})
    assert created.state == "active" and created.turns == 0 and created.sandbox is None
    got = await records.get("s1")
    assert got is not None and got.created_at.tzinfo is not None and got.created_at.utcoffset() is not None
    assert got.options == {"model": "m"} and got.tenant == "tenant-a"
    assert await records.get("nope") is None

    active = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    await records.update("s1", state="suspended", sandbox={"kind": "local", "id": 7}, last_active_at=active)
    got = await records.get("s1")
    assert got is not None and got.state == "suspended" and got.sandbox == {"kind": "local", "id": 7}
    assert got.last_active_at == active and got.updated_at >= created.updated_at
    await records.update("s1", sandbox=None)
    assert (await records.get("s1")).sandbox is None  # type: ignore[union-attr]

    assert [r.id for r in await records.list()] == ["s1", "s2"]
    assert [r.id for r in await records.list(state="active")] == ["s2"]
    assert await records.acquire_lease("s2", "replica-1", 30)
    assert [r.id for r in await records.list(owner="replica-1")] == ["s2"]
    assert await records.list(state="suspended", owner="replica-1") == []

    with pytest.raises(SessionExists):
        await records.create("s1", "tenant-a", {})
    with pytest.raises(InvalidRecord):
        await records.update("s1", created_at=datetime.now(UTC))
    with pytest.raises(InvalidRecord):
        await records.update("s1", state="bogus")
    with pytest.raises(SessionNotFound):
        await records.update("nope", state="closed")


async def test_add_usage_increments_atomically(db: Database) -> None:
    """Concurrent add_usage calls all count."""
    records = SessionRecords(db)
    await records.create("s", "t", {})
    await asyncio.gather(*(records.add_usage("s", 1, 0.25) for _ in range(10)))
    await records.add_usage("s", 2, 0.5)
    got = await records.get("s")
    assert got is not None and got.turns == 12 and got.cost_usd == pytest.approx(3.0)
    with pytest.raises(SessionNotFound):
        await records.add_usage("nope", 1, 0.0)


async def test_token_counters_and_active_seconds_add_up(db: Database) -> None:
    """A turn's metered tokens and active time are added in SQL, like the cost."""
    records = SessionRecords(db)
    await records.create("s", "t", {})
    turn = TurnUsage(
        1, 0.1, input_tokens=11, output_tokens=7, cache_read_tokens=3, cache_creation_tokens=2, active_seconds=0.5
    )
    await asyncio.gather(*(records.add_usage("s", 1, 0.1, turn) for _ in range(4)))
    got = await records.get("s")
    assert got is not None and (got.input_tokens, got.output_tokens, got.cache_read_tokens) == (44, 28, 12)
    assert got.cache_creation_tokens == 8 and got.active_seconds == pytest.approx(2.0) and got.turns == 4


async def test_sessions_page_by_tenant_agent_and_time_with_cursors(db: Database) -> None:
    """``page``: one tenant's sessions, newest first (or oldest), by agent, archived only when
    asked, continued past a ``(created_at, id)`` cursor with nothing skipped or repeated."""
    records = SessionRecords(db)
    made = []
    for i in range(5):
        made.append(await records.create(f"s{i}", "t", {}, api={"title": f"n{i}"}, agent=("agent_a", 1 + i % 2)))
    await records.create("other", "u", {}, agent=("agent_a", 1))
    await records.create("plain", "t", {})
    newest = SessionQuery(agent_id="agent_a")
    first = await records.page("t", newest, None, 3)
    rest = await records.page("t", newest, (first[-1].created_at, first[-1].id), 3)
    assert [r.id for r in first + rest] == ["s4", "s3", "s2", "s1", "s0"]
    oldest = SessionQuery(agent_id="agent_a", agent_version=2, newest_first=False)
    assert [r.id for r in await records.page("t", oldest, None, 10)] == ["s1", "s3"]
    assert await records.archive("s0", "t") is not None
    assert await records.archive("s0", "u") is None  # another tenant's: as if unknown
    assert "s0" not in [r.id for r in await records.page("t", newest, None, 10)]
    assert "s0" in [r.id for r in await records.page("t", SessionQuery(include_archived=True), None, 10)]
    later = SessionQuery(created_after=made[2].created_at, newest_first=False)
    assert [r.id for r in await records.page("t", later, None, 10)][:2] == ["s3", "s4"]


async def test_change_api_is_one_transaction_per_update(db: Database) -> None:
    """Concurrent changes of the api fields all apply (none is lost), a refusal changes nothing,
    another tenant's session is as unknown."""
    records = SessionRecords(db)
    await records.create("s", "t", {}, api={"metadata": {}})

    def add(key: str) -> Callable[[SessionRecord], dict[str, Any]]:
        return lambda r: {**(r.api or {}), "metadata": {**(r.api or {})["metadata"], key: "1"}}

    await asyncio.gather(*(records.change_api("s", "t", add(f"k{i}")) for i in range(5)))
    got = await records.get("s")
    assert got is not None and set((got.api or {})["metadata"]) == {f"k{i}" for i in range(5)}

    def refuse(r: SessionRecord) -> dict[str, Any]:
        raise ValueError("no")

    with pytest.raises(ValueError):
        await records.change_api("s", "t", refuse)
    assert await records.change_api("s", "u", add("x")) is None


async def test_lease_race_between_two_replicas_has_exactly_one_winner(url: str, db: Database) -> None:
    """Two Database instances (two replicas) acquire the same leases at once: exactly one wins each."""
    other = await Database.connect(url)
    try:
        mine, theirs = SessionRecords(db), SessionRecords(other)
        for i in range(5):
            await mine.create(f"s{i}", "t", {})
        for i in range(5):
            a, b = await asyncio.gather(mine.acquire_lease(f"s{i}", "r1", 30), theirs.acquire_lease(f"s{i}", "r2", 30))
            assert a != b
            got = await mine.get(f"s{i}")
            assert got is not None and got.owner == ("r1" if a else "r2")
            assert got.lease_expires_at is not None and got.lease_expires_at > datetime.now(UTC)
        assert not await mine.acquire_lease("missing", "r1", 30)
    finally:
        await other.close()


async def test_expired_lease_passes_to_another_owner(db: Database) -> None:
    """Same owner may re-acquire; after expiry another owner takes over and the old one can no longer renew."""
    records = SessionRecords(db)
    await records.create("s", "t", {})
    assert await records.acquire_lease("s", "r1", 0.2)
    assert await records.acquire_lease("s", "r1", 0.2)  # re-entrant
    assert not await records.acquire_lease("s", "r2", 30)
    await asyncio.sleep(0.3)
    assert await records.acquire_lease("s", "r2", 30)
    assert not await records.renew_lease("s", "r1", 30)
    await records.release_lease("s", "r1")  # not the owner: no-op
    got = await records.get("s")
    assert got is not None and got.owner == "r2"
    assert await records.renew_lease("s", "r2", 60)
    await records.release_lease("s", "r2")
    got = await records.get("s")
    assert got is not None and got.owner is None and got.lease_expires_at is None


async def test_orphans_are_active_sessions_whose_lease_another_replica_let_expire(db: Database) -> None:
    """What a replica adopts: active, leased by another replica, expired before ``now`` — not its
    own, not a suspended or unleased one, not one whose lease still runs; oldest expiry first."""
    records = SessionRecords(db)
    for sid in ("old", "new", "mine", "free", "resting"):
        await records.create(sid, "t", {})
    assert await records.acquire_lease("old", "r1", 10)
    assert await records.acquire_lease("new", "r1", 20)
    assert await records.acquire_lease("mine", "r2", 10)
    assert await records.acquire_lease("resting", "r1", 10)
    await records.update("resting", state="suspended")
    later = datetime.now(UTC) + timedelta(seconds=60)
    assert [r.id for r in await records.orphans(later, "r2", 10)] == ["old", "new"]
    assert [r.id for r in await records.orphans(later, "r2", 1)] == ["old"]
    assert [r.id for r in await records.orphans(later, "r1", 10)] == ["mine"]
    assert await records.orphans(datetime.now(UTC), "r2", 10) == []  # every lease still runs


async def test_workspace_save_load_round_trip(db: Database) -> None:
    """Workspace bytes round-trip exactly, save replaces, and deleting the session deletes the workspace."""
    records = SessionRecords(db)
    await records.create("s", "t", {})
    assert await records.load_workspace("s") is None
    blob = os.urandom(1 << 20) + bytes(range(256))
    await records.save_workspace("s", blob)
    assert await records.load_workspace("s") == blob
    await records.save_workspace("s", b"\x00second")
    assert await records.load_workspace("s") == b"\x00second"
    with pytest.raises(SessionNotFound):
        await records.save_workspace("nope", b"x")
    await records.delete("s")
    assert await records.get("s") is None and await records.load_workspace("s") is None
    await records.delete("s")  # absent: no-op
