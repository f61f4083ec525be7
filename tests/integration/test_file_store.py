"""The files repository on SQLite and PostgreSQL, its bytes in chunk rows or in an S3-compatible
bucket (a real local server, moto's): bytes in and out unchanged, nothing half-written kept (over
the cap, a failing source), tenants never meet, lists page by keyset with the scope / ids / expiry
filters, a session's files go with the session whichever way it is deleted, the sweep removes
expired files and abandoned uploads (objects: once the deletion outbox is drained), and file bytes
count toward the tenant's stored bytes (the PostgreSQL database is shared by the module: every test
uses tenants of its own)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from moorage_session_store import (
    Database,
    FileNotFound,
    Files,
    FileTooLarge,
    S3Blobs,
    SessionNotFound,
    SessionRecords,
)
from moorage_session_store.files import ABANDONED_AFTER, CHUNK_BYTES
from moorage_session_store.models import FILE_CHUNKS, FILES
from s3_server import TEST_PART_BYTES, keys
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


async def rows(db: Database, files: Files, file_id: str | None = None) -> tuple[int, int]:
    """(files rows, chunk rows or objects) of one file, or of every file."""
    async with db.engine.connect() as conn:
        f = select(func.count()).select_from(FILES)
        c = select(func.count()).select_from(FILE_CHUNKS)
        if file_id is not None:
            f, c = f.where(FILES.c.id == file_id), c.where(FILE_CHUNKS.c.file_id == file_id)
        count = int((await conn.execute(f)).scalar_one())
        if not isinstance(blobs := files.blobs, S3Blobs):
            return count, int((await conn.execute(c)).scalar_one())
    objects = [key for key in await keys(blobs) if file_id is None or key.endswith(f"/{file_id}")]
    return count, len(objects)


def unit(files: Files) -> int:
    """What is stored at a time: a chunk row, or a multipart part."""
    return CHUNK_BYTES if files.blobs is None else TEST_PART_BYTES


async def test_bytes_come_back_unchanged_through_several_chunk_rows(db: Database, files: Files) -> None:
    owner = tenant()
    data = os.urandom(3 * unit(files) + 12345)  # four rows or parts, the last partial
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
    assert await rows(db, files, made.id) == (1, 4 if files.blobs is None else 1)
    chunk_sizes = [len(c) async for c in files.read(owner, made.id)]
    assert max(chunk_sizes) <= CHUNK_BYTES  # read back a row (a piece) at a time, never the whole file

    empty = await put(files, owner, b"")
    assert await read_all(files, owner, empty) == b""
    record = await files.get(owner, empty)
    assert record is not None and record.size_bytes == 0


async def test_over_the_cap_or_a_failing_source_leaves_nothing(db: Database, files: Files) -> None:
    owner = tenant()
    before = await rows(db, files)
    with pytest.raises(FileTooLarge) as caught:
        await files.put(owner, filename="a", mime_type="x/y", chunks=pieces(b"x" * 3000, 1000), max_bytes=2999)
    assert caught.value.limit == 2999 and caught.value.code == "file_too_large"

    class Cut(Exception):
        pass

    async def failing() -> AsyncIterator[bytes]:
        yield b"y" * (unit(files) + 10)  # one row (one part) written before the source fails
        raise Cut

    with pytest.raises(Cut):  # the source's own error, unchanged
        await files.put(owner, filename="b", mime_type="x/y", chunks=failing(), max_bytes=10**9)
    await files.drain_deletions()
    assert await rows(db, files) == before
    assert await files.list(owner, limit=10) == []
    assert await SessionRecords(db).tenant_storage_bytes(owner) == 0


async def test_another_tenants_file_is_like_an_unknown_one(files: Files) -> None:
    owner, other = tenant(), tenant()
    file_id = await put(files, owner, b"secret")
    assert await files.get(other, file_id) is None
    with pytest.raises(FileNotFound):
        await read_all(files, other, file_id)
    assert await files.list(other, limit=10) == []
    assert await files.list(other, ids=[file_id], limit=10) == []
    assert not await files.delete(other, file_id)
    assert await read_all(files, owner, file_id) == b"secret"


async def test_lists_page_newest_first_and_filter_by_scope_ids_and_expiry(db: Database, files: Files) -> None:
    records, owner = SessionRecords(db), tenant()
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


async def test_a_sessions_files_go_with_it_whichever_way_it_is_deleted(db: Database, files: Files) -> None:
    records, owner = SessionRecords(db), tenant()
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
    assert await files.drain_deletions() == (0 if files.blobs is None else 4)  # each way queued its file
    for file_id in ids.values():
        assert await rows(db, files, file_id) == (0, 0)
    assert await files.get(owner, keep) is not None
    assert await rows(db, files, keep) == (1, 1)
    with pytest.raises(SessionNotFound):  # a scope must be a session that exists
        await put(files, owner, b"x", scope_session_id=str(uuid.uuid4()))


async def test_delete_and_the_sweep_of_expired_files_and_abandoned_uploads(db: Database, files: Files) -> None:
    owner = tenant()
    now = datetime.now(UTC)
    gone = await put(files, owner, b"a")
    assert await files.delete(owner, gone) and not await files.delete(owner, gone)
    await files.drain_deletions()
    assert await rows(db, files, gone) == (0, 0)

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
            if files.blobs is None:
                await conn.execute(insert(FILE_CHUNKS).values(file_id=file_id, seq=0, size=3, data=b"abc"))
    if isinstance(blobs := files.blobs, S3Blobs):  # the objects the crash and the upload wrote
        for file_id in (abandoned, in_flight):
            await blobs.client.put_object(Bucket=blobs.location.bucket, Key=blobs.key(owner, file_id), Body=b"abc")
    assert await files.get(owner, in_flight) is None  # never shown while incomplete
    assert await files.delete_expired(now) == 2
    await files.drain_deletions()
    for file_id in (expired, abandoned):
        assert await rows(db, files, file_id) == (0, 0)
    for file_id in (live, forever, in_flight):
        assert await rows(db, files, file_id) == (1, 1)
    assert await files.delete_expired(now) == 0


async def test_file_bytes_count_toward_the_tenants_storage(db: Database, files: Files) -> None:
    records, owner, other = SessionRecords(db), tenant(), tenant()
    counted: list[int] = []
    stored = unit(files)

    async def watched() -> AsyncIterator[bytes]:
        yield b"z" * (stored + 5)
        counted.append(await records.tenant_storage_bytes(owner))  # an upload in flight counts
        yield b"z" * 5

    file_id = (await files.put(owner, filename="a", mime_type="x/y", chunks=watched(), max_bytes=10**9)).id
    assert counted == [stored]
    await put(files, other, b"q" * 999)
    assert await records.tenant_storage_bytes(owner) == stored + 10
    assert await files.delete(owner, file_id)
    assert await records.tenant_storage_bytes(owner) == 0


async def test_bytes_by_tenant_sums_each_tenants_files(files: Files) -> None:
    """What moorage_tenant_file_bytes is refreshed from: every tenant's sum, or one tenant's."""
    owner, other = tenant(), tenant()
    await put(files, owner, b"a" * 10)
    await put(files, owner, b"b" * 5)
    gone = await put(files, other, b"c" * 7)
    everyone = await files.bytes_by_tenant()
    assert everyone[owner] == 15 and everyone[other] == 7
    assert await files.bytes_by_tenant(owner) == {owner: 15}
    assert await files.delete(other, gone)
    assert other not in await files.bytes_by_tenant()
    assert await files.bytes_by_tenant(tenant()) == {}


async def test_a_file_deleted_while_it_is_read_ends_the_read_with_an_error(files: Files) -> None:
    owner = tenant()
    data = os.urandom(2 * CHUNK_BYTES + 1)
    file_id = await put(files, owner, data)
    reader = files.read(owner, file_id)
    first = await anext(reader)
    assert 0 < len(first) <= CHUNK_BYTES
    assert await files.delete(owner, file_id)
    await files.drain_deletions()
    if files.blobs is None:
        with pytest.raises(FileNotFound):
            async for _ in reader:
                pass
    else:  # an object's GET is one response: a read that started gets all of it, or an error
        try:
            rest = b"".join([piece async for piece in reader])
        except FileNotFound:
            pass
        else:
            assert first + rest == data
    with pytest.raises(FileNotFound):  # a read that starts after the delete
        await read_all(files, owner, file_id)
