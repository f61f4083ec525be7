"""The Files API (../shared/MANAGED_AGENTS.md §8.3): ``POST/GET /v1/files``,
``GET/DELETE /v1/files/{id}``, ``GET /v1/files/{id}/content``.

A thin I/O layer like ``environments_api``: the rules live in ``files.py`` (pure), the form parser
in ``multipart.py`` (sans-I/O), the storage in ``moorage_session_store.Files``. An upload streams:
each piece of the request body goes through the form parser into the store's chunk rows as it
arrives, so memory stays bounded whatever the file's size (nothing is spooled, in memory or on
disk). It is refused, with nothing kept, past ``MOORAGE_FILE_MAX_BYTES`` (413 ``file_too_large``,
at once when the declared Content-Length already says so) or past the tenant's storage quota
(400 ``storage_quota_exceeded``). A download streams the stored chunks one at a time, with a
Content-Length, so a file deleted mid-download ends as a short, failed transfer, never as a
silently shorter file. Another tenant's file is a plain 404 ``file_not_found``; an expired one
404 ``file_expired`` until the sweep deletes it.

Form rules: one ``file`` part (its filename and Content-Type as sent, cleaned by ``files.py``),
and optionally ``expires_in_seconds`` before it (the official client sends it first; sent after
the file it is refused and nothing is kept). Other fields are read (≤ 1 KiB each) and ignored;
at most 16 parts.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import structlog
from moorage_session_store import Database, FileRecord, Files, FileTooLarge
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .errors import STORE_ERRORS, Code, MoorageError
from .files import (
    UploadLimit,
    clean_filename,
    clean_mime_type,
    download_headers,
    expires_at,
    file_object,
    quota_refusal,
    upload_limit,
)
from .http_api import DRAIN_BYTES, ApiError, drain, endpoint, invalid, limit_param, time_page, time_paged
from .multipart import Event, FormReader, MalformedForm, PartData, PartEnd, PartStart, boundary_of

if TYPE_CHECKING:
    from .app import Services

log = structlog.get_logger(__name__)

Handler = Callable[[Request, str, Files], Awaitable[Response]]
MAX_PARTS = 16
FIELD_MAX_BYTES = 1024
#: The most a well-formed form adds to its file: every part's headers (8 lines of ≤ 4 KiB + CRLF),
#: a field's value, its boundary lines. A declared body longer than the cap plus this is refused unread.
FORM_OVERHEAD = MAX_PARTS * (8 * (4096 + 130) + FIELD_MAX_BYTES + 200)
MAX_IDS = 100
MAX_LIST_LIMIT = 1000
FIELDS = frozenset({"expires_in_seconds"})


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _not_found(file_id: str) -> ApiError:
    return ApiError(f"file {file_id} not found", code=Code.FILE_NOT_FOUND)


async def _live(files: Files, tenant: str, file_id: str) -> FileRecord:
    """The tenant's file, or 404 (``file_expired`` once its time has passed)."""
    record = await files.get(tenant, file_id)
    if record is None:
        raise _not_found(file_id)
    if record.expired(datetime.now(UTC)):
        raise ApiError(f"file {file_id} has expired", code=Code.FILE_EXPIRED)
    return record


# -- upload --------------------------------------------------------------------


async def _events(stream: AsyncIterator[bytes], reader: FormReader) -> AsyncGenerator[Event, None]:
    async for chunk in stream:
        for event in reader.feed(chunk):
            yield event
    reader.finish()


async def _part_bytes(parts: AsyncIterator[Event]) -> AsyncIterator[bytes]:
    """The current part's data, up to its end."""
    async for event in parts:
        if isinstance(event, PartEnd):
            return
        if isinstance(event, PartData):
            yield event.data


async def _field(parts: AsyncIterator[Event], name: str) -> str:
    value = bytearray()
    async for data in _part_bytes(parts):
        value += data
        if len(value) > FIELD_MAX_BYTES:
            raise invalid(f"the form field {name!r} is over {FIELD_MAX_BYTES} bytes")
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise invalid(f"the form field {name!r} is not UTF-8") from None


async def _store(parts: AsyncIterator[Event], files: Files, tenant: str, limit: UploadLimit) -> FileRecord:
    """Read the form, storing its ``file`` part as it arrives; the stored file. On any refusal
    after the file was stored, it is deleted again."""
    fields: dict[str, str] = {}
    record: FileRecord | None = None
    try:
        async for event in parts:
            if not isinstance(event, PartStart):
                continue  # the form parser starts every part's events with its PartStart
            if event.name != "file":
                value = await _field(parts, event.name)
                if record is not None and event.name in FIELDS:
                    raise invalid(f"{event.name} must come before the file part")
                fields[event.name] = value
                continue
            if record is not None:
                raise invalid("the form has more than one file part")
            mime_type = clean_mime_type(event.content_type)
            filename = clean_filename(event.filename, mime_type)
            expiry = fields.get("expires_in_seconds")
            record = await files.put(
                tenant,
                filename=filename,
                mime_type=mime_type,
                chunks=_part_bytes(parts),
                max_bytes=limit.max_bytes,
                expires_at=None if expiry is None else expires_at(expiry, datetime.now(UTC)),
            )
    except BaseException:
        if record is not None:
            await files.delete(tenant, record.id)
        raise
    if record is None:
        raise invalid("the form has no file part (a part named 'file' with a filename)")
    return record


