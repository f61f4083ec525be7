"""Vaults and credentials, without I/O (../shared/MANAGED_AGENTS.md §9): the request bodies of
``/v1/vaults[/{id}/credentials]`` parsed into what the store keeps, the objects the API shows, and
which credential a session's MCP server gets.

A credential is kept in two parts: its *public* document (the ``auth`` object without a secret,
``display_name``, ``metadata``: what every answer shows) and its *secrets* (``token``,
``access_token``, ``refresh_token``, ``client_secret``, ``secret_value``), which leave this module
only to be sealed (``vault_crypto``) and are never part of an answer or a log line.

Matching (``mcp_key``): a credential is for the MCP server whose URL normalises to the same key as
its ``mcp_server_url`` — scheme and host lower-cased, the scheme's default port dropped, an empty
path as ``/``, a trailing ``/`` dropped, the query kept, the fragment dropped. A vault holds one
live credential per key (an environment variable's key is its name). When several of a session's
vaults hold one for a server, the first vault in ``vault_ids`` wins.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from .bodies import BodyError, as_object, fail, metadata, only, patch_metadata, text

MAX_DISPLAY_NAME = 255
MAX_URL = 2048
MAX_SECRET = 16 * 1024
MAX_VAULT_IDS = 20
MAX_ALLOWED_HOSTS = 16
MCP_KINDS = ("static_bearer", "mcp_oauth")
KINDS = (*MCP_KINDS, "environment_variable")
#: Every field that holds a secret, wherever it sits in an ``auth`` object.
SECRET_FIELDS = frozenset({"token", "access_token", "refresh_token", "client_secret", "secret_value"})
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,255}$")
_HOST = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")
_TOKEN_AUTH = ("none", "client_secret_basic", "client_secret_post")

Json = dict[str, Any]


# -- vaults -------------------------------------------------------------------------------


def vault_create(body: object) -> tuple[str, dict[str, str]]:
    """``(display_name, metadata)`` of ``POST /v1/vaults``."""
    obj = as_object(body, "the request body")
    only(obj, {"display_name", "metadata"}, "the request body")
    name = text(obj.get("display_name"), "display_name", MAX_DISPLAY_NAME, required=True)
    assert name is not None
    return name, metadata(obj.get("metadata"))


def vault_update(name: str, meta: Mapping[str, str], body: object) -> tuple[str, dict[str, str]]:
    """The vault's ``(display_name, metadata)`` after ``POST /v1/vaults/{id}`` (metadata: a patch)."""
    obj = as_object(body, "the request body")
    only(obj, {"display_name", "metadata"}, "the request body")
    if "display_name" in obj:
        new = text(obj["display_name"], "display_name", MAX_DISPLAY_NAME, required=True)
        assert new is not None
        name = new
    if "metadata" in obj:
        meta = metadata(patch_metadata(meta, obj["metadata"]))
    return name, dict(meta)


def vault_object(
    vault_id: str, name: str, meta: Mapping[str, str], created: str, updated: str, archived: str | None
) -> Json:
    return {
        "type": "vault",
        "id": vault_id,
        "display_name": name,
        "metadata": dict(meta),
        "created_at": created,
        "updated_at": updated,
        "archived_at": archived,
    }


def vault_ids(value: object) -> tuple[str, ...]:
    """A session's ``vault_ids``: distinct non-empty strings, at most ``MAX_VAULT_IDS``."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and 0 < len(v) <= 64 for v in value):
        raise fail("vault_ids must be an array of vault ids")
    if len(value) > MAX_VAULT_IDS:
        raise fail(f"vault_ids: at most {MAX_VAULT_IDS}")
    if len(set(value)) != len(value):
        raise fail("vault_ids: a vault is named twice")
    return tuple(value)


# -- matching -----------------------------------------------------------------------------


def mcp_key(url: str) -> str:
    """The normalised form of an MCP server URL (see the module docstring); ``BodyError`` if it is
    not an http(s) URL with a host (and no user or password in it). Errors never echo the URL."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise fail("the MCP server URL is not a valid URL") from None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".")
    if scheme not in ("http", "https") or not host:
        raise fail("the MCP server URL must be an http(s) URL with a host")
    if parts.username is not None or parts.password is not None:  # not echoed: it may hold a password
        raise fail("an MCP server URL must not carry a user or password: put the credential in the vault")
    if ":" in host:
        host = f"[{host}]"
    default = 443 if scheme == "https" else 80
    netloc = host if port in (None, default) else f"{host}:{port}"
    path = parts.path or "/"
    if len(path) > 1:
        path = path.rstrip("/") or "/"
    return f"{scheme}://{netloc}{path}" + (f"?{parts.query}" if parts.query else "")


