"""The files repository on SQLite and PostgreSQL: bytes in and out unchanged through chunk rows,
nothing half-written kept (over the cap, a failing source), tenants never meet, lists page by
keyset with the scope / ids / expiry filters, a session's files go with the session whichever way
it is deleted, the sweep removes expired files and abandoned uploads, and file bytes count toward
the tenant's stored bytes (the PostgreSQL database is shared by the module: every test uses
tenants of its own)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from moorage_session_store import Database, FileNotFound, Files, FileTooLarge, SessionNotFound, SessionRecords
from moorage_session_store.files import ABANDONED_AFTER, CHUNK_BYTES
from moorage_session_store.models import FILE_CHUNKS, FILES
from sqlalchemy import func, insert, select


def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


async def pieces(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def put(
    files: Files, owner: str, data: bytes, *, scope_session_id: str | None = None, expires_at: datetime | None = None
) -> str:
    record = await files.put(
        owner,
        filename="f.bin",
        mime_type="application/octet-stream",
        chunks=pieces(data),
        max_bytes=10**9,
        scope_session_id=scope_session_id,
        expires_at=expires_at,
    )
    return record.id


async def read_all(files: Files, owner: str, file_id: str) -> bytes:
    return b"".join([chunk async for chunk in files.read(owner, file_id)])


async def rows(db: Database, file_id: str | None = None) -> tuple[int, int]:
    """(files rows, chunk rows) of one file, or of every file."""
    async with db.engine.connect() as conn:
        f = select(func.count()).select_from(FILES)
        c = select(func.count()).select_from(FILE_CHUNKS)
        if file_id is not None:
            f, c = f.where(FILES.c.id == file_id), c.where(FILE_CHUNKS.c.file_id == file_id)
        return int((await conn.execute(f)).scalar_one()), int((await conn.execute(c)).scalar_one())


async def test_bytes_come_back_unchanged_through_several_chunk_rows(db: Database) -> None:
    files, owner = Files(db), tenant()
    data = os.urandom(3 * CHUNK_BYTES + 12345)  # four rows, the last partial
    made = await files.put(
        owner,
        filename="report.csv",
        mime_type="text/csv",
        chunks=pieces(data),
        max_bytes=len(data),  # exactly at the cap is allowed
    )
    assert made.id.startswith("file_") and made.size_bytes == len(data) and made.downloadable
    assert made.expires_at is None and made.scope_session_id is None
    got = await files.get(owner, made.id)
    assert got == made
    assert await read_all(files, owner, made.id) == data
    assert await rows(db, made.id) == (1, 4)
    chunk_sizes = [len(c) async for c in files.read(owner, made.id)]
    assert max(chunk_sizes) == CHUNK_BYTES  # read back a row at a time, never the whole file

    empty = await put(files, owner, b"")
    assert await read_all(files, owner, empty) == b""
    record = await files.get(owner, empty)
    assert record is not None and record.size_bytes == 0


async def test_over_the_cap_or_a_failing_source_leaves_nothing(db: Database) -> None:
    files, owner = Files(db), tenant()
    before = await rows(db)
    with pytest.raises(FileTooLarge) as caught:
        await files.put(owner, filename="a", mime_type="x/y", chunks=pieces(b"x" * 3000, 1000), max_bytes=2999)
    assert caught.value.limit == 2999 and caught.value.code == "file_too_large"

    class Cut(Exception):
        pass

    async def failing() -> AsyncIterator[bytes]:
        yield b"y" * (CHUNK_BYTES + 10)  # one row written before the source fails
        raise Cut

    with pytest.raises(Cut):  # the source's own error, unchanged
        await files.put(owner, filename="b", mime_type="x/y", chunks=failing(), max_bytes=10**9)
    assert await rows(db) == before
    assert await files.list(owner, limit=10) == []
    assert await SessionRecords(db).tenant_storage_bytes(owner) == 0


async def test_another_tenants_file_is_like_an_unknown_one(db: Database) -> None:
    files, owner, other = Files(db), tenant(), tenant()
    file_id = await put(files, owner, b"secret")
    assert await files.get(other, file_id) is None
    with pytest.raises(FileNotFound):
        await read_all(files, other, file_id)
    assert await files.list(other, limit=10) == []
    assert await files.list(other, ids=[file_id], limit=10) == []
    assert not await files.delete(other, file_id)
    assert await read_all(files, owner, file_id) == b"secret"


async def test_lists_page_newest_first_and_filter_by_scope_ids_and_expiry(db: Database) -> None:
    files, records, owner = Files(db), SessionRecords(db), tenant()
    session_id = str(uuid.uuid4())
    await records.create(session_id, owner, {})
    now = datetime.now(UTC)
    made = [await put(files, owner, bytes([n])) for n in range(5)]
    scoped = await put(files, owner, b"out", scope_session_id=session_id)
    expired = await put(files, owner, b"old", expires_at=now - timedelta(seconds=1))
    later = await put(files, owner, b"new", expires_at=now + timedelta(hours=1))

    everything = [f.id for f in await files.list(owner, limit=100)]
    assert everything == [later, expired, scoped, *reversed(made)]
    first = await files.list(owner, limit=3)
    rest = await files.list(owner, limit=100, after=(first[-1].created_at, first[-1].id))
    assert [f.id for f in first + rest] == everything
    assert [f.id for f in await files.list(owner, scope_session_id=session_id, limit=10)] == [scoped]
    assert {f.id for f in await files.list(owner, ids=[made[0], made[3], "file_nope"], limit=10)} == {
        made[0],
        made[3],
    }
    live = [f.id for f in await files.list(owner, limit=100, now=datetime.now(UTC))]
    assert expired not in live and later in live
    record = await files.get(owner, expired)
    assert record is not None and record.expired(datetime.now(UTC))  # still readable until swept


async def test_a_sessions_files_go_with_it_whichever_way_it_is_deleted(db: Database) -> None:
    files, records, owner = Files(db), SessionRecords(db), tenant()
    purged, reaped, deleted, scoped = (str(uuid.uuid4()) for _ in range(4))
    for session_id in (purged, reaped, deleted, scoped):
        await records.create(session_id, owner, {})
    keep = await put(files, owner, b"unscoped")
    ids = {s: await put(files, owner, b"x" * 2000, scope_session_id=s) for s in (purged, reaped, deleted, scoped)}

    assert await records.purge(purged)
    await records.update(reaped, state="suspended")
    assert await records.reap_suspended(datetime.now(UTC) + timedelta(seconds=1), limit=10) == [reaped]
    await records.delete(deleted)
    assert await files.delete_scope(scoped) == 1
    for file_id in ids.values():
        assert await rows(db, file_id) == (0, 0)
    assert await files.get(owner, keep) is not None
    with pytest.raises(SessionNotFound):  # a scope must be a session that exists
        await put(files, owner, b"x", scope_session_id=str(uuid.uuid4()))


async def test_delete_and_the_sweep_of_expired_files_and_abandoned_uploads(db: Database) -> None:
    files, owner = Files(db), tenant()
    now = datetime.now(UTC)
    gone = await put(files, owner, b"a")
    assert await files.delete(owner, gone) and not await files.delete(owner, gone)
    assert await rows(db, gone) == (0, 0)

    expired = await put(files, owner, b"b" * 10, expires_at=now - timedelta(seconds=1))
    live = await put(files, owner, b"c", expires_at=now + timedelta(hours=1))
    forever = await put(files, owner, b"d")
    abandoned, in_flight = "file_abandoned" + uuid.uuid4().hex[:8], "file_inflight" + uuid.uuid4().hex[:8]
    async with db.engine.begin() as conn:  # what a crash mid-upload leaves, and an upload going on now
        for file_id, started in ((abandoned, now - ABANDONED_AFTER - timedelta(minutes=1)), (in_flight, now)):
            await conn.execute(
                insert(FILES).values(
                    id=file_id,
                    tenant=owner,
                    filename="x",
                    mime_type="x/y",
                    size_bytes=0,
                    created_at=started,
                    downloadable=True,
                    complete=False,
                )
            )
            await conn.execute(insert(FILE_CHUNKS).values(file_id=file_id, seq=0, size=3, data=b"abc"))
    assert await files.get(owner, in_flight) is None  # never shown while incomplete
    assert await files.delete_expired(now) == 2
    for file_id in (expired, abandoned):
        assert await rows(db, file_id) == (0, 0)
    for file_id in (live, forever, in_flight):
        assert (await rows(db, file_id))[0] == 1
    assert await files.delete_expired(now) == 0


async def test_file_bytes_count_toward_the_tenants_storage(db: Database) -> None:
    files, records, owner, other = Files(db), SessionRecords(db), tenant(), tenant()
    counted: list[int] = []

    async def watched() -> AsyncIterator[bytes]:
        yield b"z" * (CHUNK_BYTES + 5)
        counted.append(await records.tenant_storage_bytes(owner))  # an upload in flight counts
        yield b"z" * 5

    file_id = (await files.put(owner, filename="a", mime_type="x/y", chunks=watched(), max_bytes=10**9)).id
    assert counted == [CHUNK_BYTES]
    await put(files, other, b"q" * 999)
    assert await records.tenant_storage_bytes(owner) == CHUNK_BYTES + 10
    assert await files.delete(owner, file_id)
    assert await records.tenant_storage_bytes(owner) == 0


async def test_a_file_deleted_while_it_is_read_ends_the_read_with_an_error(db: Database) -> None:
    files, owner = Files(db), tenant()
    file_id = await put(files, owner, os.urandom(2 * CHUNK_BYTES + 1))
    reader = files.read(owner, file_id)
    first = await anext(reader)
    assert len(first) == CHUNK_BYTES
    assert await files.delete(owner, file_id)
    with pytest.raises(FileNotFound):
        async for _ in reader:
            pass
