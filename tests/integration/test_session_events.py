"""The session event log's contract (``moorage_session_store.events.SessionEvents``) on SQLite and
PostgreSQL: contiguous appends only, bounded pages in seq order, bounds for pruned logs, and events
that go with their session and count toward its tenant's storage. The PostgreSQL database is
shared by this module's tests, so every test uses sessions and tenants of its own."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from moorage_session_store import (
    Database,
    EventConflict,
    NewEvent,
    SessionEvents,
    SessionNotFound,
    SessionRecords,
)
from moorage_session_store.events import MAX_PAGE

T0 = datetime(2026, 12, 2, 1, 0, tzinfo=UTC)


def _events(first: int, n: int, kind: str = "assistant") -> list[NewEvent]:
    return [
        NewEvent(seq, kind, {"type": kind, "n": seq, "text": "héllo ✓"}, T0 + timedelta(milliseconds=seq))
        for seq in range(first, first + n)
    ]


async def _session(db: Database, tenant: str | None = None) -> str:
    session_id = str(uuid.uuid4())
    await SessionRecords(db).create(session_id, tenant or f"t-{uuid.uuid4().hex[:8]}", {})
    return session_id


async def test_appended_batches_read_back_in_seq_order_with_type_body_and_time(db: Database) -> None:
    events, sid = SessionEvents(db), await _session(db)
    assert await events.bounds(sid) == (0, 0) and await events.last_seq(sid) == 0
    await events.append(sid, _events(1, 3))
    await events.append(sid, _events(4, 2, "result"))
    got = await events.read(sid, 0)
    assert [e.seq for e in got] == [1, 2, 3, 4, 5]
    assert [e.type for e in got] == ["assistant"] * 3 + ["result"] * 2
    assert got[0].body == {"type": "assistant", "n": 1, "text": "héllo ✓"}
    assert got[4].created_at == T0 + timedelta(milliseconds=5)
    assert [e.seq for e in await events.read(sid, 3)] == [4, 5]
    assert await events.read(sid, 5) == []
    assert await events.bounds(sid) == (1, 5) and await events.last_seq(sid) == 5


async def test_a_read_is_one_bounded_page(db: Database) -> None:
    events, sid = SessionEvents(db), await _session(db)
    await events.append(sid, _events(1, MAX_PAGE + 5))
    assert [e.seq for e in await events.read(sid, 0, limit=2)] == [1, 2]
    page = await events.read(sid, 0, limit=10 * MAX_PAGE)
    assert len(page) == MAX_PAGE and page[-1].seq == MAX_PAGE
    assert [e.seq for e in await events.read(sid, MAX_PAGE)] == [MAX_PAGE + i for i in range(1, 6)]


@pytest.mark.parametrize(
    ("stored", "seqs"),
    [(0, [2, 3]), (3, [5]), (3, [3, 4]), (3, [4, 6]), (3, [4, 4]), (0, [0])],
    ids=["gap-at-start", "gap-after-last", "seq-taken", "gap-inside", "repeat-inside", "zero"],
)
async def test_an_append_that_does_not_follow_exactly_is_refused_and_writes_nothing(
    db: Database, stored: int, seqs: list[int]
) -> None:
    events, sid = SessionEvents(db), await _session(db)
    await events.append(sid, _events(1, stored))
    before = await events.read(sid, 0)
    batch = [NewEvent(s, "x", {"type": "x"}, T0) for s in seqs]
    with pytest.raises(EventConflict):
        await events.append(sid, batch)
    assert await events.read(sid, 0) == before


async def test_racing_writers_of_the_same_seqs_get_one_winner(db: Database) -> None:
    events, sid = SessionEvents(db), await _session(db)
    outcomes = await asyncio.gather(
        *(events.append(sid, _events(1, 20, f"w{i}")) for i in range(4)), return_exceptions=True
    )
    assert sum(o is None for o in outcomes) == 1
    assert all(isinstance(o, EventConflict) for o in outcomes if o is not None)
    stored = await events.read(sid, 0)
    assert [e.seq for e in stored] == list(range(1, 21)) and len({e.type for e in stored}) == 1


async def test_append_to_an_unknown_session_is_session_not_found(db: Database) -> None:
    with pytest.raises(SessionNotFound):
        await SessionEvents(db).append(str(uuid.uuid4()), _events(1, 1))


async def test_prune_keeps_the_newest_and_always_the_last_so_the_next_seq_is_known(db: Database) -> None:
    events, sid = SessionEvents(db), await _session(db)
    await events.append(sid, _events(1, 10))
    assert await events.prune(sid, keep=3) == 7
    assert await events.bounds(sid) == (8, 10)
    assert await events.prune(sid, keep=0) == 2  # never the last one
    assert await events.bounds(sid) == (10, 10)
    await events.append(sid, _events(11, 1))
    assert [e.seq for e in await events.read(sid, 0)] == [10, 11]


async def test_events_go_with_their_session_on_delete_purge_and_reaping(db: Database) -> None:
    events, records = SessionEvents(db), SessionRecords(db)
    deleted, purged, reaped, kept = [await _session(db) for _ in range(4)]
    for sid in (deleted, purged, reaped, kept):
        await events.append(sid, _events(1, 3))
    await records.delete(deleted)
    assert await records.purge(purged)
    await records.update(reaped, state="suspended")
    assert reaped in await records.reap_suspended(datetime.now(UTC) + timedelta(seconds=1), 100)
    for sid in (deleted, purged, reaped):
        assert await events.bounds(sid) == (0, 0)
    assert await events.bounds(kept) == (1, 3)


async def test_events_count_toward_their_tenants_storage(db: Database) -> None:
    records, events = SessionRecords(db), SessionEvents(db)
    tenant, other = f"t-{uuid.uuid4().hex[:8]}", f"o-{uuid.uuid4().hex[:8]}"
    mine, theirs = await _session(db, tenant), await _session(db, other)
    assert await records.tenant_storage_bytes(tenant) == 0
    big = [NewEvent(1, "assistant", {"type": "assistant", "text": "x" * 5000}, T0)]
    await events.append(mine, big)
    await events.append(theirs, [NewEvent(1, "assistant", {"type": "assistant", "text": "y" * 70_000}, T0)])
    assert 5000 <= await records.tenant_storage_bytes(tenant) <= 5200
