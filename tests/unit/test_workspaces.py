"""Workspace snapshots, restores and the transcript sink's ordering, without sandboxes."""

from __future__ import annotations

import asyncio
import base64
import io
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from moorage.channel import Restore as RestoreFrame
from moorage.metrics import Metrics
from moorage.seams import TranscriptStore
from moorage.transcripts import TranscriptSink
from moorage.workspaces import WorkspaceTooLarge, archive, restore_frames
from moorage_runner.restore import Restore


async def frames_of(data: bytes, piece: int = 100_000) -> list[RestoreFrame]:
    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(data), piece):
            yield data[start : start + piece]

    return [frame async for frame in restore_frames(chunks())]


async def restore_into(data: bytes, dest: Path) -> int:
    restore = Restore()
    frames = await frames_of(data)
    for frame in frames:
        restore.feed(frame.data)
    assert frames[-1].last is True and all(not f.last for f in frames[:-1])
    return restore.extract(str(dest))


async def snapshot(path: Path, max_bytes: int) -> bytes:
    """The service's snapshot (its helper process, as this test's uid), whole."""
    async with archive(path, max_bytes, 60.0) as chunks:
        return b"".join([chunk async for chunk in chunks])


async def test_snapshot_round_trips_files_dirs_and_links(tmp_path: Path) -> None:
    """What a session wrote comes back byte for byte, symlinks as symlinks."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha")
    (src / "sub" / "b.bin").write_bytes(bytes(range(256)) * 5000)
    (src / "link").symlink_to("a.txt")
    dest = tmp_path / "dest"
    dest.mkdir()
    assert await restore_into(await snapshot(src, 10**8), dest) == 4
    assert (dest / "a.txt").read_text() == "alpha"
    assert (dest / "sub" / "b.bin").read_bytes() == bytes(range(256)) * 5000
    assert (dest / "link").is_symlink() and (dest / "link").read_text() == "alpha"


async def test_snapshot_refuses_a_workspace_over_the_cap(tmp_path: Path) -> None:
    """Over MOORAGE_WORKSPACE_MAX_BYTES the snapshot fails loudly instead of truncating."""
    (tmp_path / "big").write_bytes(b"x" * 2000)
    with pytest.raises(WorkspaceTooLarge) as info:
        await snapshot(tmp_path, 1000)
    assert info.value.code == "workspace_too_large"


async def test_restore_skips_members_that_would_leave_the_workspace(tmp_path: Path) -> None:
    """Absolute paths, '..' and hard links outside are dropped, the rest restored."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in ("ok.txt", "/etc/evil", "../evil", "a/../../evil"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"hi"))
        link = tarfile.TarInfo("hard")
        link.type = tarfile.LNKTYPE
        link.linkname = "../outside"
        tar.addfile(link)
    dest = tmp_path / "ws"
    dest.mkdir()
    assert await restore_into(buffer.getvalue(), dest) == 1
    assert [p.name for p in dest.iterdir()] == ["ok.txt"]
    assert not (tmp_path / "evil").exists()


async def test_large_snapshots_travel_in_bounded_frames() -> None:
    """A snapshot is cut into frames of at most 512 KiB before base64, whatever the stored chunks."""
    for piece in (1000, 512 * 1024, 3 * 512 * 1024 + 1):
        frames = await frames_of(b"z" * (3 * 512 * 1024 + 1), piece)
        assert len(frames) == 4 and [f.last for f in frames] == [False, False, False, True]
        assert all(len(base64.b64decode(f.data)) <= 512 * 1024 for f in frames)
    assert len(await frames_of(b"z" * 512 * 1024)) == 1
    assert await frames_of(b"") == []  # nothing stored: nothing to restore


class FlakyStore:
    """Stands in for the database: fails while ``down``, records what lands."""

    def __init__(self) -> None:
        self.down = False
        self.rows: list[tuple[dict[str, str], list[dict[str, Any]]]] = []

    async def append(self, key: dict[str, str], entries: list[dict[str, Any]]) -> None:
        await asyncio.sleep(0)  # a real database suspends here: let writers interleave
        if self.down:
            raise ConnectionRefusedError("database down")
        self.rows.append((key, entries))


async def test_sink_acknowledges_during_an_outage_and_writes_in_order_after() -> None:
    """Appends during an outage wait in order and land, in order, once the store is back."""
    store = FlakyStore()
    metrics = Metrics(("claude-opus",))
    sink = TranscriptSink(cast(TranscriptStore, store), "tenant-a", "sess-1", metrics)
    await sink.handle("store.append", {"key": {"project_key": "x", "session_id": "y"}, "entries": [{"n": 1}]})
    store.down = True
    for n in (2, 3):
        await sink.handle("store.append", {"key": {}, "entries": [{"n": n}]})
    assert not sink.durable and [e[0]["n"] for _, e in store.rows] == [1]
    assert await sink.flush() is False
    store.down = False
    assert await sink.flush() is True and sink.durable
    assert [e[0]["n"] for _, e in store.rows] == [1, 2, 3]
    assert metrics.registry.get_sample_value("moorage_transcript_store_errors_total") == 3


async def test_sink_never_writes_a_batch_twice_when_flushes_overlap() -> None:
    """A new append and the background flusher racing after an outage write each batch once, in order."""
    store = FlakyStore()
    sink = TranscriptSink(cast(TranscriptStore, store), "tenant-a", "sess-1")
    store.down = True
    await sink.handle("store.append", {"key": {}, "entries": [{"n": 1}]})
    store.down = False
    await asyncio.gather(sink.flush(), sink.handle("store.append", {"key": {}, "entries": [{"n": 2}]}), sink.flush())
    assert [e[0]["n"] for _, e in store.rows] == [1, 2] and sink.durable


async def test_sink_pins_every_key_to_its_own_session() -> None:
    """A sandbox cannot write to (or name) another tenant's or session's transcript."""
    store = FlakyStore()
    sink = TranscriptSink(cast(TranscriptStore, store), "tenant-a", "sess-1")
    await sink.handle("store.append", {"key": {"project_key": "tenant-b", "session_id": "other"}, "entries": []})
    await sink.handle(
        "store.append", {"key": {"project_key": "p", "session_id": "s", "subpath": "subagents/agent-1"}, "entries": []}
    )
    await sink.handle("store.append", {"key": {"subpath": "../../other"}, "entries": []})
    keys = [k for k, _ in store.rows]
    assert keys == [
        {"project_key": "tenant-a", "session_id": "sess-1"},
        {"project_key": "tenant-a", "session_id": "sess-1", "subpath": "subagents/agent-1"},
        {"project_key": "tenant-a", "session_id": "sess-1"},
    ]
