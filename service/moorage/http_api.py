"""What every Managed Agents HTTP endpoint shares (../shared/MANAGED_AGENTS.md §1): the error
envelope (§1.6) with the stable code in ``details.error_code``, a ``request-id`` header on every
answer, bearer auth (``Authorization: Bearer`` or ``x-api-key``, tenant-scoped like the WebSocket),
page cursors (§1.5), query parameters, and the JSON body capped at ``max_frame_bytes``.

A resource module (``agents_api``, ``environments_api``) writes handlers ``(request, tenant, repo)``
and wraps each with :func:`endpoint`, naming how to build its repository from the database.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

import structlog
from moorage_session_store import Database
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from .auth import credentials
from .errors import STORE_ERRORS, Code, MoorageError, http_status, store_unavailable

log = structlog.get_logger(__name__)

DEFAULT_LIMIT = 20
MAX_LIMIT = 100
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    402: "billing_error",
    409: "conflict_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}

Repo = TypeVar("Repo")
R = TypeVar("R", bound=Response)
#: Refusals a retry would only repeat (the client retries 409 and 5xx unless told not to).
NO_RETRY_CODES = frozenset(
    {
        Code.NOT_SUPPORTED,
        Code.REQUEST_NOT_PENDING,
        Code.VERSION_CONFLICT,
        Code.ENVIRONMENT_NAME_TAKEN,
        Code.CREDENTIAL_CONFLICT,
        Code.CREDENTIAL_NOT_SUPPORTED,
        Code.SECRET_KEY_UNAVAILABLE,
    }
)


class ApiError(MoorageError):
    """An HTTP answer other than 200; ``headers`` go out with it."""

    def __init__(self, message: str, *, code: Code, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, code=code)
        self.headers = headers or {}


def error_response(request_id: str, code: Code, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The §1.6 envelope for ``code``, with its HTTP status and the ``request-id`` header."""
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
    extra = {"x-should-retry": "false"} if code in NO_RETRY_CODES else {}
    return JSONResponse(body, status_code=status, headers={**extra, **(headers or {}), "request-id": request_id})


