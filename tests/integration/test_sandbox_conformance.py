"""The sandbox contract (``moorage.sandbox.base``), checked on every backend
this machine can run: local (bubblewrap) and docker (a real engine; skipped,
with the reason, where none runs). Kubernetes cannot run here; its backend is
checked against a recorded API contract instead."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from moorage.channel import Loaded, Prestarted, Ready, Sdk
from moorage.egress import ModelProxy
from moorage.sandbox.base import Sandbox, SandboxBackend, SandboxSpec
from moorage.sandbox.cgroups import Limits
from moorage.sandbox.docker import DockerBackend
from moorage.sandbox.local import LocalBackend
from moorage.testing.scripted_model import ScriptedModelServer
from support import DOCKER_URL, docker_sandbox_image, processes_of_uid, scaled, wait_until


@pytest.fixture(params=["local", "docker"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SandboxBackend]:
    b: LocalBackend | DockerBackend
    if request.param == "local":
        b = LocalBackend(tmp_path, 210_000, 50)
    else:
        image, why_not = docker_sandbox_image()
        if image is None:
            pytest.skip(why_not)
        b = DockerBackend(DOCKER_URL, image, Limits(1024**3, 256, 1.0), f"test-{uuid.uuid4().hex[:8]}")
    await b.check()
    yield b
    await b.close()


def leftovers(handle: dict[str, Any]) -> list[int]:
    """Processes of a sandbox still running on this host, by its handle."""
    if handle["backend"] == "local":
        return processes_of_uid(handle["uid"])
    # A container's processes live in its pid namespace, which ends with its init.
    return [handle["pid"]] if os.path.exists(f"/proc/{handle['pid']}/status") and not _zombie(handle["pid"]) else []


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
    except (OSError, IndexError):
        return True


@pytest.fixture
async def proxy(model: ScriptedModelServer, tmp_path: Path) -> AsyncIterator[ModelProxy]:
    p = ModelProxy(tmp_path / "egress", model.url, "sk-real")
    await p.start()
    yield p
    await p.close()


async def start(backend: SandboxBackend, proxy: ModelProxy, tmp_path: Path) -> tuple[Sandbox, SandboxSpec]:
    sid = uuid.uuid4().hex[:12]
    spec = SandboxSpec(str(uuid.uuid4()), sid, tmp_path / "workspaces" / sid, await proxy.open(sid))
    sandbox = await backend.start(spec)
    assert await asyncio.wait_for(sandbox.recv(), scaled(60)) == Loaded()
    await sandbox.send({"kind": "start", "options": {"max_turns": 2}, "model_proxy": "unix:/run/moorage/model.sock"})
    ready = await asyncio.wait_for(sandbox.recv(), scaled(60))
    assert ready == Ready()
    return sandbox, spec


async def until_result(sandbox: Sandbox) -> list[Sdk]:
    frames = []
    while True:
        frame = await asyncio.wait_for(sandbox.recv(), scaled(30))
        assert frame is not None, "the runner ended before the result"
        if isinstance(frame, Sdk):
            frames.append(frame)
            if frame.type == "result":
                return frames


async def test_runner_answers_a_turn_and_stop_leaves_no_process(
    backend: SandboxBackend, proxy: ModelProxy, tmp_path: Path
) -> None:
    """A started sandbox runs a turn; a staged stop exits cleanly and leaves nothing behind."""
    sandbox, spec = await start(backend, proxy, tmp_path)
    await sandbox.send(
        {"kind": "user", "message": {"type": "user", "message": {"role": "user", "content": "bash echo ok > f; cat f"}}}
    )
    frames = await until_result(sandbox)
    assert frames[-1].message["subtype"] == "success"
    assert (spec.workspace / "f").read_text() == "ok\n"
    handle = sandbox.handle
    assert leftovers(handle)
    code = await sandbox.stop(scaled(10))
    assert code == 0, "closing the runner's input should end it cleanly"
    assert await sandbox.recv() is None
    assert not leftovers(handle)
    assert await sandbox.stop(1) == 0  # idempotent


async def test_killed_sandbox_reports_end_of_stream(backend: SandboxBackend, proxy: ModelProxy, tmp_path: Path) -> None:
    """A sandbox killed from outside ends its channel; stop is still safe and bounded."""
    sandbox, _ = await start(backend, proxy, tmp_path)
    handle = sandbox.handle
    os.kill(handle["pid"], signal.SIGKILL)
    assert await asyncio.wait_for(sandbox.recv(), scaled(10)) is None
    await sandbox.stop(1)
    assert sandbox.returncode is not None
    wait_until(lambda: not leftovers(handle), 10, "the killed sandbox's processes to go")


async def test_handle_is_plain_json(backend: SandboxBackend, proxy: ModelProxy, tmp_path: Path) -> None:
    """The handle names the backend and survives a JSON round trip (it will be persisted)."""
    sandbox, spec = await start(backend, proxy, tmp_path)
    handle = sandbox.handle
    assert json.loads(json.dumps(handle)) == handle
    assert handle["backend"] == backend.name and handle["sandbox_id"] == spec.sandbox_id
    await sandbox.stop(scaled(10))


async def test_a_start_cancelled_before_the_runner_exists_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session closed (or the service draining) while its sandbox is being
    spawned: the workspace mount, the uid and the cgroup go with the start."""
    backend = LocalBackend(tmp_path, 210_000, 50, workspace_bytes=8 * 1024**2)
    await backend.check()
    spawning = asyncio.Event()

    async def never(*args: object, **kwargs: object) -> None:
        spawning.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(asyncio, "create_subprocess_exec", never)
    sid = uuid.uuid4().hex[:12]
    workspace = tmp_path / "workspaces" / sid
    held_before = set(backend.uids.held)
    start = asyncio.create_task(backend.start(SandboxSpec(str(uuid.uuid4()), sid, workspace, tmp_path / "model.sock")))
    await asyncio.wait_for(spawning.wait(), scaled(10))
    assert workspace.is_mount()  # the mount exists: the cancellation below is what must undo it
    start.cancel()
    with pytest.raises(asyncio.CancelledError):
        await start
    assert not workspace.exists() and not workspace.is_symlink()
    assert set(backend.uids.held) == held_before
    if backend.cgroups is not None:
        assert not backend.cgroups.of(sid).dirs
    await backend.close()


