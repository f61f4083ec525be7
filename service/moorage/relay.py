"""The session's transcript half: answers the runner's SessionStore ``rpc``
frames through a ``TranscriptSink`` and keeps retrying when the database is
down.

Frames are answered by one worker, in order, so a database write never delays
the SDK messages streaming past it (the SDK yields a turn's result only after
its store calls were answered). While the sink holds unsaved entries the relay
is *degraded*: a flusher retries with backoff and calls ``on_durable`` once
everything is written, which is when the session releases held results.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from .channel import Rpc, RpcError, RpcResult
from .errors import SandboxError
from .sandbox.base import Sandbox
from .transcripts import RpcFailure, TranscriptSink

RPC_CHUNK_ENTRIES = 500  # transcript entries per rpc_result frame


class RpcRelay:
    def __init__(
        self,
        sink: TranscriptSink,
        log: structlog.typing.FilteringBoundLogger,
        on_degraded: Callable[[], None],
        on_durable: Callable[[], Awaitable[None]],
    ) -> None:
        self.sink = sink
        self.log = log
        self._on_degraded = on_degraded
        self._on_durable = on_durable
        self._queue: asyncio.Queue[tuple[Sandbox, Rpc]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self.degraded = False

    def enqueue(self, sandbox: Sandbox, frame: Rpc) -> None:
        """Answer ``frame`` later, after every frame queued before it."""
        if self._worker is None:
            self._worker = asyncio.create_task(self._work())
        self._queue.put_nowait((sandbox, frame))

    async def drain(self, timeout_s: float) -> None:
        """Let queued frames (a runner's last flush) be answered, bounded."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout_s)
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None

    async def _work(self) -> None:
        while True:
            sandbox, frame = await self._queue.get()
            try:
                await self.answer(sandbox, frame)
            except SandboxError:
                pass  # the sandbox is gone; the session's pump notices
            finally:
                self._queue.task_done()

    async def answer(self, sandbox: Sandbox, frame: Rpc) -> None:
        """Answer one store call (parsed and typed by ``channel``); raises
        only ``SandboxError`` (the sandbox is gone)."""
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
        self.degraded = False
        await self._on_durable()

    def cancel(self) -> None:
        for task in (self._flusher, self._worker):
            if task is not None:
                task.cancel()
