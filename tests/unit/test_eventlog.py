"""The event log's decisions (``eventlog.LogCore``), without I/O: which frames get a seq, what
goes into each write (group commit), what may be broadcast when, and what a broken log sends;
then the driver (``EventLog``) over an in-memory store: outages, giving up, backpressure."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from moorage.errors import Code, MoorageError
from moorage.eventlog import Broadcast, EventLog, Flush, Kind, LogCore, Retry, kind_of
from moorage_session_store import DatabaseUnavailable, NewEvent, StoredEvent

NOW = datetime(2026, 12, 2, tzinfo=UTC)


def frame(kind: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, **extra}


def sent(effects: list[Any]) -> list[tuple[str, int | None]]:
    return [(f["type"], f.get("seq")) for e in effects if isinstance(e, Broadcast) for f in e.frames]


def writes(core: LogCore, effects: list[Any]) -> list[list[int]]:
    """The batch a writer started by ``effects`` takes when it runs right away."""
    if not any(isinstance(e, Flush) for e in effects):
        return []
    write = core.next_batch()
    return [] if write is None else [[ev.seq for ev in write.events]]


def test_kinds_stream_events_and_pongs_are_ephemeral_store_outages_out_of_band() -> None:
    assert kind_of(frame("stream_event")) is Kind.EPHEMERAL
    assert kind_of(frame("pong")) is Kind.EPHEMERAL
    assert kind_of(frame("error", code="store_unavailable")) is Kind.OUT_OF_BAND
    for kind in ("assistant", "user", "system", "result", "user_message", "session"):
        assert kind_of(frame(kind)) is Kind.DURABLE
    assert kind_of(frame("error", code="turn_timeout")) is Kind.DURABLE


def test_nothing_is_numbered_or_written_before_the_store_says_where_the_log_is() -> None:
    core = LogCore()
    assert core.publish(frame("user_message"), NOW) == []
    assert core.publish(frame("system"), NOW) == []
    assert core.pending and not core.opened
    effects = core.open(41)  # a restarted service continues after the stored seqs
    assert writes(core, effects) == [[42, 43]] and sent(effects) == []


def test_a_frame_is_broadcast_only_once_written_and_with_its_seq() -> None:
    core = LogCore()
    core.open(0)
    first = core.publish(frame("assistant"), NOW)
    assert writes(core, first) == [[1]] and sent(first) == []
    done = core.written()
    assert sent(done) == [("assistant", 1)] and writes(core, done) == []
    assert core.durable == 1 and not core.pending


def test_frames_published_during_a_write_form_the_next_batch() -> None:
    core = LogCore()
    core.open(0)
    assert writes(core, core.publish(frame("user_message"), NOW)) == [[1]]
    for kind in ("system", "assistant", "user", "assistant"):
        assert core.publish(frame(kind), NOW) == []  # one write in flight at a time
    after_first = core.written()
    assert sent(after_first) == [("user_message", 1)]
    assert writes(core, after_first) == [[2, 3, 4, 5]]  # group commit
    assert core.publish(frame("result"), NOW) == []
    after_second = core.written()
    assert sent(after_second) == [("system", 2), ("assistant", 3), ("user", 4), ("assistant", 5)]
    assert writes(core, after_second) == [[6]]
    assert sent(core.written()) == [("result", 6)]


def test_frames_published_before_the_writer_runs_go_in_its_batch() -> None:
    core = LogCore()
    core.open(0)
    assert [type(e) for e in core.publish(frame("assistant"), NOW)] == [Flush]
    assert core.publish(frame("user"), NOW) == []  # the writer is asked for once
    assert core.publish(frame("assistant"), NOW) == []
    write = core.next_batch()
    assert write is not None and [e.seq for e in write.events] == [1, 2, 3]
    assert core.next_batch() is None  # one write in flight at a time


def test_a_batch_is_bounded() -> None:
    core = LogCore(max_batch=3)
    core.open(0)
    assert writes(core, core.publish(frame("a"), NOW)) == [[1]]
    for _ in range(7):
        core.publish(frame("b"), NOW)
    assert writes(core, core.written()) == [[2, 3, 4]]
    assert writes(core, core.written()) == [[5, 6, 7]]
    assert writes(core, core.written()) == [[8]]


def test_an_ephemeral_frame_goes_at_once_when_nothing_is_pending_else_keeps_its_place() -> None:
    core = LogCore()
    core.open(0)
    assert sent(core.publish(frame("stream_event", n=1), NOW)) == [("stream_event", None)]
    assert writes(core, core.publish(frame("assistant"), NOW)) == [[1]]
    assert core.publish(frame("stream_event", n=2), NOW) == []  # never overtakes the assistant frame
    assert sent(core.written()) == [("assistant", 1), ("stream_event", None)]


def test_an_ephemeral_frame_between_two_batches_waits_only_for_the_first() -> None:
    core = LogCore()
    core.open(0)
    assert writes(core, core.publish(frame("assistant"), NOW)) == [[1]]  # in flight
    core.publish(frame("system"), NOW)  # next batch
    core.publish(frame("stream_event"), NOW)
    core.publish(frame("result"), NOW)  # next batch too
    assert sent(e := core.written()) == [("assistant", 1)] and writes(core, e) == [[2, 3]]
    assert sent(core.written()) == [("system", 2), ("stream_event", None), ("result", 3)]


def test_a_store_outage_notice_overtakes_everything_pending() -> None:
    core = LogCore()
    core.open(0)
    assert writes(core, core.publish(frame("assistant"), NOW)) == [[1]]
    notice = core.publish(frame("error", code="store_unavailable"), NOW)
    assert sent(notice) == [("error", None)]
    assert sent(core.written()) == [("assistant", 1)]


def test_a_broken_log_sends_nothing_that_is_not_durable_except_its_own_failure() -> None:
    core = LogCore()
    core.open(5)
    core.publish(frame("assistant"), NOW)
    core.publish(frame("result"), NOW)
    assert core.give_up() == 2
    assert not core.pending and core.durable == 5
    assert core.publish(frame("assistant"), NOW) == []
    assert core.publish(frame("stream_event"), NOW) == []
    assert sent(core.publish(frame("error", code="store_unavailable"), NOW)) == [("error", None)]


def test_the_stored_body_is_the_frame_without_seq_and_keeps_its_type_and_time() -> None:
    core = LogCore()
    core.open(0)
    original = frame("assistant", message={"content": "hi"})
    assert [type(e) for e in core.publish(original, NOW)] == [Flush]
    write = core.next_batch()
    assert write is not None
    (event,) = write.events
    assert event.body == original and "seq" not in event.body
    assert event.type == "assistant" and event.created_at == NOW
    (broadcast,) = core.written()
    assert isinstance(broadcast, Broadcast) and broadcast.frames[0] == {**original, "seq": 1}
    assert "seq" not in original  # the caller's dict is not changed (notices are kept and resent)


def test_retry_backoff_is_bounded_by_the_give_up_time() -> None:
    delays = Retry(first_s=0.05, max_s=2.0, give_up_s=10.0).delays()
    assert delays[:3] == [0.05, 0.1, 0.2] and max(delays) == 2.0
    assert abs(sum(delays) - 10.0) < 1e-9
    assert Retry(give_up_s=0).delays() == []


def test_pending_bytes_count_what_waits_and_fall_as_it_is_broadcast_or_dropped() -> None:
    core = LogCore()
    core.publish(frame("assistant"), NOW, size=100)  # not open yet: waits
    core.publish(frame("stream_event"), NOW, size=10)
    assert core.pending_bytes == 110
    assert writes(core, core.open(0)) == [[1]]
    core.publish(frame("result"), NOW, size=5)
    assert core.pending_bytes == 115
    core.written()
    assert core.pending_bytes == 5  # the assistant frame and the delta behind it went out
    core.give_up()
    assert core.pending_bytes == 0


class FlakyStore:
    """An in-memory ``EventStore`` whose writes fail while ``down``."""

    def __init__(self, last: int = 0) -> None:
        self.rows: list[NewEvent] = []
        self.last = last
        self.down = False
        self.appends = 0
        self.gate: asyncio.Event | None = None

    async def append(self, session_id: str, events: Sequence[NewEvent]) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise DatabaseUnavailable("down")
        assert events[0].seq == self.last + 1
        self.appends += 1
        self.rows += events
        self.last = events[-1].seq

    async def last_seq(self, session_id: str) -> int:
        if self.down:
            raise DatabaseUnavailable("down")
        return self.last

    async def bounds(self, session_id: str) -> tuple[int, int]:
        return (self.rows[0].seq if self.rows else 0), self.last

    async def read(self, session_id: str, after: int, limit: int = 1000) -> list[StoredEvent]:
        return [StoredEvent(e.seq, e.type, e.body, e.created_at) for e in self.rows if e.seq > after][:limit]


FAST = Retry(first_s=0.001, max_s=0.01, give_up_s=0.2)


def driver(store: FlakyStore, **kw: Any) -> tuple[EventLog, list[dict[str, Any]], list[MoorageError]]:
    out: list[dict[str, Any]] = []
    broken: list[MoorageError] = []
    return EventLog(store, "s1", out.append, broken.append, retry=FAST, **kw), out, broken


async def test_the_driver_continues_the_stored_seqs_and_broadcasts_after_the_write() -> None:
    store = FlakyStore(last=7)
    log, out, _ = driver(store)
    for kind in ("user_message", "system", "stream_event", "result"):
        log.publish(frame(kind))
    assert out == []  # nothing before the store has it
    assert await log.drain(1)
    assert [(f["type"], f.get("seq")) for f in out] == [
        ("user_message", 8),
        ("system", 9),
        ("stream_event", None),
        ("result", 10),
    ]
    assert [e.seq for e in store.rows] == [8, 9, 10] and log.last_seq == 10 and store.appends == 1


async def test_a_short_outage_delays_frames_and_loses_none() -> None:
    store = FlakyStore()
    degraded: list[bool] = []
    log, out, broken = driver(store, on_degraded=lambda: degraded.append(True))
    await log.open()
    store.down = True
    log.publish(frame("assistant"))
    await asyncio.sleep(0.02)
    assert out == [] and degraded == [True]
    store.down = False
    assert await log.drain(1)
    assert [f["seq"] for f in out] == [1] and broken == []


async def test_a_long_outage_breaks_the_log_drops_what_is_not_durable_and_ends_the_session() -> None:
    store = FlakyStore()
    log, out, broken = driver(store)
    await log.open()
    store.down = True
    log.publish(frame("assistant"))
    assert await log.drain(2)  # settled: dropped, not sent
    assert out == [] and [e.code for e in broken] == [Code.STORE_UNAVAILABLE] and broken[0].fatal
    log.publish(frame("error", code="store_unavailable"))
    assert out == [frame("error", code="store_unavailable")]


async def test_room_waits_while_too_much_is_unwritten() -> None:
    store = FlakyStore()
    store.gate = asyncio.Event()
    log, out, _ = driver(store, max_pending_bytes=100)
    await log.open()
    log.publish(frame("assistant", text="x" * 200))
    waiting = asyncio.create_task(log.room())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    store.gate.set()
    await asyncio.wait_for(waiting, 1)
    assert await log.drain(1) and len(out) == 1


def test_the_core_tells_whether_a_frame_still_waits_for_its_write() -> None:
    core = LogCore()
    core.open(0)
    notice = frame("error", code="workspace_full")
    assert writes(core, core.publish(notice, NOW)) == [[1]]
    assert core.holds(notice) and not core.holds(dict(notice))  # this object, not an equal one
    core.written()
    assert not core.holds(notice)
