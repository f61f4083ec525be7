"""The bot's own memory, a small SQLite file: which session each chat thread is, how far into a
session's events the bot has posted, which outputs it has posted (only those are served by
``GET /files/{id}``), and its setup (agent, environment, webhook secret).

Nothing here knows about Moorage's state beyond ids: a session suspended for days is the same id,
and the next message to its thread goes to it; Moorage rehydrates it."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS threads (
    thread TEXT PRIMARY KEY,
    session_id TEXT NOT NULL UNIQUE,
    last_event_id TEXT,
    last_event_at TEXT
);
CREATE TABLE IF NOT EXISTS outputs (
    file_id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS config (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class Cursor:
    """The last event the bot posted from a session: its id and its ``processed_at``."""

    event_id: str
    at: str


class Store:
    def __init__(self, path: Path | str) -> None:
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    # -- setup ------------------------------------------------------------------------

    def get(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM config WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def put(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO config (key, value) VALUES (?, ?)", (key, value))

    # -- threads ----------------------------------------------------------------------

    def session_of(self, thread: str) -> str | None:
        row = self._db.execute("SELECT session_id FROM threads WHERE thread = ?", (thread,)).fetchone()
        return None if row is None else str(row[0])

    def thread_of(self, session_id: str) -> str | None:
        row = self._db.execute("SELECT thread FROM threads WHERE session_id = ?", (session_id,)).fetchone()
        return None if row is None else str(row[0])

    def bind(self, thread: str, session_id: str) -> None:
        """``thread`` is ``session_id`` from now on (a new session replaces a deleted one)."""
        self._db.execute(
            "INSERT OR REPLACE INTO threads (thread, session_id) VALUES (?, ?)",
            (thread, session_id),
        )

    def cursor(self, session_id: str) -> Cursor | None:
        row = self._db.execute(
            "SELECT last_event_id, last_event_at FROM threads WHERE session_id = ?", (session_id,)
        ).fetchone()
        return None if row is None or row[0] is None else Cursor(str(row[0]), str(row[1]))

    def advance(self, session_id: str, cursor: Cursor) -> None:
        self._db.execute(
            "UPDATE threads SET last_event_id = ?, last_event_at = ? WHERE session_id = ?",
            (cursor.event_id, cursor.at, session_id),
        )

    # -- outputs ----------------------------------------------------------------------

    def posted(self, file_id: str) -> bool:
        return self._db.execute("SELECT 1 FROM outputs WHERE file_id = ?", (file_id,)).fetchone() is not None

    def mark_posted(self, file_id: str, session_id: str) -> None:
        self._db.execute("INSERT OR IGNORE INTO outputs (file_id, session_id) VALUES (?, ?)", (file_id, session_id))