def match_key(kind: str, public_auth: Mapping[str, Any]) -> str:
    """What a vault holds one live credential per: ``mcp:<normalised URL>`` or ``env:<name>``."""
    if kind in MCP_KINDS:
        return "mcp:" + mcp_key(str(public_auth["mcp_server_url"]))
    return "env:" + str(public_auth["secret_name"])


@dataclass(frozen=True)
class Held:
    """One live credential of a session's vaults, as matching sees it (no secret)."""

    id: str
    vault_id: str
    kind: str
    match_key: str


def proxied_servers(servers: Iterable[Mapping[str, Any]], held: Sequence[Held]) -> dict[str, Held]:
    """The agent's MCP servers (``{"name", "url"}``) that a held credential is for, by name, with
    the credential they use: the first in ``held`` (which is in ``vault_ids`` order)."""
    by_key: dict[str, Held] = {}
    for credential in held:
        if credential.kind in MCP_KINDS:
            by_key.setdefault(credential.match_key, credential)
    out: dict[str, Held] = {}
    for server in servers:
        name, url = server.get("name"), server.get("url")
        if not isinstance(name, str) or not isinstance(url, str):
            continue
        try:
            key = "mcp:" + mcp_key(url)
        except BodyError:
            continue
        if key in by_key:
            out[name] = by_key[key]
    return out


# -- credentials --------------------------------------------------------------------------


@dataclass(frozen=True)
class CredentialSpec:
    """A credential as the store keeps it: ``public`` (shown) and ``secrets`` (sealed)."""

    kind: str
    public: Json  # {"auth", "display_name", "metadata"}
    secrets: dict[str, str]

    @property
    def match_key(self) -> str:
        return match_key(self.kind, self.public["auth"])


def _secret(value: object, where: str, *, header: bool) -> str:
    """A secret string; one that goes into an HTTP header must be visible ASCII (no CR/LF, no space)."""
    if not isinstance(value, str) or not value:
        raise fail(f"{where} is required and must be a non-empty string")
    if len(value) > MAX_SECRET:
        raise fail(f"{where} is longer than {MAX_SECRET} characters")
    if header and not all(0x21 <= ord(c) <= 0x7E for c in value):
        raise fail(f"{where} must be visible ASCII characters only (it is sent in an HTTP header)")
    return value


def _url(value: object, where: str) -> str:
    url = text(value, where, MAX_URL, required=True)
    assert url is not None
    mcp_key(url)  # an http(s) URL with a host
    return url


def _when(value: object, where: str, now: datetime) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise fail(f"{where} must be an RFC 3339 timestamp")
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise fail(f"{where} must be an RFC 3339 timestamp") from None
    if at.tzinfo is None:
        raise fail(f"{where} must carry a time zone")
    if at <= now:
        raise fail(f"{where} must be in the future")
    return value


def _token_endpoint_auth(value: object, where: str, secrets: dict[str, str]) -> Json:
    auth = as_object(value, where)
    kind = auth.get("type")
    if kind not in _TOKEN_AUTH:
        raise fail(f"{where}.type must be one of {', '.join(_TOKEN_AUTH)}")
    if kind == "none":
        only(auth, {"type"}, where)
    else:
        only(auth, {"type", "client_secret"}, where)
        secrets["client_secret"] = _secret(auth.get("client_secret"), f"{where}.client_secret", header=False)
    return {"type": kind}


def _refresh(value: object, secrets: dict[str, str]) -> Json | None:
    if value is None:
        return None
    where = "auth.refresh"
    refresh = as_object(value, where)
    only(refresh, {"client_id", "refresh_token", "token_endpoint", "token_endpoint_auth", "resource", "scope"}, where)
    client_id = text(refresh.get("client_id"), f"{where}.client_id", MAX_URL, required=True)
    secrets["refresh_token"] = _secret(refresh.get("refresh_token"), f"{where}.refresh_token", header=False)
    return {
        "client_id": client_id,
        "token_endpoint": _url(refresh.get("token_endpoint"), f"{where}.token_endpoint"),
        "token_endpoint_auth": _token_endpoint_auth(
            refresh.get("token_endpoint_auth"), f"{where}.token_endpoint_auth", secrets
        ),
        "resource": text(refresh.get("resource"), f"{where}.resource", MAX_URL),
        "scope": text(refresh.get("scope"), f"{where}.scope", MAX_URL),
    }


