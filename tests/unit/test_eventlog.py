"""The event log's decisions (``eventlog.LogCore``), without I/O: which frames get a seq, what
goes into each write (group commit), what may be broadcast when, and what a broken log sends."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from moorage.eventlog import Broadcast, Kind, LogCore, Retry, Write, kind_of

NOW = datetime(2026, 12, 2, tzinfo=UTC)


def frame(kind: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, **extra}


def sent(effects: list[Any]) -> list[tuple[str, int | None]]:
    return [(f["type"], f.get("seq")) for e in effects if isinstance(e, Broadcast) for f in e.frames]


def writes(effects: list[Any]) -> list[list[int]]:
    return [[ev.seq for ev in e.events] for e in effects if isinstance(e, Write)]


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
    assert writes(effects) == [[42, 43]] and sent(effects) == []


def test_a_frame_is_broadcast_only_once_written_and_with_its_seq() -> None:
    core = LogCore()
    core.open(0)
    first = core.publish(frame("assistant"), NOW)
    assert writes(first) == [[1]] and sent(first) == []
    done = core.written()
    assert sent(done) == [("assistant", 1)] and writes(done) == []
    assert core.durable == 1 and not core.pending


def test_frames_published_during_a_write_form_the_next_batch() -> None:
    core = LogCore()
    core.open(0)
    assert writes(core.publish(frame("user_message"), NOW)) == [[1]]
    for kind in ("system", "assistant", "user", "assistant"):
        assert core.publish(frame(kind), NOW) == []  # one write in flight at a time
    after_first = core.written()
    assert sent(after_first) == [("user_message", 1)]
    assert writes(after_first) == [[2, 3, 4, 5]]  # group commit
    assert core.publish(frame("result"), NOW) == []
    after_second = core.written()
    assert sent(after_second) == [("system", 2), ("assistant", 3), ("user", 4), ("assistant", 5)]
    assert writes(after_second) == [[6]]
    assert sent(core.written()) == [("result", 6)]


def test_a_batch_is_bounded() -> None:
    core = LogCore(max_batch=3)
    core.open(0)
    core.publish(frame("a"), NOW)
    for _ in range(7):
        core.publish(frame("b"), NOW)
    assert writes(core.written()) == [[2, 3, 4]]
    assert writes(core.written()) == [[5, 6, 7]]
    assert writes(core.written()) == [[8]]


def test_an_ephemeral_frame_goes_at_once_when_nothing_is_pending_else_keeps_its_place() -> None:
    core = LogCore()
    core.open(0)
    assert sent(core.publish(frame("stream_event", n=1), NOW)) == [("stream_event", None)]
    core.publish(frame("assistant"), NOW)
    assert core.publish(frame("stream_event", n=2), NOW) == []  # never overtakes the assistant frame
    assert sent(core.written()) == [("assistant", 1), ("stream_event", None)]


def test_an_ephemeral_frame_between_two_batches_waits_only_for_the_first() -> None:
    core = LogCore()
    core.open(0)
    core.publish(frame("assistant"), NOW)  # in flight
    core.publish(frame("system"), NOW)  # next batch
    core.publish(frame("stream_event"), NOW)
    core.publish(frame("result"), NOW)  # next batch too
    assert sent(e := core.written()) == [("assistant", 1)] and writes(e) == [[2, 3]]
    assert sent(core.written()) == [("system", 2), ("stream_event", None), ("result", 3)]


def test_a_store_outage_notice_overtakes_everything_pending() -> None:
    core = LogCore()
    core.open(0)
    core.publish(frame("assistant"), NOW)
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
    (write,) = [e for e in core.publish(original, NOW) if isinstance(e, Write)]
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
