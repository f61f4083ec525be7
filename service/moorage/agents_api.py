"""The agents HTTP API (../shared/MANAGED_AGENTS.md §2-§3): ``POST/GET /v1/agents``,
``GET/POST /v1/agents/{id}``, ``POST /v1/agents/{id}/archive``, ``GET /v1/agents/{id}/versions``.

A thin I/O layer: the spec rules live in ``agents.py`` (pure), the storage in
``moorage_session_store.Agents``. Authenticated like the WebSocket (``Authorization: Bearer``,
``x-api-key``), tenant-scoped (another tenant's agent is a plain 404), errors in the Managed
Agents envelope (§1.6) with the stable code in ``details.error_code``, and a ``request-id`` header
on every answer. Lists are ``{"data": [...], "next_page": cursor|null}`` (§1.5).
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import structlog
from moorage_session_store import AgentArchived, AgentNotFound, AgentRecord, Agents, VersionConflict
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .agents import AgentError, agent_object, create_spec, runner_agent, update_spec, update_version
from .auth import credentials
from .errors import STORE_ERRORS, Code, MoorageError, http_status, store_unavailable

log = structlog.get_logger(__name__)

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
UPDATE_ATTEMPTS = 3  # an unconditional update re-reads and retries when another writer won
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}

Handler = Callable[[Request, str, Agents], Awaitable[JSONResponse]]


class ApiError(MoorageError):
    """An HTTP answer other than 200; ``headers`` go out with it."""

    def __init__(self, message: str, *, code: Code, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, code=code)
        self.headers = headers or {}


def _error(request_id: str, code: Code, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    status = http_status(code)
    body = {
        "type": "error",
        "error": {
            "type": _ERROR_TYPES.get(status, "api_error"),
            "message": message,
            "details": {"error_code": str(code)},
        },
        "request_id": request_id,
    }
    return JSONResponse(body, status_code=status, headers={**(headers or {}), "request-id": request_id})


def timestamp(value: datetime) -> str:
    """RFC 3339 in UTC with a ``Z``."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def to_object(record: AgentRecord) -> dict[str, Any]:
    archived = timestamp(record.archived_at) if record.archived_at is not None else None
    return agent_object(
        record.id, record.version, record.spec, timestamp(record.created_at), timestamp(record.updated_at), archived
    )


def _not_found(agent_id: str) -> ApiError:
    return ApiError(f"agent {agent_id} not found", code=Code.AGENT_NOT_FOUND)


def _invalid(message: str) -> ApiError:
    return ApiError(message, code=Code.INVALID_REQUEST)


# -- query parameters --------------------------------------------------------


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise _invalid(f"limit must be an integer from 1 to {MAX_LIMIT}")
    return int(raw)


def _bool(request: Request, name: str) -> bool:
    raw = request.query_params.get(name, "false").lower()
    if raw not in ("true", "false"):
        raise _invalid(f"{name} must be true or false")
    return raw == "true"


def _when(request: Request, name: str) -> datetime | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise _invalid(f"{name} must be an RFC 3339 timestamp") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _positive(raw: str | None, name: str) -> int | None:
    if raw is None:
        return None
    if not raw.isdigit() or int(raw) < 1 or len(raw) > 18:
        raise _invalid(f"{name} must be a positive integer")
    return int(raw)


