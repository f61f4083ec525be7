"""Workspace snapshots: a tar.gz of a session's /workspace, kept in the
database while the session is suspended.

A workspace is written by its sandbox, so the service never reads it with
host privileges (see docs/architecture.md, Persistence). The archive is
built by a helper process running ``workspace_archive.py``'s source (a copy
of container/moorage_runner/snapshot.py) under the base interpreter with
``-I -S``, an empty environment and cwd /, as the uid that owns the
workspace (the sandbox's host uid: the backend chowned the directory to it,
and nothing in a sandbox can give it away), with ``--no-new-privs``. The
service opens the workspace directory itself (``O_DIRECTORY|O_NOFOLLOW``: its
path is the service's) and hands the helper that fd; the helper walks it
fd-relative with ``O_NOFOLLOW`` everywhere and stores symlinks as links. Its
stdout flows to the database in bounded chunks (``save_workspace_stream``);
nothing holds a whole archive in memory, and restores stream back the same
way into ``restore`` frames. Restores happen inside the new sandbox, by the
runner, as the sandbox user, so an archive can never write outside it.

The service's own metadata walks (size, change signature) are fd-relative
too and never open anything but directories.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import os
import shutil
import stat
import sys
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from . import workspace_archive
from .channel import Restore
from .errors import STORE_ERRORS, Code, MoorageError
from .seams import RecordStore
from .storage import NOT_SAVED_FLAG, OverQuota, workspace_allowance

if TYPE_CHECKING:
    from .sessions import Deps
    from .settings import Settings

Logger = structlog.typing.FilteringBoundLogger

log = structlog.get_logger(__name__)

CHECKPOINT_ERRORS: tuple[type[BaseException], ...] = (*STORE_ERRORS, MoorageError)

MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)
CHUNK_BYTES = 512 * 1024  # raw bytes per restore frame (base64 adds a third)
STORE_CHUNK_BYTES = 1024 * 1024  # bytes per database row while saving
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
STDERR_BYTES = 4096  # what is kept of a failed helper's complaint


class WorkspaceTooLarge(MoorageError):
    code = Code.WORKSPACE_TOO_LARGE


class SnapshotFailed(MoorageError):
    """The helper that archives a workspace failed or ran out of time."""


def _stats(dir_fd: int, depth: int = 0) -> Iterator[os.stat_result]:
    """``lstat`` of every name below ``dir_fd``, fd-relative; only directories
    are opened (``O_NOFOLLOW``), nothing is followed."""
    with os.scandir(dir_fd) as entries:
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            yield st
            if stat.S_ISDIR(st.st_mode) and depth < workspace_archive.MAX_DEPTH:
                try:
                    sub = os.open(entry.name, DIR_FLAGS, dir_fd=dir_fd)
                except OSError:  # swapped for something else: not ours to follow
                    continue
                try:
                    yield from _stats(sub, depth + 1)
                finally:
                    os.close(sub)


def _walk_stats(path: Path) -> Iterator[os.stat_result]:
    try:
        root = os.open(path, DIR_FLAGS)
    except OSError:
        return
    try:
        yield from _stats(root)
    finally:
        os.close(root)


def workspace_size(path: Path) -> int:
    """Bytes of regular files under ``path`` (links and specials count zero)."""
    return sum(st.st_size for st in _walk_stats(path) if stat.S_ISREG(st.st_mode))


def remove_workspace(path: Path) -> None:
    """Delete a workspace directory, unmounting its size-limited filesystem
    first when the backend gave it one (see ``sandbox.local.mount_workspace``).
    (``shutil.rmtree`` walks fd-relative and never follows a link.)"""
    if os.path.ismount(path) and _libc.umount2(os.fsencode(path), MNT_DETACH) != 0:
        log.error("workspace_unmount_failed", path=str(path), error=os.strerror(ctypes.get_errno()))
    shutil.rmtree(path, ignore_errors=True)


def signature(path: Path) -> tuple[int, int, int]:
    """(files, bytes, newest mtime): changes when the workspace's files do."""
    files = size = newest = 0
    for st in _walk_stats(path):
        files, size, newest = files + 1, size + st.st_size, max(newest, st.st_mtime_ns)
    return files, size, newest


@cache
def helper_source() -> str:
    return Path(workspace_archive.__file__).read_text()


def base_python() -> str:
    """The interpreter the venv was made from: the venv itself may sit where
    a sandbox uid cannot enter (/root)."""
    return os.path.realpath(getattr(sys, "_base_executable", sys.executable))


def reader_uid(owner: int, euid: int) -> int | None:
    """The uid the helper drops to (None: stay as the service). As root, the
    workspace's owner: the sandbox's host uid. A root-owned workspace was
    written by the service itself (Kubernetes unpacks a pod's archive into
    one) and is read as the service, still without following anything."""
    if euid != 0 or owner == 0:
        return None
    return owner


def helper_argv(python: str, uid: int | None, root_fd: int, max_bytes: int, source: str) -> list[str]:
    """The helper's command line (pure; unit-tested)."""
    drop = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs", "--"]
    return [*(drop if uid is not None else []), python, "-I", "-S", "-c", source, str(root_fd), str(max_bytes)]


