"""Environment specs, without I/O: the Managed Agents environment create/update bodies
(../shared/MANAGED_AGENTS.md §4.1) parsed into the stored spec, the environment object of §4.2
with the server-filled defaults, and what a session in the environment may reach (``egress``).

An environment is a sandbox template. A *spec* is the environment object minus what the store owns
(``id``, ``type``, times): ``name``, ``description``, ``scope``, ``metadata`` and ``config``
(always the ``cloud`` form, with ``networking`` and all six ``packages`` arrays filled in).

What Moorage honours, and what it refuses rather than silently ignores (docs/managed-agents.md):
- ``networking: limited`` (the default here: no hosts) — ``allowed_hosts`` are host names,
  ``*.domain`` or ``host:port`` (port 443 when omitted), checked and normalised (lower case, no
  trailing dot); they become the session's egress allowlist, next to the model proxy, which a
  sandbox always reaches. ``allow_package_managers`` adds the public registries
  (``PACKAGE_REGISTRY_HOSTS``), ``allow_mcp_servers`` the hosts of the agent's MCP servers.
- ``networking: unrestricted`` only where the operator allows it
  (``MOORAGE_ALLOW_UNRESTRICTED_NETWORK``); otherwise ``unrestricted_network_not_allowed`` (400).
- ``packages``: ``pip`` requirements and ``npm`` packages (checked and normalised by
  ``packages.pip_requirements``/``npm_packages``; built into a layer over the toolbox:
  packages.py); a package for any other manager is ``packages_not_supported`` (400).
- ``config.type: self_hosted`` (the self-hosted work queue) and ``scope: account`` (Moorage has
  tenants, not accounts) are ``invalid_request``; unknown fields are refused.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from .bodies import MAX_DESCRIPTION, MAX_NAME, BodyError, as_list, as_object, fail, metadata, only, patch_metadata, text
from .errors import Code
from .packages import BUILT, npm_packages, pip_requirements

PACKAGE_MANAGERS = ("apt", "cargo", "gem", "go", "npm", "pip")
# What ``allow_package_managers`` opens: the public registries of the six managers.
PACKAGE_REGISTRY_HOSTS = (
    "pypi.org",
    "files.pythonhosted.org",
    "registry.npmjs.org",
    "crates.io",
    "static.crates.io",
    "index.crates.io",
    "rubygems.org",
    "proxy.golang.org",
    "sum.golang.org",
    "deb.debian.org",
    "archive.ubuntu.com",
    "security.ubuntu.com",
)
MAX_HOSTS = 256
MAX_HOST = 253
SCOPES = ("organization",)
FIELDS = frozenset({"name", "description", "config", "metadata", "scope"})
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")

Spec = dict[str, Any]


def _not_allowed(message: str) -> BodyError:
    return BodyError(message, code=Code.UNRESTRICTED_NETWORK_NOT_ALLOWED)


def normal_host(raw: object, where: str) -> str:
    """``raw`` as an allowlist entry: ``host``, ``*.domain`` or ``host:port``, lower case."""
    if not isinstance(raw, str) or not raw.strip():
        raise fail(f"{where} must be a non-empty host name")
    entry = raw.strip().lower()
    host, sep, port = entry.partition(":")
    host = host.rstrip(".")
    why = f"{where} {raw!r} is not a host name, *.domain or host:port (no scheme, path or IP v6 literal)"
    if sep and (not port.isdigit() or not 0 < int(port) < 65536 or len(port) > 5):
        raise fail(why)
    labels = host.split(".")
    if labels[0] == "*":
        labels = labels[1:]
        if len(labels) < 2:
            raise fail(f"{where} {raw!r}: a wildcard needs a domain of two labels or more (*.example.com)")
    if not host or len(host) > MAX_HOST or not labels or not all(_LABEL.match(label) for label in labels):
        raise fail(why)
    return f"{host}:{int(port)}" if sep else host


def _flag(value: object, where: str, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise fail(f"{where} must be a boolean")
    return value


def _networking(value: object, current: Mapping[str, Any] | None, allow_unrestricted: bool) -> dict[str, Any]:
    """A ``networking`` body over ``current`` (an update's omitted fields keep their value)."""
    net = as_object(value, "config.networking")
    kind = net.get("type")
    if kind == "unrestricted":
        only(net, {"type"}, "config.networking")
        if not allow_unrestricted:
            raise _not_allowed(
                "networking unrestricted is not allowed on this server (the operator has not set "
                "MOORAGE_ALLOW_UNRESTRICTED_NETWORK); use limited with allowed_hosts"
            )
        return {"type": "unrestricted"}
    if kind != "limited":
        raise fail('config.networking.type must be "limited" or "unrestricted"')
    only(net, {"type", "allowed_hosts", "allow_mcp_servers", "allow_package_managers"}, "config.networking")
    base = current if current is not None and current.get("type") == "limited" else {}
    hosts: list[str] = list(base.get("allowed_hosts") or [])
    if net.get("allowed_hosts") is not None:
        items = as_list(net["allowed_hosts"], "config.networking.allowed_hosts")
        if len(items) > MAX_HOSTS:
            raise fail(f"config.networking.allowed_hosts: more than {MAX_HOSTS} hosts")
        hosts = []
        for n, item in enumerate(items):
            host = normal_host(item, f"config.networking.allowed_hosts[{n}]")
            if host not in hosts:
                hosts.append(host)
    return {
        "type": "limited",
        "allowed_hosts": hosts,
        "allow_mcp_servers": _flag(
            net.get("allow_mcp_servers"), "config.networking.allow_mcp_servers", bool(base.get("allow_mcp_servers"))
        ),
        "allow_package_managers": _flag(
            net.get("allow_package_managers"),
            "config.networking.allow_package_managers",
            bool(base.get("allow_package_managers")),
        ),
    }


def _packages(value: object) -> dict[str, Any]:
    packages = as_object(value, "config.packages")
    only(packages, {"type", *PACKAGE_MANAGERS}, "config.packages")
    if packages.get("type") not in (None, "packages"):
        raise fail('config.packages.type must be "packages"')
    for manager in PACKAGE_MANAGERS:
        if manager not in BUILT and as_list(packages.get(manager), f"config.packages.{manager}"):
            raise BodyError(
                f"config.packages.{manager}: this server builds pip and npm packages only; bake {manager} "
                "packages into the sandbox image, or install them in the session",
                code=Code.PACKAGES_NOT_SUPPORTED,
            )
    return {
        "type": "packages",
        **{manager: [] for manager in PACKAGE_MANAGERS},
        "pip": pip_requirements(packages.get("pip"), "config.packages.pip"),
        "npm": npm_packages(packages.get("npm"), "config.packages.npm"),
    }


def default_config() -> dict[str, Any]:
    """The config of an environment created without one: limited networking with no hosts."""
    return {
        "type": "cloud",
        "networking": {
            "type": "limited",
            "allowed_hosts": [],
            "allow_mcp_servers": False,
            "allow_package_managers": False,
        },
        "packages": _packages({}),
    }


def _config(value: object, current: Mapping[str, Any] | None, allow_unrestricted: bool) -> dict[str, Any]:
    """A ``config`` body over ``current`` (``None`` on create)."""
    base = copy.deepcopy(dict(current)) if current is not None else default_config()
    if value is None:
        return base
    config = as_object(value, "config")
    kind = config.get("type")
    if kind == "self_hosted":
        raise fail("config.type self_hosted is not supported: this server runs every session in its own sandboxes")
    if kind != "cloud":
        raise fail('config.type must be "cloud"')
    only(config, {"type", "networking", "packages"}, "config")
    if config.get("networking") is not None:
        base["networking"] = _networking(config["networking"], base["networking"], allow_unrestricted)
    if config.get("packages") is not None:
        base["packages"] = _packages(config["packages"])
    return base


def _scope(value: object) -> str | None:
    if value is None or value in SCOPES:
        return None if value is None else str(value)
    raise fail('scope must be "organization" or null (this server has tenants, not accounts)')


def create_spec(body: object, *, allow_unrestricted: bool) -> Spec:
    """A create body (``POST /v1/environments``) as the stored spec, defaults filled."""
    obj = as_object(body, "the request body")
    only(obj, FIELDS, "the request body")
    return {
        "name": text(obj.get("name"), "name", MAX_NAME, required=True),
        "description": text(obj.get("description"), "description", MAX_DESCRIPTION),
        "scope": _scope(obj.get("scope")),
        "config": _config(obj.get("config"), None, allow_unrestricted),
        "metadata": metadata(obj.get("metadata")),
    }


def update_spec(current: Spec, body: object, *, allow_unrestricted: bool) -> Spec:
    """``current`` with an update body (``POST /v1/environments/{id}``) applied: an omitted (or
    ``null``) ``name``, ``scope`` or ``config`` is kept, and so is an omitted part of ``config``;
    ``description`` ``null`` or ``""`` clears; ``metadata`` is a patch (``null`` deletes a key)."""
    obj = as_object(body, "the request body")
    only(obj, FIELDS, "the request body")
    spec = copy.deepcopy(current)
    if obj.get("name") is not None:
        spec["name"] = text(obj["name"], "name", MAX_NAME, required=True)
    if "description" in obj:
        spec["description"] = text(obj["description"], "description", MAX_DESCRIPTION)
    if obj.get("scope") is not None:
        spec["scope"] = _scope(obj["scope"])
    spec["config"] = _config(obj.get("config"), current["config"], allow_unrestricted)
    if "metadata" in obj:
        spec["metadata"] = metadata(patch_metadata(current.get("metadata"), obj["metadata"]))
    return spec


def environment_object(
    env_id: str, spec: Spec, created_at: str, updated_at: str, archived_at: str | None
) -> dict[str, Any]:
    """The environment object of §4.2 (what every environments endpoint returns)."""
    return {
        "type": "environment",
        "id": env_id,
        **copy.deepcopy(spec),
        "created_at": created_at,
        "updated_at": updated_at,
        "archived_at": archived_at,
    }


def egress(spec: Spec, mcp_server_urls: Sequence[str] = ()) -> tuple[str, ...] | None:
    """The egress allowlist (``MOORAGE_EGRESS_ALLOW`` entries) of a session in this environment,
    given its agent's MCP server URLs; ``None`` for unrestricted networking. The model proxy is
    not in it: a sandbox always reaches that."""
    net = spec["config"]["networking"]
    if net["type"] == "unrestricted":
        return None
    hosts: list[str] = list(net["allowed_hosts"])
    if net["allow_package_managers"]:
        hosts += PACKAGE_REGISTRY_HOSTS
    if net["allow_mcp_servers"]:
        for url in mcp_server_urls:
            parts = urlsplit(url)
            try:
                port = parts.port or (80 if parts.scheme == "http" else 443)
            except ValueError:  # a port out of range: no host to open
                continue
            if parts.hostname:
                hosts.append(parts.hostname if port == 443 else f"{parts.hostname}:{port}")
    return tuple(dict.fromkeys(hosts))
