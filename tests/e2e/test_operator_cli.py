"""The first-hour command line against a service as a process and its real SQLite database:
``moorage sessions show`` for a session a real chat made, the chat client's way back on end of
input and on Ctrl-C, and ``moorage agents create | list`` making the agent ``POST /v1/agents``
would have made (read back with the official client)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from ma_client import ACME, KEYS, client
from moorage.testing.scripted_model import ScriptedModelServer
from support import Service, moorage_chat, run_service, scaled

FAREWELL = re.compile(r"^session (\S+): reconnect with make chat SESSION=(\S+)$", re.MULTILINE)


@pytest.fixture(scope="module")
def svc(model: ScriptedModelServer) -> Iterator[Service]:
    with run_service(model.url, MOORAGE_API_KEYS=KEYS, MOORAGE_WARM_SANDBOXES="0", MOORAGE_WARM_AGENTS="0") as service:
        yield service


async def cli(svc: Service, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m moorage ARGS`` with the service's settings (its database); bounded."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "moorage",
        *args,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "MOORAGE_STATE_DIR": str(svc.state_dir)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), scaled(60))
    assert proc.returncode is not None
    return subprocess.CompletedProcess(list(args), proc.returncode, out.decode(), err.decode())


async def test_a_chat_session_is_shown_and_the_client_says_how_to_come_back(svc: Service) -> None:
    chat = await moorage_chat(svc, "say hello there\n", "--token", ACME)
    assert chat.returncode == 0, chat.stderr
    found = FAREWELL.search(chat.stderr)
    assert found is not None, chat.stderr
    session_id = found.group(1)
    assert found.group(2) == session_id and f"[session {session_id} new" in chat.stdout

    shown = await cli(svc, "sessions", "show", session_id, "--json")
    assert shown.returncode == 0, shown.stderr
    record: dict[str, Any] = json.loads(shown.stdout)
    assert record["id"] == session_id and record["tenant"] == "acme" and record["agent"] is None
    assert record["turns"] == 1 and record["cost_usd"] > 0
    assert record["tokens"]["input"] > 0 and record["tokens"]["output"] > 0
    assert record["last_seq"] >= 3  # at least the prompt, the answer and its result
    assert record["state"] in ("active", "suspended") and record["created_at"].endswith("Z")

    text = await cli(svc, "sessions", "show", session_id)
    assert text.returncode == 0, text.stderr
    lines = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in text.stdout.splitlines())
    assert lines["session"] == session_id and lines["tenant"] == "acme" and lines["turns"] == "1"
    assert lines["agent"] == "the default agent" and lines["last seq"] == str(record["last_seq"])
    assert lines["cost"] == f"${record['cost_usd']:.4f}"

    listed = await cli(svc, "sessions", "list", "--json")
    assert session_id in {json.loads(line)["id"] for line in listed.stdout.splitlines()}

    unknown = await cli(svc, "sessions", "show", "no-such-session")
    assert unknown.returncode == 1 and unknown.stdout == ""
    assert "no session 'no-such-session'" in unknown.stderr

    # Reattached (make chat SESSION=<id>), then Ctrl-C: the way back is printed on the way out too.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "moorage",
        "chat",
        "--url",
        svc.ws_url,
        "--token",
        ACME,
        "--session",
        session_id,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        stdin=subprocess.PIPE,  # left open: the client waits for a prompt
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        first = await asyncio.wait_for(proc.stdout.readline(), scaled(60))
        assert first.decode().startswith(f"[session {session_id} "), first
        proc.send_signal(signal.SIGINT)
        err = await asyncio.wait_for(proc.stderr.read(), scaled(30))
        assert await asyncio.wait_for(proc.wait(), scaled(30)) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    found = FAREWELL.search(err.decode())
    assert found is not None and found.group(1) == session_id, err.decode()


async def test_agents_made_by_the_cli_are_those_the_api_makes(svc: Service) -> None:
    made = await cli(
        svc,
        "agents",
        "create",
        "--tenant",
        "acme",
        "--name",
        "Reviewer",
        "--model",
        "claude-opus-5",
        "--system",
        "Be brief.",
    )
    assert made.returncode == 0, made.stderr
    agent_id = made.stdout.strip()
    assert re.fullmatch(r"agent_[0-9a-f]{24}", agent_id), made.stdout
    assert f"created agent {agent_id}" in made.stderr

    api = client(svc)
    from_cli = await asyncio.to_thread(api.beta.agents.retrieve, agent_id)
    from_api = await asyncio.to_thread(
        lambda: api.beta.agents.create(name="Reviewer", model="claude-opus-5", system="Be brief.")
    )
    own = ("id", "created_at", "updated_at")
    assert {k: v for k, v in from_cli.to_dict().items() if k not in own} == {
        k: v for k, v in from_api.to_dict().items() if k not in own
    }

    listed = await cli(svc, "agents", "list", "--tenant", "acme", "--json")
    assert listed.returncode == 0, listed.stderr
    objects = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [o["id"] for o in objects] == [from_api.id, agent_id]  # newest first
    assert objects[1] == from_cli.to_dict(mode="json")  # what GET /v1/agents/{id} says
    table = await cli(svc, "agents", "list", "--tenant", "acme")
    assert table.stdout.splitlines()[0].split()[:4] == ["ID", "VERSION", "NAME", "MODEL"]
    assert any(line.split()[:4] == [agent_id, "1", "Reviewer", "claude-opus-5"] for line in table.stdout.splitlines())
    elsewhere = await cli(svc, "agents", "list", "--tenant", "globex", "--json")
    assert elsewhere.returncode == 0 and elsewhere.stdout == ""  # tenant-scoped like the API

    refused = await cli(svc, "agents", "create", "--tenant", "acme", "--name", "", "--model", "claude-opus-5")
    assert refused.returncode == 2 and "name" in refused.stderr and refused.stdout == ""
    bad_tenant = await cli(svc, "agents", "create", "--tenant", "a/b", "--name", "A", "--model", "m")
    assert bad_tenant.returncode == 2 and "--tenant must be" in bad_tenant.stderr
