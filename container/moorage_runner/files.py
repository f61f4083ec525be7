"""Files in and out of /mnt/session (a sized tmpfs every backend gives the sandbox).

In: ``put_file`` frames (base64 chunks; ``last`` on the final one) are written to a temporary
file next to the target, which is renamed into place and made read-only (0444) on ``last``;
the answer is ``file_put`` {path, ok, message}. The service checked the path (absolute, under
/workspace/ or /mnt/session/uploads/); missing parent directories are made.

Out: ``collect_outputs`` {max_bytes, max_total_bytes} is answered with the regular files under
/mnt/session/outputs that are new or changed (size, mtime_ns) since they were last reported:
``output`` frames {name, size, data, last} per file, or one {name, size, too_large: true} for a
file over ``max_bytes`` (or over what is left of ``max_total_bytes``), then ``outputs_done``
{count}. The walk never follows a symlink (``O_NOFOLLOW``, fd-relative), skips anything but
regular files and directories, and is bounded in depth and count. A file that changes while it
is read is sent as its size was when opened (cut, or padded with zeros), like a snapshot.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from typing import Any

from .channel import FILE_CHUNK_BYTES, SESSION_DIR

UPLOADS = f"{SESSION_DIR}/uploads"
OUTPUTS = f"{SESSION_DIR}/outputs"
MAX_DEPTH = 16  # directories below outputs/ (deeper ones are not walked)
MAX_FILES = 1000  # files reported in one answer (the service's cap too)
OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

Seen = dict[str, tuple[int, int]]  # name -> (size, mtime_ns) as last reported


def prepare(root: str = SESSION_DIR) -> None:
    """``uploads/`` and ``outputs/`` in the session directory (absent on an old backend: skipped)."""
    for name in ("uploads", "outputs"):
        with contextlib.suppress(OSError):
            os.makedirs(os.path.join(root, name), exist_ok=True)


class Uploads:
    """The files being written by ``put_file`` frames, by target path."""

    def __init__(self) -> None:
        self._open: dict[str, tuple[int, str]] = {}  # path -> (fd, temporary path)
        self._failed: dict[str, str] = {}  # path -> why (told on ``last``)

    def feed(self, frame: dict[str, Any]) -> dict[str, Any] | None:
        """Write one chunk; the ``file_put`` answer on ``last``, else None."""
        path = str(frame.get("path", ""))
        try:
            if path not in self._failed:
                fd = self._fd(path)
                data = base64.b64decode(str(frame.get("data", "")))
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
        except (OSError, ValueError) as exc:
            self._fail(path, f"{type(exc).__name__}: {exc}"[:500])
        if not frame.get("last"):
            return None
        return self._finish(path)

    def _fd(self, path: str) -> int:
        if path not in self._open:
            if not os.path.isabs(path):
                raise ValueError("not an absolute path")
            directory, name = os.path.split(path)
            os.makedirs(directory, exist_ok=True)
            temp = os.path.join(directory, f".{name}.moorage-upload")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            self._open[path] = (fd, temp)
        return self._open[path][0]

    def _fail(self, path: str, message: str) -> None:
        self._failed.setdefault(path, message)
        fd, temp = self._open.pop(path, (-1, ""))
        if fd >= 0:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temp)

    def _finish(self, path: str) -> dict[str, Any]:
        if path in self._failed:
            return {"kind": "file_put", "path": path, "ok": False, "message": self._failed.pop(path)}
        fd, temp = self._open.pop(path)  # ``feed`` opened it (or failed it)
        try:
            os.fchmod(fd, 0o444)
            os.close(fd)
            fd = -1
            os.replace(temp, path)
        except OSError as exc:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temp)
            self._fail(path, f"{type(exc).__name__}: {exc}"[:500])
            return {"kind": "file_put", "path": path, "ok": False, "message": self._failed.pop(path)}
        return {"kind": "file_put", "path": path, "ok": True, "message": ""}


def scan(root: str = OUTPUTS) -> Seen:
    """Every regular file under ``root`` (relative name -> (size, mtime_ns)), symlinks not followed."""
    found: Seen = {}
    try:
        fd = os.open(root, DIR_FLAGS)
    except OSError:
        return found
    try:
        _walk(fd, "", 0, found)
    finally:
        os.close(fd)
    return found


def _walk(dir_fd: int, prefix: str, depth: int, found: Seen) -> None:
    for name in sorted(os.listdir(dir_fd)):
        if len(found) >= MAX_FILES:
            return
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            found[prefix + name] = (st.st_size, st.st_mtime_ns)
        elif stat.S_ISDIR(st.st_mode) and depth < MAX_DEPTH:
            try:
                sub = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
            except OSError:
                continue
            try:
                _walk(sub, prefix + name + "/", depth + 1, found)
            finally:
                os.close(sub)


def changed(previous: Seen, current: Seen) -> list[str]:
    """The names in ``current`` that are new or differ (size or mtime) from ``previous``."""
    return [name for name, state in sorted(current.items()) if previous.get(name) != state]


def _open_below(root: str, name: str) -> int:
    """``root/name`` opened without following a symlink at any step."""
    fd = os.open(root, DIR_FLAGS)
    parts = name.split("/")
    try:
        for part in parts[:-1]:
            sub = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = sub
        return os.open(parts[-1], OPEN_FLAGS, dir_fd=fd)
    finally:
        os.close(fd)


def _read(fd: int, size: int) -> Iterator[bytes]:
    """Exactly ``size`` bytes, in chunks (zero-padded if the file shrank)."""
    left = size
    while left > 0:
        data = os.read(fd, min(FILE_CHUNK_BYTES, left))
        if not data:
            data = bytes(min(FILE_CHUNK_BYTES, left))
        left -= len(data)
        yield data


class Outputs:
    """What has been reported, so each answer holds only new or changed files."""

    def __init__(self, root: str = OUTPUTS) -> None:
        self.root = root
        self.seen: Seen = {}

    def frames(self, max_bytes: int, max_total_bytes: int) -> Iterator[dict[str, Any]]:
        current = scan(self.root)
        count = 0
        left = max_total_bytes
        for name in changed(self.seen, current):
            try:
                fd = _open_below(self.root, name)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.ENXIO):
                    continue  # swapped for a link, gone, or not ours: skipped this time
                raise
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    continue
                self.seen[name] = current[name]
                count += 1
                if st.st_size > max_bytes or st.st_size > left:
                    yield {"kind": "output", "name": name, "size": st.st_size, "too_large": True}
                    continue
                left -= st.st_size
                yield from self._file(fd, name, st.st_size)
            finally:
                os.close(fd)
        yield {"kind": "outputs_done", "count": count}

    def _file(self, fd: int, name: str, size: int) -> Iterator[dict[str, Any]]:
        chunks = _read(fd, size)
        chunk = next(chunks, b"")
        while True:
            following = next(chunks, None)
            data = base64.b64encode(chunk).decode()
            yield {"kind": "output", "name": name, "size": size, "data": data, "last": following is None}
            if following is None:
                return
            chunk = following
