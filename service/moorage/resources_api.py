"""Session resources over HTTP (../shared/MANAGED_AGENTS.md §8.1): ``GET/POST
/v1/sessions/{id}/resources``, ``GET/POST/DELETE /v1/sessions/{id}/resources/{rid}``.

A resource is kept in the session's record (``resources.py``), so it is there at every later
start of the session's sandbox (``session_start.mount_resources``: a rehydration puts it back).
One added to a session that runs puts the file into its sandbox before the answer: here if it
runs here, else through the replica that runs it (``commands.py``: the body
``{"mount_resource": …}``, applied by ``mount_command``); a suspended session gets it when it is
next rehydrated. Deleting a resource removes it from the record only: no later sandbox gets it,
and the copy in a running sandbox stays (under uploads/ until the sandbox ends; under /workspace/
as a workspace file, saved with the workspace, until the agent removes it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from moorage_session_store import SessionRecord, SessionRecords
from moorage_session_store.commands import Command
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .commands import error_result, store_error_result
from .errors import STORE_ERRORS, Code, MoorageError
from .http_api import ApiError, decode_page, encode_page, endpoint, json_body, limit_param
from .ma_events import timestamp
from .resources import check_can_add, parse_resource, resources_of, stored
from .sessions_api import change_api, check_files, get_record, services_of

if TYPE_CHECKING:
    from .app import Services

log = structlog.get_logger(__name__)
Handler = Callable[[Request, str, SessionRecords], Awaitable[JSONResponse]]
MAX_LIST = 1000


def _resource(record: SessionRecord, resource_id: str) -> dict[str, Any]:
    for item in resources_of(record.api):
        if item.get("id") == resource_id:
            return item
    raise ApiError(f"resource {resource_id} not found", code=Code.RESOURCE_NOT_FOUND)


async def _add(request: Request, tenant: str, records: SessionRecords) -> JSONResponse:
    services = services_of(request)
    session_id = request.path_params["session_id"]
    record = await get_record(records, tenant, session_id)
    resource = parse_resource(await json_body(request), "the request body")
    await check_files(services, tenant, (resource,))
    added = stored(resource, timestamp(datetime.now(UTC)))

    def change(current: SessionRecord) -> dict[str, Any]:
        if current.archived_at is not None:
            raise ApiError(f"session {session_id} is archived and cannot change", code=Code.SESSION_ARCHIVED)
        existing = resources_of(current.api)
        check_can_add(existing, (resource,))
        return {**(current.api or {}), "resources": [*existing, added]}

    record = await change_api(records, tenant, session_id, change)
    log.info("resource_added", session_id=session_id, tenant=tenant, file_id=resource.file_id)
    await _mount(services, record, added)
    return JSONResponse(added)


async def _mount(services: Services, record: SessionRecord, resource: dict[str, Any]) -> None:
    """Into the session's sandbox now, wherever it runs; nothing if it runs nowhere."""
    live = services.sessions.sessions.get(record.id)
    if live is not None and not live.closed:
        await live.files.mount(resource)
        return
    await services.commands.forward(record, {"mount_resource": resource})  # None: it runs nowhere


async def mount_command(services: Services, command: Command) -> dict[str, Any]:
    """The owner's end of a forwarded add: put the resource into the sandbox running here."""
    try:
        record = await get_record(SessionRecords(services.db), command.tenant, command.session_id)
        live = services.sessions.sessions.get(record.id)
        if live is not None and not live.closed:
            await live.files.mount(dict(command.body["mount_resource"]))
        return {"data": []}
    except MoorageError as exc:
        return error_result(exc)
    except STORE_ERRORS as exc:
        return store_error_result(exc)


async def _list(request: Request, tenant: str, records: SessionRecords) -> JSONResponse:
    record = await get_record(records, tenant, request.path_params["session_id"])
    items = resources_of(record.api)
    limit = limit_param(request, MAX_LIST, MAX_LIST)
    cursor = decode_page(request.query_params.get("page"))
    if cursor:
        ids = [str(item.get("id")) for item in items]
        start = ids.index(cursor[0]) + 1 if cursor[0] in ids else len(items)
        items = items[start:]
    page = items[:limit]
    next_page = encode_page([page[-1]["id"]]) if len(items) > limit else None
    return JSONResponse({"data": page, "next_page": next_page})


async def _retrieve(request: Request, tenant: str, records: SessionRecords) -> JSONResponse:
    record = await get_record(records, tenant, request.path_params["session_id"])
    return JSONResponse(_resource(record, request.path_params["resource_id"]))


async def _update(request: Request, tenant: str, records: SessionRecords) -> JSONResponse:
    record = await get_record(records, tenant, request.path_params["session_id"])
    _resource(record, request.path_params["resource_id"])  # 404 first
    await json_body(request)
    raise ApiError(
        "only github_repository resources take an authorization_token; a file resource cannot change",
        code=Code.INVALID_REQUEST,
    )


async def _delete(request: Request, tenant: str, records: SessionRecords) -> JSONResponse:
    session_id = request.path_params["session_id"]
    resource_id = request.path_params["resource_id"]
    _resource(await get_record(records, tenant, session_id), resource_id)

    def change(current: SessionRecord) -> dict[str, Any]:
        if current.archived_at is not None:
            raise ApiError(f"session {session_id} is archived and cannot change", code=Code.SESSION_ARCHIVED)
        _resource(current, resource_id)  # deleted meanwhile: 404
        kept = [item for item in resources_of(current.api) if item.get("id") != resource_id]
        return {**(current.api or {}), "resources": kept}

    await change_api(records, tenant, session_id, change)
    log.info("resource_deleted", session_id=session_id, tenant=tenant)
    return JSONResponse({"id": resource_id, "type": "session_resource_deleted"})


def _endpoint(handler: Handler) -> Callable[[Request], Awaitable[JSONResponse]]:
    return endpoint(handler, SessionRecords)


def routes() -> list[Route]:
    base = "/v1/sessions/{session_id}/resources"
    return [
        Route(base, _endpoint(_add), methods=["POST"]),
        Route(base, _endpoint(_list), methods=["GET"]),
        Route(base + "/{resource_id}", _endpoint(_retrieve), methods=["GET"]),
        Route(base + "/{resource_id}", _endpoint(_update), methods=["POST"]),
        Route(base + "/{resource_id}", _endpoint(_delete), methods=["DELETE"]),
    ]
