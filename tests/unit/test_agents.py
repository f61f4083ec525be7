"""The agent spec, without I/O: create defaults (§3.2), update semantics (§3.3), limits, refusals."""

from __future__ import annotations

from typing import Any

import pytest
from moorage.agents import (
    BUILTIN_TOOLS,
    TOOLSET,
    AgentError,
    agent_object,
    create_spec,
    runner_agent,
    tool_policy,
    update_spec,
    update_version,
)
from moorage.errors import Code, http_status
from moorage.pending import AgentTools


def base(**extra: Any) -> dict[str, Any]:
    return {"name": "Demo", "model": "claude-opus-5", **extra}


def refused(body: object, fragment: str, current: dict[str, Any] | None = None) -> None:
    with pytest.raises(AgentError) as caught:
        create_spec(body) if current is None else update_spec(current, body)
    assert caught.value.code is Code.INVALID_REQUEST and http_status(caught.value.code) == 400
    assert fragment in caught.value.message, caught.value.message


def test_create_fills_the_server_defaults() -> None:
    spec = create_spec(base(system="Be brief.", tools=[{"type": TOOLSET}]))
    assert spec == {
        "name": "Demo",
        "description": None,
        "model": {"id": "claude-opus-5", "speed": "standard", "effort": None, "inference_geo": None},
        "system": "Be brief.",
        "tools": [
            {
                "type": TOOLSET,
                "default_config": {"enabled": True, "permission_policy": {"type": "always_allow"}},
                "configs": [],
            }
        ],
        "mcp_servers": [],
        "skills": [],
        "multiagent": None,
        "execution_identity": {"type": "service_account"},
        "metadata": {},
        "max_turns": None,
    }
    obj = agent_object("agent_1", 1, spec, "2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z", None)
    assert obj["type"] == "agent" and obj["id"] == "agent_1" and obj["version"] == 1 and obj["archived_at"] is None


def test_configs_inherit_the_default_config_and_mcp_defaults_to_always_ask() -> None:
    spec = create_spec(
        base(
            tools=[
                {
                    "type": TOOLSET,
                    "default_config": {"permission_policy": {"type": "always_ask"}},
                    "configs": [{"name": "bash", "enabled": False}, {"name": "web_fetch", "allowed_domains": ["x.io"]}],
                },
                {"type": "mcp_toolset", "mcp_server_name": "gh"},
                {"type": "custom", "name": "get_weather", "description": "d", "input_schema": {"type": "object"}},
            ],
            mcp_servers=[{"type": "url", "name": "gh", "url": "https://mcp.example.com/sse"}],
        )
    )
    toolset, mcp, custom = spec["tools"]
    assert toolset["configs"] == [
        {"name": "bash", "enabled": False, "permission_policy": {"type": "always_ask"}},
        {
            "name": "web_fetch",
            "allowed_domains": ["x.io"],
            "enabled": True,
            "permission_policy": {"type": "always_ask"},
        },
    ]
    assert mcp["default_config"] == {"enabled": True, "permission_policy": {"type": "always_ask"}}
    assert custom["name"] == "get_weather"


def test_model_object_is_normalised() -> None:
    spec = create_spec(base(model={"id": "claude-opus-5", "speed": "fast", "effort": {"type": "high"}}))
    assert spec["model"] == {"id": "claude-opus-5", "speed": "fast", "effort": "high", "inference_geo": None}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ([], "must be an object"),
        ({"model": "m"}, "name is required"),
        ({"name": "n"}, "model is required"),
        (base(colour="blue"), "unknown field colour"),
        (base(multiagent={"type": "coordinator", "agents": []}), "multiagent is not supported"),
        (base(skills=[{"type": "anthropic", "skill_id": "pdf"}]), "skills are not supported"),
        (base(execution_identity={"type": "aws_role", "role_arn": "x"}), "execution_identity"),
        (base(tools=[{"type": TOOLSET}, {"type": TOOLSET}]), "only one"),
        (base(tools=[{"type": TOOLSET, "configs": [{"name": "teleport"}]}]), "not a built-in tool"),
        (base(tools=[{"type": TOOLSET, "configs": [{"name": "bash"}, {"name": "bash"}]}]), "configured twice"),
        (base(tools=[{"type": TOOLSET, "configs": [{"name": "bash", "allowed_domains": []}]}]), "unknown field"),
        (
            base(tools=[{"type": TOOLSET, "default_config": {"permission_policy": {"type": "auto"}}}]),
            "auto is not supported",
        ),
        (base(tools=[{"type": "computer"}]), "tools[0].type"),
        (base(tools=[{"type": "custom", "name": "x", "description": "d", "input_schema": {}}]), '"type": "object"'),
        (
            base(tools=[{"type": "custom", "name": "bash", "description": "d", "input_schema": {"type": "object"}}]),
            "already taken",
        ),
        (base(mcp_servers=[{"type": "url", "name": "gh", "url": "https://x"}]), "not referenced"),
        (base(tools=[{"type": "mcp_toolset", "mcp_server_name": "gh"}]), "unknown mcp server"),
        (base(mcp_servers=[{"type": "url", "name": "gh", "url": "ftp://x"}]), "http(s) URL"),
        (base(metadata={f"k{n}": "v" for n in range(17)}), "more than 16 pairs"),
        (base(metadata={"k" * 65: "v"}), "1-64 characters"),
        (base(metadata={"k": "v" * 513}), "at most 512"),
        (base(metadata={"k": 1}), "must be a string"),
        (base(max_turns=0), "max_turns"),
        (base(model={"id": "m", "speed": "warp"}), "model.speed"),
    ],
)
def test_bad_bodies_get_a_clear_400(body: object, fragment: str) -> None:
    refused(body, fragment)