def encode_page(key: list[Any]) -> str:
    """An opaque cursor: ``page_`` and the base64 of the last item's sort key."""
    return "page_" + base64.urlsafe_b64encode(json.dumps(key, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_page(raw: str | None) -> list[Any] | None:
    """The sort key in a cursor from ``encode_page``; ``invalid_request`` for anything else."""
    if not raw:
        return None
    try:
        if not raw.startswith("page_") or len(raw) > 512:
            raise ValueError
        text = raw[5:]
        key = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        if not isinstance(key, list):
            raise ValueError
        return key
    except (ValueError, binascii.Error):
        raise _invalid("page is not a cursor this server gave out") from None


# -- body --------------------------------------------------------------------


def _constant(token: str) -> Any:
    raise ValueError(token)


async def _body(request: Request) -> object:
    """The JSON body (``{}`` when empty), at most ``max_frame_bytes``."""
    cap = request.app.state.services.settings.max_frame_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise ApiError(f"the request body is over {cap} bytes", code=Code.REQUEST_TOO_LARGE)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise ApiError(f"the request body is over {cap} bytes", code=Code.REQUEST_TOO_LARGE)
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        return {}
    try:
        return json.loads(raw, parse_constant=_constant)
    except (ValueError, RecursionError):
        raise _invalid("the request body is not valid JSON") from None


# -- handlers ----------------------------------------------------------------


async def _create(request: Request, tenant: str, agents: Agents) -> JSONResponse:
    spec = create_spec(await _body(request))
    record = await agents.create(tenant, spec)
    log.info("agent_created", tenant=tenant, agent_id=record.id)
    return JSONResponse(to_object(record))


async def _list(request: Request, tenant: str, agents: Agents) -> JSONResponse:
    limit = _limit(request)
    after = None
    if (key := decode_page(request.query_params.get("page"))) is not None:
        if len(key) != 2 or not all(isinstance(k, str) for k in key):
            raise _invalid("page is not a cursor this server gave out")
        try:
            after = (datetime.fromisoformat(key[0]), str(key[1]))
        except ValueError:
            raise _invalid("page is not a cursor this server gave out") from None
    records = await agents.list(
        tenant,
        limit=limit + 1,
        after=after,
        include_archived=_bool(request, "include_archived"),
        created_gte=_when(request, "created_at[gte]"),
        created_lte=_when(request, "created_at[lte]"),
    )
    page, more = records[:limit], len(records) > limit
    next_page = encode_page([page[-1].created_at.isoformat(), page[-1].id]) if more else None
    return JSONResponse({"data": [to_object(r) for r in page], "next_page": next_page})


async def _retrieve(request: Request, tenant: str, agents: Agents) -> JSONResponse:
    agent_id = request.path_params["agent_id"]
    version = _positive(request.query_params.get("version"), "version")
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
    body = await _body(request)
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
    limit = _limit(request)
    before = None
    if (key := decode_page(request.query_params.get("page"))) is not None:
        if len(key) != 1 or isinstance(key[0], bool) or not isinstance(key[0], int):
            raise _invalid("page is not a cursor this server gave out")
        before = key[0]
    records = await agents.versions(tenant, agent_id, limit=limit + 1, before=before)
    if records is None:
        raise _not_found(agent_id)
    page, more = records[:limit], len(records) > limit
    next_page = encode_page([page[-1].version]) if more else None
    return JSONResponse({"data": [to_object(r) for r in page], "next_page": next_page})


# -- the frame every handler runs in -------------------------------------------


def _endpoint(handler: Handler) -> Callable[[Request], Awaitable[JSONResponse]]:
    async def endpoint(request: Request) -> JSONResponse:
        request_id = "req_" + secrets.token_hex(12)
        services = request.app.state.services
        try:
            try:
                verdict = await services.auth.verdict(credentials(request).token)
                if verdict.tenant is None:
                    log.info("client_refused", reason="unauthorized", detail=verdict.reason, token_id=verdict.token_id)
                    raise ApiError(
                        "a valid bearer token is required",
                        code=Code.UNAUTHORIZED,
                        headers={"www-authenticate": "Bearer"},
                    )
                response = await handler(request, verdict.tenant, Agents(services.db))
            except STORE_ERRORS as exc:
                raise ApiError(
                    store_unavailable(exc), code=Code.STORE_UNAVAILABLE, headers={"retry-after": "5"}
                ) from exc
        except ApiError as exc:
            services.metrics.errors.labels(str(exc.code)).inc()
            return _error(request_id, exc.code, exc.message, exc.headers)
        except AgentError as exc:
            services.metrics.errors.labels(str(exc.code)).inc()
            return _error(request_id, exc.code, exc.message)
        response.headers["request-id"] = request_id
        return response

    return endpoint


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
        number = _positive(version, "version")
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
