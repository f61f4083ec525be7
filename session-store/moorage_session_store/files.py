"""Files: the ``files`` table (one row per file of a tenant) and ``file_chunks`` (its bytes).

A file's bytes are stored as ordered chunks of up to :data:`CHUNK_BYTES`, each written in its own
short transaction while the upload streams in, so nothing holds a whole file in memory and no
write lock is held while the sender is slow. The ``files`` row is written first with
``complete = false`` (invisible to every read) and flipped to complete, with its size, in one
statement at the end; an upload that fails, is cut, or grows past its ``max_bytes`` deletes its
row and chunks before the error propagates, and one that a crash cut short is removed by
:meth:`Files.delete_expired` once it is older than :data:`ABANDONED_AFTER`. A complete file never
changes: reads fetch one chunk per query (no long transaction, no pinned connection); a file
deleted while it is read ends the read with :class:`FileNotFound` instead of short bytes.

Every read and write names the tenant; another tenant's file answers exactly like an unknown one.
A file may belong to a session (``scope_session_id``): it is deleted with it, by the database
(``ON DELETE CASCADE``), whichever way the session goes (a client's delete, the retention reaper).
Its bytes count toward the tenant's stored bytes (``SessionRecords.tenant_storage_bytes``, the sum
of ``size_bytes``, which grows as each chunk or part is stored: an upload in flight included).
Lists are newest first and paged by keyset (``created_at``, ``id``).

With a blob store (``Files(db, blobs)``, blobs.py) the bytes are one object per file instead of
chunk rows; everything else is the same. Rows are deleted in SQL the store never sees one by one
(a session's cascade, the sweep), so every delete first names its files in the
``file_blob_deletions`` outbox in the same transaction (:func:`queue_blob_deletions`), which
:meth:`Files.drain_deletions` turns into object deletes; :meth:`Files.sweep_orphans` deletes the
objects no row names that the outbox missed. A row is always written before its object.
"""

from __future__ import annotations

import builtins
import secrets
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, func, insert, literal, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from .blobs import BlobMissing, BlobStore
from .columns import utcnow
from .database import Database
from .errors import FileNotFound, FileTooLarge, SessionNotFound
from .models import FILE_BLOB_DELETIONS, FILE_CHUNKS, FILES

__all__ = [
    "ABANDONED_AFTER",
    "CHUNK_BYTES",
    "ORPHAN_GRACE",
    "FileRecord",
    "Files",
    "new_file_id",
    "orphans",
    "queue_blob_deletions",
]

ID_PREFIX = "file_"
#: Bytes per ``file_chunks`` row.
CHUNK_BYTES = 1024 * 1024
#: An upload not finished this long after it started was cut short by a crash: swept.
ABANDONED_AFTER = timedelta(hours=24)
#: Files deleted per transaction by the sweep; outbox rows drained per round.
SWEEP_BATCH = 100
#: An object with no ``files`` row is deleted by the reconciliation sweep once it is this old.
ORPHAN_GRACE = timedelta(hours=1)


async def queue_blob_deletions(conn: AsyncConnection, which: ColumnElement[bool]) -> None:
    """In the caller's transaction, before it deletes the ``files`` rows matching ``which`` (or
    rows that cascade to them): name them in the ``file_blob_deletions`` outbox, so their objects
    are deleted once the transaction commits (:meth:`Files.drain_deletions`). A name queued for a
    row that then survives is harmless: the drain skips ids that still have a row."""
    rows = select(FILES.c.id, FILES.c.tenant, literal(utcnow(), FILE_BLOB_DELETIONS.c.queued_at.type)).where(which)
    await conn.execute(insert(FILE_BLOB_DELETIONS).from_select(["file_id", "tenant", "queued_at"], rows))


def orphans(listed: Sequence[tuple[str, str, datetime]], alive: set[str], before: datetime) -> builtins.list[str]:
    """Of the objects ``listed`` (key, file id, last modified), the keys to delete: those of files
    with no row (not in ``alive``) last written before ``before``."""
    return [key for key, file_id, modified in listed if file_id not in alive and modified < before]


def new_file_id() -> str:
    """``file_`` and 24 lowercase hex characters (96 random bits)."""
    return ID_PREFIX + secrets.token_hex(12)


@dataclass(frozen=True, slots=True)
class FileRecord:
    """One complete file's metadata (a snapshot)."""

    id: str
    tenant: str
    filename: str
    mime_type: str
    size_bytes: int
    created_at: datetime
    expires_at: datetime | None
    scope_session_id: str | None
    downloadable: bool

    def expired(self, now: datetime) -> bool:
        """Its ``expires_at`` has passed: its bytes are no longer served."""
        return self.expires_at is not None and self.expires_at <= now


