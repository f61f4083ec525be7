"""Warm sandboxes: started ahead of demand so a new session skips the slow
part of a cold start (a fresh Python importing claude-agent-sdk, ~1 s).

A warm sandbox has its runner loaded (``loaded`` frame sent) and waits for
``start``; it belongs to no session yet. Its workspace and model-proxy socket
are keyed by its own sandbox id, so handing it to a session changes nothing
on disk. Sessions fall back to a cold start when the pool is empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass
from pathlib import Path

import structlog

from . import channel
from .channel import ChannelViolation, Garbage, Reason, RunnerChannel, RunnerError, RunnerFrame
from .egress import ModelProxy
from .errors import Code, SandboxError
from .metrics import Metrics
from .sandbox.base import Sandbox, SandboxBackend, SandboxSpec
from .workspaces import remove_workspace

log = structlog.get_logger(__name__)


@dataclass
class Loaded:
    """A started sandbox whose runner has loaded and awaits ``start``."""

    sandbox: Sandbox
    sandbox_id: str
    workspace: Path


async def start_loaded(
    backend: SandboxBackend,
    proxy: ModelProxy,
    workspaces: Path,
    timeout_s: float,
    metrics: Metrics,
    session_id: str = "",
) -> Loaded:
    """Start one sandbox and wait (bounded) for its runner's ``loaded`` frame."""
    sandbox_id = uuid.uuid4().hex[:12]
    workspace = workspaces / sandbox_id
    socket = await proxy.open(sandbox_id)
    tunnel = await proxy.tunnel.open(sandbox_id) if proxy.tunnel is not None else None
    spec = SandboxSpec(
        session_id=session_id, sandbox_id=sandbox_id, workspace=workspace, model_socket=socket, tunnel_socket=tunnel
    )
    try:
        sandbox = await backend.start(spec)
    except BaseException:
        await proxy.close_sandbox(sandbox_id)
        raise
    metrics.sandbox_time.started(sandbox_id, backend.name)
    loaded = Loaded(sandbox, sandbox_id, workspace)
    try:
        first = await asyncio.wait_for(_first_frame(sandbox), timeout_s)
        if first is None:
            raise SandboxError("sandbox did not start: the runner exited while loading", code=Code.SANDBOX_START_FAILED)
        if isinstance(first, RunnerError):
            raise SandboxError(f"sandbox did not start: {first.message[:500]}", code=Code.SANDBOX_START_FAILED)
        if isinstance(first, channel.Loaded) and first.version != channel.CHANNEL_VERSION:
            raise SandboxError(
                f"sandbox did not start: its runner speaks channel version {first.version}, this service "
                f"speaks {channel.CHANNEL_VERSION}; the sandbox image does not match the service (make images)",
                code=Code.SANDBOX_START_FAILED,
            )
        RunnerChannel().received(first)
        if not isinstance(first, channel.Loaded):
            raise ChannelViolation(Reason.OUT_OF_ORDER, "a frame before loaded")
    except ChannelViolation as exc:
        await discard(loaded, proxy, metrics)
        raise SandboxError(exc.message, code=Code.SANDBOX_CRASHED) from None
    except TimeoutError:
        await discard(loaded, proxy, metrics)
        raise SandboxError(
            f"sandbox did not start: the runner did not load within {timeout_s:g}s", code=Code.SANDBOX_START_FAILED
        ) from None
    except BaseException:  # SandboxError above, a cancelled start (the pool closing), a bug: the
        # sandbox, its socket and its workspace (a tmpfs mount) must not outlive us
        await asyncio.shield(discard(loaded, proxy, metrics))
        raise
    return loaded


async def _first_frame(sandbox: Sandbox) -> RunnerFrame | None:
    """The runner's first frame, past stray prints."""
    while isinstance(frame := await sandbox.recv(), Garbage):
        pass
    return frame


async def discard(loaded: Loaded, proxy: ModelProxy, metrics: Metrics) -> None:
    await loaded.sandbox.stop(2.0)
    metrics.sandbox_time.stopped(loaded.sandbox_id)
    await proxy.close_sandbox(loaded.sandbox_id)
    await asyncio.to_thread(remove_workspace, loaded.workspace)


class WarmPool:
    """Keeps up to ``size`` loaded sandboxes ready."""

    def __init__(
        self,
        backend: SandboxBackend,
        proxy: ModelProxy,
        workspaces: Path,
        size: int,
        timeout_s: float,
        metrics: Metrics,
    ) -> None:
        self.metrics = metrics
        self.backend = backend
        self.proxy = proxy
        self.workspaces = workspaces
        self.size = size
        self.timeout_s = timeout_s
        self.ready: list[Loaded] = []
        self._filler: asyncio.Task[None] | None = None
        self._closed = False
        self._discards: set[asyncio.Task[None]] = set()

    def refill(self) -> None:
        if self.size > 0 and not self._closed and (self._filler is None or self._filler.done()):
            self._filler = asyncio.create_task(self._fill())

    async def _fill(self) -> None:
        failures = 0
        while len(self.ready) < self.size and not self._closed:
            try:
                loaded = await start_loaded(self.backend, self.proxy, self.workspaces, self.timeout_s, self.metrics)
            except SandboxError as exc:
                failures += 1
                log.warning("warm_sandbox_failed", error=exc.message)
                if failures >= 3:  # do not spin on a broken host; sessions start cold
                    return
                continue
            if self._closed:
                await discard(loaded, self.proxy, self.metrics)
                return
            self.ready.append(loaded)

    def take(self) -> Loaded | None:
        """A loaded sandbox, or None when the pool is empty. Refills behind."""
        while self.ready:
            loaded = self.ready.pop(0)
            if loaded.sandbox.returncode is None:
                self.refill()
                return loaded
            task = asyncio.create_task(discard(loaded, self.proxy, self.metrics))
            self._discards.add(task)
            task.add_done_callback(self._discards.discard)
        self.refill()
        return None

    async def close(self) -> None:
        self._closed = True
        if self._filler is not None:
            self._filler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._filler
        ready, self.ready = self.ready, []
        await asyncio.gather(*(discard(w, self.proxy, self.metrics) for w in ready), return_exceptions=True)
