"""The chat-bot example's decisions (examples/slack_bot/rules.py), without I/O: chat events
parsed and bounded, attachment paths that Moorage accepts and never collide, the note the agent
gets before the user's words, and which events are new since the last one posted."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from moorage.session_paths import mount_path_problem
from slack_bot.rules import (
    MAX_ATTACHMENTS,
    Attachment,
    BadMessage,
    ChatMessage,
    Mount,
    after,
    message_content,
    mount_path,
    parse_message,
    safe_name,
)


def test_a_chat_event_is_parsed_with_defaults() -> None:
    body = {"thread": "t1", "text": "hi", "attachments": [{"name": "a.txt", "url": "u"}]}
    assert parse_message(body) == ChatMessage("t1", "hi", (Attachment("a.txt", "application/octet-stream", "u"),))
    assert parse_message({"thread": "t1"}) == ChatMessage("t1", "")


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (["not", "an", "object"], "JSON object"),
        ({"text": "no thread"}, "thread"),
        ({"thread": ""}, "empty"),
        ({"thread": "t", "text": 3}, "text"),
        ({"thread": "t", "text": "x" * 40_001}, "text"),
        ({"thread": "t", "attachments": "a"}, "attachments"),
        ({"thread": "t", "attachments": [{"name": "a", "url": "u"}] * (MAX_ATTACHMENTS + 1)}, "at most"),
        ({"thread": "t", "attachments": ["a"]}, "object"),
        ({"thread": "t", "attachments": [{"name": "a"}]}, "url"),
    ],
)
def test_bad_chat_events_are_refused_saying_why(body: object, words: str) -> None:
    with pytest.raises(BadMessage, match=words):
        parse_message(body)


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("report.csv", "report.csv"),
        ("my table (1).csv", "my_table__1_.csv"),
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\me\\notes.txt", "notes.txt"),
        ("..", "attachment"),
        (".bashrc", "bashrc"),
        ("", "attachment"),
        ("日本.txt", "__.txt"),
        ("x" * 300, "x" * 100),
    ],
)
def test_attachment_paths_are_plain_names_moorage_accepts(name: str, safe: str) -> None:
    assert safe_name(name) == safe
    path = mount_path("file_01", name)
    assert path == f"/mnt/session/uploads/file_01/{safe}"
    assert mount_path_problem(path) is None


def test_two_attachments_of_one_name_get_two_paths() -> None:
    assert mount_path("file_01", "a.txt") != mount_path("file_02", "a.txt")


def test_the_note_comes_first_and_the_users_words_last() -> None:
    mounts = [Mount("file_01", "a b.txt", "/mnt/session/uploads/file_01/a_b.txt")]
    note, words = message_content("bash cat it", mounts)
    assert "a b.txt: /mnt/session/uploads/file_01/a_b.txt" in note["text"]
    assert words == {"type": "text", "text": "bash cat it"}
    assert message_content("hi", []) == [{"type": "text", "text": "hi"}]
    assert message_content("", mounts)[-1]["text"] == "(see the attached files)"


@dataclass(frozen=True)
class Event:
    id: str


def test_only_events_after_the_last_posted_one_are_new() -> None:
    page = [Event("e1"), Event("e2"), Event("e3")]
    assert after(page, None) == page
    assert after(page, "e1") == page[1:]
    assert after(page, "e3") == []
    assert after(page, "gone") == page
