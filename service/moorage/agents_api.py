"""The agents HTTP API (../shared/MANAGED_AGENTS.md §2-§3): ``POST/GET /v1/agents``,
``GET/POST /v1/agents/{id}``, ``POST /v1/agents/{id}/archive``, ``GET /v1/agents/{id}/versions``.

A thin I/O layer: the spec rules live in ``agents.py`` (pure), the storage in
``moorage_session_store.Agents``. Authenticated like the WebSocket (``Authorization: Bearer``,
``x-api-key``), tenant-scoped (another tenant's agent is a plain 404), errors in the Managed
Agents envelope (§1.6) with the stable code in ``details.error_code``, and a ``request-id`` header
on every answer. Lists are ``{"data": [...], "next_page": cursor|null}`` (§1.5). What every
Managed Agents endpoint shares (auth, envelope, cursors, body) is in ``http_api``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from moorage_session_store import AgentArchived, AgentNotFound, AgentRecord, Agents, VersionConflict
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .agents import agent_object, create_spec, runner_agent, update_spec, update_version
from .errors import STORE_ERRORS, Code, MoorageError, store_unavailable
from .http_api import (
    ApiError,
    bool_param,
    decode_page,
    encode_page,
    endpoint,
    invalid,
    json_body,
    limit_param,
    positive,
    time_page,
    time_paged,
    timestamp,
    when_param,
)

log = structlog.get_logger(__name__)

UPDATE_ATTEMPTS = 3  # an unconditional update re-reads and retries when another writer won

Handler = Callable[[Request, str, Agents], Awaitable[JSONResponse]]


def to_object(record: AgentRecord) -> dict[str, Any]:
    archived = timestamp(record.archived_at) if record.archived_at is not None else None
    return agent_object(
        record.id, record.version, record.spec, timestamp(record.created_at), timestamp(record.updated_at), archived
    )


def _not_found(agent_id: str) -> ApiError:
    return ApiError(f"agent {agent_id} not found", code=Code.AGENT_NOT_FOUND)


# -- handlers ----------------------------------------------------------------


async def _create(request: Request, tenant: str, agents: Agents) -> JSONResponse:
    spec = create_spec(await json_body(request))
    record = await agents.create(tenant, spec)
    log.info("agent_created", tenant=tenant, agent_id=record.id)
    return JSONResponse(to_object(record))


async def _list(request: Request, tenant: str, agents: Agents) -> JSONResponse:
    limit = limit_param(request)
    records = await agents.list(
        tenant,
        limit=limit + 1,
        after=time_page(request),
        include_archived=bool_param(request, "include_archived"),
        created_gte=when_param(request, "created_at[gte]"),
        created_lte=when_param(request, "created_at[lte]"),
    )
    return time_paged(records, limit, to_object)


async def _retrieve(request: Request, tenant: str, agents: Agents) -> JSONResponse:
    agent_id = request.path_params["agent_id"]
    version = positive(request.query_params.get("version"), "version")
    record = await agents.get(tenant, agent_id, version)
    if record is None:
        raise (
            _not_found(agent_id)
            if version is None
            else ApiError(f"agent {agent_id} has no version {version}", code=Code.AGENT_NOT_FOUND)
        )
    return JSONResponse(to_object(record))


def _conflict(agent_id: str, current: int, expected: int) -> ApiError:
    # Not a lock timeout: the client must not re-send it (it retries 409 unless told).
    return ApiError(
        f"agent {agent_id} is at version {current}, not {expected}; read it again",
        code=Code.VERSION_CONFLICT,
        headers={"x-should-retry": "false"},
    )


async def _update(request: Request, tenant: str, agents: Agents) -> JSONResponse:
    agent_id = request.path_params["agent_id"]
    body = await json_body(request)
    expected = update_version(body)
    for _ in range(UPDATE_ATTEMPTS):
        current = await agents.get(tenant, agent_id)
        if current is None:
            raise _not_found(agent_id)
        if current.archived_at is not None:
            raise ApiError(f"agent {agent_id} is archived and cannot change", code=Code.AGENT_ARCHIVED)
        if expected is not None and expected != current.version:
            raise _conflict(agent_id, current.version, expected)
        spec = update_spec(current.spec, body)
        if spec == current.spec:
            return JSONResponse(to_object(current))  # a no-op makes no version
        try:
            record = await agents.update(tenant, agent_id, current.version, spec)
        except VersionConflict:
            if expected is not None:
                raise _conflict(agent_id, current.version + 1, expected) from None
            continue  # unconditional: apply the update to what the other writer made
        except AgentArchived:
            raise ApiError(f"agent {agent_id} is archived and cannot change", code=Code.AGENT_ARCHIVED) from None
        except AgentNotFound:
            raise _not_found(agent_id) from None
        log.info("agent_updated", tenant=tenant, agent_id=agent_id, version=record.version)
        return JSONResponse(to_object(record))
    raise ApiError(
        f"agent {agent_id} kept changing under this update; try again",
        code=Code.VERSION_CONFLICT,
        headers={"x-should-retry": "false"},
    )


async def _archive(request: Request, tenant: str, agents: Agents) -> JSONResponse:
    agent_id = request.path_params["agent_id"]
    record = await agents.archive(tenant, agent_id)
    if record is None:
        raise _not_found(agent_id)
    log.info("agent_archived", tenant=tenant, agent_id=agent_id)
    return JSONResponse(to_object(record))


async def _versions(request: Request, tenant: str, agents: Agents) -> JSONResponse:
    agent_id = request.path_params["agent_id"]
    limit = limit_param(request)
    before = None
    if (key := decode_page(request.query_params.get("page"))) is not None:
        if len(key) != 1 or isinstance(key[0], bool) or not isinstance(key[0], int):
            raise invalid("page is not a cursor this server gave out")
        before = key[0]
    records = await agents.versions(tenant, agent_id, limit=limit + 1, before=before)
    if records is None:
        raise _not_found(agent_id)
    page, more = records[:limit], len(records) > limit
    next_page = encode_page([page[-1].version]) if more else None
    return JSONResponse({"data": [to_object(r) for r in page], "next_page": next_page})


async def session_agent(
    agents: Agents, tenant: str, agent_id: str | None, version: str | None
) -> dict[str, Any] | None:
    """The agent a new session runs (``WS /v1/sessions?agent=ID[&version=N]``): its current version
    or version ``N`` as the runner's ``start`` frame carries it; ``None`` without ``agent`` (the
    operator's default). Raises ``MoorageError`` (fatal): unknown or another tenant's agent
    (``agent_not_found``), archived (``agent_archived``), a malformed query (``invalid_request``),
    the database down (``store_unavailable``)."""
    if agent_id is None:
        if version is not None:
            raise MoorageError("version= needs agent=", code=Code.INVALID_REQUEST, fatal=True)
        return None
    try:
        number = positive(version, "version")
    except ApiError as exc:
        raise MoorageError(exc.message, code=Code.INVALID_REQUEST, fatal=True) from None
    try:
        record = await agents.get(tenant, agent_id, number)
    except STORE_ERRORS as exc:
        raise MoorageError(store_unavailable(exc), code=Code.STORE_UNAVAILABLE, fatal=True) from exc
    if record is None:
        what = f"agent {agent_id}" + (f" version {number}" if number is not None else "")
        raise MoorageError(f"{what} not found", code=Code.AGENT_NOT_FOUND, fatal=True)
    if record.archived_at is not None:
        raise MoorageError(
            f"agent {agent_id} is archived: new sessions cannot use it", code=Code.AGENT_ARCHIVED, fatal=True
        )
    return runner_agent(record.id, record.version, record.spec)


def _endpoint(handler: Handler) -> Callable[[Request], Awaitable[JSONResponse]]:
    return endpoint(handler, Agents)


def routes() -> list[Route]:
    """The agents routes, for the app's route table."""
    return [
        Route("/v1/agents", _endpoint(_create), methods=["POST"]),
        Route("/v1/agents", _endpoint(_list), methods=["GET"]),
        Route("/v1/agents/{agent_id}", _endpoint(_retrieve), methods=["GET"]),
        Route("/v1/agents/{agent_id}", _endpoint(_update), methods=["POST"]),
        Route("/v1/agents/{agent_id}/archive", _endpoint(_archive), methods=["POST"]),
        Route("/v1/agents/{agent_id}/versions", _endpoint(_versions), methods=["GET"]),
    ]