_COLUMNS = (
    FILES.c.id,
    FILES.c.tenant,
    FILES.c.filename,
    FILES.c.mime_type,
    FILES.c.size_bytes,
    FILES.c.created_at,
    FILES.c.expires_at,
    FILES.c.scope_session_id,
    FILES.c.downloadable,
)


def _record(row: Any) -> FileRecord:
    return FileRecord(**dict(row._mapping))


class Files:
    """Async repository for files; their bytes in ``file_chunks`` rows, or in ``blobs`` (an
    object store, one object per file) when given. Safe to share between tasks."""

    def __init__(self, db: Database, blobs: BlobStore | None = None) -> None:
        self._db = db
        self.blobs = blobs

    async def put(
        self,
        tenant: str,
        *,
        filename: str,
        mime_type: str,
        chunks: AsyncIterable[bytes],
        max_bytes: int,
        scope_session_id: str | None = None,
        downloadable: bool = True,
        expires_at: datetime | None = None,
    ) -> FileRecord:
        """Store a new file as ``chunks`` stream in; it is visible once all of it is stored.

        Raises :class:`FileTooLarge` as soon as more than ``max_bytes`` arrived, and
        :class:`SessionNotFound` if ``scope_session_id`` names no session. On any error (the
        source's own included, which propagate unchanged) nothing of the file remains."""
        file_id, now = new_file_id(), utcnow()
        row = {
            "id": file_id,
            "tenant": tenant,
            "filename": filename,
            "mime_type": mime_type,
            "size_bytes": 0,
            "created_at": now,
            "expires_at": expires_at,
            "scope_session_id": scope_session_id,
            "downloadable": downloadable,
            "complete": False,
        }
        try:
            with self._db.translate_errors():
                async with self._db.engine.begin() as conn:
                    await conn.execute(insert(FILES).values(**row))
        except IntegrityError:  # the foreign key: no such session
            raise SessionNotFound(f"no session {scope_session_id!r}") from None
        try:
            if self.blobs is None:
                size = await self._write_chunks(file_id, chunks, max_bytes)
            else:
                size = await self._write_blob(self.blobs.key(tenant, file_id), file_id, chunks, max_bytes)
            with self._db.translate_errors():
                async with self._db.engine.begin() as conn:
                    await conn.execute(
                        update(FILES).where(FILES.c.id == file_id).values(size_bytes=size, complete=True)
                    )
        except BaseException:
            await self._drop(file_id)
            raise
        return FileRecord(file_id, tenant, filename, mime_type, size, now, expires_at, scope_session_id, downloadable)

    async def _write_chunks(self, file_id: str, chunks: AsyncIterable[bytes], max_bytes: int) -> int:
        """Write ``chunks`` regrouped into rows of ``CHUNK_BYTES``; the total size."""
        buffer, seq, size = bytearray(), 0, 0
        async for piece in chunks:  # outside translate_errors: the source's errors are its own
            size += len(piece)
            if size > max_bytes:
                raise FileTooLarge(f"the file is over {max_bytes} bytes", limit=max_bytes)
            buffer += piece
            while len(buffer) >= CHUNK_BYTES:
                await self._write_chunk(file_id, seq, bytes(buffer[:CHUNK_BYTES]))
                del buffer[:CHUNK_BYTES]
                seq += 1
        if buffer or seq == 0:
            await self._write_chunk(file_id, seq, bytes(buffer))  # an empty file has one empty chunk
        return size

    async def _write_chunk(self, file_id: str, seq: int, data: bytes) -> None:
        with self._db.translate_errors():
            async with self._db.engine.begin() as conn:
                await conn.execute(insert(FILE_CHUNKS).values(file_id=file_id, seq=seq, size=len(data), data=data))
                await self._grow(conn, file_id, len(data))

    async def _grow(self, conn: AsyncConnection, file_id: str, stored: int) -> None:
        """Count ``stored`` more bytes of an upload in flight (the tenant's quota sees them)."""
        await conn.execute(update(FILES).where(FILES.c.id == file_id).values(size_bytes=FILES.c.size_bytes + stored))

    async def _write_blob(self, key: str, file_id: str, chunks: AsyncIterable[bytes], max_bytes: int) -> int:
        """Stream ``chunks`` into the object ``key``; the total size."""
        assert self.blobs is not None
        size = 0

        async def capped() -> AsyncIterator[bytes]:
            nonlocal size
            async for piece in chunks:
                size += len(piece)
                if size > max_bytes:
                    raise FileTooLarge(f"the file is over {max_bytes} bytes", limit=max_bytes)
                yield piece

        async def stored(count: int) -> None:
            with self._db.translate_errors():
                async with self._db.engine.begin() as conn:
                    await self._grow(conn, file_id, count)

        await self.blobs.write(key, capped(), stored)
        return size

    async def _drop(self, file_id: str) -> None:
        """Delete a file being written (its chunks go by cascade, its object by the outbox); never
        raises: the sweep retries."""
        try:
            with self._db.translate_errors():
                async with self._db.engine.begin() as conn:
                    await self._delete(conn, FILES.c.id == file_id)
        except Exception:
            return

    async def _delete(self, conn: AsyncConnection, which: ColumnElement[bool]) -> int:
        """Delete the ``files`` rows matching ``which``, their objects queued; how many."""
        if self.blobs is not None:
            await queue_blob_deletions(conn, which)
        return int((await conn.execute(delete(FILES).where(which))).rowcount)

    async def get(self, tenant: str, file_id: str) -> FileRecord | None:
        """The tenant's complete file, expired or not; ``None`` if there is none."""
        stmt = select(*_COLUMNS).where(FILES.c.id == file_id, FILES.c.tenant == tenant, FILES.c.complete.is_(True))
        with self._db.translate_errors():
            async with self._db.engine.connect() as conn:
                row = (await conn.execute(stmt)).first()
        return None if row is None else _record(row)

    async def read(self, tenant: str, file_id: str) -> AsyncIterator[bytes]:
        """The file's bytes, one chunk (at most ``CHUNK_BYTES``) at a time, each fetched by its own
        query. :class:`FileNotFound` if there is no such file, or if it is deleted before the last
        chunk is read (never fewer bytes than its size without an error)."""
        record = await self.get(tenant, file_id)
        if record is None:
            raise FileNotFound(f"file {file_id} not found")
        if self.blobs is not None:
            sent = 0
            try:
                async for piece in self.blobs.read(self.blobs.key(tenant, file_id)):
                    sent += len(piece)
                    yield piece
            except BlobMissing:
                raise FileNotFound(f"file {file_id} was deleted while it was read") from None
            if sent != record.size_bytes:
                raise FileNotFound(f"file {file_id} was deleted while it was read")
            return
        seq = sent = 0
        one = select(FILE_CHUNKS.c.data).where(FILE_CHUNKS.c.file_id == file_id)
        while True:
            with self._db.translate_errors():
                async with self._db.engine.connect() as conn:
                    data = (await conn.execute(one.where(FILE_CHUNKS.c.seq == seq))).scalar()
            if data is None:
                break
            sent += len(data)
            if data:
                yield bytes(data)
            seq += 1
        if sent != record.size_bytes:
            raise FileNotFound(f"file {file_id} was deleted while it was read")

    async def list(
        self,
        tenant: str,
        *,
        scope_session_id: str | None = None,
        ids: Sequence[str] | None = None,
        limit: int,
        after: tuple[datetime, str] | None = None,
        now: datetime | None = None,
    ) -> builtins.list[FileRecord]:
        """Up to ``limit`` of the tenant's complete files, newest first, older than the ``after``
        key; only the session's (``scope_session_id``), only those named (``ids``), only those not
        expired at ``now`` (when given)."""
        c = FILES.c
        stmt = select(*_COLUMNS).where(c.tenant == tenant, c.complete.is_(True))
        if scope_session_id is not None:
            stmt = stmt.where(c.scope_session_id == scope_session_id)
        if ids is not None:
            stmt = stmt.where(c.id.in_(list(ids)))
        if now is not None:
            stmt = stmt.where(or_(c.expires_at.is_(None), c.expires_at > now))
        if after is not None:
            at, last_id = after
            stmt = stmt.where(or_(c.created_at < at, and_(c.created_at == at, c.id < last_id)))
        stmt = stmt.order_by(c.created_at.desc(), c.id.desc()).limit(limit)
        with self._db.translate_errors():
            async with self._db.engine.connect() as conn:
                rows = (await conn.execute(stmt)).all()
        return [_record(row) for row in rows]

    async def bytes_by_tenant(self, tenant: str | None = None) -> dict[str, int]:
        """Bytes of files each tenant stores (every tenant with a file, or only ``tenant``): the sum
        of ``size_bytes``, uploads in flight included (as in ``tenant_storage_bytes``). One grouped
        query over the ``files`` rows (not their bytes); the tenant index serves ``tenant``."""
        stmt = select(FILES.c.tenant, func.coalesce(func.sum(FILES.c.size_bytes), 0)).group_by(FILES.c.tenant)
        if tenant is not None:
            stmt = stmt.where(FILES.c.tenant == tenant)
        with self._db.translate_errors():
            async with self._db.engine.connect() as conn:
                rows = (await conn.execute(stmt)).all()
        return {str(name): int(used) for name, used in rows}

    async def delete(self, tenant: str, file_id: str) -> bool:
        """Delete the tenant's file with its bytes; ``False`` if there was none."""
        which = and_(FILES.c.id == file_id, FILES.c.tenant == tenant, FILES.c.complete.is_(True))
        with self._db.translate_errors():
            async with self._db.engine.begin() as conn:
                gone = await self._delete(conn, which)
        return gone == 1

    async def delete_scope(self, session_id: str) -> int:
        """Delete every file of the session (what deleting the session does by cascade); how many."""
        with self._db.translate_errors():
            async with self._db.engine.begin() as conn:
                return await self._delete(conn, FILES.c.scope_session_id == session_id)

    async def delete_expired(self, now: datetime) -> int:
        """Delete the files expired at ``now`` and the uploads abandoned before ``now -
        ABANDONED_AFTER``, ``SWEEP_BATCH`` per transaction; how many went."""
        due = or_(
            FILES.c.expires_at <= now,
            and_(FILES.c.complete.is_(False), FILES.c.created_at < now - ABANDONED_AFTER),
        )
        deleted = 0
        while True:
            with self._db.translate_errors():
                async with self._db.engine.begin() as conn:
                    batch = (await conn.execute(select(FILES.c.id).where(due).limit(SWEEP_BATCH))).scalars().all()
                    gone = await self._delete(conn, and_(FILES.c.id.in_(batch), due)) if batch else 0
            deleted += gone
            if gone < SWEEP_BATCH:
                return deleted

    async def drain_deletions(self) -> int:
        """Delete the objects the outbox names, oldest first, and their outbox rows (an id that
        has a ``files`` row again is skipped); how many objects went. Without an object store the
        outbox is only emptied. An object store error propagates; the rows stay for the next round."""
        q, drained = FILE_BLOB_DELETIONS.c, 0
        queued = (q.seq, q.file_id, q.tenant)
        while True:
            with self._db.translate_errors():
                async with self._db.engine.connect() as conn:
                    rows = (await conn.execute(select(*queued).order_by(q.seq).limit(SWEEP_BATCH))).all()
                    alive = await self._alive(conn, [row.file_id for row in rows])
            if not rows:
                return drained
            if self.blobs is not None:
                keys = [self.blobs.key(row.tenant, row.file_id) for row in rows if row.file_id not in alive]
                await self.blobs.delete(keys)
                drained += len(keys)
            with self._db.translate_errors():
                async with self._db.engine.begin() as conn:
                    await conn.execute(delete(FILE_BLOB_DELETIONS).where(q.seq.in_([row.seq for row in rows])))
            if len(rows) < SWEEP_BATCH:
                return drained

    async def _alive(self, conn: AsyncConnection, ids: Sequence[str]) -> set[str]:
        """Those of ``ids`` that have a ``files`` row (complete or not)."""
        if not ids:
            return set()
        return set((await conn.execute(select(FILES.c.id).where(FILES.c.id.in_(list(ids))))).scalars())

    async def sweep_orphans(self, now: datetime, grace: timedelta = ORPHAN_GRACE) -> int:
        """The reconciliation sweep: delete every object under the store's prefix whose file has
        no ``files`` row and that was last written before ``now - grace`` (what a crash between
        the object's write and the row's delete, or a lost outbox drain, leaves); how many."""
        if self.blobs is None:
            return 0
        deleted = 0
        listed: builtins.list[tuple[str, str, datetime]] = []

        async def settle() -> int:
            with self._db.translate_errors():
                async with self._db.engine.connect() as conn:
                    alive = await self._alive(conn, [file_id for _, file_id, _ in listed])
            keys = orphans(listed, alive, now - grace)
            if keys:
                assert self.blobs is not None
                await self.blobs.delete(keys)
            listed.clear()
            return len(keys)

        async for key, modified in self.blobs.listing():
            file_id = self.blobs.file_id(key)
            if file_id is not None:
                listed.append((key, file_id, modified))
            if len(listed) >= SWEEP_BATCH * 10:
                deleted += await settle()
        return deleted + await settle()
