"""Replay on reconnect, the pure parts (``replay.py``): the ``after`` parameter, the plan against
the log's bounds, and the join of replayed and live frames (no duplicate, no gap)."""

from __future__ import annotations

import json

import pytest
from moorage.errors import Code, MoorageError
from moorage.replay import ReplayGate, merge_live, parse_after, plan


class Conn:
    def __init__(self, room: int = 1000) -> None:
        self.texts: list[str] = []
        self.room = room
        self.closed: tuple[int, str] | None = None

    def offer(self, text: str) -> bool:
        self.texts.append(text)
        return len(self.texts) <= self.room

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


def live(seq: int | None, kind: str = "assistant") -> str:
    return json.dumps({"type": kind} if seq is None else {"type": kind, "seq": seq})


@pytest.mark.parametrize("raw", ["-1", "1.5", "abc", "", " 3", "٣", "1e3", "9" * 19, "0x10"])
def test_a_bad_after_is_invalid_after(raw: str) -> None:
    with pytest.raises(MoorageError) as refused:
        parse_after(raw)
    assert refused.value.code == Code.INVALID_AFTER and refused.value.fatal


def test_after_absent_means_live_only() -> None:
    assert parse_after(None) is None
    assert parse_after("0") == 0 and parse_after("42") == 42


def test_after_past_the_last_seq_is_invalid_after() -> None:
    with pytest.raises(MoorageError) as refused:
        plan(8, first_stored=1, upto=7)
    assert refused.value.code == Code.INVALID_AFTER
    assert plan(7, 1, 7).truncated is False  # nothing missed


def test_a_replay_says_when_the_events_it_needs_were_pruned() -> None:
    assert plan(0, first_stored=1, upto=9).truncated is False
    assert plan(0, first_stored=5, upto=9).truncated is True
    assert plan(3, first_stored=5, upto=9).truncated is True
    assert plan(4, first_stored=5, upto=9).truncated is False
    assert plan(0, first_stored=0, upto=0).truncated is False  # an empty log


def test_live_frames_held_during_the_replay_lose_only_what_it_sent() -> None:
    held = [live(5), live(None, "stream_event"), live(6), live(7), live(None, "stream_event")]
    assert merge_live(held, replayed_upto=6) == [live(None, "stream_event"), live(7), live(None, "stream_event")]
    assert merge_live(held, replayed_upto=4) == held


def test_the_gate_holds_live_frames_then_passes_them_in_order_after_the_replay() -> None:
    conn = Conn()
    gate = ReplayGate(conn, limit_bytes=10_000)
    assert gate.offer(live(4)) and gate.offer(live(5))
    assert conn.texts == []
    conn.texts += [live(1), live(2), live(3)]  # what the replay sent (the store, up to 3)
    assert gate.release(replayed_upto=3)
    assert gate.offer(live(6))
    seqs = [json.loads(t)["seq"] for t in conn.texts]
    assert seqs == [1, 2, 3, 4, 5, 6]  # no duplicate, no gap


def test_a_gate_past_its_bound_reports_a_slow_consumer_and_a_close_waits_for_the_release() -> None:
    conn = Conn()
    gate = ReplayGate(conn, limit_bytes=len(live(1)) * 2)
    assert gate.offer(live(1)) and gate.offer(live(2))
    assert not gate.offer(live(3))
    gate.close(1011, "sandbox_crashed")
    assert conn.closed is None  # the replay is still sending
    gate.release(replayed_upto=0)
    assert conn.closed == (1011, "sandbox_crashed")
