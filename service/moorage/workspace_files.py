"""A session's workspace files over HTTP (a Moorage extension; docs/protocol.md, "Workspace
files"): ``GET /v1/sessions/{id}/workspace`` lists them, ``GET /v1/sessions/{id}/workspace/{path}``
downloads one. What the agent made outside ``/mnt/session/outputs`` (which become session files
on their own) is reachable too: a report it wrote to ``/workspace/out/``, a repository it cloned.

Where the files come from, and why:

- **Never read with the service's privileges.** The workspace is written by the agent, who may
  have made ``notes.txt`` a symlink to ``/etc/shadow`` or the service's database. Every read goes
  through the same archive the snapshots use (workspaces.py): a helper, as the sandbox's own uid,
  walks it with ``O_NOFOLLOW`` and stores a symlink as a link. This module reads that archive
  only, in memory or a spooled temporary file, and never extracts anything to disk: a symlink is
  listed (``type: symlink``, with its target) and not downloadable.
- **Live here:** a fresh archive of the live workspace (``source: live``). **Suspended, or live
  on another replica, or on a backend whose workspace is not on this host (Kubernetes):** the
  last stored snapshot (``source: snapshot``, as of the last checkpoint or suspension; empty
  with ``source: none`` when none was saved yet).
- Bounded: the archive is capped by ``MOORAGE_WORKSPACE_MAX_BYTES`` like every snapshot; a list
  says at most ``MAX_LISTED`` entries (``truncated: true`` past that).
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import tarfile
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any

from moorage_session_store import SessionRecords
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .errors import Code
from .files import content_disposition
from .http_api import ApiError, endpoint
from .sessions_api import get_record, services_of
from .workspaces import archive

if TYPE_CHECKING:
    from .app import Services

MAX_LISTED = 10_000
MAX_PATH = 4096
SPOOL_BYTES = 8 * 1024 * 1024  # an archive up to this stays in memory; a larger one goes to a temp file
READ_BYTES = 256 * 1024


@dataclass(frozen=True)
class Entry:
    path: str
    type: str  # file, directory, symlink
    size: int
    modified_at: str
    target: str | None = None  # a symlink's

    def wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "type": self.type, "size": self.size}
        out["modified_at"] = self.modified_at
        if self.target is not None:
            out["target"] = self.target
        return out


def clean_path(raw: str) -> str | None:
    """A requested path as an archive member name, or None when it cannot name one (pure):
    relative, no ``..``, no empty or NUL parts; a leading ``/workspace/`` is accepted."""
    path = raw.removeprefix("/workspace/").lstrip("/")
    if not path or len(path) > MAX_PATH or "\0" in path:
        return None
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return None
    return posixpath.join(*parts)


def entry_of(member: tarfile.TarInfo) -> Entry | None:
    """What a list says of one archive member (pure); None for kinds the archive never holds."""
    when = datetime.fromtimestamp(member.mtime, UTC).isoformat().replace("+00:00", "Z")
    name = member.name.rstrip("/")
    if member.isfile():
        return Entry(name, "file", member.size, when)
    if member.isdir():
        return Entry(name, "directory", 0, when)
    if member.issym():
        return Entry(name, "symlink", 0, when, member.linkname)
    return None


def listing(archive_file: IO[bytes]) -> tuple[list[Entry], bool]:
    """Every entry of a tar.gz (blocking), up to ``MAX_LISTED``; and whether there were more."""
    entries: list[Entry] = []
    with tarfile.open(fileobj=archive_file, mode="r|gz") as tar:
        for member in tar:
            entry = entry_of(member)
            if entry is None:
                continue
            if len(entries) == MAX_LISTED:
                return entries, True
            entries.append(entry)
    return entries, False


def member_bytes(archive_file: IO[bytes], path: str) -> Iterator[bytes]:
    """The content of the regular file ``path`` in a tar.gz, in pieces (blocking); ``KeyError``
    when the archive has no such regular file."""
    with tarfile.open(fileobj=archive_file, mode="r|gz") as tar:
        for member in tar:
            if member.name.rstrip("/") != path:
                continue
            if not member.isfile():
                break
            reader = tar.extractfile(member)
            assert reader is not None
            while piece := reader.read(READ_BYTES):
                yield piece
            return
    raise KeyError(path)


async def _spool(chunks: AsyncIterable[bytes]) -> tempfile.SpooledTemporaryFile[bytes] | None:
    # Handed to the caller, who closes it (a context manager here would close it on return).
    spool: tempfile.SpooledTemporaryFile[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115
    wrote = False
    try:
        async for chunk in chunks:
            spool.write(chunk)
            wrote = wrote or bool(chunk)
    except BaseException:
        spool.close()
        raise
    if not wrote:
        spool.close()
        return None
    spool.seek(0)
    return spool


async def workspace_archive(services: Services, session_id: str) -> tuple[str, IO[bytes] | None]:
    """(source, the workspace's tar.gz spooled, or None): live from this replica's sandbox, else
    the stored snapshot."""
    live = services.sessions.sessions.get(session_id)
    path = live.workspace if live is not None and not live.closed and live.active else None
    settings = services.settings
    if path is not None and path.is_dir():
        async with archive(path, settings.workspace_max_bytes, settings.workspace_snapshot_timeout_s) as chunks:
            return "live", await _spool(chunks)
    stored = await _spool(services.sessions.records.load_workspace_stream(session_id))
    return ("snapshot" if stored is not None else "none"), stored


def _session_id(request: Request) -> str:
    return str(request.path_params["session_id"])


async def _list(request: Request, tenant: str, records: SessionRecords) -> Response:
    await get_record(records, tenant, _session_id(request))
    source, found = await workspace_archive(services_of(request), _session_id(request))
    entries: list[Entry] = []
    truncated = False
    if found is not None:
        with contextlib.closing(found):
            entries, truncated = await asyncio.to_thread(listing, found)
    body = {"data": [e.wire() for e in entries], "source": source, "truncated": truncated}
    return JSONResponse(body)


async def _download(request: Request, tenant: str, records: SessionRecords) -> Response:
    session_id = _session_id(request)
    await get_record(records, tenant, session_id)
    raw = str(request.path_params["path"])
    path = clean_path(raw)
    if path is None:
        raise ApiError(f"{raw[:200]!r} is not a path in the workspace", code=Code.INVALID_REQUEST)
    _, found = await workspace_archive(services_of(request), session_id)
    missing = ApiError(f"no file {path!r} in session {session_id}'s workspace", code=Code.WORKSPACE_FILE_NOT_FOUND)
    if found is None:
        raise missing
    pieces = member_bytes(found, path)
    try:
        first = await asyncio.to_thread(next, pieces, b"")
    except KeyError:
        found.close()
        raise missing from None

    async def body() -> AsyncIterator[bytes]:
        try:
            if first:
                yield first
            while piece := await asyncio.to_thread(next, pieces, b""):
                yield piece
        finally:
            found.close()

    headers = {  # never rendered in the service's origin: the agent wrote it (as files.download_headers)
        "content-disposition": content_disposition(posixpath.basename(path)),
        "x-content-type-options": "nosniff",
        "content-security-policy": "default-src 'none'; sandbox",
        "cache-control": "private, no-store",
    }
    return StreamingResponse(body(), media_type="application/octet-stream", headers=headers)


def routes() -> list[Route]:
    return [
        Route("/v1/sessions/{session_id}/workspace", endpoint(_list, SessionRecords), methods=["GET"]),
        Route("/v1/sessions/{session_id}/workspace/{path:path}", endpoint(_download, SessionRecords), methods=["GET"]),
    ]