def _networking(value: object) -> Json:
    where = "auth.networking"
    net = as_object(value, where)
    if net.get("type") == "unrestricted":
        only(net, {"type"}, where)
        return {"type": "unrestricted"}
    if net.get("type") != "limited":
        raise fail(f"{where}.type must be 'unrestricted' or 'limited'")
    only(net, {"type", "allowed_hosts"}, where)
    hosts = net.get("allowed_hosts")
    if not isinstance(hosts, list) or not 0 < len(hosts) <= MAX_ALLOWED_HOSTS:
        raise fail(f"{where}.allowed_hosts must hold 1 to {MAX_ALLOWED_HOSTS} hosts")
    for n, host in enumerate(hosts):
        if not isinstance(host, str) or len(host) > 253 or not _HOST.match(host.lower()):
            raise fail(f"{where}.allowed_hosts[{n}] must be a host name, an IPv4 address or *.domain")
    return {"type": "limited", "allowed_hosts": [h.lower() for h in hosts]}


def _injection(value: object, current: Mapping[str, bool] | None = None) -> dict[str, bool]:
    where = "auth.injection_location"
    place = dict(current or {"header": True, "body": False})
    if value is None:
        return place
    given = as_object(value, where)
    only(given, {"header", "body"}, where)
    for key in ("header", "body"):
        if key in given:
            if not isinstance(given[key], bool):
                raise fail(f"{where}.{key} must be a boolean")
            place[key] = given[key]
    if not place["header"] and not place["body"]:
        raise fail(f"{where}: at least one of header and body must be true")
    return place


def _auth(value: object, now: datetime) -> tuple[str, Json, dict[str, str]]:
    auth = as_object(value, "auth")
    kind = auth.get("type")
    secrets: dict[str, str] = {}
    if kind == "static_bearer":
        only(auth, {"type", "mcp_server_url", "token"}, "auth")
        secrets["token"] = _secret(auth.get("token"), "auth.token", header=True)
        return kind, {"type": kind, "mcp_server_url": _url(auth.get("mcp_server_url"), "auth.mcp_server_url")}, secrets
    if kind == "mcp_oauth":
        only(auth, {"type", "mcp_server_url", "access_token", "expires_at", "refresh"}, "auth")
        secrets["access_token"] = _secret(auth.get("access_token"), "auth.access_token", header=True)
        public = {
            "type": kind,
            "mcp_server_url": _url(auth.get("mcp_server_url"), "auth.mcp_server_url"),
            "expires_at": _when(auth.get("expires_at"), "auth.expires_at", now),
            "refresh": _refresh(auth.get("refresh"), secrets),
        }
        return kind, public, secrets
    if kind == "environment_variable":
        only(auth, {"type", "secret_name", "secret_value", "networking", "injection_location"}, "auth")
        name = auth.get("secret_name")
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise fail("auth.secret_name must be an environment variable name (letters, digits, '_')")
        secrets["secret_value"] = _secret(auth.get("secret_value"), "auth.secret_value", header=False)
        public = {
            "type": kind,
            "secret_name": name,
            "networking": _networking(auth.get("networking")),
            "injection_location": _injection(auth.get("injection_location")),
        }
        return kind, public, secrets
    raise fail(f"auth.type must be one of {', '.join(KINDS)}")


def credential_create(body: object, now: datetime) -> CredentialSpec:
    """The credential of ``POST /v1/vaults/{id}/credentials``."""
    obj = as_object(body, "the request body")
    only(obj, {"auth", "display_name", "metadata"}, "the request body")
    kind, auth, secrets = _auth(obj.get("auth"), now)
    public = {
        "auth": auth,
        "display_name": text(obj.get("display_name"), "display_name", MAX_DISPLAY_NAME),
        "metadata": metadata(obj.get("metadata")),
    }
    return CredentialSpec(kind, public, secrets)


