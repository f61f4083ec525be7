"""An agent spec (the ``start`` frame's ``agent``) as Claude Agent SDK options. Pure.

- ``system`` -> ``system_prompt``; ``model.id`` -> ``model``.
- The built-in toolset (``agent_toolset_20260401``): each tool enabled by its config, else by
  ``default_config``; the enabled ones are the CLI's whole built-in set (``tools``) and the
  disabled ones are also ``disallowed_tools``. Without a toolset the agent has no built-in tools.
- ``mcp_servers`` (``{"type": "url", "name", "url"}``) -> SDK ``http`` servers (``sse`` when the
  URL path ends in ``/sse``), only the agent's (``strict_mcp_config``); an mcp toolset whose
  default is disabled and enables no tool leaves its server out, a tool disabled by its config is
  disallowed (``mcp__<server>__<tool>``). They are reached through the egress tunnel, so only
  hosts on the service's egress allowlist answer — except the servers the ``start`` frame names in
  ``mcp_proxy``: a vault credential of the session is for them, so they are reached through the
  model bridge at ``<base_url>/mcp/<name>``, where the service adds the credential (the sandbox
  never sees it).
- ``max_turns`` is applied by the service (it is already in ``options``).
- Permission policies (``always_ask``) and ``custom`` tools are carried in the spec for the
  approvals and client-tools code; this module does not act on them.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

TOOLSET = "agent_toolset_20260401"
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


def _enabled(toolset: dict[str, Any], name: str) -> bool:
    for config in toolset.get("configs") or []:
        if isinstance(config, dict) and config.get("name") == name and "enabled" in config:
            return bool(config["enabled"])
    return bool((toolset.get("default_config") or {}).get("enabled", True))


def _mcp_config(url: str) -> dict[str, str]:
    kind = "sse" if url.split("?", 1)[0].rstrip("/").endswith("/sse") else "http"
    return {"type": kind, "url": url}


def agent_options(agent: dict[str, Any], base_url: str = "", proxied: Collection[str] = ()) -> dict[str, Any]:
    """Keyword arguments for ``ClaudeAgentOptions`` from an agent spec; the servers named in
    ``proxied`` are reached at ``base_url/mcp/<name>`` (the service's model proxy)."""
    options: dict[str, Any] = {}
    system = agent.get("system")
    if isinstance(system, str) and system:
        options["system_prompt"] = system
    model = agent.get("model")
    if isinstance(model, dict) and isinstance(model.get("id"), str):
        options["model"] = model["id"]
    tools = [t for t in agent.get("tools") or [] if isinstance(t, dict)]
    toolset = next((t for t in tools if t.get("type") == TOOLSET), None)
    enabled = [name for name in BUILTIN_TOOLS if toolset is not None and _enabled(toolset, name)]
    options["tools"] = [BUILTIN_TOOLS[name] for name in enabled]
    disallowed = [cli for name, cli in BUILTIN_TOOLS.items() if name not in enabled]
    servers = {s.get("name"): s.get("url") for s in agent.get("mcp_servers") or [] if isinstance(s, dict)}
    mcp: dict[str, dict[str, str]] = {}
    for toolset_ in (t for t in tools if t.get("type") == "mcp_toolset"):
        name = toolset_.get("mcp_server_name")
        url = servers.get(name)
        if not isinstance(name, str) or not isinstance(url, str):
            continue
        default_on = bool((toolset_.get("default_config") or {}).get("enabled", True))
        configs = [c for c in toolset_.get("configs") or [] if isinstance(c, dict)]
        if not default_on and not any(c.get("enabled") for c in configs):
            continue
        config = _mcp_config(url)
        if name in proxied and base_url:
            config["url"] = f"{base_url.rstrip('/')}/mcp/{name}"
        mcp[name] = config
        disallowed += [f"mcp__{name}__{c['name']}" for c in configs if c.get("enabled") is False]
    options["mcp_servers"] = mcp
    options["strict_mcp_config"] = True
    options["disallowed_tools"] = disallowed
    return options
