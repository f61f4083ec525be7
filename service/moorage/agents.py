"""Agent specs, without I/O: the Managed Agents create/update bodies
(../shared/MANAGED_AGENTS.md §3) parsed into the stored spec, with the
server-filled defaults of §3.2, the update semantics of §3.3 and the limits.

A *spec* is the agent object minus what the store owns (``id``, ``version``,
``created_at``, ``updated_at``, ``archived_at``, ``type``): a plain JSON dict,
stored as one immutable row per version (``agent_versions``) and sent to the
runner in the ``start`` frame (``runner_agent``). Everything here raises
``AgentError`` (HTTP 400, ``invalid_request``) with a message naming the field.

Decisions (documented in docs/protocol.md): unknown fields are refused, not
ignored; ``multiagent`` must be null, ``skills`` empty, ``execution_identity``
``service_account`` (Moorage runs one agent in one sandbox and has no skills
store or cloud roles); the ``auto`` permission policy is refused (only
``always_allow`` and ``always_ask``). ``max_turns`` is a Moorage extension
(absent from the Managed Agents body): a per-agent cap under the operator's.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

from .bodies import MAX_DESCRIPTION, MAX_NAME, BodyError, as_list, as_object, fail, metadata, only, patch_metadata, text

TOOLSET = "agent_toolset_20260401"
# The built-in tools of the agent toolset, and the Claude Code tool each one is.
BUILTIN_TOOLS: dict[str, str] = {
    "bash": "Bash",
    "edit": "Edit",
    "read": "Read",
    "write": "Write",
    "glob": "Glob",
    "grep": "Grep",
    "web_fetch": "WebFetch",
    "web_search": "WebSearch",
}
POLICIES = ("always_allow", "always_ask")
MAX_TOOLS = 256
MAX_MCP_SERVERS = 20
MAX_SYSTEM = 100_000
MAX_URL = 2048
MAX_SCHEMA_CHARS = 64 * 1024

CREATE_FIELDS = frozenset(
    {
        "name",
        "model",
        "system",
        "description",
        "tools",
        "mcp_servers",
        "skills",
        "metadata",
        "multiagent",
        "execution_identity",
        "max_turns",
    }
)
UPDATE_FIELDS = CREATE_FIELDS | {"version"}
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_WEB_FETCH_EXTRAS = frozenset({"allowed_domains", "blocked_domains", "max_content_tokens", "url_sources"})
_WEB_SEARCH_EXTRAS = frozenset({"allowed_domains", "blocked_domains", "user_location"})

Spec = dict[str, Any]


AgentError = BodyError  # the agents' name for it (tests and callers catch it)


def _model(value: object) -> dict[str, Any]:
    if isinstance(value, str):
        value = {"id": value}
    model = as_object(value, "model")
    only(model, {"id", "speed", "effort", "inference_geo"}, "model")
    model_id = text(model.get("id"), "model.id", MAX_NAME, required=True)
    speed = model.get("speed") or "standard"
    if speed not in ("standard", "fast"):
        raise fail("model.speed must be 'standard' or 'fast'")
    effort = model.get("effort")
    if isinstance(effort, dict):
        effort = effort.get("type")
    if effort is not None and effort not in ("low", "medium", "high", "xhigh", "max"):
        raise fail("model.effort must be one of low, medium, high, xhigh, max")
    geo = text(model.get("inference_geo"), "model.inference_geo", 64)
    return {"id": model_id, "speed": speed, "effort": effort, "inference_geo": geo}


def _policy(value: object, where: str, default: dict[str, str]) -> dict[str, str]:
    if value is None:
        return dict(default)
    policy = as_object(value, where)
    only(policy, {"type"}, where)
    if policy.get("type") not in POLICIES:
        raise fail(f"{where}.type must be one of {', '.join(POLICIES)} (auto is not supported)")
    return {"type": str(policy["type"])}


def _enabled(value: object, where: str, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise fail(f"{where} must be a boolean")
    return value


def _default_config(value: object, where: str, policy: str) -> dict[str, Any]:
    config = as_object(value if value is not None else {}, where)
    only(config, {"enabled", "permission_policy"}, where)
    return {
        "enabled": _enabled(config.get("enabled"), f"{where}.enabled", True),
        "permission_policy": _policy(config.get("permission_policy"), f"{where}.permission_policy", {"type": policy}),
    }


def _configs(value: object, where: str, default: dict[str, Any], builtin: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for n, item in enumerate(as_list(value, where)):
        here = f"{where}[{n}]"
        config = as_object(item, here)
        name = config.get("name")
        if not isinstance(name, str) or not name:
            raise fail(f"{here}.name is required")
        allowed = {"name", "type", "enabled", "permission_policy"}
        if builtin:
            if name not in BUILTIN_TOOLS:
                raise fail(f"{here}.name {name!r} is not a built-in tool ({', '.join(BUILTIN_TOOLS)})")
            allowed |= (
                _WEB_FETCH_EXTRAS if name == "web_fetch" else _WEB_SEARCH_EXTRAS if name == "web_search" else set()
            )
        elif not _NAME_RE.match(name):
            raise fail(f"{here}.name must be 1-64 letters, digits, '_' or '-'")
        only(config, allowed, here)
        if name in seen:
            raise fail(f"{where}: {name!r} is configured twice")
        seen.add(name)
        normal = {k: copy.deepcopy(v) for k, v in config.items() if k not in ("enabled", "permission_policy")}
        normal["enabled"] = _enabled(config.get("enabled"), f"{here}.enabled", default["enabled"])
        normal["permission_policy"] = _policy(
            config.get("permission_policy"), f"{here}.permission_policy", default["permission_policy"]
        )
        out.append(normal)
    return out


def _custom(tool: dict[str, Any], where: str) -> dict[str, Any]:
    only(tool, {"type", "name", "description", "input_schema"}, where)
    name = tool.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise fail(f"{where}.name must be 1-64 letters, digits, '_' or '-'")
    description = text(tool.get("description"), f"{where}.description", MAX_DESCRIPTION, required=True)
    schema = as_object(tool.get("input_schema"), f"{where}.input_schema")
    if schema.get("type") != "object":
        raise fail(f'{where}.input_schema must be a JSON schema with "type": "object"')
    if len(repr(schema)) > MAX_SCHEMA_CHARS:
        raise fail(f"{where}.input_schema is too large")
    return {"type": "custom", "name": name, "description": description, "input_schema": copy.deepcopy(schema)}


def _tools(value: object) -> list[dict[str, Any]]:
    tools: list[dict[str, Any]] = []
    count = 0
    toolsets = 0
    mcp_names: set[str] = set()
    custom_names: set[str] = set()
    for n, item in enumerate(as_list(value, "tools")):
        where = f"tools[{n}]"
        tool = as_object(item, where)
        kind = tool.get("type")
        if kind == TOOLSET:
            only(tool, {"type", "default_config", "configs"}, where)
            toolsets += 1
            if toolsets > 1:
                raise fail(f"{where}: only one {TOOLSET} is allowed")
            default = _default_config(tool.get("default_config"), f"{where}.default_config", "always_allow")
            configs = _configs(tool.get("configs"), f"{where}.configs", default, builtin=True)
            tools.append({"type": TOOLSET, "default_config": default, "configs": configs})
            count += len(BUILTIN_TOOLS)
        elif kind == "mcp_toolset":
            only(tool, {"type", "mcp_server_name", "default_config", "configs"}, where)
            server = tool.get("mcp_server_name")
            if not isinstance(server, str) or not server:
                raise fail(f"{where}.mcp_server_name is required")
            if server in mcp_names:
                raise fail(f"{where}: mcp server {server!r} has two mcp_toolsets")
            mcp_names.add(server)
            default = _default_config(tool.get("default_config"), f"{where}.default_config", "always_ask")
            configs = _configs(tool.get("configs"), f"{where}.configs", default, builtin=False)
            tools.append(
                {"type": "mcp_toolset", "mcp_server_name": server, "default_config": default, "configs": configs}
            )
            count += max(1, len(configs))
        elif kind == "custom":
            custom = _custom(tool, where)
            if custom["name"] in custom_names or custom["name"] in BUILTIN_TOOLS:
                raise fail(f"{where}: the tool name {custom['name']!r} is already taken")
            custom_names.add(custom["name"])
            tools.append(custom)
            count += 1
        else:
            raise fail(f"{where}.type must be {TOOLSET}, mcp_toolset or custom")
        if count > MAX_TOOLS:
            raise fail(f"tools: more than {MAX_TOOLS} tools")
    return tools


def _mcp_servers(value: object) -> list[dict[str, str]]:
    servers: list[dict[str, str]] = []
    names: set[str] = set()
    items = as_list(value, "mcp_servers")
    if len(items) > MAX_MCP_SERVERS:
        raise fail(f"mcp_servers: more than {MAX_MCP_SERVERS} servers")
    for n, item in enumerate(items):
        where = f"mcp_servers[{n}]"
        server = as_object(item, where)
        only(server, {"type", "name", "url"}, where)
        if server.get("type") != "url":
            raise fail(f'{where}.type must be "url"')
        name = server.get("name")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise fail(f"{where}.name must be 1-64 letters, digits, '_' or '-'")
        if name in names:
            raise fail(f"mcp_servers: the name {name!r} is used twice")
        names.add(name)
        url = text(server.get("url"), f"{where}.url", MAX_URL, required=True)
        assert url is not None
        if not url.startswith(("https://", "http://")):
            raise fail(f"{where}.url must be an http(s) URL")
        servers.append({"type": "url", "name": name, "url": url})
    return servers


def _max_turns(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10_000:
        raise fail("max_turns must be an integer from 1 to 10000")
    return value


def _unsupported(body: Mapping[str, Any]) -> None:
    if body.get("multiagent") is not None:
        raise fail("multiagent is not supported by this server (it must be null)")
    if as_list(body.get("skills"), "skills"):
        raise fail("skills are not supported by this server (it must be [])")
    identity = body.get("execution_identity")
    if identity is not None and identity != {"type": "service_account"}:
        raise fail('execution_identity must be {"type": "service_account"}')


def _check_references(spec: Spec) -> None:
    servers = {s["name"] for s in spec["mcp_servers"]}
    used = {t["mcp_server_name"] for t in spec["tools"] if t["type"] == "mcp_toolset"}
    if missing := sorted(used - servers):
        raise fail(f"tools: mcp_toolset names an unknown mcp server {missing[0]!r}")
    if unused := sorted(servers - used):
        raise fail(f"mcp_servers: {unused[0]!r} is not referenced by any mcp_toolset")


def _build(body: Mapping[str, Any]) -> Spec:
    _unsupported(body)
    spec: Spec = {
        "name": text(body.get("name"), "name", MAX_NAME, required=True),
        "description": text(body.get("description"), "description", MAX_DESCRIPTION),
        "model": _model(body.get("model")),
        "system": text(body.get("system"), "system", MAX_SYSTEM),
        "tools": _tools(body.get("tools")),
        "mcp_servers": _mcp_servers(body.get("mcp_servers")),
        "skills": [],
        "multiagent": None,
        "execution_identity": {"type": "service_account"},
        "metadata": metadata(body.get("metadata")),
        "max_turns": _max_turns(body.get("max_turns")),
    }
    _check_references(spec)
    return spec


def create_spec(body: object) -> Spec:
    """A create body (``POST /v1/agents``) as the stored spec, defaults filled."""
    obj = as_object(body, "the request body")
    only(obj, CREATE_FIELDS, "the request body")
    if obj.get("model") is None:
        raise fail("model is required")
    return _build(obj)


def update_version(body: object) -> int | None:
    """The ``version`` an update body expects (optimistic concurrency), if any."""
    obj = as_object(body, "the request body")
    version = obj.get("version")
    if version is None:
        return None
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise fail("version must be a positive integer")
    return version


def update_spec(current: Spec, body: object) -> Spec:
    """``current`` with an update body (``POST /v1/agents/{id}``) applied: an
    omitted field is kept; lists are replaced whole (``null`` clears);
    ``description``/``system`` ``""`` or ``null`` clear; ``name``/``model``
    cannot be cleared; ``metadata`` is a patch (``null`` deletes a key)."""
    obj = as_object(body, "the request body")
    only(obj, UPDATE_FIELDS, "the request body")
    merged: dict[str, Any] = {k: copy.deepcopy(v) for k, v in current.items()}
    for key in ("name", "model"):
        if key in obj:
            if obj[key] is None or obj[key] == "":
                raise fail(f"{key} cannot be cleared")
            merged[key] = obj[key]
    for key in ("description", "system", "tools", "mcp_servers", "skills", "multiagent", "execution_identity"):
        if key in obj:
            merged[key] = obj[key]
    if "max_turns" in obj:
        merged["max_turns"] = obj["max_turns"]
    if "metadata" in obj:
        merged["metadata"] = patch_metadata(current.get("metadata"), obj["metadata"])
    return _build(merged)


def agent_object(
    agent_id: str, version: int, spec: Spec, created_at: str, updated_at: str, archived_at: str | None
) -> dict[str, Any]:
    """The agent object of §3.2 (what every agents endpoint returns)."""
    return {
        "type": "agent",
        "id": agent_id,
        "version": version,
        **spec,
        "created_at": created_at,
        "updated_at": updated_at,
        "archived_at": archived_at,
    }


def runner_agent(agent_id: str, version: int, spec: Spec) -> dict[str, Any]:
    """The ``agent`` field of the runner's ``start`` frame (docs/protocol.md,
    "The agent in the start frame"): the spec, its id and version, and its tool
    policy (``tool_policy``)."""
    return {"id": agent_id, "version": version, **copy.deepcopy(spec), **tool_policy(spec)}


def tool_policy(spec: Mapping[str, Any]) -> dict[str, Any]:
    """What the approvals and client-tools code acts on (``pending.AgentTools``
    and the runner's ``approvals``), derived from a stored spec: the Claude Code
    names of the enabled tools whose policy is ``always_ask`` — a built-in as
    ``Bash``, an MCP tool as ``mcp__<server>__<tool>``, every tool of a server
    whose default asks as ``mcp__<server>__*`` — the MCP tools configured
    ``always_allow`` under such a default (``allow_tools``), and the custom tools."""
    ask: list[str] = []
    allow: list[str] = []
    custom: list[dict[str, Any]] = []
    for tool in spec.get("tools") or []:
        kind = tool.get("type")
        if kind == TOOLSET:
            configs = {c["name"]: c for c in tool["configs"]}
            for name, cli in BUILTIN_TOOLS.items():
                config = configs.get(name, tool["default_config"])
                if config["enabled"] and config["permission_policy"]["type"] == "always_ask":
                    ask.append(cli)
        elif kind == "mcp_toolset":
            prefix = f"mcp__{tool['mcp_server_name']}__"
            default = tool["default_config"]
            asks_all = default["enabled"] and default["permission_policy"]["type"] == "always_ask"
            if asks_all:
                ask.append(prefix + "*")
            for config in tool["configs"]:
                asks = config["permission_policy"]["type"] == "always_ask"
                if config["enabled"] and asks and not asks_all:
                    ask.append(prefix + config["name"])
                elif asks_all and not asks:
                    allow.append(prefix + config["name"])
        elif kind == "custom":
            custom.append({k: copy.deepcopy(tool[k]) for k in ("name", "description", "input_schema")})
    return {"ask_tools": ask, "allow_tools": allow, "custom_tools": custom}
