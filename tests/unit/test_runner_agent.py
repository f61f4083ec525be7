"""An agent spec reaches the SDK options: system prompt, model, built-in tools, MCP servers."""

from __future__ import annotations

import pytest
from moorage import channel
from moorage.agents import BUILTIN_TOOLS, create_spec, runner_agent
from moorage_runner import agent as runner_agent_options
from moorage_runner import channel as runner_channel
from moorage_runner import runner


def spec(**body: object) -> dict[str, object]:
    return runner_agent("agent_1", 3, create_spec({"name": "n", "model": "claude-opus-5", **body}))


def test_the_runner_maps_the_same_built_in_names_as_the_service() -> None:
    assert runner_agent_options.BUILTIN_TOOLS == BUILTIN_TOOLS
    assert runner_agent_options.TOOLSET == "agent_toolset_20260401"


def test_system_model_and_disabled_tools_become_sdk_options() -> None:
    agent = spec(
        system="You are terse.",
        tools=[{"type": "agent_toolset_20260401", "configs": [{"name": "bash", "enabled": False}]}],
    )
    start = channel.Start({"max_turns": 2, "session_id": "s"}, "unix:/m", agent=agent).wire()
    options = runner.build_options(runner_channel.parse_service_line(channel.encode_frame(start)), "http://x", None)
    assert options.system_prompt == "You are terse."
    assert options.model == "claude-opus-5"
    assert options.tools == ["Edit", "Read", "Write", "Glob", "Grep", "WebFetch", "WebSearch"]
    assert options.disallowed_tools == ["Bash"]
    assert options.max_turns == 2 and options.strict_mcp_config and options.mcp_servers == {}


def test_a_toolset_disabled_by_default_enables_only_what_its_configs_enable() -> None:
    agent = spec(
        tools=[
            {
                "type": "agent_toolset_20260401",
                "default_config": {"enabled": False},
                "configs": [{"name": "read", "enabled": True}],
            }
        ]
    )
    options = runner_agent_options.agent_options(agent)
    assert (
        options["tools"] == ["Read"]
        and "Bash" in options["disallowed_tools"]
        and "Read" not in options["disallowed_tools"]
    )


def test_no_toolset_means_no_built_in_tools() -> None:
    options = runner_agent_options.agent_options(spec())
    assert options["tools"] == [] and sorted(options["disallowed_tools"]) == sorted(BUILTIN_TOOLS.values())
    assert "system_prompt" not in options  # no system: the CLI's own


def test_mcp_servers_become_http_or_sse_configs() -> None:
    agent = spec(
        tools=[
            {"type": "mcp_toolset", "mcp_server_name": "gh", "configs": [{"name": "delete_repo", "enabled": False}]},
            {"type": "mcp_toolset", "mcp_server_name": "off", "default_config": {"enabled": False}},
            {"type": "mcp_toolset", "mcp_server_name": "events"},
        ],
        mcp_servers=[
            {"type": "url", "name": "gh", "url": "https://mcp.example.com/mcp"},
            {"type": "url", "name": "off", "url": "https://off.example.com/mcp"},
            {"type": "url", "name": "events", "url": "https://e.example.com/sse"},
        ],
    )
    options = runner_agent_options.agent_options(agent)
    assert options["mcp_servers"] == {
        "gh": {"type": "http", "url": "https://mcp.example.com/mcp"},
        "events": {"type": "sse", "url": "https://e.example.com/sse"},
    }
    assert "mcp__gh__delete_repo" in options["disallowed_tools"]


def test_a_server_with_a_vault_credential_is_reached_through_the_model_bridge() -> None:
    """The start frame's ``mcp_proxy`` names it: its URL is the bridge's ``/mcp/<name>`` (the
    service adds the credential); the others keep their own URL (through the egress tunnel)."""
    agent = spec(
        tools=[{"type": "mcp_toolset", "mcp_server_name": "gh"}, {"type": "mcp_toolset", "mcp_server_name": "open"}],
        mcp_servers=[
            {"type": "url", "name": "gh", "url": "https://mcp.example.com/mcp"},
            {"type": "url", "name": "open", "url": "https://open.example.com/mcp"},
        ],
    )
    options = runner_agent_options.agent_options(agent, "http://127.0.0.1:4567", ["gh"])
    assert options["mcp_servers"] == {
        "gh": {"type": "http", "url": "http://127.0.0.1:4567/mcp/gh"},
        "open": {"type": "http", "url": "https://open.example.com/mcp"},
    }


def test_without_an_agent_the_options_are_todays() -> None:
    start = channel.Start({"session_id": "s"}, "unix:/m").wire()
    assert "agent" not in start
    options = runner.build_options(start, "http://x", None)
    assert options.tools is None and options.disallowed_tools == [] and options.system_prompt is None


def test_the_default_agents_tool_policy_keeps_todays_tools() -> None:
    """The operator's default agent (MOORAGE_DEFAULT_AGENT) carries only a tool policy: the
    built-in tools stay, and the policy's hook and client-tools server are added."""
    start = channel.Start({"session_id": "s"}, "unix:/m", agent={"ask_tools": ["Bash"], "custom_tools": []}).wire()
    assert runner_channel.start_agent(start) is None
    options = runner.build_options(start, "http://x", None)
    assert options.tools is None and options.disallowed_tools == []


def test_a_malformed_agent_is_a_channel_error() -> None:
    with pytest.raises(runner_channel.ChannelError):
        runner_channel.start_agent({"kind": "start", "agent": ["not", "an", "agent"]})