async def _upload(request: Request, tenant: str, files: Files) -> Response:
    services = _services(request)
    cap, quota = services.settings.file_max_bytes, services.sessions.quota.limit
    stream = request.stream()
    refusal: MoorageError
    try:
        boundary = boundary_of(request.headers.get("content-type"))
    except MalformedForm as exc:
        await drain(stream, DRAIN_BYTES)
        raise invalid(str(exc)) from None
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap + FORM_OVERHEAD:
        if int(declared) <= DRAIN_BYTES:
            await drain(stream, DRAIN_BYTES)
        raise UploadLimit(cap, by_quota=False).refusal(cap, quota)
    used = await services.sessions.records.tenant_storage_bytes(tenant) if quota > 0 else 0
    limit = upload_limit(cap, quota, used)
    if limit is None:
        await drain(stream, DRAIN_BYTES)
        raise quota_refusal(quota, used)
    parts = _events(stream, FormReader(boundary, MAX_PARTS))
    try:
        record = await _store(parts, files, tenant, limit)
    except ClientDisconnect:
        log.info("file_upload_cut", tenant=tenant)
        raise invalid("the client disconnected during the upload") from None
    except FileTooLarge:
        refusal = limit.refusal(cap, quota)
    except MalformedForm as exc:
        refusal = invalid(str(exc))
    except MoorageError as exc:
        refusal = exc
    else:
        services.metrics.file_bytes.labels("in").inc(record.size_bytes)
        log.info("file_uploaded", tenant=tenant, file_id=record.id, size_bytes=record.size_bytes)
        await _recount(services, files, tenant)
        return JSONResponse(file_object(record))
    await parts.aclose()
    log.info("file_upload_refused", tenant=tenant, code=str(refusal.code))
    await drain(stream, DRAIN_BYTES)  # so the client reads the refusal (bounded)
    raise refusal


# -- the rest --------------------------------------------------------------------


async def _list(request: Request, tenant: str, files: Files) -> Response:
    query = request.query_params
    scope = query.get("scope_id")
    now = datetime.now(UTC)
    ids = list(dict.fromkeys([*query.getlist("ids[]"), *query.getlist("ids")]))
    if ids:
        if len(ids) > MAX_IDS:
            raise invalid(f"ids may name at most {MAX_IDS} files")
        if "page" in query or "limit" in query:
            raise invalid("ids cannot be combined with page or limit")
        records = await files.list(tenant, scope_session_id=scope, ids=ids, limit=MAX_IDS, now=now)
        return JSONResponse({"data": [file_object(r) for r in records], "next_page": None})
    limit = limit_param(request, maximum=MAX_LIST_LIMIT)
    records = await files.list(tenant, scope_session_id=scope, limit=limit + 1, after=time_page(request), now=now)
    return time_paged(records, limit, file_object)


async def _retrieve(request: Request, tenant: str, files: Files) -> Response:
    return JSONResponse(file_object(await _live(files, tenant, request.path_params["file_id"])))


async def _download(request: Request, tenant: str, files: Files) -> Response:
    record = await _live(files, tenant, request.path_params["file_id"])
    if not record.downloadable:
        raise ApiError(f"file {record.id} is not downloadable", code=Code.FILE_NOT_DOWNLOADABLE)
    log.info("file_downloaded", tenant=tenant, file_id=record.id, size_bytes=record.size_bytes)
    return StreamingResponse(
        _counted(_services(request), files.read(tenant, record.id)), headers=download_headers(record)
    )


async def _counted(services: Services, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        services.metrics.file_bytes.labels("out").inc(len(chunk))
        yield chunk


async def _delete(request: Request, tenant: str, files: Files) -> Response:
    file_id = request.path_params["file_id"]
    if not await files.delete(tenant, file_id):
        raise _not_found(file_id)
    _services(request).metrics.files_deleted.labels("request").inc()
    log.info("file_deleted", tenant=tenant, file_id=file_id)
    await _recount(_services(request), files, tenant)
    return JSONResponse({"id": file_id, "type": "file_deleted"})


async def _recount(services: Services, files: Files, tenant: str) -> None:
    """The tenant's ``moorage_tenant_file_bytes`` at once (the file janitor refreshes every
    tenant's each ``FILE_USAGE_S``: other replicas' uploads, expiries, sessions' outputs)."""
    with contextlib.suppress(*STORE_ERRORS):  # the upload or delete is done: the gauge can wait
        used = (await files.bytes_by_tenant(tenant)).get(tenant, 0)
        services.metrics.tenant_file_bytes.set(tenant, used)


def _endpoint(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def with_files(request: Request, tenant: str, _db: Database) -> Response:
        return await handler(request, tenant, _services(request).files_repo())  # the configured store

    return endpoint(with_files, lambda db: db)


def routes() -> list[Route]:
    """The files routes, for the app's route table."""
    return [
        Route("/v1/files", _endpoint(_upload), methods=["POST"]),
        Route("/v1/files", _endpoint(_list), methods=["GET"]),
        Route("/v1/files/{file_id}", _endpoint(_retrieve), methods=["GET"]),
        Route("/v1/files/{file_id}", _endpoint(_delete), methods=["DELETE"]),
        Route("/v1/files/{file_id}/content", _endpoint(_download), methods=["GET"]),
    ]
