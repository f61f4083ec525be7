"""An output on its way into the file store (session_files.OutputUpload): the session's pump waits
while the store is behind (a bounded queue, not a growing one), and never waits on a store that
failed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable
from types import SimpleNamespace
from typing import Any

import pytest
from moorage.files import UploadLimit
from moorage.session_files import QUEUE_CHUNKS, OutputUpload

pytestmark = pytest.mark.asyncio


class SlowStore:
    """``put`` reads one chunk each time ``go`` is released; ``fail_after`` chunks, it raises."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.go = asyncio.Semaphore(0)
        self.read: list[bytes] = []
        self.fail_after = fail_after

    async def put(self, tenant: str, *, chunks: AsyncIterable[bytes], **kwargs: Any) -> str:
        async for chunk in chunks:
            self.read.append(chunk)
            if self.fail_after is not None and len(self.read) >= self.fail_after:
                raise OSError("the database went away")
            await self.go.acquire()
        return "stored"


def upload(store: SlowStore) -> OutputUpload:
    session = SimpleNamespace(tenant="t", id="s")
    return OutputUpload(session, store, "big.bin", UploadLimit(1 << 30, by_quota=False))  # type: ignore[arg-type]


async def test_the_pump_waits_while_the_store_is_behind() -> None:
    store = SlowStore()
    up = upload(store)
    for n in range(QUEUE_CHUNKS + 1):  # the store holds one, the queue the rest
        await up.offer(b"%d" % n)
    blocked = asyncio.create_task(up.offer(b"one too many"))
    for _ in range(10):
        await asyncio.sleep(0)
    assert not blocked.done() and up.queue.full(), "the pump must wait, not queue more"
    store.go.release()
    await asyncio.wait_for(blocked, 5)
    for _ in range(QUEUE_CHUNKS + 3):
        store.go.release()
    await up.offer(None)
    stored: object = await asyncio.wait_for(up.task, 5)
    assert stored == "stored"
    assert store.read[-1] == b"one too many" and len(store.read) == QUEUE_CHUNKS + 2


async def test_a_store_that_failed_never_holds_the_pump() -> None:
    store = SlowStore(fail_after=1)
    up = upload(store)
    for n in range(QUEUE_CHUNKS * 3):  # far more than the queue holds
        await asyncio.wait_for(up.offer(b"%d" % n), 5)
    await asyncio.wait_for(up.offer(None), 5)
    with pytest.raises(OSError):
        await up.task