def _update_auth(kind: str, auth: Json, secrets: dict[str, str], change: Json, now: datetime) -> None:
    """Apply an update's ``auth`` to ``auth``/``secrets`` in place (immutable fields refused)."""
    if change.get("type") != kind:
        raise fail(f"auth.type must be {kind!r}: a credential's type cannot change")
    if kind == "static_bearer":
        only(change, {"type", "token"}, "auth")
        if change.get("token") is not None:
            secrets["token"] = _secret(change["token"], "auth.token", header=True)
    elif kind == "mcp_oauth":
        only(change, {"type", "access_token", "expires_at", "refresh"}, "auth")
        if change.get("access_token") is not None:
            secrets["access_token"] = _secret(change["access_token"], "auth.access_token", header=True)
        if "expires_at" in change:
            auth["expires_at"] = _when(change["expires_at"], "auth.expires_at", now)
        refresh = change.get("refresh")
        if refresh is not None:
            where = "auth.refresh"
            patch = as_object(refresh, where)
            only(patch, {"refresh_token", "scope", "token_endpoint_auth"}, where)
            current = auth.get("refresh")
            if current is None:
                raise fail(f"{where}: this credential was made without refresh settings")
            if patch.get("refresh_token") is not None:
                secrets["refresh_token"] = _secret(patch["refresh_token"], f"{where}.refresh_token", header=False)
            if "scope" in patch:
                current["scope"] = text(patch["scope"], f"{where}.scope", MAX_URL)
            if patch.get("token_endpoint_auth") is not None:
                endpoint = as_object(patch["token_endpoint_auth"], f"{where}.token_endpoint_auth")
                only(endpoint, {"type", "client_secret"}, f"{where}.token_endpoint_auth")
                if current["token_endpoint_auth"]["type"] == "none":
                    raise fail(f"{where}.token_endpoint_auth: this credential's token endpoint takes no secret")
                if endpoint.get("client_secret") is not None:
                    secrets["client_secret"] = _secret(
                        endpoint["client_secret"], f"{where}.token_endpoint_auth.client_secret", header=False
                    )
    else:
        only(change, {"type", "injection_location", "networking", "secret_value"}, "auth")
        if change.get("secret_value") is not None:
            secrets["secret_value"] = _secret(change["secret_value"], "auth.secret_value", header=False)
        if change.get("networking") is not None:
            auth["networking"] = _networking(change["networking"])
        if "injection_location" in change:
            auth["injection_location"] = _injection(change["injection_location"], auth["injection_location"])


def credential_update(
    kind: str, public: Mapping[str, Any], secrets: Mapping[str, str], body: object, now: datetime
) -> CredentialSpec:
    """The credential after ``POST /v1/vaults/{id}/credentials/{cid}``: ``display_name`` replaced,
    ``metadata`` patched, ``auth`` fields given replaced (its URL or secret name cannot change)."""
    obj = as_object(body, "the request body")
    only(obj, {"auth", "display_name", "metadata"}, "the request body")
    new_public: Json = copy.deepcopy(dict(public))
    new_secrets = dict(secrets)
    if obj.get("auth") is not None:
        _update_auth(kind, new_public["auth"], new_secrets, as_object(obj["auth"], "auth"), now)
    if "display_name" in obj:
        new_public["display_name"] = text(obj["display_name"], "display_name", MAX_DISPLAY_NAME)
    if "metadata" in obj:
        new_public["metadata"] = metadata(patch_metadata(public.get("metadata"), obj["metadata"]))
    return CredentialSpec(kind, new_public, new_secrets)


def credential_object(
    credential_id: str,
    vault_id: str,
    public: Mapping[str, Any],
    created: str,
    updated: str,
    archived: str | None,
) -> Json:
    """§9's credential object: the public document only (no secret is ever in it)."""
    return {
        "type": "vault_credential",
        "id": credential_id,
        "vault_id": vault_id,
        "display_name": public.get("display_name"),
        "auth": without_secrets(public["auth"]),
        "metadata": dict(public.get("metadata") or {}),
        "created_at": created,
        "updated_at": updated,
        "archived_at": archived,
    }


def without_secrets(value: Any) -> Any:
    """``value`` with every secret field removed, at any depth (a second guard: the public
    document never holds one)."""
    if isinstance(value, dict):
        return {k: without_secrets(v) for k, v in value.items() if k not in SECRET_FIELDS}
    if isinstance(value, list):
        return [without_secrets(v) for v in value]
    return value


def bearer_of(kind: str, secrets: Mapping[str, str]) -> str | None:
    """The token an MCP credential sends as ``Authorization: Bearer``."""
    if kind == "static_bearer":
        return secrets.get("token")
    if kind == "mcp_oauth":
        return secrets.get("access_token")
    return None
