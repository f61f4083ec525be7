"""The channel to one sandbox pod: the runner's stdin/stdout through the API
server's attach websocket (``v4.channel.k8s.io``: each binary message starts
with a channel byte, 0 stdin, 1 stdout, 2 stderr, 3 error).

A pod's workspace is an emptyDir on its node, not on the service's
filesystem, and it is deleted with the pod. So before stopping a runner that
was started, the sandbox asks it for a snapshot (``snapshot`` frames, see
container/moorage_runner/snapshot.py) and unpacks it into the session's host
workspace directory, from where the session's suspend saves it to the
database as for every backend. Only directories and regular files are
unpacked (never links or devices, never outside the directory), so an
archive from a sandbox cannot write anywhere else on the service's host. A
runner that died on its own (OOM, crash) cannot answer: its workspace since
the last suspend is lost with the pod.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog

from ..channel import Reason, RunnerFrame, Snapshot, Violation
from ..errors import SandboxError
from .base import SandboxSpec, decode_frame, encode_frame
from .kube_objects import oom_killed, terminated

if TYPE_CHECKING:
    from .kubernetes import KubernetesBackend

log = structlog.get_logger(__name__)

STDIN, STDOUT, STDERR, ERROR = 0, 1, 2, 3
MAX_FRAME_BYTES = 32 * 1024 * 1024
SETTLE_TIMEOUT_S = 3.0  # the kubelet reporting a finished container
SNAPSHOT_TIMEOUT_S = 30.0  # the runner packing and sending its workspace
POLL_S = (0.1, 0.2, 0.5, 1.0)
MAX_RESTORE_ENTRIES = 100_000  # archive members unpacked onto the host, whatever their size


def snapshot_limit(workspace_bytes: int) -> int:
    """The most archive bytes a snapshot may bring: the workspace cap plus tar and gzip overhead
    (headers, padding, incompressible data). The base64 of the frames is decoded as it arrives."""
    return workspace_bytes + workspace_bytes // 8 + 1024 * 1024


def delays() -> Iterator[float]:
    """Poll intervals: quick at first, then once a second."""
    yield from POLL_S
    while True:
        yield POLL_S[-1]


def unpack_files(data: bytes, dest: Path, max_bytes: int, max_entries: int = MAX_RESTORE_ENTRIES) -> int:
    """Unpack directories and regular files from a tar.gz into the fresh
    directory ``dest``; anything else, and any name that is absolute or has
    ``..``, is skipped. Stops past ``max_bytes`` of file content or after
    ``max_entries`` archive members (skipped ones count: reading them costs
    too). Returns the number of files written."""
    dest.mkdir(parents=True, exist_ok=True)
    written = total = 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for seen, member in enumerate(tar, start=1):
            if seen > max_entries:
                log.warning("workspace_entries_capped", max_entries=max_entries)
                break
            # Read once, in order: drop tarfile's index of every member read so far (it only grows).
            tar.members.clear()  # type: ignore[attr-defined]
            parts = member.name.split("/")
            if member.name.startswith("/") or ".." in parts or not (member.isdir() or member.isreg()):
                continue
            target = dest.joinpath(*parts)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            total += member.size
            source = tar.extractfile(member)
            if total > max_bytes or source is None:
                break
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, member.mode & 0o755)
            with os.fdopen(fd, "wb") as out:
                while chunk := source.read(1024 * 1024):
                    out.write(chunk)
            written += 1
    return written


class KubernetesSandbox:
    """One pod; its attach websocket is the runner channel."""

    def __init__(
        self, backend: KubernetesBackend, spec: SandboxSpec, name: str, ws: aiohttp.ClientWebSocketResponse
    ) -> None:
        self._backend = backend
        self._spec = spec
        self.name = name
        self._ws = ws
        self._buffer = b""
        self._ended = False
        self._exit: int | None = None
        self._oom = False
        self._released = False
        self._started = False  # a start frame went out: the runner can answer a snapshot
        self._reading = False
        self._lock = asyncio.Lock()  # one reader of the websocket at a time
        self._snapshot = bytearray()
        self._snapshot_done = asyncio.Event()
        self._snapshot_ok = False
        self._snapshot_asked = False  # snapshot frames are taken only while stop() waits for one

    @property
    def handle(self) -> dict[str, Any]:
        return {
            "backend": "kubernetes",
            "namespace": self._backend.config.namespace,
            "pod": self.name,
            "sandbox_id": self._spec.sandbox_id,
        }

    @property
    def returncode(self) -> int | None:
        return self._exit

    def limit_events(self) -> dict[str, int]:
        """OOM kills as the kubelet reports them; Kubernetes has no per-pod
        counter of refused forks (the node's podPidsLimit applies)."""
        return {"oom_kills": int(self._oom), "pids_refusals": 0}

    def memory_bytes(self) -> int | None:
        """Not known here (the pod's cgroup is on another node): the warm pool uses its estimate."""
        return None

    async def send(self, frame: dict[str, Any]) -> None:
        if frame.get("kind") in ("start", "prestart"):
            # A pod cannot reach the service's unix socket: it gets a URL.
            frame = {k: v for k, v in frame.items() if k != "model_proxy"}
            frame["model_url"] = self._backend.proxy_url(self._spec.sandbox_id)
            self._started = True
        if self._ws.closed or self._ended:
            raise SandboxError("sandbox input is closed")
        try:
            await self._ws.send_bytes(bytes([STDIN]) + encode_frame(frame))
        except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
            raise SandboxError("sandbox input is closed") from exc

    async def recv(self) -> RunnerFrame | None:
        self._reading = True
        try:
            while (frame := await self._next()) is not None:
                if not isinstance(frame, Snapshot):
                    return frame
                self._on_snapshot(frame)  # asked for by stop(), not the caller's
            return None
        finally:
            self._reading = False

    async def _next(self) -> RunnerFrame | None:
        while True:
            line, sep, rest = self._buffer.partition(b"\n")
            if sep:
                self._buffer = rest
                return decode_frame(line)
            if self._ended:
                if self._buffer:
                    line, self._buffer = self._buffer, b""
                    return decode_frame(line)
                return None
            if len(self._buffer) > MAX_FRAME_BYTES:
                # An over-long line: the runner broke the channel contract.
                self._buffer = b""
                await self.kill()
                return Violation(Reason.TOO_LARGE)
            await self._read_message()

    async def _read_message(self) -> None:
        async with self._lock:
            if self._ended:
                return
            try:
                message = await self._ws.receive()
            except (ConnectionError, aiohttp.ClientError):
                message = None
            if message is None or message.type not in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
                self._ended = True
                await self._settle()
                return
        data = message.data if isinstance(message.data, bytes) else str(message.data).encode()
        if not data:
            return
        channel, payload = data[0], data[1:]
        if channel == STDOUT:
            self._buffer += payload
        elif channel == STDERR:
            log.debug("sandbox_stderr", line=payload[:2000].decode(errors="replace").rstrip(), pod=self.name)
        elif channel == ERROR and payload:
            # A Status object when the stream ends badly (e.g. the container is gone).
            log.info("sandbox_attach_status", pod=self.name, status=payload[:500].decode(errors="replace"))

    async def _settle(self, timeout_s: float = SETTLE_TIMEOUT_S) -> None:
        """Read the runner's exit code (and whether it was OOM-killed) once
        the kubelet reports it; bounded, and quiet when the pod is gone."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        for delay in delays():
            pod = await self._backend.read_pod(self.name)
            if pod is None:
                return
            ended = terminated(pod)
            if ended is not None:
                self._exit = ended[0]
                self._oom = oom_killed(pod)
                return
            if loop.time() + delay > deadline:
                return
            await asyncio.sleep(delay)

    def _take_snapshot_lines(self) -> None:
        """Route buffered snapshot frames; leave every other frame, in order,
        for the session's reader."""
        *lines, tail = self._buffer.split(b"\n")
        kept = []
        for line in lines:
            frame = decode_frame(line) if b'"snapshot"' in line else None
            if isinstance(frame, Snapshot):
                self._on_snapshot(frame)
            else:
                kept.append(line + b"\n")
        self._buffer = b"".join(kept) + tail

    def _on_snapshot(self, frame: Snapshot) -> None:
        """Take one snapshot frame: only while a snapshot was asked for and not yet complete
        (anything else is dropped unread), and only up to ``snapshot_limit`` bytes."""
        if not self._snapshot_asked or self._snapshot_done.is_set():
            log.debug("sandbox_snapshot_unasked", pod=self.name)
            return
        if not frame.ok:
            log.warning("workspace_not_fetched", pod=self.name, error=frame.message[:300])
            self._snapshot_failed()
            return
        limit = snapshot_limit(self._backend.config.workspace_bytes)
        # base64 decodes to 3/4 of its length: refuse before decoding what cannot fit.
        if len(self._snapshot) + len(frame.data) * 3 // 4 > limit:
            log.warning("workspace_not_fetched", pod=self.name, error=f"snapshot over {limit} bytes")
            self._snapshot_failed()
            return
        try:
            self._snapshot += base64.b64decode(frame.data, validate=True)
        except binascii.Error:
            log.warning("workspace_not_fetched", pod=self.name, error="snapshot frame is not base64")
            self._snapshot_failed()
            return
        if frame.last:
            self._snapshot_ok = True
            self._snapshot_done.set()

    def _snapshot_failed(self) -> None:
        self._snapshot = bytearray()
        self._snapshot_done.set()

    async def _fetch_workspace(self) -> None:
        """Bring the pod's /workspace into the session's host directory (see
        the module docstring); bounded, and only logged when it fails."""
        max_bytes = self._backend.config.workspace_bytes
        try:
            self._snapshot_asked = True
            await self.send({"kind": "snapshot", "max_bytes": max_bytes})
            async with asyncio.timeout(SNAPSHOT_TIMEOUT_S):
                while not self._snapshot_done.is_set() and not self._ended:
                    if self._reading or self._lock.locked():  # the session's reader routes them to us
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._snapshot_done.wait(), 0.2)
                    else:
                        await self._read_message()
                        self._take_snapshot_lines()
        except (TimeoutError, SandboxError) as exc:
            log.warning("workspace_not_fetched", pod=self.name, error=type(exc).__name__)
            return
        if self._snapshot_ok:
            data, self._snapshot = bytes(self._snapshot), bytearray()
            try:
                files = await asyncio.to_thread(unpack_files, data, self._spec.workspace, max_bytes)
            except (OSError, tarfile.TarError, EOFError) as exc:
                log.warning("workspace_not_fetched", pod=self.name, error=str(exc)[:300])
                return
            log.info("workspace_fetched", pod=self.name, files=files, bytes=len(data))

    async def _close_channel(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._ws.close(), 5.0)

    async def stop(self, grace_s: float) -> int | None:
        """Close the attach (the runner reads end of input) -> wait ``grace_s``
        for it to exit -> delete the pod (the kubelet's SIGTERM, then SIGKILL
        after the pod's grace period) -> wait until the pod is gone; bounded."""
        if self._released:
            return self._exit
        if self._started and not self._ended and self._backend.config.workspace_bytes > 0:
            await self._fetch_workspace()
        await self._close_channel()
        if self._exit is None:
            await self._settle(grace_s)
        await self._backend.delete_pod(self.name, self._backend.config.termination_grace_s)
        await self._release()
        return self._exit

    async def kill(self) -> None:
        await self._close_channel()
        await self._backend.delete_pod(self.name, 0)
        await self._release()

    async def _release(self) -> None:
        if self._released:
            return
        self._released = True
        self._ended = True
        gone = await self._backend.wait_gone(self.name)
        if not gone:
            log.error("sandbox_pod_left", pod=self.name, detail="still present after delete; forcing")
            await self._backend.delete_pod(self.name, 0)
        self._backend.release(self._spec.sandbox_id)
