"""The first-hour command line without a database: what ``sessions show`` and ``agents list``
print, the chat client's way out, the demo's banner and ``make chat SESSION=…``."""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from moorage.__main__ import banner
from moorage.agents import create_spec
from moorage.agents_cli import table
from moorage.chat import farewell
from moorage.sessions_cli import described, show_lines
from moorage_session_store import AgentRecord, SessionRecord

ROOT = Path(__file__).resolve().parents[2]
AT = datetime(2026, 12, 2, 9, 30, 5, tzinfo=UTC)


def record(**fields: object) -> SessionRecord:
    values: dict[str, object] = {
        "id": "5f0c9a2e-0000-4000-8000-000000000001",
        "tenant": "acme",
        "state": "suspended",
        "created_at": AT,
        "updated_at": AT,
        "last_active_at": AT,
        "turns": 3,
        "cost_usd": 0.012345,
        "options": {},
        "sandbox": None,
        "owner": None,
        "lease_expires_at": None,
        "input_tokens": 120,
        "output_tokens": 45,
        "cache_read_tokens": 7,
        "cache_creation_tokens": 2,
    }
    values.update(fields)
    return SessionRecord(**values)  # type: ignore[arg-type]


def test_show_describes_every_field_a_person_asks_about() -> None:
    shown = described(record(agent_id="agent_abc", agent_version=2), 4096, 17)
    assert shown["agent"] == {"id": "agent_abc", "version": 2}
    assert shown["tokens"] == {"input": 120, "output": 45, "cache_read": 7, "cache_creation": 2}
    assert shown["created_at"] == "2026-12-02T09:30:05Z" and shown["archived_at"] is None
    lines = show_lines(shown)
    by_name = {line.split("  ", 1)[0].strip(): line.split("  ", 1)[1].strip() for line in lines}
    assert by_name["session"] == "5f0c9a2e-0000-4000-8000-000000000001"
    assert by_name["tenant"] == "acme"
    assert by_name["state"] == "suspended"
    assert by_name["agent"] == "agent_abc version 2"
    assert by_name["turns"] == "3"
    assert by_name["cost"] == "$0.0123"
    assert by_name["tokens"] == "120 in, 45 out, 7 cache read, 2 cache write"
    assert by_name["workspace"] == "4096 bytes saved"
    assert by_name["last seq"] == "17"
    values_at = {len(line) - len(line[line.index("  ") :].lstrip()) for line in lines}
    assert len(values_at) == 1, "the values line up"


def test_show_names_the_default_agent_and_a_live_owner() -> None:
    lines = show_lines(described(record(state="active", owner="host-a:1234"), 0, 0))
    assert any(line.startswith("agent") and line.endswith("the default agent") for line in lines)
    assert any(line.startswith("state") and line.endswith("active (on host-a:1234)") for line in lines)


def test_agents_table_has_a_header_and_a_line_per_agent() -> None:
    spec = create_spec({"name": "Reviewer", "model": "claude-opus-4-5", "system": "Be brief."})
    agent = AgentRecord("agent_0123", "default", 1, spec, AT, AT, None, 1)
    lines = table([agent])
    assert lines[0].split() == ["ID", "VERSION", "NAME", "MODEL", "CREATED_AT", "ARCHIVED_AT"]
    assert lines[1].split() == ["agent_0123", "1", "Reviewer", "claude-opus-4-5", "2026-12-02T09:30:05Z", "-"]
    assert [line.split() for line in table([])] == [lines[0].split()]


def test_the_chat_client_says_how_to_come_back() -> None:
    assert farewell("abc-123") == "session abc-123: reconnect with make chat SESSION=abc-123"


def test_the_demo_banner_says_where_to_connect() -> None:
    text = banner("127.0.0.1", 8080, "http://127.0.0.1:40001")
    assert "http://127.0.0.1:8080/" in text
    assert "ws://127.0.0.1:8080/v1/sessions" in text
    assert "make chat" in text and "http://127.0.0.1:40001" in text
    assert "http://127.0.0.1:9000/" in banner("0.0.0.0", 9000, "m")  # a wildcard bind: connect locally
    assert "ws://[::1]:8080/v1/sessions" in banner("::1", 8080, "m")


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_chat_passes_the_session_and_the_replay_point() -> None:
    """``make chat SESSION=ID`` reconnects to ID (``AFTER=0`` replays it); plain ``make chat`` opens a new one."""

    def dry_run(*args: str) -> str:
        done = subprocess.run(
            ["make", "-n", "-s", "chat", *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True
        )
        return done.stdout.strip().splitlines()[-1]

    assert dry_run("SESSION=abc-123").endswith("-m moorage chat --session abc-123")
    assert dry_run("SESSION=abc-123", "AFTER=0").endswith("-m moorage chat --session abc-123 --after 0")
    assert dry_run().endswith("-m moorage chat")
