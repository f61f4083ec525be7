"""Logged WebSocket frames for the Managed Agents projection tests (tests/unit/test_ma_events.py,
test_sse.py, test_ma_views.py, test_event_stream.py), and an in-memory event log to read from.
The logs in tests/unit/data were captured from the WebSocket in tests/e2e/test_approvals.py (real
CLI, scripted model)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from moorage_session_store import NewEvent, StoredEvent

DATA = Path(__file__).parent / "unit" / "data"
#: Frame ``seq`` is logged at ``T0 + seq`` seconds.
T0 = datetime(2026, 12, 2, 2, 21, tzinfo=UTC)


@dataclass(frozen=True)
class Frame:
    """A logged frame, shaped like ``moorage_session_store.events.StoredEvent``."""

    seq: int
    type: str
    body: dict[str, Any]
    created_at: datetime


def load(name: str) -> list[Frame]:
    """A captured log: one frame a line, each with its ``seq``."""
    frames = []
    for line in (DATA / name).read_text().splitlines():
        body = json.loads(line)
        seq = body.pop("seq")
        frames.append(Frame(seq, body["type"], body, T0 + timedelta(seconds=seq)))
    return frames


def frames_of(*bodies: dict[str, Any]) -> list[Frame]:
    """Frames with seqs 1, 2, 3 … in the order given."""
    return [Frame(i, b["type"], b, T0 + timedelta(seconds=i)) for i, b in enumerate(bodies, 1)]


def said(text: str) -> dict[str, Any]:
    """A logged user message."""
    return {"type": "user_message", "message": {"role": "user", "content": [{"type": "text", "text": text}]}}


class MemoryStore:
    """An in-memory ``EventStore`` that records its reads."""

    def __init__(self) -> None:
        self.rows: list[StoredEvent] = []
        self.reads: list[tuple[int, int]] = []

    def add(self, *frames: dict[str, Any]) -> None:
        for frame in frames:
            seq = len(self.rows) + 1
            self.rows.append(StoredEvent(seq, str(frame["type"]), frame, T0 + timedelta(seconds=seq)))

    async def append(self, session_id: str, events: Sequence[NewEvent]) -> None:
        raise AssertionError("a view does not write")

    async def last_seq(self, session_id: str) -> int:
        return len(self.rows)

    async def bounds(self, session_id: str) -> tuple[int, int]:
        return (1 if self.rows else 0), len(self.rows)

    async def read(self, session_id: str, after: int, limit: int = 1000) -> list[StoredEvent]:
        self.reads.append((after, limit))
        page = [row for row in self.rows if row.seq > after][:limit]
        await asyncio.sleep(0)  # a real read waits: another reader may run meanwhile
        return page
