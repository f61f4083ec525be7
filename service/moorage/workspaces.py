"""Workspace snapshots: a tar.gz of a session's /workspace, kept in the
database while the session is suspended.

Snapshots are taken on the host side from the workspace directory (reading
only: symlinks are stored as links, never followed). Restores happen inside
the new sandbox, by the runner, as the sandbox user (``restore`` frames), so
an archive can never write outside the sandbox.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import io
import os
import shutil
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import structlog

from .errors import STORE_ERRORS, Code, MoorageError
from .storage import NOT_SAVED_FLAG, workspace_admitted

log = structlog.get_logger(__name__)

CHECKPOINT_ERRORS: tuple[type[BaseException], ...] = (*STORE_ERRORS, MoorageError)

MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)
CHUNK_BYTES = 512 * 1024  # raw bytes per restore frame (base64 adds a third)


class WorkspaceTooLarge(MoorageError):
    code = Code.WORKSPACE_TOO_LARGE


def workspace_size(path: Path) -> int:
    """Bytes of regular files under ``path`` (links and specials count zero)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except FileNotFoundError:
                continue
            if not os.path.islink(os.path.join(root, name)):
                total += st.st_size
    return total


def remove_workspace(path: Path) -> None:
    """Delete a workspace directory, unmounting its size-limited filesystem
    first when the backend gave it one (see ``sandbox.local.mount_workspace``)."""
    if os.path.ismount(path) and _libc.umount2(os.fsencode(path), MNT_DETACH) != 0:
        log.error("workspace_unmount_failed", path=str(path), error=os.strerror(ctypes.get_errno()))
    shutil.rmtree(path, ignore_errors=True)


def signature(path: Path) -> tuple[int, int, int]:
    """(files, bytes, newest mtime): changes when the workspace's files do."""
    files = size = newest = 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            try:
                st = os.lstat(os.path.join(root, name))
            except FileNotFoundError:
                continue
            files, size, newest = files + 1, size + st.st_size, max(newest, st.st_mtime_ns)
    return files, size, newest


class Checkpoints:
    """Saves a live session's workspace after a turn, in the background, when
    it changed and the last save is ``workspace_checkpoint_s`` old, so a host
    crash loses at most that much of it (suspension always saves)."""

    def __init__(self, records: Any, session_id: str, settings: Any, log: Any) -> None:
        self.records, self.session_id, self.settings, self.log = records, session_id, settings, log
        self._task: asyncio.Task[None] | None = None
        self._saved: tuple[int, int, int] | None = None
        self._saved_at = -1e9

    def after_turn(self, path: Path) -> None:
        if self._task is not None and not self._task.done():
            return
        if time.monotonic() - self._saved_at >= self.settings.workspace_checkpoint_s:
            self._task = asyncio.create_task(self._save(path))

    async def _save(self, path: Path) -> None:
        # A full workspace is most likely being filled right now: reading it
        # would hold deleted files open (their space freed only when the read
        # ends); the suspension saves it anyway.
        if await asyncio.to_thread(workspace_full, path):
            return
        sig = await asyncio.to_thread(signature, path)
        if sig == self._saved:
            return
        try:
            data = await asyncio.to_thread(snapshot, path, self.settings.workspace_max_bytes)
            limit = self.settings.tenant_storage_bytes
            if not await workspace_admitted(self.records, self.session_id, len(data), limit):
                self.log.info("workspace_checkpoint_skipped", reason=str(Code.STORAGE_QUOTA_EXCEEDED))
                return
            await self.records.save_workspace(self.session_id, data)
        except CHECKPOINT_ERRORS as exc:  # too large, or no database: suspension tries again
            self.log.warning("workspace_checkpoint_failed", error=type(exc).__name__)
            return
        self._saved, self._saved_at = sig, time.monotonic()
        self.log.debug("workspace_checkpointed", bytes=len(data))

    async def stop(self) -> None:
        """Cancel a save in flight (before the suspension's own, newer one)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def workspace_full(path: Path) -> bool:
    """True when a size-limited workspace has (almost) no room left."""
    if not os.path.ismount(path):
        return False
    usage = shutil.disk_usage(path)
    return usage.free < max(1024 * 1024, usage.total // 100)


def snapshot(path: Path, max_bytes: int) -> bytes:
    """A tar.gz of the directory's contents; WorkspaceTooLarge past ``max_bytes``."""
    size = workspace_size(path)
    if size > max_bytes:
        raise WorkspaceTooLarge(
            f"the workspace holds {size} bytes, over the {max_bytes}-byte limit (MOORAGE_WORKSPACE_MAX_BYTES)"
        )
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6) as tar:
        for entry in sorted(os.listdir(path)):
            tar.add(os.path.join(path, entry), arcname=entry, recursive=True)
    return buffer.getvalue()


def restore_frames(data: bytes) -> Iterator[dict[str, object]]:
    """The ``restore`` frames that carry one snapshot to a runner."""
    chunks = [data[i : i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)] or [b""]
    for n, chunk in enumerate(chunks):
        yield {"kind": "restore", "data": base64.b64encode(chunk).decode(), "last": n == len(chunks) - 1}


async def suspend_record(deps: Any, session_id: str, workspace: Path | None, log: Any) -> bool:
    """Save a stopped session's workspace and mark it suspended; release the
    lease. Returns False (leaving the workspace directory and the record
    as they are, for the recovery sweep) when the database cannot be reached."""
    data: bytes | None = None
    dropped = over_quota = False
    records = deps.records
    if workspace is not None and await asyncio.to_thread(workspace.exists):
        try:
            data = await asyncio.to_thread(snapshot, workspace, deps.settings.workspace_max_bytes)
        except WorkspaceTooLarge as exc:
            dropped = True
            log.error("workspace_not_saved", error=exc.message)
    if data is not None and not await workspace_admitted(
        records, session_id, len(data), deps.settings.tenant_storage_bytes
    ):
        # Over the tenant's quota: keep the last save; the next client is told (storage.py).
        log.warning("workspace_not_saved", reason=str(Code.STORAGE_QUOTA_EXCEEDED), bytes=len(data))
        data, over_quota = None, True
    for attempt in range(3):
        try:
            if data is not None:
                await records.save_workspace(session_id, data)
            fields: dict[str, Any] = {"state": "suspended", "sandbox": None}
            if dropped or over_quota:
                record = await records.get(session_id)
                flag = {"workspace_dropped": True} if dropped else {NOT_SAVED_FLAG: str(Code.STORAGE_QUOTA_EXCEEDED)}
                fields["options"] = {**(record.options if record else {}), **flag}
            await records.update(session_id, **fields)
            await records.release_lease(session_id, deps.replica)
            break
        except Exception as exc:
            log.warning("suspend_write_failed", attempt=attempt + 1, error=type(exc).__name__)
            await asyncio.sleep(0.5 * 2**attempt)
    else:
        log.error("session_not_suspended", reason="database unreachable; the recovery sweep will retry")
        return False
    if workspace is not None:
        await asyncio.to_thread(remove_workspace, workspace)
    log.info("session_suspended", workspace_bytes=len(data) if data is not None else 0)
    return True
