"""Replay on reconnect: ``WS /v1/sessions/{id}?after=N`` first sends every durable frame with
seq > N from the session's event log (``eventlog.py``), then continues live, with no duplicate and
no gap.

How the two are joined without either: the session broadcasts durable frames strictly in seq
order, and only once they are stored. So the connection is attached behind a :class:`ReplayGate`
(which holds live frames back) in the same event-loop step as the log's ``last_seq`` is read: every
frame with seq ≤ that ``upto`` was broadcast before the gate existed and is in the store; every
later frame reaches the gate. The replay reads the store up to ``upto`` exactly, then the gate
lets its held frames through and steps aside. (``merge_live`` also drops any held frame whose seq
was already replayed, so the join holds even if that ordering ever loosened.)

Pure parts (``parse_after``, ``plan``, ``merge_live``) are unit-tested in tests/unit/test_replay.py.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .errors import Code, ProtocolError
from .eventlog import EventStore
from .protocol import Subscriber, dumps

#: Events read from the store per query while replaying.
REPLAY_PAGE = 500
_MAX_AFTER_DIGITS = 18  # below 2**63: every seq the store can hold


def bad_after(message: str) -> ProtocolError:
    return ProtocolError(message, code=Code.INVALID_AFTER, fatal=True)


def parse_after(raw: str | None) -> int | None:
    """The ``after`` query parameter: absent (``None``: live only) or a non-negative integer."""
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit() and len(raw) <= _MAX_AFTER_DIGITS):
        raise bad_after(f"after must be a non-negative integer seq, not {raw[:40]!r}")
    return int(raw)


@dataclass(frozen=True)
class Plan:
    """What a replay sends: events with ``after`` < seq ≤ ``upto``; ``truncated`` when some of
    them were pruned from the log (retention), so the first one sent is not ``after + 1``."""

    after: int
    upto: int
    truncated: bool


def plan(after: int, first_stored: int, upto: int) -> Plan:
    """Check ``after`` against the log (``first_stored``: the oldest seq still stored, 0 if none;
    ``upto``: the last seq broadcast, which the ``session`` frame reports as ``last_seq``)."""
    if after > upto:
        raise bad_after(f"after={after} is past this session's last seq ({upto})")
    truncated = after < upto and first_stored > after + 1
    return Plan(after, upto, truncated)


def seq_of(text: str) -> int | None:
    """The seq of a broadcast frame's text (``None``: an ephemeral frame)."""
    value = json.loads(text).get("seq")
    return value if isinstance(value, int) else None


def merge_live(held: list[str], replayed_upto: int) -> list[str]:
    """The live frames held during a replay that the client still needs: all but those with a seq
    the replay already sent."""
    return [text for text in held if (seq := seq_of(text)) is None or seq > replayed_upto]


async def replay(store: EventStore, session_id: str, p: Plan, put: Callable[[str], Awaitable[None]]) -> int:
    """Send the stored frames of ``p`` through ``put`` (which waits for room), page by page; the
    last seq sent (``p.after`` if none)."""
    cursor = p.after
    while cursor < p.upto:
        page = await store.read(session_id, cursor, REPLAY_PAGE)
        if not page:
            break
        for event in page:
            if event.seq > p.upto:
                return cursor
            await put(dumps({**event.body, "seq": event.seq}))
            cursor = event.seq
    return cursor


class ReplayGate:
    """A :class:`Subscriber` in front of a connection while it replays: live frames are held
    (bounded by ``limit_bytes``: past it the client is a slow consumer, as it would be live), then
    ``release`` hands them over and every later frame goes straight through."""

    def __init__(self, conn: Subscriber, limit_bytes: int) -> None:
        self.conn = conn
        self.limit_bytes = limit_bytes
        self.held: list[str] = []
        self.held_bytes = 0
        self.passing = False
        self.close_with: tuple[int, str] | None = None

    def offer(self, text: str) -> bool:
        if self.passing:
            return self.conn.offer(text)
        self.held.append(text)
        self.held_bytes += len(text)
        return self.held_bytes <= self.limit_bytes

    def close(self, code: int, reason: str) -> None:
        if self.passing:
            self.conn.close(code, reason)
        elif self.close_with is None:
            self.close_with = (code, reason)

    def release(self, replayed_upto: int) -> bool:
        """Send what was held (less what the replay sent), then pass through. False: the client
        fell behind and the connection is closed."""
        held, self.held, self.held_bytes = self.held, [], 0
        self.passing = True
        for text in merge_live(held, replayed_upto):
            if not self.conn.offer(text):
                self.conn.close(1008, Code.SLOW_CONSUMER)
                return False
        if self.close_with is not None:
            self.conn.close(*self.close_with)
        return True
