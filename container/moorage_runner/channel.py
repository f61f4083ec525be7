"""The runner's end of the sandbox channel: newline-delimited JSON on stdio.

The service writes commands to the runner's stdin and reads frames from its
stdout; stderr is free-form log text. Every frame is one JSON object with a
``kind``. The runner claims the real stdout for the channel and points fd 1
at stderr, so nothing the SDK, the CLI or a library prints can corrupt it.

Service -> runner: ``start`` (first, once), ``user``, ``interrupt``,
``snapshot`` (send the workspace back; backends that cannot read it from outside).
Runner -> service: ``loaded`` (imports done, waiting for ``start``),
``ready`` (the SDK client is connected), ``sdk`` (one SDK message, the CLI's own JSON),
``error`` (the runner cannot go on; it exits next), ``snapshot`` (tar.gz chunks of the workspace).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

# A frame carries one SDK message; a Read of a large file can be big.
MAX_FRAME_BYTES = 32 * 1024 * 1024


class ChannelOut:
    """Writes frames to the service; safe to call from many tasks. Writes go
    through an asyncio pipe transport (no thread hop per frame) and wait for
    the pipe to drain, so a slow reader pushes back on the runner."""

    def __init__(self, fd: int) -> None:
        self._file = os.fdopen(fd, "wb", buffering=0)
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def claim_stdout(cls) -> ChannelOut:
        """Take fd 1 for the channel and send anything else printed to stderr."""
        channel_fd = os.dup(1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        return cls(channel_fd)

    async def _open(self) -> asyncio.StreamWriter:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.connect_write_pipe(
            lambda: asyncio.streams.FlowControlMixin(loop=loop), self._file
        )
        return asyncio.StreamWriter(transport, protocol, None, loop)

    async def send(self, frame: dict[str, Any]) -> None:
        data = json.dumps(frame, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        async with self._lock:
            if self._writer is None:
                self._writer = await self._open()
            self._writer.write(data)
            await self._writer.drain()


async def open_stdin() -> asyncio.StreamReader:
    """An asyncio reader over fd 0."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_FRAME_BYTES)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(0, "rb", buffering=0))
    return reader


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next command from the service, or None when the channel closed."""
    line = await reader.readline()
    if not line:
        return None
    frame = json.loads(line)
    if not isinstance(frame, dict):
        raise ValueError("channel frame is not an object")
    return frame
