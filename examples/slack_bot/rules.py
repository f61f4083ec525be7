"""What the bot decides, without I/O: where an attachment is put in the sandbox, what the agent
is told about it, what of a session's events is new since the bot last posted, and what text an
agent message carries. Everything here is a plain function of its arguments (unit-tested in
tests/unit/test_slack_bot_rules.py)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from anthropic.types.beta.sessions import BetaManagedAgentsTextBlockParam

UPLOADS = "/mnt/session/uploads"  # where Moorage puts a session's file resources by default
MAX_NAME_CHARS = 100
MAX_TEXT_CHARS = 40_000  # a chat message the bot passes on
MAX_ATTACHMENTS = 10


@dataclass(frozen=True)
class Attachment:
    name: str
    mime_type: str
    url: str  # where the chat platform serves its bytes


@dataclass(frozen=True)
class ChatMessage:
    """One message of a chat thread, as the platform posts it to ``POST /chat/events``."""

    thread: str
    text: str
    attachments: tuple[Attachment, ...] = ()


@dataclass(frozen=True)
class Mount:
    """An uploaded attachment and where the agent finds it."""

    file_id: str
    name: str
    path: str


class BadMessage(ValueError):
    """A chat event the bot does not take (its message says why)."""


def _string(obj: dict[str, Any], key: str, limit: int, default: str | None = None) -> str:
    value = obj.get(key, default)
    if not isinstance(value, str) or len(value) > limit:
        raise BadMessage(f"{key} must be a string of at most {limit} characters")
    return value


def parse_message(body: object) -> ChatMessage:
    """A chat event body: ``{"thread", "text", "attachments": [{"name", "mime_type", "url"}]}``."""
    if not isinstance(body, dict):
        raise BadMessage("the body must be a JSON object")
    thread = _string(body, "thread", 200)
    if not thread:
        raise BadMessage("thread must not be empty")
    raw = body.get("attachments", [])
    if not isinstance(raw, list) or len(raw) > MAX_ATTACHMENTS:
        raise BadMessage(f"attachments must be a list of at most {MAX_ATTACHMENTS}")
    attachments = []
    for item in raw:
        if not isinstance(item, dict):
            raise BadMessage("each attachment must be an object")
        mime = _string(item, "mime_type", 200, "application/octet-stream")
        attachments.append(Attachment(_string(item, "name", 1000), mime, _string(item, "url", 2000)))
    return ChatMessage(thread, _string(body, "text", MAX_TEXT_CHARS, ""), tuple(attachments))


def safe_name(name: str) -> str:
    """A file name fit for a path in the sandbox: its last component, only ``[A-Za-z0-9._-]``."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", base)[:MAX_NAME_CHARS].lstrip(".")
    return cleaned or "attachment"


def mount_path(file_id: str, name: str) -> str:
    """Each upload in a directory of its own: two attachments of one name never collide."""
    return f"{UPLOADS}/{file_id}/{safe_name(name)}"


def attachment_note(mounts: Sequence[Mount]) -> str:
    lines = [f"- {m.name}: {m.path}" for m in mounts]
    return "The user attached these files; they are in your sandbox, read-only:\n" + "\n".join(lines)


def message_content(text: str, mounts: Sequence[Mount]) -> list[BetaManagedAgentsTextBlockParam]:
    """The ``user.message`` content: the note about attachments first, the user's words last."""
    blocks: list[BetaManagedAgentsTextBlockParam] = []
    if mounts:
        blocks.append({"type": "text", "text": attachment_note(mounts)})
    blocks.append({"type": "text", "text": text or "(see the attached files)"})
    return blocks


class HasId(Protocol):
    @property
    def id(self) -> str: ...


E = TypeVar("E", bound=HasId)


def after(events: Sequence[E], last_id: str | None) -> list[E]:
    """The events after ``last_id``. The bot lists from the time of the last event it posted
    (``created_at[gte]``: events of one instant share it), so that event and the ones logged in
    the same instant before it are at the head of the page and are skipped here."""
    if last_id is None:
        return list(events)
    for n, event in enumerate(events):
        if event.id == last_id:
            return list(events[n + 1 :])
    return list(events)  # it is gone (nothing older is on the page): everything is new


def download_name(name: str) -> str:
    """An output's name for the chat: outputs may sit in directories (``charts/a.png``)."""
    return name.rsplit("/", 1)[-1] or "output"
