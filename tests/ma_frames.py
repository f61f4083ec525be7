"""Logged WebSocket frames for the Managed Agents projection tests (tests/unit/test_ma_events.py,
test_sse.py). The logs in tests/unit/data were captured from the WebSocket in
tests/e2e/test_approvals.py (real CLI, scripted model)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

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
