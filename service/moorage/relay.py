"""The session's transcript half: answers the runner's SessionStore ``rpc``
frames through a ``TranscriptSink`` and keeps retrying when the database is
down.

Frames are answered by one worker, in order, so a database write never delays
the SDK messages streaming past it (the SDK yields a turn's result only after
its store calls were answered). While the sink holds unsaved entries the relay
is *degraded*: a flusher retries with backoff and calls ``on_durable`` once
everything is written, which is when the session releases held results.

The queue is bounded in bytes (``RELAY_QUEUE_BYTES``): ``enqueue`` waits for
room, so a runner that sends rpc frames faster than they are answered (or
never reads its answers) stops being read, rather than growing the
service's memory; frames are never dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from .bounded import ByteQueue, frame_bytes
from .channel import Rpc, RpcError, RpcResult
from .errors import SandboxError
from .sandbox.base import Sandbox
from .transcripts import RpcFailure, TranscriptSink

RPC_CHUNK_ENTRIES = 500  # transcript entries per rpc_result frame
# Bytes of rpc frames waiting for their answer. A store.append is at most a
# few entries (eager flush), so this is hundreds of frames; one frame larger
# than this (up to the 32 MiB line cap) still passes, alone.
RELAY_QUEUE_BYTES = 8 * 1024 * 1024
# Bytes of appends acknowledged while the database is down (held in the
# sink until it returns). Past this the relay answers nothing more until the
# flusher catches up: the runner's store calls wait, then its channel.
UNSAVED_BYTES = 16 * 1024 * 1024


class RpcRelay:
    def __init__(
        self,
        sink: TranscriptSink,
        log: structlog.typing.FilteringBoundLogger,
        on_degraded: Callable[[], None],
        on_durable: Callable[[], Awaitable[None]],
        queue_bytes: int = RELAY_QUEUE_BYTES,
        unsaved_bytes: int = UNSAVED_BYTES,
    ) -> None:
        self.sink = sink
        self.log = log
        self._on_degraded = on_degraded
        self._on_durable = on_durable
        self._queue: ByteQueue[tuple[Sandbox, Rpc, int]] = ByteQueue(queue_bytes)
        self._unsaved_limit = unsaved_bytes
        self._unsaved = 0  # bytes of appends acknowledged since the sink was last durable
        self._caught_up = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self.degraded = False

    async def enqueue(self, sandbox: Sandbox, frame: Rpc) -> None:
        """Answer ``frame`` later, after every frame queued before it; waits
        while the queue is full (the caller stops reading the sandbox)."""
        if self._worker is None:
            self._worker = asyncio.create_task(self._work())
        size = frame_bytes(frame.params, unmeasurable=self._queue.budget.limit)
        await self._queue.put((sandbox, frame, size), size)

    @property
    def queued_bytes(self) -> int:
        return self._queue.bytes

    async def drain(self, timeout_s: float) -> None:
        """Let queued frames (a runner's last flush) be answered, bounded."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout_s)
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None

    async def _work(self) -> None:
        while True:
            sandbox, frame, size = await self._queue.get()
            try:
                while self._unsaved > self._unsaved_limit and not self.sink.durable:
                    self._caught_up.clear()
                    await self._caught_up.wait()  # set by the flusher
                await self.answer(sandbox, frame, size)
            except SandboxError:
                pass  # the sandbox is gone; the session's pump notices
            finally:
                self._queue.task_done()

    async def answer(self, sandbox: Sandbox, frame: Rpc, size: int = 0) -> None:
        """Answer one store call (parsed and typed by ``channel``; ``size``
        its bytes, counted while the database is down); raises only
        ``SandboxError`` (the sandbox is gone)."""
        rpc_id = frame.id
        self.log.debug("rpc_received", method=frame.method)
        try:
            result = await self.sink.handle(frame.method, frame.params)
        except RpcFailure as exc:
            await sandbox.send(RpcError(rpc_id, str(exc)).wire())
            return
        except Exception:  # a bug here must not end the session or leave the runner waiting
            self.log.exception("rpc_failed", method=frame.method)
            await sandbox.send(RpcError(rpc_id, "internal error").wire())
            return
        self._unsaved = 0 if self.sink.durable else self._unsaved + size
        if not self.sink.durable and not self.degraded:
            self.degraded = True
            self._on_degraded()
            self.start_flusher()
        if isinstance(result, list) and len(result) > RPC_CHUNK_ENTRIES:
            for n in range(0, len(result), RPC_CHUNK_ENTRIES):
                chunk = result[n : n + RPC_CHUNK_ENTRIES]
                more = n + RPC_CHUNK_ENTRIES < len(result)
                await sandbox.send(RpcResult(rpc_id, chunk, more).wire())
            return
        await sandbox.send(RpcResult(rpc_id, result).wire())

    def start_flusher(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_until_durable())

    async def _flush_until_durable(self) -> None:
        delay = 0.2
        while not await self.sink.flush():
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        self.log.info("transcript_caught_up")
        self._unsaved = 0
        self._caught_up.set()
        self.degraded = False
        await self._on_durable()

    def cancel(self) -> None:
        for task in (self._flusher, self._worker):
            if task is not None:
                task.cancel()
