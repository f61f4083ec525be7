"""SQLModel implementation of claude-agent-sdk's ``SessionStore`` protocol (SQLite and PostgreSQL),
plus Moorage's session records (``moorage_session_store.records``), API tokens (``.tokens``) and
files (``.files``).

    db = await Database.connect("sqlite:///var/moorage.db")   # or postgresql://user@host/db
    await db.migrate()
    store = SQLModelSessionStore(db)                           # ClaudeAgentOptions(session_store=store)
"""

from .agents import AgentRecord, Agents
from .blobs import BlobLocation, S3Blobs, parse_location
from .commands import COMMANDS_CHANNEL, DONE_CHANNEL, Command, SessionCommands
from .database import Database
from .environments import EnvironmentRecord, Environments
from .errors import (
    AgentArchived,
    AgentNotFound,
    CredentialConflict,
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
    VaultArchived,
    VaultFull,
    VaultNotFound,
    VersionConflict,
)
from .events import EVENTS_CHANNEL, EventConflict, NewEvent, SessionEvents, StoredEvent
from .files import FileRecord, Files
from .records import SessionQuery, SessionRecord, SessionRecords, SessionState, TurnUsage
from .replicas import Replicas
from .spend import TenantSpend
from .store import SQLModelSessionStore
from .tokens import TokenCheck, TokenRecord, Tokens
from .vaults import MAX_CREDENTIALS, CredentialRecord, VaultRecord, Vaults
from .webhooks import (
    Announcement,
    Delivery,
    EndpointRecord,
    TooManyEndpoints,
    WebhookEndpoints,
    WebhookOutbox,
)

__all__ = [
    "COMMANDS_CHANNEL",
    "DONE_CHANNEL",
    "EVENTS_CHANNEL",
    "MAX_CREDENTIALS",
    "AgentArchived",
    "AgentNotFound",
    "AgentRecord",
    "Agents",
    "Announcement",
    "BlobLocation",
    "Command",
    "CredentialConflict",
    "CredentialRecord",
    "Database",
    "DatabaseUnavailable",
    "Delivery",
    "EndpointRecord",
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
    "S3Blobs",
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
    "TooManyEndpoints",
    "TurnUsage",
    "UnsupportedDatabaseURL",
    "VaultArchived",
    "VaultFull",
    "VaultNotFound",
    "VaultRecord",
    "Vaults",
    "VersionConflict",
    "WebhookEndpoints",
    "WebhookOutbox",
    "parse_location",
]
