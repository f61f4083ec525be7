"""``EventLog.seq_of`` (service/moorage/eventlog.py) over an in-memory store: how the HTTP view
learns the seq (and so the event id) of a frame it published — the n-th durable frame gets the
n-th seq after the store's last one — and that the wait ends with ``None`` when the log breaks or
the time is up, never hangs."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from moorage.errors import Code, MoorageError
from moorage.eventlog import EventLog, Retry
from moorage_session_store import NewEvent, StoredEvent
from moorage_session_store.events import EventConflict

Frame = dict[str, Any]
FAST = Retry(first_s=0.001, max_s=0.01, give_up_s=0.1)


class MemoryStore:
    """An in-memory ``EventStore``: appends wait while ``gate`` is closed; ``conflict`` makes
    them fail as if another writer had taken the seqs."""

    def __init__(self, last: int = 0) -> None:
        self.rows: list[NewEvent] = []
        self.last = last
        self.gate = asyncio.Event()
        self.gate.set()
        self.conflict = False

    async def append(self, session_id: str, events: Sequence[NewEvent]) -> None:
        await self.gate.wait()
        if self.conflict:
            raise EventConflict("seq taken")
        assert events[0].seq == self.last + 1
        self.rows += events
        self.last = events[-1].seq

    async def last_seq(self, session_id: str) -> int:
        return self.last

    async def bounds(self, session_id: str) -> tuple[int, int]:
        return (self.rows[0].seq if self.rows else 0), self.last

    async def read(self, session_id: str, after: int, limit: int = 1000) -> list[StoredEvent]:
        return [StoredEvent(e.seq, e.type, e.body, e.created_at) for e in self.rows if e.seq > after][:limit]


def open_log(store: MemoryStore) -> tuple[EventLog, list[Frame], list[MoorageError]]:
    out: list[Frame] = []
    broken: list[MoorageError] = []
    return EventLog(store, "s1", out.append, broken.append, retry=FAST), out, broken


def publish(log: EventLog, kind: str) -> int:
    """Publish a frame of type ``kind``; its ordinal (what the caller passes to ``seq_of``)."""
    ordinal = log.published
    log.publish({"type": kind})
    return ordinal


async def test_frames_published_before_the_log_opens_get_the_seqs_after_the_stored_ones_in_order() -> None:
    store = MemoryStore(last=7)
    log, out, _ = open_log(store)
    ordinals = [publish(log, kind) for kind in ("user_message", "stream_event", "system", "pong", "result")]
    assert ordinals == [0, 1, 1, 2, 2] and log.published == 3  # ephemeral frames are not counted
    seqs = await asyncio.wait_for(asyncio.gather(*(log.seq_of(n, 5) for n in (2, 0, 1))), 2)
    assert seqs == [10, 8, 9]
    assert [(f["type"], f.get("seq")) for f in out if "seq" in f] == [
        ("user_message", 8),
        ("system", 9),
        ("result", 10),
    ]
    assert await log.seq_of(0, 5) == 8  # durable already: at once


async def test_the_waiter_resolves_once_the_frame_is_durable() -> None:
    store = MemoryStore(last=3)
    log, _, _ = open_log(store)
    await log.open()
    store.gate.clear()
    first, second = publish(log, "user_message"), publish(log, "permission_response")
    waiting = asyncio.create_task(log.seq_of(second, 5))
    await asyncio.sleep(0.02)
    assert not waiting.done() and store.rows == []  # written only after the gate opens
    store.gate.set()
    assert await asyncio.wait_for(waiting, 2) == 5
    assert await log.seq_of(first, 5) == 4
    assert [e.seq for e in store.rows] == [4, 5]


async def test_none_when_the_log_breaks_without_waiting_for_the_timeout() -> None:
    store = MemoryStore()
    log, out, broken = open_log(store)
    await log.open()
    store.gate.clear()
    store.conflict = True
    ordinal = publish(log, "user_message")
    waiting = asyncio.create_task(log.seq_of(ordinal, 30))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    store.gate.set()
    assert await asyncio.wait_for(waiting, 2) is None  # not the 30 s timeout
    assert [e.code for e in broken] == [Code.STORE_UNAVAILABLE] and out == []
    later = publish(log, "user_message")  # a broken log numbers nothing more
    assert later == ordinal + 1 and log.published == ordinal + 1
    assert await asyncio.wait_for(log.seq_of(later, 30), 2) is None


async def test_a_frame_made_durable_before_the_log_broke_keeps_its_seq() -> None:
    store = MemoryStore(last=1)
    log, _, _ = open_log(store)
    kept = publish(log, "user_message")
    assert await log.seq_of(kept, 5) == 2
    store.conflict = True
    lost = publish(log, "result")
    assert await log.drain(2) and log.core.broken
    assert await asyncio.wait_for(log.seq_of(lost, 30), 2) is None
    assert await asyncio.wait_for(log.seq_of(kept, 30), 2) == 2  # it is in the store: its id stands


async def test_none_on_timeout_and_the_seq_once_it_is_durable_later() -> None:
    store = MemoryStore()
    log, _, _ = open_log(store)
    await log.open()
    store.gate.clear()
    ordinal = publish(log, "user_message")
    assert await asyncio.wait_for(log.seq_of(ordinal, 0.03), 2) is None
    store.gate.set()
    assert await asyncio.wait_for(log.seq_of(ordinal, 5), 2) == 1


async def test_a_cancelled_or_timed_out_waiter_is_not_kept() -> None:
    store = MemoryStore()
    log, _, _ = open_log(store)
    await log.open()
    store.gate.clear()
    ordinal = publish(log, "user_message")
    assert await log.seq_of(ordinal, 0.01) is None
    waiting = asyncio.create_task(log.seq_of(ordinal, 30))
    await asyncio.sleep(0.01)
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    assert log._waiters == []
    store.gate.set()
    assert await log.drain(2)
