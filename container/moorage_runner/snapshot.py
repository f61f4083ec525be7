"""Archiving a workspace without following anything in it: the one
implementation of a workspace snapshot.

Two callers run it:
- the runner, inside a sandbox whose workspace the service cannot read
  (Kubernetes: a pod's emptyDir): ``{"kind": "snapshot", "max_bytes": N}``
  is answered with ``snapshot`` frames carrying a tar.gz in base64 chunks
  (``last`` on the final one), or a frame with ``ok: false`` and the reason;
- the service, for workspaces on its own host (local and Docker sandboxes):
  it runs THIS FILE'S SOURCE with the base interpreter (``python3 -I -S -c``)
  in a helper process that has dropped to the sandbox's own host uid, with an
  empty environment and cwd /, and hands it the workspace as an open
  directory fd; the tar.gz comes back on stdout (see
  service/moorage/workspaces.py). So it imports nothing but the standard
  library, and nothing of this package. The service's image does not carry
  the runner: service/moorage/workspace_archive.py is a byte-identical copy,
  held equal by tests/unit/test_workspace_archive.py.

The walk is fd-relative, one name at a time: every name is opened with
``O_NOFOLLOW | O_NONBLOCK`` relative to its directory's fd, and what is
archived is what the opened fd is (``fstat``), never what the name looked
like a moment earlier. A name that is a symlink (``ELOOP``) is stored as a
link (``readlink``), never followed; fifos, sockets and devices are skipped;
a name that changed type or vanished mid-walk is stored as what was opened,
or skipped. A file that shrinks while it is read is padded with zeros, one
that grows is cut at the size it had when opened. Past ``max_bytes`` of file
data (or ``MAX_ENTRIES`` names) the archive is abandoned (``TooLarge``).
"""

from __future__ import annotations

import base64
import errno
import os
import stat
import sys
import tarfile
import zlib
from collections.abc import Iterator
from typing import Any

CHUNK_BYTES = 512 * 1024  # raw bytes per snapshot frame (base64 adds a third)
READ_BYTES = 256 * 1024
MAX_DEPTH = 256  # deeper directories are skipped
MAX_ENTRIES = 1_000_000
TOO_LARGE_EXIT = 3  # the helper's exit status past the size cap
OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE


class TooLarge(Exception):
    """The workspace holds more than the archive may."""


class _Budget:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.bytes, self.entries = max_bytes, 0, 0

    def add(self, size: int) -> None:
        self.bytes += size
        self.entries += 1
        if self.bytes > self.max_bytes:
            raise TooLarge(f"the workspace holds over {self.max_bytes} bytes")
        if self.entries > MAX_ENTRIES:
            raise TooLarge(f"the workspace holds over {MAX_ENTRIES} files")


def _header(name: str, kind: bytes, st: os.stat_result | None, size: int = 0, link: str = "") -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size, link
    info.mode = stat.S_IMODE(st.st_mode) & 0o777 if st is not None else 0o777
    info.mtime = int(st.st_mtime) if st is not None else 0
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _file_data(fd: int, size: int) -> Iterator[bytes]:
    """Exactly ``size`` bytes of the file, zero-padded to whole blocks."""
    left = size
    while left > 0:
        data = os.read(fd, min(READ_BYTES, left))
        if not data:  # it shrank: keep the header's size honest
            data = bytes(min(READ_BYTES, left))
        left -= len(data)
        yield data
    if size % BLOCK:
        yield bytes(BLOCK - size % BLOCK)


def _entries(dir_fd: int, prefix: str, depth: int, budget: _Budget) -> Iterator[bytes]:
    """Raw tar bytes for everything below the directory ``dir_fd``."""
    for name in sorted(os.listdir(dir_fd)):
        arcname = prefix + name
        try:
            fd = os.open(name, OPEN_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # a symlink, at this moment: store it as one
                yield from _link(dir_fd, name, arcname, budget)
            continue  # gone, a socket (ENXIO), not ours to read (EACCES): skipped
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode):
                budget.add(st.st_size)
                yield _header(arcname, tarfile.REGTYPE, st, st.st_size)
                yield from _file_data(fd, st.st_size)
            elif stat.S_ISDIR(st.st_mode) and depth < MAX_DEPTH:
                budget.add(0)
                yield _header(arcname + "/", tarfile.DIRTYPE, st)
                yield from _entries(fd, arcname + "/", depth + 1, budget)
        finally:
            os.close(fd)


def _link(dir_fd: int, name: str, arcname: str, budget: _Budget) -> Iterator[bytes]:
    try:
        target = os.readlink(name, dir_fd=dir_fd)
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:  # swapped back to something else: skipped this time
        return
    budget.add(0)
    yield _header(arcname, tarfile.SYMTYPE, st, link=target)


def tar_stream(root_fd: int, max_bytes: int) -> Iterator[bytes]:
    """A tar (uncompressed) of the directory ``root_fd``'s contents, in
    pieces; raises ``TooLarge`` past the caps."""
    written = 0
    for piece in _entries(root_fd, "", 0, _Budget(max_bytes)):
        written += len(piece)
        yield piece
    end = 2 * BLOCK
    yield bytes(end + (-(written + end) % RECORD))


def targz_stream(root_fd: int, max_bytes: int) -> Iterator[bytes]:
    """The same, gzip-compressed, in pieces of whatever zlib hands out."""
    z = zlib.compressobj(6, zlib.DEFLATED, 31)  # 31: the gzip container
    for piece in tar_stream(root_fd, max_bytes):
        if out := z.compress(piece):
            yield out
    yield z.flush()


def open_root(path: str) -> int:
    """The workspace directory itself, never through a symlink."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def snapshot_frames(path: str, max_bytes: int) -> Iterator[dict[str, Any]]:
    """The runner's answer to a ``snapshot`` frame: the archive in bounded
    frames, or (at any point) one ``ok: false`` frame that ends it."""
    root = open_root(path)
    pending = bytearray()
    try:
        for piece in targz_stream(root, max_bytes):
            pending += piece
            while len(pending) > CHUNK_BYTES:
                yield _frame(bytes(pending[:CHUNK_BYTES]), last=False)
                del pending[:CHUNK_BYTES]
    except TooLarge as exc:
        yield {"kind": "snapshot", "ok": False, "message": str(exc)}
        return
    finally:
        os.close(root)
    yield _frame(bytes(pending), last=True)


def _frame(chunk: bytes, last: bool) -> dict[str, Any]:
    return {"kind": "snapshot", "ok": True, "data": base64.b64encode(chunk).decode(), "last": last}


def main(argv: list[str]) -> int:
    """The service's helper: ``-c SOURCE ROOT_FD MAX_BYTES``; the tar.gz on stdout."""
    root_fd, max_bytes = int(argv[1]), int(argv[2])
    try:
        for piece in targz_stream(root_fd, max_bytes):
            sys.stdout.buffer.write(piece)
        sys.stdout.buffer.flush()
    except TooLarge as exc:
        sys.stderr.write(f"{exc}\n")
        return TOO_LARGE_EXIT
    except OSError as exc:  # the service went away, or the workspace root did
        sys.stderr.write(f"{type(exc).__name__}: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
