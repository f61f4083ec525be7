"""What a tenant stores, and deleting it: ``SessionRecords.tenant_storage_bytes``, ``purge`` and
``reap_suspended`` on SQLite and PostgreSQL (the PostgreSQL database is shared by this module's
tests, so every test uses tenants and ids of its own)."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from moorage_session_store import Database, SessionRecords, SQLModelSessionStore
from moorage_session_store.models import ENTRIES, KEYS, SESSIONS, WORKSPACES
from sqlalchemy import func, select


def _ids(n: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(n)]


async def _rows(db: Database, session_id: str) -> dict[str, int]:
    """Rows the session has in each table (transcript entries through their key rows)."""
    async with db.engine.connect() as conn:
        counts = {
            "sessions": select(func.count()).select_from(SESSIONS).where(SESSIONS.c.id == session_id),
            "workspaces": select(func.count()).select_from(WORKSPACES).where(WORKSPACES.c.session_id == session_id),
            "keys": select(func.count()).select_from(KEYS).where(KEYS.c.session_id == session_id),
            "entries": select(func.count())
            .select_from(ENTRIES.join(KEYS, ENTRIES.c.key_id == KEYS.c.id))
            .where(KEYS.c.session_id == session_id),
        }
        return {name: int((await conn.execute(stmt)).scalar_one()) for name, stmt in counts.items()}


async def _stored_session(db: Database, tenant: str, session_id: str, workspace: bytes) -> list[Any]:
    """A session with a workspace, a main transcript and a subagent transcript; returns the entries."""
    records, store = SessionRecords(db), SQLModelSessionStore(db)
    await records.create(session_id, tenant, {})
    await records.save_workspace(session_id, workspace)
    main: list[Any] = [{"type": "user", "uuid": str(uuid.uuid4()), "text": "héllo ✓"}, {"type": "assistant", "n": 1}]
    sub: list[Any] = [{"type": "assistant", "uuid": str(uuid.uuid4()), "text": "x" * 1000}]
    await store.append({"project_key": tenant, "session_id": session_id}, main)
    await store.append({"project_key": tenant, "session_id": session_id, "subpath": "agents/a1"}, sub)
    return [*main, *sub]


async def test_tenant_storage_counts_workspaces_and_transcripts_of_that_tenant_only(db: Database) -> None:
    """Workspace archive sizes plus the bytes of every transcript entry (subagents too), per tenant."""
    records = SessionRecords(db)
    tenant, other = f"t-{uuid.uuid4().hex[:8]}", f"o-{uuid.uuid4().hex[:8]}"
    assert await records.tenant_storage_bytes(tenant) == 0
    a, b, c = _ids(3)
    entries = await _stored_session(db, tenant, a, b"w" * 5000)
    entries += await _stored_session(db, tenant, b, b"v" * 300)
    await _stored_session(db, other, c, b"z" * 70_000)
    used = await records.tenant_storage_bytes(tenant)
    # The JSON text of each entry as the database keeps it: at least its compact UTF-8 form.
    compact = sum(len(json.dumps(e, ensure_ascii=False, separators=(",", ":")).encode()) for e in entries)
    assert 5300 + compact <= used <= 5300 + 2 * compact
    assert await records.workspace_bytes(a) == 5000 and await records.workspace_bytes("nope") == 0
    await records.save_workspace(a, b"w" * 10)  # a smaller snapshot replaces the bigger one
    assert await records.tenant_storage_bytes(tenant) == used - 4990


async def test_purge_deletes_record_workspace_and_every_transcript_of_the_session(db: Database) -> None:
    """One call removes the session row, its workspace and its main and subagent transcripts; nothing else."""
    records = SessionRecords(db)
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    doomed, kept = _ids(2)
    await _stored_session(db, tenant, doomed, b"w" * 100)
    await _stored_session(db, tenant, kept, b"k" * 100)
    assert await _rows(db, doomed) == {"sessions": 1, "workspaces": 1, "keys": 2, "entries": 3}
    assert await records.purge(doomed)
    assert await _rows(db, doomed) == {"sessions": 0, "workspaces": 0, "keys": 0, "entries": 0}
    assert await _rows(db, kept) == {"sessions": 1, "workspaces": 1, "keys": 2, "entries": 3}
    assert not await records.purge(doomed)  # gone: answered like an unknown id
    assert await records.get(doomed) is None


async def test_purge_never_deletes_a_session_another_replica_holds(db: Database) -> None:
    """Held by another replica: refused; held by the caller, free, or an expired lease: deleted."""
    records = SessionRecords(db)
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    held, mine, expired = _ids(3)
    for session_id in (held, mine, expired):
        await _stored_session(db, tenant, session_id, b"w")
    assert await records.acquire_lease(held, "replica-b", 60)
    assert await records.acquire_lease(mine, "replica-a", 60)
    assert await records.acquire_lease(expired, "replica-b", 0.05)
    await asyncio.sleep(0.1)
    assert not await records.purge(held, owner="replica-a")
    assert not await records.purge(held)
    assert (await _rows(db, held))["entries"] == 3
    assert await records.purge(mine, owner="replica-a")
    assert await records.purge(expired, owner="replica-a")


async def test_reap_deletes_only_old_unleased_suspended_sessions_in_batches(db: Database) -> None:
    """Suspended before the cutoff and not leased: deleted with all they stored, at most ``limit`` a call.
    Active, recently suspended, or leased sessions stay."""
    records = SessionRecords(db)
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    old = _ids(3)
    active, leased, recent = _ids(3)
    for session_id in [*old, active, leased, recent]:
        await _stored_session(db, tenant, session_id, b"w" * 10)
    for session_id in [*old, leased, recent]:
        await records.update(session_id, state="suspended")
    assert await records.acquire_lease(leased, "replica-b", 60)  # being rehydrated right now
    # Everything above was last updated before this cutoff except `recent`, touched after it.
    await asyncio.sleep(0.05)
    cutoff = datetime.now(UTC)
    await asyncio.sleep(0.05)
    await records.update(recent, state="suspended")

    first = await records.reap_suspended(cutoff, limit=2)
    second = await records.reap_suspended(cutoff, limit=2)
    assert len(first) == 2 and len(second) == 1 and sorted(first + second) == sorted(old)
    assert await records.reap_suspended(cutoff, limit=2) == []
    for session_id in old:
        assert await _rows(db, session_id) == {"sessions": 0, "workspaces": 0, "keys": 0, "entries": 0}
    for session_id in (active, leased, recent):
        assert (await _rows(db, session_id))["sessions"] == 1
    assert await records.reap_suspended(datetime.now(UTC) + timedelta(days=1), limit=10) == [recent]


async def test_two_reapers_at_once_delete_each_session_once(db: Database) -> None:
    """Two replicas sweeping the same database concurrently split the work: no id twice, none missed."""
    records = SessionRecords(db)
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    ids = _ids(8)
    for session_id in ids:
        await records.create(session_id, tenant, {})
        await records.update(session_id, state="suspended")
    cutoff = datetime.now(UTC) + timedelta(seconds=1)
    other = await Database.connect(db.url)
    try:
        theirs = SessionRecords(other)
        done: list[str] = []
        for _ in range(8):
            a, b = await asyncio.gather(records.reap_suspended(cutoff, 3), theirs.reap_suspended(cutoff, 3))
            done += a + b
        assert len(done) == len(set(done)) and set(ids) <= set(done)
    finally:
        await other.close()
