"""Host uids for local sandboxes, and the processes that run as them.

Each local sandbox runs as a host uid of its own, so "every process of the
sandbox" is "every process of that uid": that is how a stop, a crash and a
restarted service find what to kill, whatever bwrap's monitor did.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import fcntl
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import structlog

from ..errors import Code, SandboxError

log = structlog.get_logger(__name__)

PR_SET_CHILD_SUBREAPER = 36
# One lock file per host uid in use by any Moorage service on this host
# (local sandboxes and Docker containers alike).
UID_LOCKS = "/run/moorage-uids"


class UidPool:
    """Hands out host uids so no two live sandboxes share one, across every
    service on this host: a uid is taken only with an flock on its lock file
    (held until it is given back), so services whose ranges overlap skip each
    other's uids instead of killing each other's sandboxes.

    The flock lives as long as the service that took it, but a sandbox can
    outlive its service: a Docker container keeps running when the service
    is killed, and so does anything else left running as the uid. The lock
    is then free while the uid is still in use, and a second service on the
    host handed out the same uid. So a uid is taken only when, besides its
    lock, no process runs as it; a busy one is skipped (its own service's
    recovery, or an operator, reaps it) and tried again later."""

    def __init__(self, base: int, count: int, lock_dir: Path | None = None) -> None:
        # Least recently used first: a freed uid is not handed out again at once.
        self._free = collections.deque(range(base, base + count))
        self._held: dict[int, int] = {}  # uid -> lock fd
        self._parked: dict[int, Path] = {}  # held until this workspace is gone
        self._lock_dir = lock_dir

    def take(self) -> int:
        self._unpark()
        skipped = []
        try:
            while self._free:
                uid = self._free.popleft()
                fd = self.lock(uid)
                if fd is not None and fd >= 0 and pids_of_uid(uid):
                    log.warning("sandbox_uid_busy", uid=uid, detail="unlocked, but processes still run as it")
                    os.close(fd)
                    fd = None
                if fd is not None:
                    self._held[uid] = fd
                    return uid
                skipped.append(uid)
        finally:
            self._free.extendleft(reversed(skipped))
        raise SandboxError("no free sandbox uid", code=Code.SANDBOX_START_FAILED)

    @classmethod
    def shared(cls, base: int, count: int) -> UidPool:
        """A pool whose uids are flocked under ``UID_LOCKS``, so every Moorage
        service on this host (local or Docker backend) skips the others' uids."""
        os.makedirs(UID_LOCKS, mode=0o700, exist_ok=True)
        return cls(base, count, Path(UID_LOCKS))

    def lock(self, uid: int) -> int | None:
        """An flock on ``uid``'s lock file (-1: no locking), or None if held elsewhere."""
        if self._lock_dir is None:
            return -1
        return _flock(self._lock_dir / f"{uid}.lock")

    def available(self) -> bool:
        self._unpark()
        return bool(self._free) or self._lock_dir is None

    @property
    def held(self) -> set[int]:
        """Uids in use: taken, or parked while their workspace still exists
        (a parked uid whose workspace is gone comes back first)."""
        self._unpark()
        return set(self._held)

    def give_back(self, uid: int, once_gone: Path | None = None) -> None:
        """Return ``uid`` to the pool. With ``once_gone`` (a stopped sandbox's
        workspace, which the uid owns and which is archived as that uid), only
        once that path no longer exists: until the workspace is saved and
        removed, no other sandbox (of this service or, by the flock, of
        another) runs as the uid that reads it."""
        if once_gone is not None and uid in self._held and os.path.lexists(once_gone):
            self._parked[uid] = once_gone
            return
        self._parked.pop(uid, None)
        fd = self._held.pop(uid, None)
        if fd is None:
            return
        if fd >= 0:
            os.close(fd)
        self._free.append(uid)

    def _unpark(self) -> None:
        for uid, path in list(self._parked.items()):
            if not os.path.lexists(path):
                self.give_back(uid)


@contextlib.contextmanager
def reserving(uid: object) -> Iterator[None]:
    """Hold ``uid``'s host-wide flock while a workspace a previous run left is
    archived as it and removed (the recovery sweep), so no new sandbox takes
    the uid meanwhile. When the lock is held elsewhere (this or another
    service runs a sandbox as it now) the read goes ahead anyway: it is as
    safe, the helper just shares the uid."""
    fd = None
    if isinstance(uid, int) and os.geteuid() == 0 and os.path.isdir(UID_LOCKS):
        fd = _flock(Path(UID_LOCKS) / f"{uid}.lock")
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)


def _flock(path: Path) -> int | None:
    """An flock on ``path`` (created if need be), or None if held elsewhere.
    A start-up sweep may unlink a stale lock file while holding its lock
    (``release_stale``): a lock taken on a file unlinked meanwhile guards
    nothing, so it is taken again on the file the path names now."""
    for _ in range(3):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        os.close(fd)
    return None


def release_stale(uid: int, lock_dir: Path = Path(UID_LOCKS)) -> bool:
    """Remove ``uid``'s lock file if nobody holds it and no process runs as
    the uid (the caller has proved the uid was its own: a workspace it left
    is owned by it). Unlinked while locked, so no one locks the old file."""
    path = lock_dir / f"{uid}.lock"
    if not path.exists():
        return False
    fd = _flock(path)
    if fd is None:
        return False
    try:
        if pids_of_uid(uid):
            return False
        os.unlink(path)
        return True
    finally:
        os.close(fd)


def become_subreaper() -> None:
    """Orphaned sandbox processes come to us, not to a pid 1 that may never
    reap them (containers, some VMs); see ``reap_orphans``."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def pids_of_uid(uid: int) -> list[int]:
    """Live (not zombie) processes of ``uid``. A zombie holds nothing but its
    pid and may wait for a reaper that never comes (pid 1 in a container)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid != uid:
                    continue
                with open(f"/proc/{entry}/stat", "rb") as f:
                    state = f.read().rsplit(b")", 1)[1].split()[0]
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            if state not in (b"Z", b"X"):
                pids.append(int(entry))
    return pids


def kill_uid(uid: int, deadline_s: float = 5.0) -> None:
    """SIGKILL every process still running as ``uid``; wait until they are gone (bounded)."""
    deadline = time.monotonic() + deadline_s
    while pids := pids_of_uid(uid):
        if time.monotonic() > deadline:
            log.error("sandbox_processes_left", uid=uid, pids=pids)
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def reap_orphans(keep: set[int]) -> None:
    """Collect exited sandbox processes that were orphaned to us.

    bwrap's monitor can exit before reaping the sandbox's pid 1, which is
    then re-parented to the nearest subreaper: this process. Reap exactly
    those zombies, never a child asyncio is still waiting for (``keep``)."""
    me = str(os.getpid())
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in keep:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fields[0] == b"Z" and fields[1].decode() == me:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(int(entry), os.WNOHANG)
