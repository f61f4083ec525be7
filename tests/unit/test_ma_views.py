"""The Managed Agents view of event logs on one replica (service/moorage/ma_views.py), without a
database: a stream's news (``Listener``), who hears a session's broadcasts (``LogWatch``), and the
projections kept per session (``Projection``, ``Projections``) over an in-memory store."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from ma_frames import T0, MemoryStore, said
from moorage import ma_views
from moorage.ma_events import MaEvent, Projector, event_id
from moorage.ma_views import MAX_PREVIEW_FRAMES, Listener, LogWatch, Projection, Projections
from moorage.pending import AgentTools

Frame = dict[str, Any]
TOOLS = AgentTools()


def delta(n: int) -> Frame:
    return {"type": "stream_event", "event": {"n": n}}


# -- Listener ---------------------------------------------------------------------


def test_durable_news_in_a_row_is_one_read_up_to_the_last_seq() -> None:
    listener = Listener(previews=False)
    for seq in (3, 4, 7):
        listener.durable(seq)
    assert listener.news.is_set()
    assert listener.take() == [7]
    assert listener.take() == []


def test_previews_keep_their_place_after_the_durable_frames_before_them() -> None:
    listener = Listener(previews=True)
    listener.durable(3)
    listener.ephemeral(delta(1))
    listener.durable(5)
    listener.durable(6)  # coalesced with 5, not with 3: the preview between them stays between
    listener.ephemeral(delta(2))
    listener.ephemeral(delta(3))
    assert listener.take() == [3, delta(1), 6, delta(2), delta(3)]


def test_previews_are_dropped_when_not_asked_for_and_other_ephemeral_frames_always() -> None:
    quiet = Listener(previews=False)
    quiet.ephemeral(delta(1))
    assert not quiet.news.is_set() and quiet.take() == []
    loud = Listener(previews=True)
    loud.ephemeral({"type": "pong"})
    assert not loud.news.is_set() and loud.take() == []


def test_previews_past_the_bound_are_dropped_but_durable_news_is_not() -> None:
    listener = Listener(previews=True)
    for n in range(MAX_PREVIEW_FRAMES + 5):
        listener.ephemeral(delta(n))
    listener.durable(9)
    items = listener.take()
    assert items[:-1] == [delta(n) for n in range(MAX_PREVIEW_FRAMES)]
    assert items[-1] == 9
    listener.ephemeral(delta(0))  # taken: room again
    assert listener.take() == [delta(0)]


async def test_wait_returns_on_news_or_after_the_timeout_and_clears_the_news() -> None:
    listener = Listener(previews=False)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await listener.wait(0.02)  # nothing: the timeout
    assert loop.time() - started >= 0.015
    listener.durable(1)
    await asyncio.wait_for(listener.wait(5), 1)  # at once
    assert not listener.news.is_set()
    loop.call_later(0.01, listener.end)
    await asyncio.wait_for(listener.wait(5), 1)
    assert listener.ended


# -- LogWatch ---------------------------------------------------------------------


def test_a_broadcast_reaches_the_session_listeners_durable_with_its_seq_previews_as_frames() -> None:
    watch = LogWatch()
    with watch.listen("s1") as plain, watch.listen("s1", previews=True) as previews, watch.listen("s2") as other:
        assert len(watch) == 3
        watch.broadcast("s1", {"type": "assistant", "seq": 4})
        watch.broadcast("s1", delta(1))
        watch.broadcast("s1", {"type": "result", "seq": 5})
        assert plain.take() == [5]
        assert previews.take() == [4, delta(1), 5]
        assert other.take() == [] and not other.news.is_set()


def test_only_durable_frames_with_a_seq_are_news_of_the_log() -> None:
    watch = LogWatch()
    with watch.listen("s1", previews=True) as listener:
        watch.broadcast("s1", {"type": "assistant"})  # no seq: nothing to read up to
        watch.broadcast("s1", {"type": "error", "code": "store_unavailable"})  # out of band
        watch.broadcast("s1", {"type": "pong", "seq": 3})
        assert listener.take() == []


def test_listeners_are_removed_on_exit_and_hear_nothing_after() -> None:
    watch = LogWatch()
    with watch.listen("s1") as first:
        with watch.listen("s1") as second:
            assert len(watch) == 2
        assert len(watch) == 1
        watch.broadcast("s1", {"type": "result", "seq": 1})
        assert second.take() == [] and first.take() == [1]
    assert len(watch) == 0
    watch.broadcast("s1", {"type": "result", "seq": 2})  # nobody listens: nothing to do
    assert first.take() == []


def test_a_listener_leaves_even_when_its_stream_fails() -> None:
    watch = LogWatch()
    with pytest.raises(RuntimeError), watch.listen("s1"):
        raise RuntimeError("client went away")
    assert len(watch) == 0


def test_deleting_a_session_ends_its_listeners_only() -> None:
    watch = LogWatch()
    with watch.listen("s1") as gone, watch.listen("s2") as kept:
        watch.deleted("s1")
        watch.deleted("s3")  # nobody: nothing
        assert gone.ended and gone.news.is_set()
        assert not kept.ended and not kept.news.is_set()


# -- Projection.index_of ----------------------------------------------------------


def projection_of(*ids: str) -> Projection:
    projection = Projection("s1", Projector(TOOLS))
    projection.events = [MaEvent(ident, "agent.message", T0) for ident in ids]
    return projection


def test_index_of_finds_every_id_including_the_further_events_of_one_frame() -> None:
    ids = [event_id(1), event_id(2), event_id(2, 1), event_id(2, 2), event_id(10), event_id(10, 1), event_id(11)]
    assert ids == sorted(ids)  # the ids sort in log order, which the bisection relies on
    projection = projection_of(*ids)
    for index, ident in enumerate(ids):
        assert projection.index_of(ident) == index


def test_index_of_misses_are_none() -> None:
    projection = projection_of(event_id(2), event_id(2, 1), event_id(5))
    for missing in (event_id(1), event_id(3), event_id(2, 2), event_id(9), "sevt_2", "", "zzz"):
        assert projection.index_of(missing) is None
    assert projection_of().index_of(event_id(1)) is None


def test_count_upto_is_the_events_of_frames_up_to_a_seq_further_events_included() -> None:
    """What a stream told of the log up to seq N may send: never an event of a later frame, which
    another stream sharing the projection may have read already."""
    projection = projection_of(event_id(2), event_id(2, 1), event_id(5), event_id(10), event_id(10, 1))
    assert [projection.count_upto(seq) for seq in (0, 1, 2, 4, 5, 9, 10, 11)] == [0, 0, 2, 2, 3, 3, 5, 5]
    assert projection_of().count_upto(7) == 0


# -- catching up from the store ---------------------------------------------------


async def test_catch_up_reads_the_log_in_pages_until_a_short_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ma_views, "MAX_PAGE", 3)
    store = MemoryStore()
    store.add(*[said(str(n)) for n in range(7)])
    projection = Projection("s1", Projector(TOOLS))
    await projection.catch_up(store)
    assert store.reads == [(0, 3), (3, 3), (6, 3)]
    assert [e.id for e in projection.events] == [event_id(seq) for seq in range(1, 8)]
    assert [e.fields["content"][0]["text"] for e in projection.events] == [str(n) for n in range(7)]

    store.reads.clear()
    await projection.catch_up(store)  # nothing new: one read past the end
    assert store.reads == [(7, 3)] and len(projection.events) == 7
    store.add(said("7"), said("8"))
    await projection.catch_up(store)
    assert store.reads[1:] == [(7, 3)] and [e.id for e in projection.events[7:]] == [event_id(8), event_id(9)]


async def test_catch_up_on_a_log_of_whole_pages_reads_one_empty_page(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ma_views, "MAX_PAGE", 2)
    store = MemoryStore()
    store.add(*[said(str(n)) for n in range(4)])
    projection = Projection("s1", Projector(TOOLS))
    await projection.catch_up(store)
    assert store.reads == [(0, 2), (2, 2), (4, 2)] and len(projection.events) == 4


async def test_catch_up_to_a_seq_reads_no_further() -> None:
    """A stream catching up to the news before a preview must not read the message the preview
    is for (it is in the store already): ``upto`` stops there, and nothing is read when there."""
    store = MemoryStore()
    store.add(*[said(str(n)) for n in range(5)])
    projection = Projection("s1", Projector(TOOLS))
    await projection.catch_up(store, 3)
    assert [e.id for e in projection.events] == [event_id(seq) for seq in (1, 2, 3)]
    store.reads.clear()
    await projection.catch_up(store, 2)
    assert store.reads == [] and len(projection.events) == 3
    await projection.catch_up(store)
    assert len(projection.events) == 5


async def test_concurrent_catch_ups_project_each_frame_once() -> None:
    store = MemoryStore()
    store.add(said("a"), said("b"))
    projection = Projection("s1", Projector(TOOLS))
    await asyncio.gather(projection.catch_up(store), projection.catch_up(store))
    assert [e.id for e in projection.events] == [event_id(1), event_id(2)]


async def test_a_sessions_idle_streams_read_the_log_once_a_period_between_them() -> None:
    """Idle streams poll (a lost notification must not lose events); a thousand streams of one
    session must not read the database a thousand times a period."""
    store = MemoryStore()
    store.add(said("a"))
    projection = Projection("s1", Projector(TOOLS))
    await asyncio.gather(*(projection.poll(store, now=100.0, period_s=2.0) for _ in range(1000)))
    assert len(store.reads) == 1 and [e.id for e in projection.events] == [event_id(1)]
    store.add(said("b"))
    await projection.poll(store, now=101.9, period_s=2.0)
    assert len(store.reads) == 1, "read less than a period ago: not again"
    await projection.poll(store, now=102.0, period_s=2.0)
    assert len(store.reads) == 2 and [e.id for e in projection.events] == [event_id(1), event_id(2)]


async def test_news_is_read_at_once_whatever_the_last_poll() -> None:
    store = MemoryStore()
    projection = Projection("s1", Projector(TOOLS))
    await projection.poll(store, now=100.0, period_s=2.0)
    store.add(said("a"))
    await projection.catch_up(store, 1)  # a stream woken by the append
    assert [e.id for e in projection.events] == [event_id(1)]


# -- Projections ------------------------------------------------------------------


async def test_projections_are_kept_per_session_and_caught_up_on_each_get() -> None:
    store = MemoryStore()
    projections = Projections(store, limit=4)
    first = await projections.get("s1", TOOLS)
    assert first.session_id == "s1" and first.events == []
    store.add(said("hi"))
    again = await projections.get("s1", TOOLS)
    assert again is first and [e.id for e in again.events] == [event_id(1)]


async def test_projections_trim_the_least_recently_used() -> None:
    projections = Projections(MemoryStore(), limit=2)
    a = await projections.get("a", TOOLS)
    b = await projections.get("b", TOOLS)
    assert await projections.get("a", TOOLS) is a  # a is now the most recent
    c = await projections.get("c", TOOLS)  # b goes
    assert await projections.get("a", TOOLS) is a
    assert await projections.get("c", TOOLS) is c
    assert await projections.get("b", TOOLS) is not b  # rebuilt; a goes now
    assert await projections.get("a", TOOLS) is not a


async def test_a_projection_held_by_a_stream_is_never_trimmed() -> None:
    projections = Projections(MemoryStore(), limit=2)
    a = await projections.get("a", TOOLS)
    with projections.held(a):
        b = await projections.get("b", TOOLS)
        c = await projections.get("c", TOOLS)  # a is the oldest but held: b goes
        assert await projections.get("a", TOOLS) is a
        assert await projections.get("c", TOOLS) is c
        assert await projections.get("b", TOOLS) is not b
    assert a.users == 0


async def test_a_get_when_every_kept_projection_is_held_still_answers() -> None:
    projections = Projections(MemoryStore(), limit=1)
    a = await projections.get("a", TOOLS)
    with projections.held(a):
        b = await projections.get("b", TOOLS)  # over the limit while a stream holds a
        assert b.session_id == "b"
        assert await projections.get("a", TOOLS) is a
    c = await projections.get("c", TOOLS)  # a released: the limit holds again
    assert await projections.get("c", TOOLS) is c
    assert await projections.get("a", TOOLS) is not a


async def test_a_forgotten_session_is_rebuilt_from_the_log() -> None:
    store = MemoryStore()
    store.add(said("hi"))
    projections = Projections(store)
    first = await projections.get("s1", TOOLS)
    projections.forget("s1")
    projections.forget("never-seen")
    second = await projections.get("s1", TOOLS)
    assert second is not first and [e.id for e in second.events] == [event_id(1)]
