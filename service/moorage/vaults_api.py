"""The vaults HTTP API (../shared/MANAGED_AGENTS.md §9): ``POST/GET /v1/vaults``,
``GET/POST/DELETE /v1/vaults/{id}``, ``POST /v1/vaults/{id}/archive``, and the same under
``/v1/vaults/{id}/credentials[/{cid}]``.

A thin I/O layer like ``environments_api``: the body rules and objects live in ``vaults.py`` (pure),
the storage in ``moorage_session_store.Vaults``, the sealing in ``vault_crypto``. Another tenant's
vault or credential is a plain 404. A credential's secrets are sealed before they reach the store
and are never in an answer or a log line (log lines name ids and kinds only). Without
``MOORAGE_SECRET_KEY`` a credential cannot be created or changed (``secret_key_unavailable``).
``mcp_oauth_validate`` answers ``not_supported``: this server does not probe or refresh tokens.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from moorage_session_store import (
    CredentialConflict,
    CredentialRecord,
    VaultArchived,
    VaultFull,
    VaultNotFound,
    VaultRecord,
    Vaults,
)
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .egress_policy import TUNNEL_BACKENDS
from .errors import Code
from .http_api import ApiError, bool_param, endpoint, json_body, limit_param, time_page, time_paged, timestamp
from .vault_crypto import SealedSecretError, SecretBox, open_secrets, seal_secrets
from .vaults import (
    CredentialSpec,
    credential_create,
    credential_object,
    credential_update,
    vault_create,
    vault_object,
    vault_update,
)

log = structlog.get_logger(__name__)

Handler = Callable[[Request, str, Vaults], Awaitable[JSONResponse]]
UPDATE_ATTEMPTS = 3


def _stamp(at: datetime | None) -> str | None:
    return timestamp(at) if at is not None else None


def vault_to_object(record: VaultRecord) -> dict[str, Any]:
    return vault_object(
        record.id,
        record.display_name,
        record.metadata,
        timestamp(record.created_at),
        timestamp(record.updated_at),
        _stamp(record.archived_at),
    )


def credential_to_object(record: CredentialRecord) -> dict[str, Any]:
    return credential_object(
        record.id,
        record.vault_id,
        record.public,
        timestamp(record.created_at),
        timestamp(record.updated_at),
        _stamp(record.archived_at),
    )


def vault_not_found(vault_id: str) -> ApiError:
    return ApiError(f"vault {vault_id} not found", code=Code.VAULT_NOT_FOUND)


def vault_archived(vault_id: str) -> ApiError:
    return ApiError(f"vault {vault_id} is archived", code=Code.VAULT_ARCHIVED)


def _credential_not_found(credential_id: str) -> ApiError:
    return ApiError(f"credential {credential_id} not found", code=Code.CREDENTIAL_NOT_FOUND)


def _box(request: Request) -> SecretBox:
    box: SecretBox | None = request.app.state.services.vault_box
    if box is None:
        raise ApiError(
            "this server has no MOORAGE_SECRET_KEY, so it cannot keep credentials: the operator must set one",
            code=Code.SECRET_KEY_UNAVAILABLE,
        )
    return box


async def check_session_vaults(vaults: Vaults, tenant: str, vault_ids: Sequence[str], backend: str) -> None:
    """Refuse a new session's ``vault_ids`` unless each is the tenant's and live, and none holds a
    credential this server cannot inject: ``environment_variable`` ones on a backend whose
    sandboxes cannot reach the egress tunnel (Kubernetes; docs/security.md)."""
    found = await vaults.get_many(tenant, vault_ids)
    for vault_id in vault_ids:
        record = found.get(vault_id)
        if record is None:
            raise vault_not_found(vault_id)
        if record.archived_at is not None:
            raise ApiError(f"vault {vault_id} is archived: new sessions cannot use it", code=Code.VAULT_ARCHIVED)
    if backend in TUNNEL_BACKENDS:
        return
    for held in await vaults.live_credentials(tenant, vault_ids):
        if held.kind == "environment_variable":
            raise ApiError(
                f"vault {held.vault_id} holds environment_variable credential {held.id}: the {backend} sandbox "
                "backend cannot reach the egress tunnel that injects it; use vaults without them, or the local "
                "or docker backend",
                code=Code.CREDENTIAL_NOT_SUPPORTED,
            )


# -- vaults -------------------------------------------------------------------------------


async def _create(request: Request, tenant: str, vaults: Vaults) -> JSONResponse:
    name, meta = vault_create(await json_body(request))
    record = await vaults.create(tenant, name, meta)
    log.info("vault_created", tenant=tenant, vault_id=record.id)
    return JSONResponse(vault_to_object(record))


async def _list(request: Request, tenant: str, vaults: Vaults) -> JSONResponse:
    limit = limit_param(request)
    records = await vaults.list(
        tenant, limit=limit + 1, after=time_page(request), include_archived=bool_param(request, "include_archived")
    )
    return time_paged(records, limit, vault_to_object)


async def _vault(vaults: Vaults, tenant: str, vault_id: str) -> VaultRecord:
    record = await vaults.get(tenant, vault_id)
    if record is None:
        raise vault_not_found(vault_id)
    return record


async def _retrieve(request: Request, tenant: str, vaults: Vaults) -> JSONResponse:
    return JSONResponse(vault_to_object(await _vault(vaults, tenant, request.path_params["vault_id"])))


async def _update(request: Request, tenant: str, vaults: Vaults) -> JSONResponse:
    vault_id = request.path_params["vault_id"]
    body = await json_body(request)
    current = await _vault(vaults, tenant, vault_id)
    if current.archived_at is not None:
        raise vault_archived(vault_id)
    name, meta = vault_update(current.display_name, current.metadata, body)
    try:
        record = await vaults.update(tenant, vault_id, name, meta)
    except VaultNotFound:
        raise vault_not_found(vault_id) from None
    except VaultArchived:
        raise vault_archived(vault_id) from None
    log.info("vault_updated", tenant=tenant, vault_id=vault_id)
    return JSONResponse(vault_to_object(record))


async def _archive(request: Request, tenant: str, vaults: Vaults) -> JSONResponse:
    vault_id = request.path_params["vault_id"]
    record = await vaults.archive(tenant, vault_id)
    if record is None:
        raise vault_not_found(vault_id)
    log.info("vault_archived", tenant=tenant, vault_id=vault_id)
    return JSONResponse(vault_to_object(record))


async def _delete(request: Request, tenant: str, vaults: Vaults) -> JSONResponse:
    vault_id = request.path_params["vault_id"]
    if not await vaults.delete(tenant, vault_id):
        raise vault_not_found(vault_id)
    log.info("vault_deleted", tenant=tenant, vault_id=vault_id)
    return JSONResponse({"id": vault_id, "type": "vault_deleted"})


# -- credentials --------------------------------------------------------------------------


def _ids(request: Request) -> tuple[str, str]:
    return request.path_params["vault_id"], request.path_params.get("credential_id", "")


async def _credential(vaults: Vaults, tenant: str, vault_id: str, credential_id: str) -> CredentialRecord:
    record = await vaults.get_credential(tenant, vault_id, credential_id)
    if record is None:
        await _vault(vaults, tenant, vault_id)  # an unknown vault is said as such
        raise _credential_not_found(credential_id)
    return record


def _sealed(box: SecretBox, tenant: str, vault_id: str, credential_id: str, spec: CredentialSpec) -> str:
    return seal_secrets(box, spec.secrets, tenant, vault_id, credential_id)


async def _create_credential(request: Request, tenant: str, vaults: Vaults) -> JSONResponse:
    vault_id, _ = _ids(request)
    spec = credential_create(await json_body(request), datetime.now(UTC))
    box = _box(request)
    credential_id = Vaults.new_credential_id()
    now = datetime.now(UTC)
    draft = CredentialRecord(
        credential_id,
        vault_id,
        tenant,
        spec.kind,
        spec.match_key,
        spec.public,
        _sealed(box, tenant, vault_id, credential_id, spec),
        now,
        now,
        None,
    )
    try:
        record = await vaults.add_credential(draft)
    except VaultNotFound:
        raise vault_not_found(vault_id) from None
    except VaultArchived:
        raise vault_archived(vault_id) from None
    except VaultFull as exc:
        raise ApiError(exc.message, code=Code.INVALID_REQUEST) from None
    except CredentialConflict as exc:
        raise ApiError(
            f"{exc.message}: archive or delete it first, or update its secret", code=Code.CREDENTIAL_CONFLICT
        ) from None
    log.info("vault_credential_created", tenant=tenant, vault_id=vault_id, credential_id=record.id, kind=spec.kind)
    return JSONResponse(credential_to_object(record))


async def _list_credentials(request: Request, tenant: str, vaults: Vaults) -> JSONResponse:
    vault_id, _ = _ids(request)
    await _vault(vaults, tenant, vault_id)
    limit = limit_param(request)
    records = await vaults.list_credentials(
        tenant,
        vault_id,
        limit=limit + 1,
        after=time_page(request),
        include_archived=bool_param(request, "include_archived"),
    )
    return time_paged(records, limit, credential_to_object)


async def _retrieve_credential(request: Request, tenant: str, vaults: Vaults) -> JSONResponse:
    return JSONResponse(credential_to_object(await _credential(vaults, tenant, *_ids(request))))


async def _update_credential(request: Request, tenant: str, vaults: Vaults) -> JSONResponse:
    vault_id, credential_id = _ids(request)
    body = await json_body(request)
    for _ in range(UPDATE_ATTEMPTS):
        current = await _credential(vaults, tenant, vault_id, credential_id)
        if current.archived_at is not None:
            raise ApiError(f"credential {credential_id} is archived", code=Code.VAULT_ARCHIVED)
        box = _box(request)
        try:
            secrets = open_secrets(box, current.sealed, tenant, vault_id, credential_id)
        except SealedSecretError as exc:
            raise ApiError(f"credential {credential_id}: {exc}", code=Code.SECRET_KEY_UNAVAILABLE) from None
        spec = credential_update(current.kind, current.public, secrets, body, datetime.now(UTC))
        try:
            record = await vaults.update_credential(
                tenant,
                vault_id,
                credential_id,
                current.updated_at,
                spec.public,
                _sealed(box, tenant, vault_id, credential_id, spec),
            )
        except VaultNotFound:
            raise _credential_not_found(credential_id) from None
        except VaultArchived:
            raise ApiError(f"credential {credential_id} is archived", code=Code.VAULT_ARCHIVED) from None
        if record is not None:
            log.info("vault_credential_updated", tenant=tenant, vault_id=vault_id, credential_id=credential_id)
            return JSONResponse(credential_to_object(record))
    raise ApiError(f"credential {credential_id} kept changing under this update; try again", code=Code.VERSION_CONFLICT)


async def _archive_credential(request: Request, tenant: str, vaults: Vaults) -> JSONResponse:
    vault_id, credential_id = _ids(request)
    record = await vaults.archive_credential(tenant, vault_id, credential_id)
    if record is None:
        await _vault(vaults, tenant, vault_id)
        raise _credential_not_found(credential_id)
    log.info("vault_credential_archived", tenant=tenant, vault_id=vault_id, credential_id=credential_id)
    return JSONResponse(credential_to_object(record))


async def _delete_credential(request: Request, tenant: str, vaults: Vaults) -> JSONResponse:
    vault_id, credential_id = _ids(request)
    if not await vaults.delete_credential(tenant, vault_id, credential_id):
        await _vault(vaults, tenant, vault_id)
        raise _credential_not_found(credential_id)
    log.info("vault_credential_deleted", tenant=tenant, vault_id=vault_id, credential_id=credential_id)
    return JSONResponse({"id": credential_id, "type": "vault_credential_deleted"})


async def _validate(request: Request, tenant: str, vaults: Vaults) -> JSONResponse:
    await _credential(vaults, tenant, *_ids(request))
    raise ApiError(
        "mcp_oauth_validate is not supported by this server: it neither probes MCP servers nor refreshes "
        "OAuth tokens (update the access_token when it expires)",
        code=Code.NOT_SUPPORTED,
    )


def _endpoint(handler: Handler) -> Callable[[Request], Awaitable[JSONResponse]]:
    return endpoint(handler, Vaults)


def routes() -> list[Route]:
    """The vaults routes, for the app's route table."""
    one = "/v1/vaults/{vault_id}/credentials/{credential_id}"
    return [
        Route("/v1/vaults", _endpoint(_create), methods=["POST"]),
        Route("/v1/vaults", _endpoint(_list), methods=["GET"]),
        Route("/v1/vaults/{vault_id}", _endpoint(_retrieve), methods=["GET"]),
        Route("/v1/vaults/{vault_id}", _endpoint(_update), methods=["POST"]),
        Route("/v1/vaults/{vault_id}", _endpoint(_delete), methods=["DELETE"]),
        Route("/v1/vaults/{vault_id}/archive", _endpoint(_archive), methods=["POST"]),
        Route("/v1/vaults/{vault_id}/credentials", _endpoint(_create_credential), methods=["POST"]),
        Route("/v1/vaults/{vault_id}/credentials", _endpoint(_list_credentials), methods=["GET"]),
        Route(one, _endpoint(_retrieve_credential), methods=["GET"]),
        Route(one, _endpoint(_update_credential), methods=["POST"]),
        Route(one, _endpoint(_delete_credential), methods=["DELETE"]),
        Route(one + "/archive", _endpoint(_archive_credential), methods=["POST"]),
        Route(one + "/mcp_oauth_validate", _endpoint(_validate), methods=["POST"]),
    ]
