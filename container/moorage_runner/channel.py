"""The runner's end of the sandbox channel: newline-delimited JSON on stdio.

The service writes commands to the runner's stdin and reads frames from its
stdout; stderr is free-form log text. Every frame is one JSON object with a
``kind``. The runner claims the real stdout for the channel and points fd 1
at stderr, so nothing the SDK, the CLI or a library prints can corrupt it.

Service -> runner: ``restore`` (workspace chunks, before ``start``), ``prestart``
(a warm pool's: start the CLI now, with the fields of the ``start`` to come), ``start``
(first, once), ``user``, ``interrupt``, ``snapshot`` (send the workspace back;
backends that cannot read it from outside), ``rpc_result``/``rpc_error``,
``permission_response`` / ``custom_tool_result`` (a client's answer),
``put_file`` (a session resource's bytes, before ``start`` or while running),
``collect_outputs`` (after each turn: report /mnt/session/outputs; files.py).
Runner -> service: ``loaded`` (imports done, waiting for ``start``; carries
the channel ``version``), ``restored``, ``prestarted`` (the client is connected for the ``prestart``),
``ready`` (the SDK client is connected),
``sdk`` (one SDK message, the CLI's own JSON), ``rpc`` (a SessionStore call),
``error`` (the runner cannot go on; it exits next), ``snapshot`` (tar.gz
chunks of the workspace), ``permission_request`` (an ``always_ask`` tool
waits for a client), ``custom_tool_use`` (a client-executed tool was called), ``file_put``
(a ``put_file``'s last chunk is in place, or not), ``output`` / ``outputs_done`` (the answer to
``collect_outputs``). The service parses what we send strictly
(service/moorage/channel.py) and ends the session on any frame it cannot
accept: the constants below are its, copied (this package depends on
nothing of the service's).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
from typing import Any

# -- shared with service/moorage/channel.py (kept equal by a test) --
# 2: approvals and custom tools (an older runner would ignore ``agent``);
# 3: files in (``put_file``) and out (``collect_outputs``) of /mnt/session;
# 4: ``prestart`` / ``prestarted`` (a warm pool starts the CLI before a session claims it).
CHANNEL_VERSION = 4
# A frame carries one SDK message; a Read of a large file can be big.
MAX_FRAME_BYTES = 32 * 1024 * 1024
# Objects and arrays inside one another, counting the frame itself. The real
# runner's deepest frame (an rpc append of a tool call's input) is ~10 plus
# the tool input's own depth; Python's parser fails near 1000.
MAX_DEPTH = 100
RUNNER_KINDS = frozenset(
    {
        "loaded",
        "prestarted",
        "ready",
        "sdk",
        "rpc",
        "error",
        "restored",
        "snapshot",
        "permission_request",
        "custom_tool_use",
        "file_put",
        "output",
        "outputs_done",
    }
)
SERVICE_KINDS = frozenset(
    {
        "prestart",
        "start",
        "user",
        "interrupt",
        "restore",
        "snapshot",
        "rpc_result",
        "rpc_error",
        "permission_response",
        "custom_tool_result",
        "put_file",
        "collect_outputs",
    }
)
# Raw bytes per ``put_file`` / ``output`` frame (base64 adds a third).
FILE_CHUNK_BYTES = 512 * 1024
SESSION_DIR = "/mnt/session"  # a sized tmpfs in every sandbox: uploads/ and outputs/
RPC_METHODS = frozenset({"store.append", "store.load", "store.list_subkeys"})
# -- end of the shared constants --


class ChannelError(ValueError):
    """A service frame this runner cannot read (a version mismatch or a bug)."""


def _constant(token: str) -> Any:
    raise ChannelError("NaN and Infinity are not JSON")


def _finite(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):
        raise ChannelError("a number does not fit a float")
    return value


def _too_deep(value: Any) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def parse_service_line(line: bytes) -> dict[str, Any]:
    """One frame from the service, strictly: bounded, strict JSON, an object
    with a known ``kind`` (and ``start``/``prestart`` of this channel version)."""
    if len(line) > MAX_FRAME_BYTES:
        raise ChannelError("frame too large")
    try:
        frame = json.loads(line.decode("utf-8"), parse_constant=_constant, parse_float=_finite)
    except RecursionError:
        raise ChannelError("frame nested too deeply") from None
    except ValueError as exc:
        raise ChannelError(f"frame is not JSON: {type(exc).__name__}") from None
    if not isinstance(frame, dict) or _too_deep(frame):
        raise ChannelError("channel frame is not an object, or nested too deeply")
    if frame.get("kind") not in SERVICE_KINDS:
        raise ChannelError("unknown channel frame kind")
    if frame["kind"] in ("start", "prestart") and frame.get("version", CHANNEL_VERSION) != CHANNEL_VERSION:
        raise ChannelError("the service speaks another channel version")
    return frame


def start_agent(start: dict[str, Any]) -> dict[str, Any] | None:
    """The ``agent`` of a ``start`` frame (the session's agent version; docs/protocol.md, "The
    agent in the start frame"), or None for the operator's default agent — which may still carry
    a tool policy (``ask_tools``/``custom_tools``, no ``id``) for the approvals, but no spec."""
    agent = start.get("agent")
    if agent is None or (isinstance(agent, dict) and "id" not in agent):
        return None
    if not isinstance(agent, dict) or not isinstance(agent.get("tools", []), list):
        raise ChannelError("start.agent is not an agent")
    return agent


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
    return parse_service_line(line)
