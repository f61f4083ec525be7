"""What the tests of the Managed Agents API share: the tenants' tokens, the official ``anthropic``
client opened against a running service (closed after each test by ``close_all``), the stable
Moorage code of an API error (``error.details.error_code``), the toolsets, and reading events:
a user message, an event's text, a stream read up to a type (bounded)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import anthropic
from support import Service, scaled

ACME = "tok-acme-0123456789abcdef"
GLOBEX = "tok-globex-0123456789abcdef"
PAGER = "tok-pager-0123456789abcdef"
KEYS = f"acme:{ACME},globex:{GLOBEX},pager:{PAGER}"

_OPEN: list[anthropic.Anthropic] = []


def client(svc: Service, token: str = ACME) -> anthropic.Anthropic:
    api = anthropic.Anthropic(base_url=svc.url, api_key=token, max_retries=2)
    _OPEN.append(api)
    return api


def close_all() -> None:
    while _OPEN:
        _OPEN.pop().close()


def code(error: anthropic.APIStatusError) -> str:
    return str(error.body["error"]["details"]["error_code"])  # type: ignore[index]


TOOLSET: Any = {"type": "agent_toolset_20260401"}
ASK_BASH: Any = {
    "type": "agent_toolset_20260401",
    "configs": [{"name": "bash", "permission_policy": {"type": "always_ask"}}],
}


def say(words: str) -> Any:
    return {"type": "user.message", "content": [{"type": "text", "text": words}]}


def text(event: Any) -> str:
    return "".join(b.text for b in event.content if b.type == "text")


def until(stream: Iterable[Any], *types: str, timeout: float = 60) -> list[Any]:
    """Events of an open stream up to and including the first of ``types`` (bounded)."""
    deadline = time.monotonic() + scaled(timeout)
    seen: list[Any] = []
    for event in stream:
        seen.append(event)
        if event.type in types:
            return seen
        assert time.monotonic() < deadline, [e.type for e in seen]
    raise AssertionError(f"the stream ended before {types}: {[e.type for e in seen]}")


def turn(api: anthropic.Anthropic, session_id: str, words: str, timeout: float = 120) -> list[Any]:
    """Send ``words`` on an open stream; every event of the turn, up to its idle (bounded)."""
    with api.beta.sessions.events.stream(session_id) as stream:
        api.beta.sessions.events.send(session_id, events=[say(words)])
        return until(stream, "session.status_idle", timeout=timeout)


def said(turn_events: list[Any]) -> str:
    """The last ``agent.message`` of a turn, as text."""
    return [text(e) for e in turn_events if e.type == "agent.message"][-1]
