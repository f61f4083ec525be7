"""Workspace archives in the database (``workspace_chunks``), on SQLite and PostgreSQL: streamed in
and out in chunks, replaced atomically, deleted with their session."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator

import pytest
from moorage_session_store import Database, SessionNotFound, SessionRecords


async def session(records: SessionRecords) -> str:
    sid = str(uuid.uuid4())
    await records.create(sid, "tenant-a", {})
    return sid


async def pieces(*chunks: bytes, fail_after: int | None = None) -> AsyncIterator[bytes]:
    for n, chunk in enumerate(chunks):
        if fail_after is not None and n == fail_after:
            raise RuntimeError("the archive helper failed")
        yield chunk


async def loaded(records: SessionRecords, sid: str) -> list[bytes]:
    return [chunk async for chunk in records.load_workspace_stream(sid)]


async def test_an_archive_streams_in_and_out_chunk_by_chunk(db: Database) -> None:
    """Chunks come back in order, as stored; the stored bytes are reported; nothing stored: nothing."""
    records = SessionRecords(db)
    sid = await session(records)
    assert await loaded(records, sid) == [] and await records.workspace_bytes(sid) == 0
    chunks = [os.urandom(300_000) for _ in range(5)]
    assert await records.save_workspace_stream(sid, pieces(*chunks)) == 1_500_000
    assert await loaded(records, sid) == chunks
    assert await records.workspace_bytes(sid) == 1_500_000
    assert await records.load_workspace(sid) == b"".join(chunks)


async def test_a_save_replaces_the_previous_archive_and_leaves_nothing_of_it(db: Database) -> None:
    """After a replace only the new generation is stored; deleting the session deletes every chunk."""
    records = SessionRecords(db)
    sid = await session(records)
    await records.save_workspace_stream(sid, pieces(b"a" * 1000, b"b" * 1000))
    await records.save_workspace_stream(sid, pieces(b"new"))
    assert await loaded(records, sid) == [b"new"] and await records.workspace_bytes(sid) == 3
    await records.delete(sid)
    assert await records.get(sid) is None
    assert await loaded(records, sid) == [] and await records.workspace_bytes(sid) == 0


async def test_a_failing_source_keeps_the_current_archive(db: Database) -> None:
    """The source's own error propagates unchanged; its partial chunks are gone; the last archive stays."""
    records = SessionRecords(db)
    sid = await session(records)
    await records.save_workspace_stream(sid, pieces(b"good"))
    with pytest.raises(RuntimeError, match="helper failed"):
        await records.save_workspace_stream(sid, pieces(b"x" * 5000, b"y" * 5000, b"z", fail_after=2))
    assert await loaded(records, sid) == [b"good"] and await records.workspace_bytes(sid) == 4


async def test_an_older_save_that_finishes_late_changes_nothing(db: Database) -> None:
    """Two saves overlapping (a checkpoint and the suspension): the one that started last wins."""
    records = SessionRecords(db)
    sid = await session(records)
    gate_reached, release = asyncio.Event(), asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield b"older"
        gate_reached.set()
        await release.wait()

    older = asyncio.create_task(records.save_workspace_stream(sid, slow()))
    await asyncio.wait_for(gate_reached.wait(), 10)
    await records.save_workspace_stream(sid, pieces(b"newer"))
    release.set()
    await asyncio.wait_for(older, 10)
    assert await loaded(records, sid) == [b"newer"] and await records.workspace_bytes(sid) == 5


async def test_a_load_is_not_cut_short_by_a_replace_committing_meanwhile(db: Database) -> None:
    """A restore reading chunk by chunk sees the whole archive it started with."""
    records = SessionRecords(db)
    sid = await session(records)
    chunks = [bytes([n]) * 100_000 for n in range(4)]
    await records.save_workspace_stream(sid, pieces(*chunks))
    got = []
    reader = records.load_workspace_stream(sid)
    got.append(await reader.__anext__())
    await records.save_workspace_stream(sid, pieces(b"replacement"))
    got += [chunk async for chunk in reader]
    assert got == chunks
    assert await loaded(records, sid) == [b"replacement"]


async def test_saving_for_an_unknown_session_is_refused(db: Database) -> None:
    records = SessionRecords(db)
    with pytest.raises(SessionNotFound):
        await records.save_workspace_stream("no-such-session", pieces(b"x"))
    assert await records.workspace_bytes("no-such-session") == 0
