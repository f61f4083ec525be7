"""What one session's sandbox may reach through the egress tunnel, without I/O.

A session in an environment (docs/managed-agents.md, "Environments") gets the environment's
networking (``environments.egress``: its ``allowed_hosts``, the package registries with
``allow_package_managers``, its agent's MCP server hosts with ``allow_mcp_servers``) *in place of*
the operator's ``MOORAGE_EGRESS_ALLOW``, which is what a session without an environment gets (the
WebSocket sessions). The operator's list does not cap an environment's (docs/managed-agents.md
says why); what every policy still obeys is the tunnel's address check (public addresses only,
non-public ones only inside ``MOORAGE_EGRESS_ALLOW_NETWORKS``).

Refused, for a new session and for a rehydrated one alike (the environment's spec is pinned in the
session record when the session is made, so a later edit of the environment changes nothing):

- ``unrestricted`` networking once the operator has turned ``MOORAGE_ALLOW_UNRESTRICTED_NETWORK``
  off: ``unrestricted_network_not_allowed``;
- any egress at all on a backend whose sandboxes cannot reach the tunnel (Kubernetes: pods run on
  other nodes and get no unix socket): ``not_supported``. An environment that allows nothing is
  fine there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .environments import egress
from .errors import Code, SessionError
from .settings import Settings
from .tunnel import NO_EGRESS, Policy, parse_allowlist, parse_rule

# Backends that mount the tunnel's socket into the sandbox (sandbox/local.py, sandbox/docker.py).
TUNNEL_BACKENDS = frozenset({"local", "docker"})


@dataclass(frozen=True)
class EgressConfig:
    """The operator's side of every session's policy, built once from ``Settings``."""

    operator: Policy  # MOORAGE_EGRESS_ALLOW: sessions without an environment
    allow_unrestricted: bool  # MOORAGE_ALLOW_UNRESTRICTED_NETWORK, as it is now
    backend: str  # MOORAGE_SANDBOX

    @classmethod
    def of(cls, settings: Settings, backend: str) -> EgressConfig:
        return cls(Policy(parse_allowlist(settings.egress_allow)), settings.allow_unrestricted_network, backend)


def mcp_urls(agent: Mapping[str, Any] | None) -> list[str]:
    """The URLs of an agent's MCP servers (a pinned ``agents.runner_agent``)."""
    servers = (agent or {}).get("mcp_servers") or []
    return [s["url"] for s in servers if isinstance(s, Mapping) and isinstance(s.get("url"), str)]


def environment_policy(spec: Mapping[str, Any], agent: Mapping[str, Any] | None) -> Policy:
    """The policy of a session in the environment ``spec`` whose agent is ``agent``."""
    hosts = egress(dict(spec), mcp_urls(agent))
    if hosts is None:
        return Policy(any_host=True)
    rules = []
    for entry in hosts:
        try:
            rule = parse_rule(entry)
        except ValueError:
            continue  # an MCP URL's host that no CONNECT could name (an IPv6 literal): nothing to open
        if rule is not None and rule not in rules:
            rules.append(rule)
    return Policy(tuple(rules))


def session_policy(
    environment: Mapping[str, Any] | None, agent: Mapping[str, Any] | None, config: EgressConfig
) -> Policy:
    """The tunnel policy of a session (``environment``: ``{"id", "spec"}`` or None), or a fatal
    ``SessionError`` saying why the session cannot run here (see the module docstring)."""
    if environment is None:
        return config.operator
    env_id = str(environment.get("id", ""))
    policy = environment_policy(environment["spec"], agent)
    if policy.any_host and not config.allow_unrestricted:
        raise SessionError(
            f"environment {env_id} asks for unrestricted networking, which this server no longer allows "
            "(MOORAGE_ALLOW_UNRESTRICTED_NETWORK is off); update it to limited networking with allowed_hosts",
            code=Code.UNRESTRICTED_NETWORK_NOT_ALLOWED,
            fatal=True,
        )
    if policy != NO_EGRESS and config.backend not in TUNNEL_BACKENDS:
        raise SessionError(
            f"environment {env_id} allows network access, which the {config.backend} sandbox backend cannot "
            "give its sandboxes yet (they cannot reach the egress tunnel); use an environment without "
            "allowed_hosts, package managers or MCP servers, or the local or docker backend",
            code=Code.NOT_SUPPORTED,
            fatal=True,
        )
    return policy


def describe(policy: Policy) -> dict[str, object]:
    """For the session's log line: what the policy opens, without listing it."""
    return {"egress_unrestricted": policy.any_host, "egress_rules": len(policy.rules)}
