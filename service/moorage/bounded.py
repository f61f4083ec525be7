"""Queues bounded in bytes, not items, for everything a sandbox can fill.

A sandbox controls the size of every frame it sends (up to the channel's
32 MiB line cap), so a queue bounded by a frame count is bounded by nothing
useful: 4096 frames of 32 MiB is 128 GiB. Every queue that holds frames
between a sandbox and the service's consumers is bounded by the bytes it
holds instead:

- ``ByteBudget`` is the accounting alone (pure; unit-tested): what is
  queued, and whether an item of a given size may join. An item larger than
  the whole budget is admitted only into an empty queue, so the most a queue
  ever holds is ``max(limit, largest single item)`` and a large-but-legal
  frame still passes.
- ``ByteQueue`` is a FIFO with that budget. ``put`` *waits* for room: that
  is backpressure, used where the producer reads a sandbox's channel (it
  stops reading, the pipe fills, the runner's writes block; nothing is
  dropped). ``offer`` never waits and says whether the item fit: used for
  client connections, where a client that cannot keep up is dropped
  (``slow_consumer``) rather than stalling the session for everyone.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class ByteBudget:
    """How many bytes a queue holds, against its limit."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a byte budget needs a positive limit")
        self.limit = limit
        self.used = 0

    def fits(self, size: int) -> bool:
        """Whether ``size`` more bytes may be queued now: within the limit,
        or anything at all into an empty queue (one oversized item at a time)."""
        return self.used == 0 or self.used + size <= self.limit

    def take(self, size: int) -> None:
        self.used += size

    def give(self, size: int) -> None:
        self.used = max(0, self.used - size)


class ByteQueue(Generic[T]):
    """A FIFO holding at most ``max(limit, largest item)`` bytes (sizes are
    the caller's measure of each item). Any number of producers; one
    consumer (``get``). ``join`` waits until every item got was marked
    ``task_done``, as with ``asyncio.Queue``."""

    def __init__(self, limit: int) -> None:
        self.budget = ByteBudget(limit)
        self._items: deque[tuple[T, int]] = deque()
        self._not_empty = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._unfinished = 0
        self._finished = asyncio.Event()
        self._finished.set()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def bytes(self) -> int:
        return self.budget.used

    def offer(self, item: T, size: int) -> bool:
        """Queue ``item`` if it fits now; never waits."""
        if not self.budget.fits(size):
            return False
        self._append(item, size)
        return True

    async def put(self, item: T, size: int) -> None:
        """Queue ``item``, waiting until it fits (backpressure)."""
        while not self.budget.fits(size):
            self._room.clear()
            await self._room.wait()
        self._append(item, size)

    def force(self, item: T, size: int = 0) -> None:
        """Queue ``item`` whatever the budget (a sentinel: end of stream, close)."""
        self._append(item, size)

    async def get(self) -> T:
        while not self._items:
            self._not_empty.clear()
            await self._not_empty.wait()
        return self.get_nowait()

    def get_nowait(self) -> T:
        item, size = self._items.popleft()  # IndexError when empty, as documented by deque
        self.budget.give(size)
        self._room.set()
        return item

    def clear(self) -> None:
        """Drop everything queued (a consumer that is gone loses its backlog)."""
        while self._items:
            self.get_nowait()
            self.task_done()

    def task_done(self) -> None:
        self._unfinished = max(0, self._unfinished - 1)
        if self._unfinished == 0:
            self._finished.set()

    async def join(self) -> None:
        await self._finished.wait()

    def _append(self, item: T, size: int) -> None:
        self._items.append((item, size))
        self.budget.take(size)
        self._unfinished += 1
        self._finished.clear()
        self._not_empty.set()


def text_bytes(text: str) -> int:
    """Memory a queued string holds (CPython's own size: 1, 2 or 4 bytes a
    character plus its header), in O(1)."""
    return sys.getsizeof(text)


def frame_bytes(frame: object, unmeasurable: int) -> int:
    """A decoded channel frame's (or its payload's) size, as its compact JSON
    encoding (what the runner sent, give or take whitespace); ``unmeasurable``
    for one that cannot be re-encoded (too deep)."""
    try:
        return len(json.dumps(frame, separators=(",", ":"), ensure_ascii=False).encode())
    except (ValueError, TypeError, RecursionError):
        return unmeasurable


# The longest line any backend reads from a runner (sandbox/local.py,
# docker.py, kube_sandbox.py: MAX_FRAME_BYTES); the runner's copy is
# container/moorage_runner/channel.py.
CHANNEL_LINE_BYTES = 32 * 1024 * 1024
# The SDK measures a line of the CLI's output in characters. A client frame
# of N bytes holds at most N characters of text, and the CLI re-escapes only
# what the client had to escape too, so the line carrying a user message is
# about N plus the CLI's wrapping (seen: a 1 MiB frame killed the SDK's
# default 1 MiB buffer by a few hundred bytes). 4x is margin for a line that
# carries the text more than once.
SDK_BUFFER_FACTOR = 4
SDK_BUFFER_MIN = 8 * 1024 * 1024


def sdk_buffer_bytes(max_frame_bytes: int) -> int:
    """The SDK's buffer for one line of the CLI's output (``max_buffer_size``,
    passed in ``start``) when clients may send frames of ``max_frame_bytes``:
    with room for the CLI's re-encoding, and never above what the channel
    carries (a longer line could not reach the service anyway)."""
    return min(CHANNEL_LINE_BYTES, max(SDK_BUFFER_MIN, SDK_BUFFER_FACTOR * max_frame_bytes))
