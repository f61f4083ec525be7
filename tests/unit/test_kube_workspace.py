"""Unpacking a workspace fetched from a sandbox pod onto the service's host."""

from __future__ import annotations

import base64
import io
import json
import os
import tarfile
import tracemalloc
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
from moorage.channel import Sdk
from moorage.sandbox.base import SandboxSpec
from moorage.sandbox.kube_sandbox import STDOUT, KubernetesSandbox, unpack_files


def archive(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


def entry(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname = kind, mode, link
    return info


def test_files_and_directories_are_unpacked_with_safe_modes(tmp_path: Path) -> None:
    """Regular files and directories arrive with their content; setuid bits are dropped, exec bits kept."""
    data = archive(
        (entry("src", tarfile.DIRTYPE, 0o755), b""),
        (entry("src/run.sh", mode=0o4755), b"echo hi\n"),
        (entry("notes.txt"), b"n"),
    )
    assert unpack_files(data, tmp_path / "ws", 1024) == 2
    assert (tmp_path / "ws" / "src" / "run.sh").read_text() == "echo hi\n"
    assert (tmp_path / "ws" / "src" / "run.sh").stat().st_mode & 0o7777 == 0o755
    assert (tmp_path / "ws" / "notes.txt").read_text() == "n"


def test_links_devices_and_escaping_names_are_skipped(tmp_path: Path) -> None:
    """Symlinks, hard links, devices, absolute names and '..' never reach the host."""
    outside = tmp_path / "outside"
    data = archive(
        (entry("escape", tarfile.SYMTYPE, link=str(tmp_path)), b""),
        (entry("hard", tarfile.LNKTYPE, link="/etc/passwd"), b""),
        (entry("dev", tarfile.CHRTYPE), b""),
        (entry(str(outside)), b"x"),
        (entry("../outside2"), b"x"),
        (entry("ok"), b"ok"),
    )
    assert unpack_files(data, tmp_path / "ws", 1024) == 1
    assert sorted(p.name for p in (tmp_path / "ws").iterdir()) == ["ok"]
    assert not outside.exists() and not (tmp_path / "outside2").exists()


def test_unpacking_stops_at_the_size_limit(tmp_path: Path) -> None:
    """Past max_bytes nothing more is written."""
    data = archive((entry("a"), b"x" * 600), (entry("b"), b"y" * 600))
    assert unpack_files(data, tmp_path / "ws", 1000) == 1
    assert not (tmp_path / "ws" / "b").exists()


def test_unpacking_stops_at_the_entry_limit(tmp_path: Path) -> None:
    """Empty files and directories cost nothing in bytes: their count is capped too (skipped ones count)."""
    members = [(entry(f"d{i}", tarfile.DIRTYPE, 0o755), b"") for i in range(20)]
    members += [(entry(f"link{i}", tarfile.SYMTYPE, link="x"), b"") for i in range(20)]
    members += [(entry(f"f{i}"), b"") for i in range(20)]
    assert unpack_files(archive(*members), tmp_path / "ws", 1 << 20, max_entries=30) == 0
    assert len(list((tmp_path / "ws").iterdir())) == 20  # the directories; the cap came before any file
    assert unpack_files(archive(*members[40:]), tmp_path / "ws2", 1 << 20, max_entries=30) == 20


def test_unpacking_many_entries_keeps_no_index_of_them(tmp_path: Path) -> None:
    """Reading an archive of many members holds memory for one member at a time, not for all of them."""
    data = archive(*[(entry(f"link{i:05d}", tarfile.SYMTYPE, link="x"), b"") for i in range(10_000)])
    tracemalloc.start()
    try:
        assert unpack_files(data, tmp_path / "ws", 1 << 20) == 0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * 1024 * 1024, peak


# --- snapshot frames from the runner ----------------------------------------------------------


def line(frame: dict[str, Any]) -> bytes:
    return bytes([STDOUT]) + json.dumps(frame).encode() + b"\n"


def snapshot_frame(raw: bytes, last: bool = False) -> bytes:
    return line({"kind": "snapshot", "ok": True, "data": base64.b64encode(raw).decode(), "last": last})


class FakeAttach:
    """The attach websocket: delivers ``pending`` stdout messages, then closes; answers a snapshot
    request with ``answer``. Records how many snapshot bytes the sandbox held at each read."""

    def __init__(self, pending: list[bytes], answer: list[bytes]) -> None:
        self.pending, self.answer = pending, answer
        self.closed = False
        self.held: list[int] = []
        self.sandbox: KubernetesSandbox | None = None

    async def receive(self) -> aiohttp.WSMessage:
        if self.sandbox is not None:
            self.held.append(len(self.sandbox._snapshot))
        if self.pending:
            return aiohttp.WSMessage(aiohttp.WSMsgType.BINARY, self.pending.pop(0), None)
        return aiohttp.WSMessage(aiohttp.WSMsgType.CLOSE, None, None)

    async def send_bytes(self, data: bytes) -> None:
        if json.loads(data[1:]).get("kind") == "snapshot":
            self.pending += self.answer

    async def close(self) -> None:
        self.closed = True


class FakeBackend:
    def __init__(self, workspace_bytes: int) -> None:
        self.config = SimpleNamespace(workspace_bytes=workspace_bytes, termination_grace_s=0, namespace="ns")

    def proxy_url(self, sandbox_id: str) -> str:
        return "http://10.0.0.1:8081/s/token"

    async def read_pod(self, name: str) -> None:
        return None

    async def delete_pod(self, name: str, grace_s: int) -> None:
        return None

    async def wait_gone(self, name: str) -> bool:
        return True

    def release(self, sandbox_id: str) -> None:
        return None


async def started_sandbox(tmp_path: Path, attach: FakeAttach, workspace_bytes: int) -> KubernetesSandbox:
    spec = SandboxSpec("session", "sandbox", tmp_path / "ws", tmp_path / "m.sock")
    sandbox = KubernetesSandbox(cast(Any, FakeBackend(workspace_bytes)), spec, "pod", cast(Any, attach))
    attach.sandbox = sandbox
    await sandbox.send({"kind": "start", "options": {}})
    return sandbox


async def test_unasked_snapshot_frames_are_dropped_not_buffered(tmp_path: Path) -> None:
    """A runner sending snapshot frames nobody asked for gets nothing kept: not the bytes, and not a
    'finished' snapshot that a later stop() would unpack instead of asking."""
    chunk = os.urandom(256 * 1024)
    planted = archive((entry("planted.txt"), b"planted"))
    unasked = [snapshot_frame(chunk) for _ in range(8)] + [snapshot_frame(planted, last=True)]
    real = archive((entry("real.txt"), b"real"))
    attach = FakeAttach(
        [*unasked, line({"kind": "sdk", "message": {"type": "assistant"}})], [snapshot_frame(real, True)]
    )
    sandbox = await started_sandbox(tmp_path, attach, 1 << 20)
    frame = await sandbox.recv()
    assert isinstance(frame, Sdk)
    assert max(attach.held) == 0
    await sandbox.stop(0.1)
    assert sorted(p.name for p in (tmp_path / "ws").iterdir()) == ["real.txt"]


async def test_an_asked_snapshot_is_bounded_by_the_workspace_cap(tmp_path: Path) -> None:
    """Past the workspace cap (plus archive overhead) a snapshot is abandoned and its bytes freed."""
    cap = 1 << 20
    chunk = os.urandom(512 * 1024)
    attach = FakeAttach([], [snapshot_frame(chunk) for _ in range(12)] + [snapshot_frame(b"", last=True)])
    sandbox = await started_sandbox(tmp_path, attach, cap)
    await sandbox.stop(0.1)
    assert max(attach.held) <= 3 * cap, max(attach.held)
    assert len(sandbox._snapshot) == 0
    assert not (tmp_path / "ws").exists() or not any((tmp_path / "ws").iterdir())


async def test_an_asked_snapshot_within_the_cap_is_unpacked(tmp_path: Path) -> None:
    """The normal path: chunks up to ``last`` are assembled and unpacked into the host workspace."""
    data = archive((entry("a.txt"), b"a" * 1000), (entry("b.txt"), os.urandom(300_000)))
    chunks = [data[i : i + 100_000] for i in range(0, len(data), 100_000)]
    attach = FakeAttach([], [snapshot_frame(c, last=n == len(chunks) - 1) for n, c in enumerate(chunks)])
    sandbox = await started_sandbox(tmp_path, attach, 1 << 20)
    await sandbox.stop(0.1)
    assert (tmp_path / "ws" / "a.txt").read_bytes() == b"a" * 1000
    assert (tmp_path / "ws" / "b.txt").stat().st_size == 300_000
