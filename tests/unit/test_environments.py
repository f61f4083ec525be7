"""The environment spec, without I/O: create defaults (§4.2), update semantics, host checks,
the refusals (unrestricted networking unless allowed, packages, self-hosted, account scope),
and the egress allowlist a session in the environment will get."""

from __future__ import annotations

from typing import Any

import pytest
from moorage.bodies import BodyError
from moorage.environments import (
    PACKAGE_MANAGERS,
    PACKAGE_REGISTRY_HOSTS,
    create_spec,
    egress,
    environment_object,
    normal_host,
    update_spec,
)
from moorage.errors import Code, http_status


def limited(**extra: Any) -> dict[str, Any]:
    return {"type": "cloud", "networking": {"type": "limited", **extra}}


def make(body: dict[str, Any], *, unrestricted: bool = False) -> dict[str, Any]:
    return create_spec(body, allow_unrestricted=unrestricted)


def refused(
    body: object, fragment: str, code: Code = Code.INVALID_REQUEST, current: dict[str, Any] | None = None
) -> None:
    with pytest.raises(BodyError) as caught:
        if current is None:
            create_spec(body, allow_unrestricted=False)
        else:
            update_spec(current, body, allow_unrestricted=False)
    assert caught.value.code is code and http_status(code) == 400
    assert fragment in caught.value.message


def test_a_bare_create_gets_limited_networking_with_no_hosts_and_all_six_package_arrays() -> None:
    spec = make({"name": "dev"})
    assert spec == {
        "name": "dev",
        "description": None,
        "scope": None,
        "metadata": {},
        "config": {
            "type": "cloud",
            "networking": {
                "type": "limited",
                "allowed_hosts": [],
                "allow_mcp_servers": False,
                "allow_package_managers": False,
            },
            "packages": {"type": "packages", **{m: [] for m in PACKAGE_MANAGERS}},
        },
    }
    obj = environment_object("env_1", spec, "t0", "t1", None)
    assert obj["type"] == "environment" and obj["id"] == "env_1" and obj["archived_at"] is None
    assert obj["config"] == spec["config"] and obj["created_at"] == "t0" and obj["updated_at"] == "t1"


def test_allowed_hosts_are_checked_normalised_and_deduplicated() -> None:
    spec = make(
        {
            "name": "n",
            "config": limited(allowed_hosts=["API.Example.com.", "*.github.com", "h.io:8443", "api.example.com"]),
        }
    )
    assert spec["config"]["networking"]["allowed_hosts"] == ["api.example.com", "*.github.com", "h.io:8443"]
    assert normal_host("10.0.0.1", "h") == "10.0.0.1"


@pytest.mark.parametrize(
    "host",
    [
        "https://api.example.com",
        "api.example.com/path",
        "a b.com",
        "",
        "*.com",
        "*",
        "h:0",
        "h:99999",
        "h:x",
        "[::1]",
        "-bad.com",
        "a..b",
        "x" * 64 + ".com",
        7,
    ],
)
def test_a_bad_host_is_refused_naming_it(host: object) -> None:
    refused({"name": "n", "config": limited(allowed_hosts=[host])}, "config.networking.allowed_hosts[0]")


def test_unrestricted_networking_needs_the_operators_permission() -> None:
    body = {"name": "n", "config": {"type": "cloud", "networking": {"type": "unrestricted"}}}
    refused(body, "MOORAGE_ALLOW_UNRESTRICTED_NETWORK", Code.UNRESTRICTED_NETWORK_NOT_ALLOWED)
    spec = make(body, unrestricted=True)
    assert spec["config"]["networking"] == {"type": "unrestricted"}
    assert egress(spec) is None
    # An environment made while it was allowed keeps it through unrelated updates...
    assert (
        update_spec(spec, {"description": "d"}, allow_unrestricted=False)["config"]["networking"]["type"]
        == "unrestricted"
    )
    # ...but cannot be set to it again.
    refused({"config": body["config"]}, "unrestricted", Code.UNRESTRICTED_NETWORK_NOT_ALLOWED, current=spec)


