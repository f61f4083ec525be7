"""Vaults without I/O (moorage.vaults, moorage.vault_proxy.target_refusal): which credential an MCP
server gets, what a credential body becomes (secrets apart from what is shown), and where a bearer
token may be sent."""

from __future__ import annotations

import ipaddress
import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from moorage.errors import Code, MoorageError
from moorage.vault_proxy import target_refusal
from moorage.vaults import (
    Held,
    credential_create,
    credential_object,
    credential_update,
    mcp_key,
    proxied_servers,
    vault_ids,
    without_secrets,
)
from moorage.vaults_api import check_session_vaults

NOW = datetime(2026, 12, 2, tzinfo=UTC)


def refused(call: Any, *args: Any) -> str:
    with pytest.raises(MoorageError) as caught:
        call(*args)
    assert caught.value.code == Code.INVALID_REQUEST, caught.value.message
    return caught.value.message


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("https://MCP.Example.com/mcp/", "https://mcp.example.com/mcp"),
        ("https://mcp.example.com:443/mcp", "https://mcp.example.com/mcp"),
        ("https://mcp.example.com", "https://mcp.example.com/"),
        ("https://mcp.example.com/", "https://mcp.example.com/"),
        ("http://mcp.example.com:80/x?b=1#frag", "http://mcp.example.com/x?b=1"),
        ("https://mcp.example.com:8443/mcp", "https://mcp.example.com:8443/mcp"),
        ("HTTP://[::1]:9000/mcp", "http://[::1]:9000/mcp"),
        ("https://mcp.example.com./mcp", "https://mcp.example.com/mcp"),
    ],
)
def test_mcp_urls_are_matched_by_their_normal_form(url: str, key: str) -> None:
    assert mcp_key(url) == key


def test_a_url_that_is_not_http_or_carries_a_password_is_refused() -> None:
    assert "http(s)" in refused(mcp_key, "ftp://mcp.example.com")
    assert "http(s)" in refused(mcp_key, "https:///nohost")
    message = refused(mcp_key, "https://user:hunter2@mcp.example.com")
    assert "user or password" in message and "hunter2" not in message
    assert "not a valid URL" in refused(mcp_key, "https://mcp.example.com:99999")


def held(ident: str, vault: str, kind: str, url: str) -> Held:
    key = "env:X" if kind == "environment_variable" else "mcp:" + mcp_key(url)
    return Held(ident, vault, kind, key)


def test_each_server_gets_the_credential_of_the_first_vault_that_has_one() -> None:
    servers = [
        {"name": "gh", "url": "https://mcp.github.example/mcp"},
        {"name": "linear", "url": "https://linear.example/sse/"},
        {"name": "none", "url": "https://other.example/mcp"},
    ]
    credentials = [  # in vault_ids order
        held("c1", "vlt_first", "static_bearer", "https://MCP.github.example/mcp/"),
        held("c2", "vlt_first", "environment_variable", ""),
        held("c3", "vlt_second", "mcp_oauth", "https://mcp.github.example/mcp"),
        held("c4", "vlt_second", "mcp_oauth", "https://linear.example/sse"),
    ]
    chosen = proxied_servers(servers, credentials)
    assert {name: c.id for name, c in chosen.items()} == {"gh": "c1", "linear": "c4"}
    assert proxied_servers(servers, []) == {}
    assert proxied_servers([{"name": "bad", "url": "ftp://x"}], credentials) == {}


def test_a_credential_body_is_split_into_what_is_shown_and_what_is_sealed() -> None:
    body = {
        "auth": {
            "type": "mcp_oauth",
            "mcp_server_url": "https://mcp.example.com/mcp",
            "access_token": "at-123",
            "expires_at": (NOW + timedelta(hours=1)).isoformat(),
            "refresh": {
                "client_id": "cid",
                "refresh_token": "rt-456",
                "token_endpoint": "https://auth.example.com/token",
                "token_endpoint_auth": {"type": "client_secret_post", "client_secret": "cs-789"},
            },
        },
        "display_name": "GitHub",
        "metadata": {"u": "1"},
    }
    spec = credential_create(body, NOW)
    assert spec.kind == "mcp_oauth" and spec.match_key == "mcp:https://mcp.example.com/mcp"
    assert spec.secrets == {"access_token": "at-123", "refresh_token": "rt-456", "client_secret": "cs-789"}
    shown = json.dumps(spec.public)
    assert not any(secret in shown for secret in spec.secrets.values())
    assert spec.public["auth"]["refresh"]["token_endpoint_auth"] == {"type": "client_secret_post"}
    obj = credential_object("vcrd_1", "vlt_1", spec.public, "t0", "t1", None)
    assert obj["type"] == "vault_credential" and obj["display_name"] == "GitHub" and obj["metadata"] == {"u": "1"}
    assert not any(secret in json.dumps(obj) for secret in spec.secrets.values())


