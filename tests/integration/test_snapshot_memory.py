"""Snapshots stream: saving and restoring a large incompressible workspace never holds it whole in
the service's memory (two concurrent 256 MiB suspensions must not OOM a 1 GiB replica)."""

from __future__ import annotations

import os
import tracemalloc
import uuid
from pathlib import Path

from moorage.settings import Settings
from moorage.workspaces import restore_frames, save_workspace
from moorage_session_store import Database, SessionRecords

WORKSPACE_BYTES = 64 * 1024 * 1024
HEAP_BUDGET = 16 * 1024 * 1024  # a quarter of the workspace; streaming needs a few MiB


async def test_a_64_mib_workspace_saves_and_restores_in_bounded_memory(db: Database, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    for n in range(4):
        (ws / f"blob{n}").write_bytes(os.urandom(WORKSPACE_BYTES // 4))
    records = SessionRecords(db)
    sid = str(uuid.uuid4())
    await records.create(sid, "tenant-a", {})
    settings = Settings(workspace_max_bytes=10**9, workspace_snapshot_timeout_s=600.0, tenant_storage_bytes=0)

    tracemalloc.start()
    try:
        stored = await save_workspace(records, sid, ws, settings)
        _, save_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        restored = 0
        async for frame in restore_frames(records.load_workspace_stream(sid)):
            restored += len(frame.data)
        _, restore_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stored > WORKSPACE_BYTES and await records.workspace_bytes(sid) == stored
    assert restored >= stored * 4 // 3  # every byte went out, base64-encoded
    assert save_peak < HEAP_BUDGET, f"saving peaked at {save_peak} bytes of Python heap"
    assert restore_peak < HEAP_BUDGET, f"restoring peaked at {restore_peak} bytes of Python heap"
