"""The sessions HTTP API (../shared/MANAGED_AGENTS.md §5): ``POST/GET /v1/sessions``,
``GET/POST/DELETE /v1/sessions/{id}``, ``POST /v1/sessions/{id}/archive``.

A session made here is the same session the WebSocket serves (``WS /v1/sessions/{id}`` attaches
to it, and a WebSocket session is listed and retrieved here): one record, one event log, one
sandbox. Bodies are parsed by ``ma_sessions`` (pure); this module resolves the agent and the
environment, asks the ``SessionManager`` for the session, and answers in the envelope of
``http_api``. ``initial_events`` are accepted before the answer: a ``200`` means they are in the
session's log (a background run: it goes on with no client attached, and its events are read
later with ``GET …/events``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from moorage_session_store import (
    Agents,
    Environments,
    RevisionConflict,
    SessionQuery,
    SessionRecord,
    SessionRecords,
    Vaults,
)
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .agents_api import session_agent
from .commands import owned_elsewhere
from .errors import STORE_ERRORS, Code, MoorageError
from .http_api import ApiError, bool_param, endpoint, json_body, limit_param, next_time_page, time_page, when_param
from .ma_events import timestamp
from .ma_sessions import MAX_INITIAL_EVENTS, Status, apply_update, parse_create, session_object
from .ma_views import Projection
from .manager import budget_usd, is_session_id
from .pending import AgentTools
from .resources import FileResource, stored
from .vaults_api import check_session_vaults

if TYPE_CHECKING:
    from .app import Services

log = structlog.get_logger(__name__)

Handler = Callable[[Request, str, SessionRecords], Awaitable[JSONResponse]]
NO_RETRY = {"x-should-retry": "false"}
#: How long a create with ``initial_events`` waits for them to be in the log (the sandbox starts first).
ACCEPT_WAIT_S = 10.0


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def not_found(session_id: str) -> ApiError:
    return ApiError(f"session {session_id} not found", code=Code.SESSION_NOT_FOUND)


async def get_record(records: SessionRecords, tenant: str, session_id: str) -> SessionRecord:
    """The tenant's session, or ``404`` (another tenant's answers exactly like an unknown one)."""
    record = await records.get(session_id) if is_session_id(session_id) else None
    if record is None or record.tenant != tenant or record.state == "closed":
        raise not_found(session_id)
    return record


async def check_files(services: Services, tenant: str, resources: tuple[FileResource, ...]) -> None:
    """Each resource's file is the tenant's (another tenant's answers like an unknown one)."""
    files = services.files_repo()
    for resource in resources:
        if await files.get(tenant, resource.file_id) is None:
            raise ApiError(f"file {resource.file_id} not found", code=Code.FILE_NOT_FOUND)


def tools_of(services: Services, record: SessionRecord) -> AgentTools:
    """The tool policy the session runs with (its pinned agent's, else the operator's default)."""
    agent = record.options.get("agent")
    try:
        return AgentTools.parse(agent if agent is not None else services.settings.default_agent)
    except ValueError:
        return AgentTools()


async def projection_of(services: Services, record: SessionRecord) -> Projection:
    """The session's events as Managed Agents events, caught up with its log (ma_views.py)."""
    return await services.projections.get(record.id, tools_of(services, record))


async def status_of(services: Services, record: SessionRecord) -> Status:
    """``running`` while a turn runs (or messages wait for it) and nothing waits for a client;
    ``idle`` otherwise, suspended sessions included; ``rescheduling`` while its sandbox starts.
    A session another replica runs is as its log says (the last status event)."""
    if record.state == "closed":
        return "terminated"
    live = services.sessions.sessions.get(record.id)
    if live is None or live.closed:
        if owned_elsewhere(record, services.settings.replica, datetime.now(UTC)):
            return "running" if (await projection_of(services, record)).projector.running else "idle"
        return "idle"
    if not live.ready.is_set():
        return "rescheduling"
    return "running" if live.busy and not len(live.core.pending) else "idle"


async def to_object(services: Services, record: SessionRecord) -> dict[str, Any]:
    return session_object(record, await status_of(services, record), datetime.now(UTC))


async def _create(request: Request, tenant: str, records: SessionRecords) -> JSONResponse:
    services = services_of(request)
    spec = parse_create(await json_body(request))
    if len(spec.initial_events) > services.settings.max_queued_turns + 1:
        raise ApiError(
            f"initial_events: at most {services.settings.max_queued_turns + 1} messages here "
            f"(one turn and MOORAGE_MAX_QUEUED_TURNS={services.settings.max_queued_turns} queued; "
            f"the API allows {MAX_INITIAL_EVENTS})",
            code=Code.INVALID_REQUEST,
        )
    env = await Environments(services.db).get(tenant, spec.environment_id)
    if env is None:
        raise ApiError(f"environment {spec.environment_id} not found", code=Code.ENVIRONMENT_NOT_FOUND)
    if env.archived_at is not None:
        raise ApiError(
            f"environment {spec.environment_id} is archived: new sessions cannot use it",
            code=Code.ENVIRONMENT_ARCHIVED,
        )
    version = str(spec.agent.version) if spec.agent.version is not None else None
    agent = await session_agent(Agents(services.db), tenant, spec.agent.id, version)
    await check_session_vaults(Vaults(services.db), tenant, spec.vault_ids, services.backend.name)
    environment = {"id": env.id, "spec": env.spec}  # its egress (egress_policy.py), kept for rehydration
    await check_files(services, tenant, spec.resources)
    now = timestamp(datetime.now(UTC))
    api = spec.api_fields([stored(resource, now) for resource in spec.resources])
    session = await services.sessions.create(tenant, agent, environment=environment, api=api)
    log.info(
        "session_created", session_id=session.id, tenant=tenant, view="http", initial_events=len(spec.initial_events)
    )
    try:
        for frame in spec.initial_events:
            ordinal = await session.submit(frame)
            if await session.events.seq_of(ordinal, ACCEPT_WAIT_S) is None:
                raise ApiError("the session's event log cannot be written; try again", code=Code.STORE_UNAVAILABLE)
    except MoorageError:
        # Not made after all (its sandbox could not start, its log cannot be written): the
        # client retries a 5xx, and the retry must not find a half-made twin.
        with contextlib.suppress(MoorageError, *STORE_ERRORS):
            await services.sessions.delete(session.id, tenant)
        raise
    record = await get_record(records, tenant, session.id)
    return JSONResponse(await to_object(services, record))


async def _list(request: Request, tenant: str, records: SessionRecords) -> JSONResponse:
    services = services_of(request)
    limit = limit_param(request)
    order = request.query_params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise ApiError("order must be 'asc' or 'desc'", code=Code.INVALID_REQUEST)
    version = request.query_params.get("agent_version")
    if version is not None and not version.isdigit():
        raise ApiError("agent_version must be a positive integer", code=Code.INVALID_REQUEST)
    for unsupported in ("deployment_id", "memory_store_id"):
        if request.query_params.get(unsupported):
            raise ApiError(f"{unsupported}: not supported by this server", code=Code.NOT_SUPPORTED)
    statuses = set(request.query_params.getlist("statuses[]"))
    if statuses - {"idle", "running", "rescheduling", "terminated"}:
        raise ApiError("statuses[] takes idle, running, rescheduling, terminated", code=Code.INVALID_REQUEST)
    query = SessionQuery(
        agent_id=request.query_params.get("agent_id"),
        agent_version=int(version) if version is not None else None,
        include_archived=bool_param(request, "include_archived"),
        created_after=when_param(request, "created_at[gt]"),
        created_from=when_param(request, "created_at[gte]"),
        created_before=when_param(request, "created_at[lt]"),
        created_until=when_param(request, "created_at[lte]"),
        newest_first=order == "desc",
    )
    page = await records.page(tenant, query, time_page(request), limit + 1)
    more = len(page) > limit
    page = page[:limit]
    data = [await to_object(services, r) for r in page]
    if statuses:  # a status is live state, not a column: filtered here (a page may come out short)
        data = [item for item in data if item["status"] in statuses]
    next_page = next_time_page(page[-1].created_at, page[-1].id) if more else None
    return JSONResponse({"data": data, "next_page": next_page, "prev_page": None})


async def _retrieve(request: Request, tenant: str, records: SessionRecords) -> JSONResponse:
    record = await get_record(records, tenant, request.path_params["session_id"])
    return JSONResponse(await to_object(services_of(request), record))


async def change_api(
    records: SessionRecords, tenant: str, session_id: str, change: Callable[[SessionRecord], dict[str, Any]]
) -> SessionRecord:
    """Apply ``change`` to the session's ``api`` fields under the record's compare-and-set: 404 for
    an unknown (or another tenant's) session, ``version_conflict`` when other writers kept winning."""
    try:
        record = await records.change_api(session_id, tenant, change)
    except RevisionConflict:
        raise ApiError(
            f"session {session_id} kept changing under this update; try again", code=Code.VERSION_CONFLICT
        ) from None
    if record is None:
        raise not_found(session_id)
    return record


async def _update(request: Request, tenant: str, records: SessionRecords) -> JSONResponse:
    services = services_of(request)
    session_id = request.path_params["session_id"]
    body = await json_body(request)
    await get_record(records, tenant, session_id)  # 404 before the body's own errors

    def change(record: SessionRecord) -> dict[str, Any]:
        if record.archived_at is not None:
            raise ApiError(f"session {session_id} is archived and cannot change", code=Code.SESSION_ARCHIVED)
        return apply_update(record.api or {}, body)

    record = await change_api(records, tenant, session_id, change)
    live = services.sessions.sessions.get(session_id)
    if live is not None:  # a new budget applies from the next model request
        live.ledger.budget_usd = budget_usd(record.api)
    log.info("session_updated", session_id=session_id, tenant=tenant)
    return JSONResponse(await to_object(services, record))


async def _archive(request: Request, tenant: str, records: SessionRecords) -> JSONResponse:
    services = services_of(request)
    session_id = request.path_params["session_id"]
    if not is_session_id(session_id):
        raise not_found(session_id)
    record = await records.archive(session_id, tenant)
    if record is None:
        raise not_found(session_id)
    log.info("session_archived", session_id=session_id, tenant=tenant)
    return JSONResponse(await to_object(services, record))


async def _delete(request: Request, tenant: str, records: SessionRecords) -> JSONResponse:
    services = services_of(request)
    session_id = request.path_params["session_id"]
    try:
        await services.sessions.delete(session_id, tenant)
    except MoorageError as exc:
        headers = NO_RETRY if exc.code == Code.SESSION_LOCKED else None
        raise ApiError(exc.message, code=exc.code, headers=headers) from None
    services.sessions.deps.watch.deleted(session_id)
    services.projections.forget(session_id)
    return JSONResponse({"id": session_id, "type": "session_deleted"})


def _endpoint(handler: Handler) -> Callable[[Request], Awaitable[JSONResponse]]:
    return endpoint(handler, SessionRecords)


def routes() -> list[Route]:
    """The sessions routes (HTTP; the WebSocket routes of the same paths are the app's)."""
    return [
        Route("/v1/sessions", _endpoint(_create), methods=["POST"]),
        Route("/v1/sessions", _endpoint(_list), methods=["GET"]),
        Route("/v1/sessions/{session_id}", _endpoint(_retrieve), methods=["GET"]),
        Route("/v1/sessions/{session_id}", _endpoint(_update), methods=["POST"]),
        Route("/v1/sessions/{session_id}", _endpoint(_delete), methods=["DELETE"]),
        Route("/v1/sessions/{session_id}/archive", _endpoint(_archive), methods=["POST"]),
    ]