def test_secrets_are_checked_and_a_header_token_is_visible_ascii() -> None:
    def bearer(token: object) -> dict[str, Any]:
        return {"auth": {"type": "static_bearer", "mcp_server_url": "https://m.example/mcp", "token": token}}

    assert "HTTP header" in refused(credential_create, bearer("tok\r\nX-Evil: 1"), NOW)
    assert "HTTP header" in refused(credential_create, bearer("tok en"), NOW)
    assert "non-empty" in refused(credential_create, bearer(""), NOW)
    assert "unknown field" in refused(credential_create, {"auth": {**bearer("t")["auth"], "access_token": "x"}}, NOW)
    past = {
        "type": "mcp_oauth",
        "mcp_server_url": "https://m.example",
        "access_token": "a",
        "expires_at": NOW.isoformat(),
    }
    assert "future" in refused(credential_create, {"auth": past}, NOW)
    env = {
        "type": "environment_variable",
        "secret_name": "API KEY",
        "secret_value": "v",
        "networking": {"type": "unrestricted"},
    }
    assert "secret_name" in refused(credential_create, {"auth": env}, NOW)
    hosts = {**env, "secret_name": "API_KEY", "networking": {"type": "limited", "allowed_hosts": ["https://x.io"]}}
    assert "allowed_hosts[0]" in refused(credential_create, {"auth": hosts}, NOW)
    ok = credential_create({"auth": {**hosts, "networking": {"type": "limited", "allowed_hosts": ["*.X.io"]}}}, NOW)
    assert ok.match_key == "env:API_KEY" and ok.public["auth"]["injection_location"] == {"header": True, "body": False}
    assert ok.public["auth"]["networking"]["allowed_hosts"] == ["*.x.io"]


def test_an_update_replaces_secrets_patches_metadata_and_keeps_the_url() -> None:
    spec = credential_create(
        {
            "auth": {"type": "static_bearer", "mcp_server_url": "https://m.example/mcp", "token": "old"},
            "metadata": {"a": "1"},
        },
        NOW,
    )
    same = credential_update(spec.kind, spec.public, spec.secrets, {"display_name": "n", "metadata": {"a": None}}, NOW)
    assert same.secrets == {"token": "old"} and same.public["display_name"] == "n" and same.public["metadata"] == {}
    new = credential_update(
        spec.kind, spec.public, spec.secrets, {"auth": {"type": "static_bearer", "token": "new"}}, NOW
    )
    assert new.secrets == {"token": "new"} and new.public["auth"] == spec.public["auth"]
    move = {"auth": {"type": "static_bearer", "mcp_server_url": "https://evil.example"}}
    assert "mcp_server_url" in refused(credential_update, spec.kind, spec.public, spec.secrets, move, NOW)
    retype = {"auth": {"type": "mcp_oauth", "access_token": "x"}}
    assert "cannot change" in refused(credential_update, spec.kind, spec.public, spec.secrets, retype, NOW)


def test_secret_fields_are_stripped_at_any_depth() -> None:
    doc = {"type": "x", "token": "t", "refresh": {"refresh_token": "r", "scope": "s"}, "list": [{"client_secret": "c"}]}
    assert without_secrets(doc) == {"type": "x", "refresh": {"scope": "s"}, "list": [{}]}


def test_vault_ids_are_distinct_and_bounded() -> None:
    assert vault_ids(None) == () and vault_ids(["a", "b"]) == ("a", "b")
    assert "twice" in refused(vault_ids, ["a", "a"])
    assert "array" in refused(vault_ids, "a")


NETS = (ipaddress.ip_network("10.1.0.0/16"),)


@pytest.mark.parametrize(
    ("scheme", "addresses", "why"),
    [
        ("https", ["93.184.216.34"], None),
        ("https", ["10.1.2.3"], None),
        ("http", ["10.1.2.3"], None),
        ("http", ["93.184.216.34"], "plain http"),
        ("https", ["127.0.0.1"], "non-public"),
        ("https", ["93.184.216.34", "169.254.169.254"], "non-public"),
        ("https", ["::ffff:127.0.0.1"], "non-public"),
        ("https", [], "no address"),
    ],
)
def test_a_bearer_token_goes_only_to_public_or_operator_addresses_and_http_only_inside(
    scheme: str, addresses: list[str], why: str | None
) -> None:
    refusal = target_refusal(scheme, addresses, NETS)
    assert refusal is None if why is None else (refusal is not None and why in refusal)


class FakeVaults:
    """The two reads ``check_session_vaults`` makes, over one live vault holding ``kinds``."""

    def __init__(self, *kinds: str) -> None:
        self.kinds = kinds

    async def get_many(self, tenant: str, vault_ids: Any) -> dict[str, Any]:
        return {v: SimpleNamespace(id=v, archived_at=None) for v in vault_ids}

    async def live_credentials(self, tenant: str, vault_ids: Any) -> list[Any]:
        return [SimpleNamespace(id=f"vcrd_{n}", vault_id="vlt_1", kind=k) for n, k in enumerate(self.kinds)]


async def test_environment_credentials_are_refused_where_sandboxes_cannot_reach_the_tunnel() -> None:
    """Local and docker sandboxes reach the egress tunnel that injects ``environment_variable``
    credentials; Kubernetes pods do not, so a session naming one there is refused, not run without it."""
    env_vault = FakeVaults("static_bearer", "environment_variable")
    for backend in ("local", "docker"):
        await check_session_vaults(env_vault, "acme", ["vlt_1"], backend)  # type: ignore[arg-type]
    await check_session_vaults(FakeVaults("static_bearer"), "acme", ["vlt_1"], "kubernetes")  # type: ignore[arg-type]
    with pytest.raises(MoorageError) as refused:
        await check_session_vaults(env_vault, "acme", ["vlt_1"], "kubernetes")  # type: ignore[arg-type]
    assert refused.value.code == Code.CREDENTIAL_NOT_SUPPORTED and "vcrd_1" in str(refused.value)
