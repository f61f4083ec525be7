"""The object file store against a real local S3-compatible server (moto's), beyond the shared
conformance suite (test_file_store.py): a large upload is a multipart upload streamed a part at a
time, one cut short leaves no object and no unfinished upload, the deletion outbox skips a file
that still has its row and keeps its rows while the store fails, and the reconciliation sweep
deletes an object whose row was never committed (a crash) once it is older than the grace period,
and nothing else."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from moorage_session_store import Database, Files, S3Blobs, parse_location
from moorage_session_store.files import queue_blob_deletions
from moorage_session_store.models import FILE_BLOB_DELETIONS, FILES
from s3_server import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, TEST_PART_BYTES, keys, new_bucket
from sqlalchemy import func, select


@pytest.fixture
async def blobs(s3_endpoint: str) -> AsyncIterator[S3Blobs]:
    store = await new_bucket(s3_endpoint)
    try:
        yield store
    finally:
        await store.close()


def tenant() -> str:
    return f"t/{uuid.uuid4().hex[:8]}"  # a "/" in a tenant stays inside its one key segment


async def pieces(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def queued(db: Database) -> int:
    async with db.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(FILE_BLOB_DELETIONS))).scalar_one())


async def uploads(blobs: S3Blobs) -> list[object]:
    answer = await blobs.client.list_multipart_uploads(Bucket=blobs.location.bucket)
    return list(answer.get("Uploads", []))


async def test_a_large_file_is_a_multipart_upload_streamed_a_part_at_a_time(db: Database, blobs: S3Blobs) -> None:
    files, owner = Files(db, blobs), tenant()
    data = os.urandom(2 * TEST_PART_BYTES + 4321)
    made = await files.put(owner, filename="big", mime_type="x/y", chunks=pieces(data), max_bytes=len(data))
    assert b"".join([p async for p in files.read(owner, made.id)]) == data
    assert await keys(blobs) == [blobs.key(owner, made.id)]
    assert blobs.key(owner, made.id).count("/") == 2  # prefix / tenant / file id
    head = await blobs.client.head_object(Bucket=blobs.location.bucket, Key=blobs.key(owner, made.id))
    assert head["ContentLength"] == len(data) and head["ETag"].strip('"').endswith("-3")  # three parts
    assert await uploads(blobs) == []


async def test_an_upload_cut_in_the_middle_leaves_no_object_and_no_unfinished_upload(
    db: Database, blobs: S3Blobs
) -> None:
    files, owner = Files(db, blobs), tenant()

    class Cut(Exception):
        pass

    async def failing() -> AsyncIterator[bytes]:
        yield os.urandom(2 * TEST_PART_BYTES + 10)  # two parts stored, then the source fails
        raise Cut

    with pytest.raises(Cut):
        await files.put(owner, filename="b", mime_type="x/y", chunks=failing(), max_bytes=10**9)
    assert await uploads(blobs) == [] and await keys(blobs) == []
    assert await files.list(owner, limit=10) == []


async def test_the_outbox_skips_a_file_that_has_its_row_and_keeps_its_rows_while_the_store_fails(
    db: Database, blobs: S3Blobs, s3_endpoint: str
) -> None:
    files, owner = Files(db, blobs), tenant()
    alive = (await files.put(owner, filename="a", mime_type="x/y", chunks=pieces(b"keep"), max_bytes=10)).id
    async with db.engine.begin() as conn:  # a deletion queued for a row that then survived
        await queue_blob_deletions(conn, FILES.c.id == alive)
    assert await files.drain_deletions() == 0
    assert await keys(blobs) == [blobs.key(owner, alive)] and await queued(db) == 0

    missing = S3Blobs(  # a bucket that is not there: every request fails
        parse_location("s3://no-such-bucket-here/x"),
        endpoint_url=s3_endpoint,
        region=REGION,
        access_key_id=ACCESS_KEY_ID,
        secret_access_key=SECRET_ACCESS_KEY,
    )
    await missing.start()
    try:
        broken = Files(db, missing)
        assert await broken.delete(owner, alive)
        with pytest.raises(Exception, match="NoSuchBucket"):
            await broken.drain_deletions()
        assert await queued(db) == 1  # kept for the next round
    finally:
        await missing.close()
    assert await files.drain_deletions() == 1
    assert await keys(blobs) == [] and await queued(db) == 0


async def test_the_sweep_deletes_an_object_whose_row_was_never_committed_once_past_the_grace(
    db: Database, blobs: S3Blobs
) -> None:
    files, owner = Files(db, blobs), tenant()
    live = (await files.put(owner, filename="a", mime_type="x/y", chunks=pieces(b"live"), max_bytes=10)).id
    crashed = blobs.key(owner, "file_" + uuid.uuid4().hex[:24])  # written, then the process died
    bucket = blobs.location.bucket
    await blobs.client.put_object(Bucket=bucket, Key=crashed, Body=b"orphan")
    foreign = [f"{blobs.location.prefix}README", f"{blobs.location.prefix}a/b/c", "elsewhere/t/file_x"]
    for key in foreign:  # not ours: never touched
        await blobs.client.put_object(Bucket=bucket, Key=key, Body=b"")

    now = datetime.now(UTC)
    assert await files.sweep_orphans(now, timedelta(hours=1)) == 0  # too young: perhaps in flight
    assert await files.sweep_orphans(now + timedelta(hours=2), timedelta(hours=1)) == 1
    listed = [key async for key, _ in _everything(blobs)]
    assert crashed not in listed and blobs.key(owner, live) in listed
    assert set(foreign) <= set(listed)


async def _everything(blobs: S3Blobs) -> AsyncIterator[tuple[str, datetime]]:
    paginator = blobs.client.get_paginator("list_objects_v2")
    async for page in paginator.paginate(Bucket=blobs.location.bucket):
        for item in page.get("Contents", ()):
            yield item["Key"], item["LastModified"]
