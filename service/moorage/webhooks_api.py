"""The webhook endpoints HTTP API (``client.beta.organization.webhooks``, beta
``webhooks-2026-10-07``; MANAGED_AGENTS.md §10): ``POST/GET /v1/organizations/webhooks``,
``GET/POST/DELETE /v1/organizations/webhooks/{id}``, ``POST …/{id}/regenerate_signing_secret``.

A thin I/O layer like ``environments_api``: the rows in ``moorage_session_store.WebhookEndpoints``,
the URL rules in ``webhook_policy`` (checked here with a DNS lookup, and again before every
delivery), auth, the error envelope and ``request-id`` in ``http_api``. "Organization" is the
caller's tenant here: another tenant's endpoint is a plain 404 ``webhook_not_found``. The signing
secret is in the answer of create and of regenerate only, and never logged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Literal

import structlog
from moorage_session_store import EndpointRecord, TooManyEndpoints, WebhookEndpoints
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .errors import Code
from .http_api import ApiError, endpoint, invalid, json_body, timestamp
from .tunnel import parse_networks
from .webhook_delivery import resolve_checked
from .webhook_policy import UrlRefused, parse_target

log = structlog.get_logger(__name__)

Handler = Callable[[Request, str, WebhookEndpoints], Awaitable[JSONResponse]]
MAX_LIMIT = 100
DEFAULT_LIMIT = 20
MAX_TEXT = 1024  # name and description
MAX_EVENTS = 64  # event types per endpoint
MAX_EVENT_TYPE = 128


def to_object(record: EndpointRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "type": "webhook_endpoint",
        "url": record.url,
        "name": record.name,
        "description": record.description,
        "enabled_events": record.enabled_events,
        "state": record.state,
        "disabled_reason": record.disabled_reason,
        "created_at": timestamp(record.created_at),
        "updated_at": timestamp(record.updated_at),
    }


def _not_found(endpoint_id: str) -> ApiError:
    return ApiError(f"webhook endpoint {endpoint_id} not found", code=Code.WEBHOOK_NOT_FOUND)


def _object(body: object) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    return body


def _text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise invalid(f"{name} must be a string of at most {MAX_TEXT} characters")
    return value


def _events(value: object) -> list[str]:
    if not isinstance(value, list) or len(value) > MAX_EVENTS:
        raise invalid(f"enabled_events must be a list of at most {MAX_EVENTS} event types")
    for item in value:
        if not isinstance(item, str) or not 0 < len(item) <= MAX_EVENT_TYPE:
            raise invalid("enabled_events must list event types (strings), such as session.status_idled")
    return list(dict.fromkeys(value))


async def _checked_url(request: Request, value: object) -> str:
    """The URL, if this server may send to it now (``webhook_url_not_allowed`` otherwise)."""
    try:
        target = parse_target(value)
        await resolve_checked(target, parse_networks(request.app.state.services.settings.webhook_allow_networks))
    except UrlRefused as exc:
        raise ApiError(str(exc), code=Code.WEBHOOK_URL_NOT_ALLOWED) from None
    return target.url


async def _create(request: Request, tenant: str, hooks: WebhookEndpoints) -> JSONResponse:
    body = _object(await json_body(request))
    if "url" not in body:
        raise invalid("url is required")
    events = _events(body.get("enabled_events"))
    if not events:
        raise invalid("enabled_events must list at least one event type")
    name, description = _text(body, "name") or "", _text(body, "description") or ""
    url = await _checked_url(request, body["url"])
    try:
        record, secret = await hooks.create(tenant, url, events, name=name, description=description)
    except TooManyEndpoints as exc:
        raise ApiError(exc.args[0], code=Code.TOO_MANY_WEBHOOKS) from None
    log.info("webhook_endpoint_created", tenant=tenant, webhook_endpoint_id=record.id, events=len(events))
    return JSONResponse({**to_object(record), "signing_secret": secret})


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit", "0")
    if not raw.isdigit() or int(raw) > MAX_LIMIT:
        raise invalid(f"limit must be an integer from 0 to {MAX_LIMIT}")
    return int(raw) or DEFAULT_LIMIT


def _order(request: Request) -> Literal["asc", "desc"]:
    raw = request.query_params.get("order") or "desc"
    if raw not in ("asc", "desc"):
        raise invalid("order must be asc or desc")
    return "asc" if raw == "asc" else "desc"


async def _cursor(request: Request, tenant: str, hooks: WebhookEndpoints, name: str) -> EndpointRecord | None:
    ident = request.query_params.get(name)
    if not ident:
        return None
    record = await hooks.get(tenant, ident)
    if record is None:
        raise invalid(f"{name} names no webhook endpoint of yours")
    return record


async def _list(request: Request, tenant: str, hooks: WebhookEndpoints) -> JSONResponse:
    limit, order = _limit(request), _order(request)
    after = await _cursor(request, tenant, hooks, "after_id")
    before = None if after is not None else await _cursor(request, tenant, hooks, "before_id")
    records = await hooks.list(tenant, limit=limit + 1, order=order, after=after, before=before)
    page = records[:limit]
    return JSONResponse(
        {
            "data": [to_object(r) for r in page],
            "has_more": len(records) > limit,
            "first_id": page[0].id if page else None,
            "last_id": page[-1].id if page else None,
        }
    )


async def _retrieve(request: Request, tenant: str, hooks: WebhookEndpoints) -> JSONResponse:
    endpoint_id = request.path_params["webhook_endpoint_id"]
    record = await hooks.get(tenant, endpoint_id)
    if record is None:
        raise _not_found(endpoint_id)
    return JSONResponse(to_object(record))


async def _update(request: Request, tenant: str, hooks: WebhookEndpoints) -> JSONResponse:
    endpoint_id = request.path_params["webhook_endpoint_id"]
    body = _object(await json_body(request))
    if await hooks.get(tenant, endpoint_id) is None:
        raise _not_found(endpoint_id)
    fields: dict[str, Any] = {}
    for name in ("name", "description"):
        if (value := _text(body, name)) is not None:
            fields[name] = value
    if body.get("enabled_events") is not None and (events := _events(body["enabled_events"])):
        fields["enabled_events"] = events  # an empty list leaves them as they are
    if (state := body.get("state")) is not None:
        if state not in ("enabled", "disabled"):
            raise invalid("state must be enabled or disabled")
        fields["state"] = state
    if body.get("url") is not None:
        fields["url"] = await _checked_url(request, body["url"])
    record = await hooks.update(tenant, endpoint_id, **fields) if fields else await hooks.get(tenant, endpoint_id)
    if record is None:
        raise _not_found(endpoint_id)
    log.info("webhook_endpoint_updated", tenant=tenant, webhook_endpoint_id=endpoint_id, fields=sorted(fields))
    return JSONResponse(to_object(record))


async def _delete(request: Request, tenant: str, hooks: WebhookEndpoints) -> JSONResponse:
    endpoint_id = request.path_params["webhook_endpoint_id"]
    if not await hooks.delete(tenant, endpoint_id):
        raise _not_found(endpoint_id)
    log.info("webhook_endpoint_deleted", tenant=tenant, webhook_endpoint_id=endpoint_id)
    return JSONResponse({"id": endpoint_id, "type": "webhook_endpoint_deleted"})


async def _regenerate(request: Request, tenant: str, hooks: WebhookEndpoints) -> JSONResponse:
    endpoint_id = request.path_params["webhook_endpoint_id"]
    secret = await hooks.regenerate_secret(tenant, endpoint_id)
    if secret is None:
        raise _not_found(endpoint_id)
    log.info("webhook_secret_regenerated", tenant=tenant, webhook_endpoint_id=endpoint_id)
    return JSONResponse({"signing_secret": secret})


def _endpoint(handler: Handler) -> Callable[[Request], Awaitable[JSONResponse]]:
    return endpoint(handler, WebhookEndpoints)


def routes() -> list[Route]:
    """The webhook endpoint routes, for the app's route table."""
    base = "/v1/organizations/webhooks"
    one = base + "/{webhook_endpoint_id}"
    return [
        Route(base, _endpoint(_create), methods=["POST"]),
        Route(base, _endpoint(_list), methods=["GET"]),
        Route(one, _endpoint(_retrieve), methods=["GET"]),
        Route(one, _endpoint(_update), methods=["POST"]),
        Route(one, _endpoint(_delete), methods=["DELETE"]),
        Route(one + "/regenerate_signing_secret", _endpoint(_regenerate), methods=["POST"]),
    ]
