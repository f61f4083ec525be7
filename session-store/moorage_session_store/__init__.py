"""SQLModel implementation of claude-agent-sdk's ``SessionStore`` protocol (SQLite and PostgreSQL),
plus Moorage's session records (``moorage_session_store.records``), API tokens (``.tokens``) and
files (``.files``).

    db = await Database.connect("sqlite:///var/moorage.db")   # or postgresql://user@host/db
    await db.migrate()
    store = SQLModelSessionStore(db)                           # ClaudeAgentOptions(session_store=store)
"""

from .agents import AgentRecord, Agents
from .commands import COMMANDS_CHANNEL, DONE_CHANNEL, Command, SessionCommands
from .database import Database
from .environments import EnvironmentRecord, Environments
from .errors import (
    AgentArchived,
    AgentNotFound,
    DatabaseUnavailable,
    EnvironmentArchived,
    EnvironmentNameTaken,
    EnvironmentNotFound,
    FileNotFound,
    FileTooLarge,
    InvalidRecord,
    MoorageStoreError,
    RevisionConflict,
    SessionExists,
    SessionNotFound,
    UnsupportedDatabaseURL,
    VersionConflict,
)
from .events import EVENTS_CHANNEL, EventConflict, NewEvent, SessionEvents, StoredEvent
from .files import FileRecord, Files
from .records import SessionQuery, SessionRecord, SessionRecords, SessionState, TurnUsage
from .replicas import Replicas
from .spend import TenantSpend
from .store import SQLModelSessionStore
from .tokens import TokenCheck, TokenRecord, Tokens

__all__ = [
    "COMMANDS_CHANNEL",
    "DONE_CHANNEL",
    "EVENTS_CHANNEL",
    "AgentArchived",
    "AgentNotFound",
    "AgentRecord",
    "Agents",
    "Command",
    "Database",
    "DatabaseUnavailable",
    "EnvironmentArchived",
    "EnvironmentNameTaken",
    "EnvironmentNotFound",
    "EnvironmentRecord",
    "Environments",
    "EventConflict",
    "FileNotFound",
    "FileRecord",
    "FileTooLarge",
    "Files",
    "InvalidRecord",
    "MoorageStoreError",
    "NewEvent",
    "Replicas",
    "RevisionConflict",
    "SQLModelSessionStore",
    "SessionCommands",
    "SessionEvents",
    "SessionExists",
    "SessionNotFound",
    "SessionQuery",
    "SessionRecord",
    "SessionRecords",
    "SessionState",
    "StoredEvent",
    "TenantSpend",
    "TokenCheck",
    "TokenRecord",
    "Tokens",
    "TurnUsage",
    "UnsupportedDatabaseURL",
    "VersionConflict",
]
