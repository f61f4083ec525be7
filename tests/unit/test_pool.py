"""The warm pool's sandbox start, with a stand-in backend and proxy."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any, cast

from moorage.egress import ModelProxy
from moorage.metrics import Metrics
from moorage.pool import start_loaded
from moorage.sandbox.base import SandboxBackend, SandboxSpec


class NeverLoads:
    """A sandbox whose runner never says ``loaded``."""

    def __init__(self) -> None:
        self.stopped = False

    async def recv(self) -> dict[str, Any] | None:
        await asyncio.Event().wait()
        return None

    async def stop(self, grace_s: float) -> int | None:
        self.stopped = True
        return 0


class Backend:
    name = "local"

    def __init__(self) -> None:
        self.sandbox = NeverLoads()
        self.started = asyncio.Event()
        self.workspace: Path | None = None

    async def start(self, spec: SandboxSpec) -> NeverLoads:
        spec.workspace.mkdir(parents=True)
        self.workspace = spec.workspace
        self.started.set()
        return self.sandbox


class Proxy:
    tunnel = None

    def __init__(self) -> None:
        self.closed: list[str] = []

    async def open(self, sandbox_id: str) -> Path:
        return Path("/nonexistent.sock")

    async def close_sandbox(self, sandbox_id: str) -> None:
        self.closed.append(sandbox_id)


async def test_a_sandbox_cancelled_while_loading_is_discarded_with_its_workspace(tmp_path: Path) -> None:
    """The pool closing (a clean stop) while a warm sandbox loads: nothing of it stays behind."""
    backend, proxy = Backend(), Proxy()
    starting = asyncio.create_task(
        start_loaded(cast(SandboxBackend, backend), cast(ModelProxy, proxy), tmp_path, 60.0, Metrics(()))
    )
    await asyncio.wait_for(backend.started.wait(), 10)
    assert backend.workspace is not None
    starting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await starting
    assert backend.sandbox.stopped
    assert len(proxy.closed) == 1
    assert not await asyncio.to_thread(backend.workspace.exists), "the workspace went with the sandbox"
