"""A session's egress policy, without I/O: an environment's networking as tunnel rules, the
operator's list for a session without one, and the refusals (unrestricted networking the operator
no longer allows, network access on a backend whose sandboxes cannot reach the tunnel), for a new
session and for a rehydrated one."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

import pytest
from moorage.egress_policy import EgressConfig, environment_policy, mcp_urls, session_policy
from moorage.environments import PACKAGE_REGISTRY_HOSTS, create_spec
from moorage.errors import Code, SessionError, close_code, http_status
from moorage.manager import SessionManager
from moorage.settings import Settings
from moorage.tunnel import NO_EGRESS, Policy, Rule, parse_rule

OPERATOR = Policy((Rule("pypi.org"),))
LOCAL = EgressConfig(OPERATOR, allow_unrestricted=False, backend="local")
AGENT = {"mcp_servers": [{"type": "url", "name": "t", "url": "https://mcp.example.com/sse"}]}


def env(networking: dict[str, Any], env_id: str = "env_1") -> dict[str, Any]:
    """``{"id", "spec"}`` as the sessions API hands it to ``SessionManager.create``."""
    spec = create_spec({"name": "e", "config": {"type": "cloud", "networking": networking}}, allow_unrestricted=True)
    return {"id": env_id, "spec": spec}


def limited(*hosts: str, **flags: bool) -> dict[str, Any]:
    return env({"type": "limited", "allowed_hosts": list(hosts), **flags})


def refusal(environment: dict[str, Any], config: EgressConfig) -> SessionError:
    with pytest.raises(SessionError) as caught:
        session_policy(environment, AGENT, config)
    assert caught.value.fatal
    return caught.value


def test_a_session_without_an_environment_gets_the_operators_list() -> None:
    assert session_policy(None, AGENT, LOCAL) is OPERATOR
    config = EgressConfig.of(Settings(egress_allow="pypi.org, *.example.com:8443"), "local")
    assert config.operator == Policy((Rule("pypi.org"), Rule("*.example.com", 8443)))
    assert EgressConfig.of(Settings(), "local").operator == NO_EGRESS


def test_an_environment_replaces_the_operators_list_and_is_not_capped_by_it() -> None:
    """The environment's hosts, exactly: the operator's pypi.org is not added, and an environment
    host the operator never listed is allowed (docs/managed-agents.md says why)."""
    policy = session_policy(limited("api.example.com", "*.git.example:8443"), AGENT, LOCAL)
    assert policy == Policy((Rule("api.example.com"), Rule("*.git.example", 8443)))
    assert policy.allows("api.example.com", 443) and policy.allows("a.git.example", 8443)
    assert not policy.allows("pypi.org", 443) and not policy.allows("api.example.com", 80)
    assert not policy.allows("git.example", 8443)  # a wildcard covers subdomains only


def test_limited_without_hosts_allows_nothing_but_the_model_proxy() -> None:
    policy = session_policy(limited(), AGENT, LOCAL)
    assert policy == NO_EGRESS and policy.allows_nothing
    assert not policy.allows("pypi.org", 443) and not policy.allows("mcp.example.com", 443)


def test_package_managers_and_mcp_servers_open_their_hosts() -> None:
    policy = session_policy(limited("a.com", allow_package_managers=True, allow_mcp_servers=True), AGENT, LOCAL)
    assert all(policy.allows(host, 443) for host in PACKAGE_REGISTRY_HOSTS)
    assert policy.allows("mcp.example.com", 443) and policy.allows("a.com", 443)
    without = session_policy(limited("a.com", allow_package_managers=True), AGENT, LOCAL)
    assert not without.allows("mcp.example.com", 443)


def test_mcp_server_urls_become_host_and_port_rules() -> None:
    """https without a port is 443, http 80; a URL with no usable host opens nothing."""
    agent = {
        "mcp_servers": [
            {"url": "https://A.example.com/sse"},
            {"url": "http://plain.example.com/x"},
            {"url": "https://tools.example.com:9443/"},
            {"url": "http://[::1]:8080/"},  # no CONNECT names an IPv6 literal here
            {"url": "https://bad.example.com:99999/"},
            {"name": "no url"},
        ]
    }
    assert mcp_urls(agent)[:3] == [
        "https://A.example.com/sse",
        "http://plain.example.com/x",
        "https://tools.example.com:9443/",
    ]
    assert mcp_urls(None) == []
    spec = limited(allow_mcp_servers=True)["spec"]
    assert environment_policy(spec, agent) == Policy(
        (Rule("a.example.com"), Rule("plain.example.com", 80), Rule("tools.example.com", 9443))
    )


def test_unrestricted_allows_any_host_only_while_the_operator_allows_it() -> None:
    unrestricted = env({"type": "unrestricted"})
    allowing = EgressConfig(OPERATOR, allow_unrestricted=True, backend="docker")
    policy = session_policy(unrestricted, AGENT, allowing)
    assert policy.any_host and policy.allows("anything.example", 22) and not policy.allows_nothing
    error = refusal(unrestricted, LOCAL)  # the operator turned it off since
    assert error.code is Code.UNRESTRICTED_NETWORK_NOT_ALLOWED and "env_1" in error.message
    assert http_status(error.code) == 400 and close_code(error.code) == 1008


def test_kubernetes_refuses_environments_that_open_anything() -> None:
    """Pods cannot reach the tunnel's unix socket: an environment that allows a host is refused
    rather than silently cut off; one that allows nothing runs."""
    kube = EgressConfig(NO_EGRESS, allow_unrestricted=True, backend="kubernetes")
    assert session_policy(limited(), AGENT, kube) == NO_EGRESS
    assert session_policy(None, AGENT, kube) == NO_EGRESS
    for environment in (
        limited("a.com"),
        limited(allow_package_managers=True),
        limited(allow_mcp_servers=True),
        env({"type": "unrestricted"}),
    ):
        error = refusal(environment, kube)
        assert error.code is Code.NOT_SUPPORTED and "kubernetes" in error.message
        assert http_status(error.code) == 501 and close_code(error.code) == 1008
    # An environment whose MCP flag finds no MCP server opens nothing: not refused.
    assert session_policy(limited(allow_mcp_servers=True), {}, kube) == NO_EGRESS


def test_rules_parse_strictly() -> None:
    assert parse_rule(" Example.COM. ") == Rule("example.com")
    assert parse_rule("host:8443") == Rule("host", 8443)
    assert parse_rule("  ") is None
    for bad in ("x.com:0", "x.com:65536", "x.com:", "::1", "a/b", "*"):
        with pytest.raises(ValueError):
            parse_rule(bad)


# -- the manager refuses before anything is stored or leased ---------------------------------


class Records:
    """A store that holds one suspended session pinned to ``environment``; it fails the test if
    the manager stores or leases anything."""

    def __init__(self, environment: dict[str, Any] | None) -> None:
        self.environment = environment
        self.writes: list[str] = []

    async def get(self, session_id: str) -> Any:
        options = {"environment": self.environment} if self.environment else {}
        return SimpleNamespace(
            tenant="t", state="suspended", owner=None, lease_expires_at=datetime.now(UTC), options=options
        )

    async def create(self, *args: Any) -> None:
        self.writes.append("create")

    async def acquire_lease(self, *args: Any) -> bool:
        self.writes.append("lease")
        return True

    async def tenant_storage_bytes(self, tenant: str) -> int:
        return 0


def manager(records: Records, backend: str = "local", **settings: Any) -> SessionManager:
    deps = SimpleNamespace(
        settings=Settings(**settings), records=records, replica="r1", backend=SimpleNamespace(name=backend)
    )
    return SessionManager(cast(Any, deps))


async def test_create_refuses_an_environment_before_storing_anything() -> None:
    records = Records(None)
    with pytest.raises(SessionError) as caught:
        await manager(records).create("t", None, env({"type": "unrestricted"}))
    assert caught.value.code is Code.UNRESTRICTED_NETWORK_NOT_ALLOWED and caught.value.fatal
    with pytest.raises(SessionError) as caught:
        await manager(records, "kubernetes").create("t", None, limited("a.com"))
    assert caught.value.code is Code.NOT_SUPPORTED
    assert records.writes == []


async def test_rehydrating_refuses_an_environment_the_operator_no_longer_allows() -> None:
    """Made while unrestricted networking was allowed, attached after the operator turned it off:
    refused before the lease is taken (and the start slot is given back)."""
    records = Records(env({"type": "unrestricted"}))
    sessions = manager(records)
    with pytest.raises(SessionError) as caught:
        await sessions.attach("00000000-0000-4000-8000-000000000001", "t")
    assert caught.value.code is Code.UNRESTRICTED_NETWORK_NOT_ALLOWED
    assert records.writes == [] and sessions.gate.starting == 0