def timestamp(value: datetime) -> str:
    """RFC 3339 in UTC with a ``Z``."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def invalid(message: str) -> ApiError:
    return ApiError(message, code=Code.INVALID_REQUEST)


# -- query parameters --------------------------------------------------------


def limit_param(request: Request, default: int = DEFAULT_LIMIT, maximum: int = MAX_LIMIT) -> int:
    raw = request.query_params.get("limit")
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise invalid(f"limit must be an integer from 1 to {maximum}")
    return int(raw)


def bool_param(request: Request, name: str) -> bool:
    raw = request.query_params.get(name, "false").lower()
    if raw not in ("true", "false"):
        raise invalid(f"{name} must be true or false")
    return raw == "true"


def when_param(request: Request, name: str) -> datetime | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise invalid(f"{name} must be an RFC 3339 timestamp") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def positive(raw: str | None, name: str) -> int | None:
    if raw is None:
        return None
    if not raw.isdigit() or int(raw) < 1 or len(raw) > 18:
        raise invalid(f"{name} must be a positive integer")
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
        raise invalid("page is not a cursor this server gave out") from None


def time_page(request: Request) -> tuple[datetime, str] | None:
    """The ``(created_at, id)`` keyset of a ``page`` cursor made by :func:`next_time_page`."""
    key = decode_page(request.query_params.get("page"))
    if key is None:
        return None
    if len(key) != 2 or not all(isinstance(k, str) for k in key):
        raise invalid("page is not a cursor this server gave out")
    try:
        return datetime.fromisoformat(key[0]), str(key[1])
    except ValueError:
        raise invalid("page is not a cursor this server gave out") from None


def next_time_page(created_at: datetime, item_id: str) -> str:
    return encode_page([created_at.isoformat(), item_id])


class Listed(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def created_at(self) -> datetime: ...


_L = TypeVar("_L", bound=Listed)


def time_paged(records: Sequence[_L], limit: int, to_object: Callable[[_L], object]) -> JSONResponse:
    """A ``{"data", "next_page"}`` list from ``limit + 1`` records newest first: the extra
    one, if there, says another page follows (its cursor is the last shown's keyset)."""
    page = records[:limit]
    next_page = next_time_page(page[-1].created_at, page[-1].id) if len(records) > limit else None
    return JSONResponse({"data": [to_object(r) for r in page], "next_page": next_page})


# -- body --------------------------------------------------------------------


def _constant(token: str) -> Any:
    raise ValueError(token)


DRAIN_BYTES = 16 * 1024 * 1024  # read past an over-size body, at most, so its sender gets the 413


async def drain(stream: AsyncIterator[bytes], limit: int) -> None:
    """Read and drop the rest of a refused body (bounded): a connection closed with the
    client's bytes unread is reset, and the reset can destroy the 413 before it is read."""
    seen = 0
    async for chunk in stream:
        seen += len(chunk)
        if seen > limit:
            return


async def json_body(request: Request) -> object:
    """The JSON body (``{}`` when empty), at most ``max_frame_bytes``."""
    cap = request.app.state.services.settings.max_frame_bytes
    too_large = ApiError(f"the request body is over {cap} bytes", code=Code.REQUEST_TOO_LARGE)
    declared = request.headers.get("content-length")
    stream = request.stream()
    if declared is not None and declared.isdigit() and int(declared) > cap:
        if int(declared) <= DRAIN_BYTES:
            await drain(stream, DRAIN_BYTES)
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in stream:
        size += len(chunk)
        if size > cap:
            await drain(stream, DRAIN_BYTES - size)
            raise too_large
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        return {}
    try:
        return json.loads(raw, parse_constant=_constant)
    except (ValueError, RecursionError):
        raise invalid("the request body is not valid JSON") from None


# -- the frame every handler runs in -------------------------------------------


def endpoint(
    handler: Callable[[Request, str, Repo], Awaitable[R]], repo: Callable[[Database], Repo]
) -> Callable[[Request], Awaitable[R | JSONResponse]]:
    """``handler`` behind auth, with the caller's tenant and ``repo(db)``; a ``MoorageError`` it
    raises (or the database being down) answers in the §1.6 envelope; every answer has ``request-id``
    and is counted (``moorage_http_requests_total``: its route's template, never the path)."""

    async def run(request: Request) -> R | JSONResponse:
        status = 500  # what an exception that escapes becomes
        try:
            response = await answer(request)
            status = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            if isinstance(route, Route):
                metrics = request.app.state.services.metrics
                metrics.http_requests.labels(request.method, route.path, metrics.status_class(status)).inc()

    async def answer(request: Request) -> R | JSONResponse:
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
                response = await handler(request, verdict.tenant, repo(services.db))
            except STORE_ERRORS as exc:
                raise ApiError(
                    store_unavailable(exc), code=Code.STORE_UNAVAILABLE, headers={"retry-after": "5"}
                ) from exc
        except ApiError as exc:
            services.metrics.errors.labels(str(exc.code)).inc()
            return error_response(request_id, exc.code, exc.message, exc.headers)
        except MoorageError as exc:
            services.metrics.errors.labels(str(exc.code)).inc()
            return error_response(request_id, exc.code, exc.message)
        response.headers["request-id"] = request_id
        return response

    return run


def api_routes(routes: Iterable[BaseRoute]) -> list[tuple[str, str]]:
    """``(method, path template)`` of every HTTP API route (``/v1/…``), for the metric's zeros."""
    found = set()
    for route in routes:
        if isinstance(route, Route) and route.path.startswith("/v1/"):
            found |= {(method, route.path) for method in route.methods or () if method != "HEAD"}
    return sorted(found)