@contextlib.asynccontextmanager
async def archive(path: Path, max_bytes: int, timeout_s: float) -> AsyncIterator[AsyncIterator[bytes]]:
    """The workspace as a tar.gz, in chunks of at most ``STORE_CHUNK_BYTES``,
    from a helper that reads it as its owner (see the module docstring). The
    chunks raise ``WorkspaceTooLarge`` past ``max_bytes`` and ``SnapshotFailed``
    when the helper fails or ``timeout_s`` passes; leaving the block kills a
    helper still running."""
    root = os.open(path, DIR_FLAGS)
    try:
        uid = reader_uid(os.fstat(root).st_uid, os.geteuid())
        argv = helper_argv(base_python(), uid, root, max_bytes, helper_source())
        if uid is not None:
            argv[0] = shutil.which("setpriv") or "/usr/bin/setpriv"
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={},
            cwd="/",
            pass_fds=(root,),
            start_new_session=True,
        )
    finally:
        os.close(root)
    deadline = asyncio.get_running_loop().time() + timeout_s
    try:
        yield _chunks(proc, deadline, max_bytes)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 5.0)


async def _chunks(proc: asyncio.subprocess.Process, deadline: float, max_bytes: int) -> AsyncIterator[bytes]:
    assert proc.stdout is not None and proc.stderr is not None
    loop = asyncio.get_running_loop()
    pending = bytearray()
    try:
        while True:
            piece = await asyncio.wait_for(proc.stdout.read(STORE_CHUNK_BYTES), max(0.0, deadline - loop.time()))
            if not piece:
                break
            pending += piece
            if len(pending) >= STORE_CHUNK_BYTES:
                yield bytes(pending)
                pending.clear()
        returncode = await asyncio.wait_for(proc.wait(), max(0.0, deadline - loop.time()))
        complaint = (await asyncio.wait_for(proc.stderr.read(STDERR_BYTES), 1.0)).decode(errors="replace").strip()
    except TimeoutError:
        raise SnapshotFailed("archiving the workspace took too long") from None
    if returncode == workspace_archive.TOO_LARGE_EXIT:
        limit = f"the {max_bytes}-byte limit (MOORAGE_WORKSPACE_MAX_BYTES)"
        raise WorkspaceTooLarge(f"{complaint or 'the workspace is too large'}: over {limit}")
    if returncode != 0:
        raise SnapshotFailed(f"archiving the workspace failed (exit {returncode}): {complaint[-300:]}")
    if pending:
        yield bytes(pending)


async def save_workspace(records: RecordStore, session_id: str, path: Path, settings: Settings) -> int:
    """Archive the workspace into the database, streaming; returns its bytes. ``OverQuota`` (and
    the last save kept) when the archive would take its tenant past its storage quota."""
    allowance = await workspace_allowance(records, session_id, settings.tenant_storage_bytes)
    async with archive(path, settings.workspace_max_bytes, settings.workspace_snapshot_timeout_s) as chunks:
        size: int = await records.save_workspace_stream(session_id, _within(chunks, allowance))
    return size


async def _within(chunks: AsyncIterator[bytes], allowance: int | None) -> AsyncIterator[bytes]:
    """``chunks``, stopped with ``OverQuota`` once they pass ``allowance`` bytes (the store then
    discards what it wrote of this save)."""
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        if allowance is not None and total > allowance:
            raise OverQuota(f"the workspace archive passed the {allowance} bytes its tenant's storage quota leaves")
        yield chunk


class Checkpoints:
    """Saves a live session's workspace after a turn, in the background, when
    it changed and the last save is ``workspace_checkpoint_s`` old, so a host
    crash loses at most that much of it (suspension always saves)."""

    def __init__(self, records: RecordStore, session_id: str, settings: Settings, log: Logger) -> None:
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
            size = await save_workspace(self.records, self.session_id, path, self.settings)
        except OverQuota:
            self.log.info("workspace_checkpoint_skipped", reason=str(Code.STORAGE_QUOTA_EXCEEDED))
            return
        except CHECKPOINT_ERRORS as exc:  # too large, or no database: suspension tries again
            self.log.warning("workspace_checkpoint_failed", error=type(exc).__name__)
            return
        self._saved, self._saved_at = sig, time.monotonic()
        self.log.debug("workspace_checkpointed", bytes=size)

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


async def restore_frames(chunks: AsyncIterable[bytes]) -> AsyncIterator[Restore]:
    """The ``restore`` frames that carry one stored snapshot to a runner, cut
    as its chunks arrive; nothing at all when none was stored."""
    pending = bytearray()
    seen = False
    async for chunk in chunks:
        seen = seen or bool(chunk)
        pending += chunk
        while len(pending) > CHUNK_BYTES:  # more follows: not the last frame
            yield _restore_frame(bytes(pending[:CHUNK_BYTES]), last=False)
            del pending[:CHUNK_BYTES]
    if seen:
        yield _restore_frame(bytes(pending), last=True)


def _restore_frame(chunk: bytes, last: bool) -> Restore:
    return Restore(base64.b64encode(chunk).decode(), last)


async def suspend_record(deps: Deps, session_id: str, workspace: Path | None, log: Logger) -> bool:
    """Save a stopped session's workspace and mark it suspended; release the
    lease. Returns False (leaving the workspace directory and the record
    as they are, for the recovery sweep) when the database cannot be reached."""
    unsaved = workspace is not None and await asyncio.to_thread(workspace.exists)
    dropped = over_quota = False
    size = 0
    records = deps.records
    for attempt in range(3):
        try:
            if unsaved and workspace is not None:
                try:
                    size = await save_workspace(records, session_id, workspace, deps.settings)
                except OverQuota:
                    # Over the tenant's quota: keep the last save; the next client is told (storage.py).
                    over_quota = True
                    log.warning("workspace_not_saved", reason=str(Code.STORAGE_QUOTA_EXCEEDED))
                except (WorkspaceTooLarge, SnapshotFailed) as exc:
                    dropped = True
                    log.error("workspace_not_saved", error=exc.message)
                unsaved = False
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
    log.info("session_suspended", workspace_bytes=size)
    return True
