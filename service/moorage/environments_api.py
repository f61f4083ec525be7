"""The environments HTTP API (../shared/MANAGED_AGENTS.md §2, §4): ``POST/GET /v1/environments``,
``GET/POST/DELETE /v1/environments/{id}``, ``POST /v1/environments/{id}/archive``.

A thin I/O layer like ``agents_api``: the spec rules live in ``environments.py`` (pure), the
storage in ``moorage_session_store.Environments``, auth, the error envelope, ``request-id`` and
cursors in ``http_api``. Another tenant's environment is a plain 404 ``environment_not_found``.
The self-hosted work queue (``/v1/environments/{id}/work…``, §4.3) answers ``501``
``not_supported`` with ``x-should-retry: false``: every Moorage session runs in Moorage's own
sandboxes, there is no outside worker to hand work to.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from moorage_session_store import (
    EnvironmentArchived,
    EnvironmentNameTaken,
    EnvironmentNotFound,
    EnvironmentRecord,
    Environments,
    RevisionConflict,
)
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .environments import Spec, create_spec, environment_object, update_spec
from .errors import Code
from .http_api import ApiError, bool_param, endpoint, json_body, limit_param, time_page, time_paged, timestamp
from .packages import packages_not_supported, wanted

log = structlog.get_logger(__name__)

Handler = Callable[[Request, str, Environments], Awaitable[JSONResponse]]
NO_RETRY = {"x-should-retry": "false"}
UPDATE_ATTEMPTS = 3  # an update re-reads and re-applies itself when another writer won


def to_object(record: EnvironmentRecord) -> dict[str, Any]:
    archived = timestamp(record.archived_at) if record.archived_at is not None else None
    return environment_object(
        record.id, record.spec, timestamp(record.created_at), timestamp(record.updated_at), archived
    )


def _not_found(env_id: str) -> ApiError:
    return ApiError(f"environment {env_id} not found", code=Code.ENVIRONMENT_NOT_FOUND)


def _archived(env_id: str) -> ApiError:
    return ApiError(f"environment {env_id} is archived and cannot change", code=Code.ENVIRONMENT_ARCHIVED)


def _taken(exc: EnvironmentNameTaken) -> ApiError:
    # Not a lock timeout: the client must not re-send it (it retries 409 unless told).
    return ApiError(exc.message, code=Code.ENVIRONMENT_NAME_TAKEN, headers=NO_RETRY)


def _unrestricted_allowed(request: Request) -> bool:
    return bool(request.app.state.services.settings.allow_unrestricted_network)


def _packages(request: Request, spec: Spec) -> None:
    """Refuse packages this server's sandboxes cannot mount; else start building them (packages.py),
    so the environment's first session finds them ready."""
    if not wanted(spec):
        return
    deps = request.app.state.services.sessions.deps
    if (refusal := packages_not_supported(deps.backend.name, wanted(spec))) is not None:
        raise refusal
    if deps.packages is not None:
        deps.packages.prepare(spec)


async def _create(request: Request, tenant: str, envs: Environments) -> JSONResponse:
    spec = create_spec(await json_body(request), allow_unrestricted=_unrestricted_allowed(request))
    _packages(request, spec)
    try:
        record = await envs.create(tenant, spec)
    except EnvironmentNameTaken as exc:
        raise _taken(exc) from None
    log.info("environment_created", tenant=tenant, environment_id=record.id, packages=wanted(spec))
    return JSONResponse(to_object(record))


async def _list(request: Request, tenant: str, envs: Environments) -> JSONResponse:
    limit = limit_param(request)
    records = await envs.list(
        tenant,
        limit=limit + 1,
        after=time_page(request),
        include_archived=bool_param(request, "include_archived"),
    )
    return time_paged(records, limit, to_object)


async def _retrieve(request: Request, tenant: str, envs: Environments) -> JSONResponse:
    env_id = request.path_params["environment_id"]
    record = await envs.get(tenant, env_id)
    if record is None:
        raise _not_found(env_id)
    return JSONResponse(to_object(record))


async def _update(request: Request, tenant: str, envs: Environments) -> JSONResponse:
    env_id = request.path_params["environment_id"]
    body = await json_body(request)
    for _ in range(UPDATE_ATTEMPTS):
        current = await envs.get(tenant, env_id)
        if current is None:
            raise _not_found(env_id)
        if current.archived_at is not None:
            raise _archived(env_id)
        spec = update_spec(current.spec, body, allow_unrestricted=_unrestricted_allowed(request))
        if spec == current.spec:
            return JSONResponse(to_object(current))
        _packages(request, spec)
        try:
            record = await envs.update(tenant, env_id, current.revision, spec)
        except RevisionConflict:
            continue  # apply the update to what the other writer made
        except EnvironmentNameTaken as exc:
            raise _taken(exc) from None
        except EnvironmentArchived:
            raise _archived(env_id) from None
        except EnvironmentNotFound:
            raise _not_found(env_id) from None
        log.info("environment_updated", tenant=tenant, environment_id=env_id)
        return JSONResponse(to_object(record))
    raise ApiError(
        f"environment {env_id} kept changing under this update; try again",
        code=Code.VERSION_CONFLICT,
        headers=NO_RETRY,
    )


async def _archive(request: Request, tenant: str, envs: Environments) -> JSONResponse:
    env_id = request.path_params["environment_id"]
    record = await envs.archive(tenant, env_id)
    if record is None:
        raise _not_found(env_id)
    log.info("environment_archived", tenant=tenant, environment_id=env_id)
    return JSONResponse(to_object(record))


async def _delete(request: Request, tenant: str, envs: Environments) -> JSONResponse:
    env_id = request.path_params["environment_id"]
    if not await envs.delete(tenant, env_id):
        raise _not_found(env_id)
    log.info("environment_deleted", tenant=tenant, environment_id=env_id)
    return JSONResponse({"id": env_id, "type": "environment_deleted"})


async def _work(request: Request, tenant: str, envs: Environments) -> JSONResponse:
    raise ApiError(
        "the self-hosted work queue is not supported by this server: its sessions run in its own sandboxes",
        code=Code.NOT_SUPPORTED,
        headers=NO_RETRY,
    )


def _endpoint(handler: Handler) -> Callable[[Request], Awaitable[JSONResponse]]:
    return endpoint(handler, Environments)


def routes() -> list[Route]:
    """The environments routes, for the app's route table."""
    work = _endpoint(_work)
    return [
        Route("/v1/environments", _endpoint(_create), methods=["POST"]),
        Route("/v1/environments", _endpoint(_list), methods=["GET"]),
        Route("/v1/environments/{environment_id}", _endpoint(_retrieve), methods=["GET"]),
        Route("/v1/environments/{environment_id}", _endpoint(_update), methods=["POST"]),
        Route("/v1/environments/{environment_id}", _endpoint(_delete), methods=["DELETE"]),
        Route("/v1/environments/{environment_id}/archive", _endpoint(_archive), methods=["POST"]),
        Route("/v1/environments/{environment_id}/work", work, methods=["GET", "POST"]),
        Route("/v1/environments/{environment_id}/work/{rest:path}", work, methods=["GET", "POST", "DELETE"]),
    ]