async def prestarted(backend: SandboxBackend, proxy: ModelProxy, tmp_path: Path, options: dict[str, Any]) -> Sandbox:
    """A sandbox sent ``prestart`` (a warm pool's started agent) and answered ``prestarted``."""
    sid = uuid.uuid4().hex[:12]
    spec = SandboxSpec("", sid, tmp_path / "workspaces" / sid, await proxy.open(sid))
    sandbox = await backend.start(spec)
    assert await asyncio.wait_for(sandbox.recv(), scaled(60)) == Loaded()
    await sandbox.send({"kind": "prestart", "options": options, "model_proxy": "unix:/run/moorage/model.sock"})
    assert await asyncio.wait_for(sandbox.recv(), scaled(60)) == Prestarted()
    return sandbox


def clis(handle: dict[str, Any]) -> set[int]:
    """The Claude Code CLI processes of a local sandbox."""
    found = set()
    for pid in processes_of_uid(handle["uid"]):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"claude" in f.read():
                    found.add(pid)
        except OSError:
            continue
    return found


async def test_a_started_agent_serves_the_start_it_was_started_for(
    backend: SandboxBackend, proxy: ModelProxy, tmp_path: Path
) -> None:
    """``prestart`` starts the CLI before any session exists; the matching ``start`` is served by
    that same CLI (no second start), under the session id it was started with."""
    session_id = str(uuid.uuid4())
    options = {"session_id": session_id, "max_turns": 2}
    sandbox = await prestarted(backend, proxy, tmp_path, options)
    handle = sandbox.handle
    before = clis(handle) if handle["backend"] == "local" else set()
    assert before or handle["backend"] != "local", "the CLI runs before the start"
    await sandbox.send({"kind": "start", "options": options, "model_proxy": "unix:/run/moorage/model.sock"})
    assert await asyncio.wait_for(sandbox.recv(), scaled(30)) == Ready()
    await sandbox.send({"kind": "user", "message": {"type": "user", "message": {"role": "user", "content": "say hi"}}})
    frames = await until_result(sandbox)
    init = next(f.message for f in frames if f.type == "system" and f.message.get("subtype") == "init")
    assert init["session_id"] == session_id
    if handle["backend"] == "local":
        assert clis(handle) & before, "the prestarted CLI answered the turn"
    await sandbox.stop(scaled(10))
    assert not leftovers(handle)


async def test_a_start_that_differs_from_the_prestart_gets_an_agent_with_its_own_options(
    backend: SandboxBackend, proxy: ModelProxy, tmp_path: Path
) -> None:
    session_id = str(uuid.uuid4())
    sandbox = await prestarted(backend, proxy, tmp_path, {"session_id": session_id, "model": "claude-one"})
    handle = sandbox.handle
    before = clis(handle) if handle["backend"] == "local" else set()
    start = {"session_id": session_id, "model": "claude-two", "max_turns": 2}
    await sandbox.send({"kind": "start", "options": start, "model_proxy": "unix:/run/moorage/model.sock"})
    assert await asyncio.wait_for(sandbox.recv(), scaled(60)) == Ready()
    await sandbox.send({"kind": "user", "message": {"type": "user", "message": {"role": "user", "content": "say hi"}}})
    frames = await until_result(sandbox)
    init = next(f.message for f in frames if f.type == "system" and f.message.get("subtype") == "init")
    assert init["model"] == "claude-two"
    if handle["backend"] == "local":
        assert not clis(handle) & before, "the prestarted CLI was stopped"
    await sandbox.stop(scaled(10))
    assert not leftovers(handle)