def test_pip_and_npm_packages_are_kept_normalised_and_other_managers_refused() -> None:
    packages = {"pip": ["Tabulate == 0.9.0", "six", "six"], "npm": ["is-number@7"]}
    spec = make({"name": "n", "config": {"type": "cloud", "packages": packages}})
    assert spec["config"]["packages"] == {
        "type": "packages",
        **{m: [] for m in PACKAGE_MANAGERS},
        "pip": ["Tabulate==0.9.0", "six"],
        "npm": ["is-number@7"],
    }
    refused(
        {"name": "n", "config": {"type": "cloud", "packages": {"type": "packages", "apt": ["jq"]}}},
        "config.packages.apt",
        Code.PACKAGES_NOT_SUPPORTED,
    )
    refused(
        {"name": "n", "config": {"type": "cloud", "packages": {"pip": ["--index-url=http://evil/simple"]}}},
        "config.packages.pip[0]",
    )
    empty = make({"name": "n", "config": {"type": "cloud", "packages": {"type": "packages", "npm": [], "apt": None}}})
    assert empty["config"]["packages"] == {"type": "packages", **{m: [] for m in PACKAGE_MANAGERS}}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"name": "n", "config": {"type": "self_hosted"}}, "self_hosted is not supported"),
        ({"name": "n", "scope": "account"}, "scope"),
        ({"name": "n", "vault_ids": []}, "unknown field vault_ids"),
        ({"name": "n", "config": {"type": "cloud", "gpu": True}}, "unknown field gpu"),
        (
            {"name": "n", "config": {"type": "cloud", "networking": {"type": "limited", "proxy": "x"}}},
            "unknown field proxy",
        ),
        ({"name": "n", "config": {"type": "cloud", "networking": {"type": "package_managers_and_custom"}}}, "limited"),
        ({"name": "n", "config": limited(allow_mcp_servers="yes")}, "allow_mcp_servers must be a boolean"),
        ({"name": "n", "config": limited(allowed_hosts=["h"] * 257)}, "more than 256"),
        ({"name": ""}, "name is required"),
        ({}, "name is required"),
        ({"name": "x" * 257}, "name is longer"),
        ({"name": "n", "metadata": {f"k{i}": "v" for i in range(17)}}, "more than 16"),
        ({"name": "n", "metadata": {"k": 1}}, "metadata['k']"),
        ([], "the request body must be an object"),
    ],
)
def test_what_moorage_cannot_honour_is_refused_clearly(body: object, fragment: str) -> None:
    refused(body, fragment)


def test_update_keeps_what_is_omitted_patches_metadata_and_clears_description() -> None:
    current = make(
        {
            "name": "n",
            "description": "d",
            "scope": "organization",
            "metadata": {"a": "1", "b": "2"},
            "config": limited(allowed_hosts=["a.com"], allow_mcp_servers=True),
        }
    )
    same = update_spec(current, {}, allow_unrestricted=False)
    assert same == current
    changed = update_spec(
        current,
        {
            "name": None,
            "description": None,
            "metadata": {"a": None, "c": "3"},
            "config": limited(allow_package_managers=True),
        },
        allow_unrestricted=False,
    )
    assert changed["name"] == "n" and changed["description"] is None and changed["scope"] == "organization"
    assert changed["metadata"] == {"b": "2", "c": "3"}
    net = changed["config"]["networking"]
    assert net == {
        "type": "limited",
        "allowed_hosts": ["a.com"],
        "allow_mcp_servers": True,
        "allow_package_managers": True,
    }
    cleared = update_spec(changed, {"config": limited(allowed_hosts=[])}, allow_unrestricted=False)
    assert cleared["config"]["networking"]["allowed_hosts"] == []
    refused({"name": ""}, "name is required", current=current)
    assert current["metadata"] == {"a": "1", "b": "2"}  # never changed in place


def test_egress_is_the_hosts_plus_registries_and_mcp_hosts_when_allowed() -> None:
    spec = make({"name": "n", "config": limited(allowed_hosts=["a.com", "b.com:8443"])})
    urls = ["https://mcp.example.com/sse", "http://tools.local:9000/x"]
    assert egress(spec, urls) == ("a.com", "b.com:8443")
    both = update_spec(
        spec, {"config": limited(allow_mcp_servers=True, allow_package_managers=True)}, allow_unrestricted=False
    )
    hosts = egress(both, urls)
    assert hosts is not None
    assert hosts[:2] == ("a.com", "b.com:8443") and set(PACKAGE_REGISTRY_HOSTS) <= set(hosts)
    assert hosts[-2:] == ("mcp.example.com", "tools.local:9000")