def test_tool_and_server_limits() -> None:
    many = [
        {"type": "custom", "name": f"t{n}", "description": "d", "input_schema": {"type": "object"}} for n in range(257)
    ]
    refused(base(tools=many), "more than 256 tools")
    assert len(create_spec(base(tools=many[:256]))["tools"]) == 256
    servers = [{"type": "url", "name": f"s{n}", "url": "https://x"} for n in range(21)]
    refused(base(mcp_servers=servers), "more than 20 servers")
    refused(base(mcp_servers=[servers[0], servers[0]]), "used twice")


def test_update_keeps_omitted_fields_replaces_lists_and_patches_metadata() -> None:
    current = create_spec(base(system="old", description="d", metadata={"a": "1", "b": "2"}, tools=[{"type": TOOLSET}]))
    updated = update_spec(current, {"system": "new", "metadata": {"a": None, "c": "3"}, "tools": []})
    assert updated["system"] == "new" and updated["description"] == "d" and updated["name"] == "Demo"
    assert updated["metadata"] == {"b": "2", "c": "3"}
    assert updated["tools"] == []
    cleared = update_spec(current, {"system": "", "description": None, "tools": None})
    assert cleared["system"] is None and cleared["description"] is None and cleared["tools"] == []
    assert update_spec(current, {}) == current  # a no-op: the caller makes no version
    assert update_spec(current, {"version": 3}) == current
    assert current["system"] == "old"  # not mutated


def test_update_refusals() -> None:
    current = create_spec(base())
    refused({"name": None}, "name cannot be cleared", current)
    refused({"model": ""}, "model cannot be cleared", current)
    refused({"colour": "x"}, "unknown field", current)
    refused({"metadata": {f"k{n}": "v" for n in range(17)}}, "more than 16", current)


def test_update_version() -> None:
    assert update_version({}) is None
    assert update_version({"version": 2}) == 2
    for bad in (0, "2", True, -1):
        with pytest.raises(AgentError):
            update_version({"version": bad})


def test_runner_agent_carries_id_version_and_spec() -> None:
    spec = create_spec(base(system="s"))
    agent = runner_agent("agent_1", 4, spec)
    assert agent["id"] == "agent_1" and agent["version"] == 4 and agent["system"] == "s"
    assert set(BUILTIN_TOOLS) == {"bash", "edit", "read", "write", "glob", "grep", "web_fetch", "web_search"}


def test_the_tool_policy_names_what_waits_for_a_client() -> None:
    """Built-ins by their Claude Code names, an MCP server's asking default as a wildcard with its
    always_allow tools excepted, a single asking MCP tool by name, and the custom tools."""
    spec = create_spec(
        {
            "name": "a",
            "model": "m",
            "tools": [
                {
                    "type": "agent_toolset_20260401",
                    "default_config": {"permission_policy": {"type": "always_ask"}},
                    "configs": [
                        {"name": "read", "permission_policy": {"type": "always_allow"}},
                        {"name": "web_search", "enabled": False},
                    ],
                },
                {
                    "type": "mcp_toolset",
                    "mcp_server_name": "gh",
                    "configs": [{"name": "list", "permission_policy": {"type": "always_allow"}}],
                },
                {
                    "type": "mcp_toolset",
                    "mcp_server_name": "db",
                    "default_config": {"permission_policy": {"type": "always_allow"}},
                    "configs": [{"name": "drop", "permission_policy": {"type": "always_ask"}}],
                },
                {"type": "custom", "name": "w", "description": "d", "input_schema": {"type": "object"}},
            ],
            "mcp_servers": [
                {"type": "url", "name": "gh", "url": "https://gh.example/mcp"},
                {"type": "url", "name": "db", "url": "https://db.example/mcp"},
            ],
        }
    )
    policy = tool_policy(spec)
    assert policy["ask_tools"] == ["Bash", "Edit", "Write", "Glob", "Grep", "WebFetch", "mcp__gh__*", "mcp__db__drop"]
    assert policy["allow_tools"] == ["mcp__gh__list"]
    assert policy["custom_tools"] == [{"name": "w", "description": "d", "input_schema": {"type": "object"}}]
    tools = AgentTools.parse(policy)
    assert tools.waits_for("mcp__gh__create_issue") and not tools.waits_for("mcp__gh__list")
    assert tools.waits_for("mcp__db__drop") and not tools.waits_for("mcp__db__select") and not tools.waits_for("Read")
