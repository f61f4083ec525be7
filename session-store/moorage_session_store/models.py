"""SQLModel tables: the transcript store (``session_store_keys``, ``session_store_entries``) and the
service's session records (``sessions``, ``workspaces``, ``workspace_chunks``), each session's event log
(``session_events``), the API tokens (``api_tokens``), the tenants' spend (``tenant_spend``), the
agents (``agents``, ``agent_versions``), the environments (``environments``), the commands sent to a
session's replica (``session_commands``), the replicas' heartbeats (``replicas``) and the Files API's
files (``files``, ``file_chunks``).

The schema itself is owned by the Alembic migrations in ``migrations/versions``; these models must
match them (a unit test compares the two).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    text,
)
from sqlmodel import Field, SQLModel

from .columns import BIG_PK, JSON_DOC, UTCDateTime

metadata: MetaData = SQLModel.metadata


class StoreKey(SQLModel, table=True):
    """One transcript file: a main transcript (``subpath == ""``) or a subagent transcript.

    ``mtime`` is the storage write time in epoch milliseconds (strictly increasing per key);
    ``summary`` is the SDK's opaque ``fold_session_summary`` state, main transcripts only.
    """

    __tablename__ = "session_store_keys"
    __table_args__ = (UniqueConstraint("project_key", "session_id", "subpath", name="uq_session_store_keys_key"),)

    id: int | None = Field(default=None, sa_column=Column(BIG_PK, primary_key=True, autoincrement=True))
    project_key: str = Field(sa_column=Column(String, nullable=False))
    session_id: str = Field(sa_column=Column(String, nullable=False))
    subpath: str = Field(default="", sa_column=Column(String, nullable=False, server_default=""))
    mtime: int = Field(sa_column=Column(BigInteger, nullable=False))
    summary: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON_DOC, nullable=True))


class StoreEntry(SQLModel, table=True):
    """One transcript line. ``id`` gives append order; ``uuid`` (when present) is an idempotency key."""

    __tablename__ = "session_store_entries"
    __table_args__ = (
        Index("ix_session_store_entries_key_order", "key_id", "id"),
        Index(
            "uq_session_store_entries_uuid",
            "key_id",
            "uuid",
            unique=True,
            sqlite_where=text("uuid IS NOT NULL"),
            postgresql_where=text("uuid IS NOT NULL"),
        ),
    )

    id: int | None = Field(default=None, sa_column=Column(BIG_PK, primary_key=True, autoincrement=True))
    key_id: int = Field(
        sa_column=Column(BIG_PK, ForeignKey("session_store_keys.id", ondelete="CASCADE"), nullable=False)
    )
    uuid: str | None = Field(default=None, sa_column=Column(String, nullable=True))
    entry: dict[str, Any] = Field(sa_column=Column(JSON_DOC, nullable=False))


class SessionRow(SQLModel, table=True):
    """A service session: state, usage, options, the sandbox handle and the replica lease."""

    __tablename__ = "sessions"
    __table_args__ = (Index("ix_sessions_tenant_created", "tenant", "created_at", "id"),)

    id: str = Field(sa_column=Column(String, primary_key=True))
    tenant: str = Field(sa_column=Column(String, nullable=False, index=True))
    state: str = Field(sa_column=Column(String, nullable=False, index=True))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    updated_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    last_active_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    turns: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    cost_usd: float = Field(default=0.0, sa_column=Column(Float, nullable=False, server_default="0"))
    options: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON_DOC, nullable=False))
    sandbox: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON_DOC, nullable=True))
    owner: str | None = Field(default=None, sa_column=Column(String, nullable=True, index=True))
    lease_expires_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, nullable=True))
    # Another replica wants this session (``SessionRecords.request_handover``).
    handover_requested_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, nullable=True))
    # The HTTP view's fields (migration 0009): title, metadata, environment_id, budget.
    api: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON_DOC, nullable=True))
    agent_id: str | None = Field(default=None, sa_column=Column(String, nullable=True))
    agent_version: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    archived_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, nullable=True))
    input_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    output_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    cache_read_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    cache_creation_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    active_seconds: float = Field(default=0.0, sa_column=Column(Float, nullable=False, server_default="0"))


class WorkspaceRow(SQLModel, table=True):
    """Which stored generation of a session's workspace snapshot (a tar.gz in ``workspace_chunks``)
    is current, and its size; deleted with its session."""

    __tablename__ = "workspaces"

    session_id: str = Field(sa_column=Column(String, ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True))
    size: int = Field(sa_column=Column(BigInteger, nullable=False))
    updated_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    generation: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))


class WorkspaceChunkRow(SQLModel, table=True):
    """One chunk of a stored workspace archive: the archive of ``generation`` is its chunks in
    ``seq`` order. Chunks of a generation that is not current are a save in flight or abandoned."""

    __tablename__ = "workspace_chunks"

    session_id: str = Field(sa_column=Column(String, ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True))
    generation: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    seq: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    size: int = Field(sa_column=Column(Integer, nullable=False))
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class ApiTokenRow(SQLModel, table=True):
    """A bearer token issued by ``moorage tokens create``: only the SHA-256 of the token is stored."""

    __tablename__ = "api_tokens"

    id: str = Field(sa_column=Column(String, primary_key=True))
    tenant: str = Field(sa_column=Column(String, nullable=False, index=True))
    name: str | None = Field(default=None, sa_column=Column(String, nullable=True))
    secret_sha256: str = Field(sa_column=Column(String, nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    expires_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, nullable=True))
    revoked_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, nullable=True))
    last_used_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, nullable=True))


class SessionEventRow(SQLModel, table=True):
    """One client-visible event of a session, in its per-session order ``seq`` (1, 2, 3 … no gaps):
    ``type`` is the frame's type, ``body`` the frame as sent (without ``seq``), ``created_at`` when
    it was written (the Managed Agents ``processed_at``). Deleted with its session."""

    __tablename__ = "session_events"

    session_id: str = Field(sa_column=Column(String, ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True))
    seq: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    type: str = Field(sa_column=Column(String, nullable=False))
    body: dict[str, Any] = Field(sa_column=Column(JSON_DOC, nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class SessionCommandRow(SQLModel, table=True):
    """A command for a session, sent by any replica (``sender``) to the one holding the session's
    lease, which claims it (``claimed_by``, ``claimed_at``), runs it and stores its ``result``
    (``done_at``); the sender then deletes it. Deleted with its session."""

    __tablename__ = "session_commands"
    __table_args__ = (
        Index("ix_session_commands_session", "session_id", "id"),
        # Only the commands nobody took yet: what an owner's poll and ``claim`` look for.
        Index(
            "ix_session_commands_unclaimed",
            "session_id",
            sqlite_where=text("claimed_by IS NULL"),
            postgresql_where=text("claimed_by IS NULL"),
        ),
    )

    id: int | None = Field(default=None, sa_column=Column(BIG_PK, primary_key=True, autoincrement=True))
    session_id: str = Field(sa_column=Column(String, ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False))
    tenant: str = Field(sa_column=Column(String, nullable=False))
    body: dict[str, Any] = Field(sa_column=Column(JSON_DOC, nullable=False))
    sender: str = Field(sa_column=Column(String, nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    claimed_by: str | None = Field(default=None, sa_column=Column(String, nullable=True))
    claimed_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, nullable=True))
    done_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, nullable=True))
    result: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON_DOC, nullable=True))


class ReplicaRow(SQLModel, table=True):
    """A service process using this database, and when it last said it was alive."""

    __tablename__ = "replicas"

    id: str = Field(sa_column=Column(String, primary_key=True))
    started_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    heartbeat_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class TenantSpendRow(SQLModel, table=True):
    """What a tenant spent on the model on one UTC day (every replica adds to it)."""

    __tablename__ = "tenant_spend"

    tenant: str = Field(sa_column=Column(String, primary_key=True))
    day: str = Field(sa_column=Column(String, primary_key=True))  # ISO date, UTC
    usd: float = Field(default=0.0, sa_column=Column(Float, nullable=False, server_default="0"))


class AgentRow(SQLModel, table=True):
    """An agent of one tenant: its current (newest) version and whether it is archived. Its specs
    are in ``agent_versions``, one immutable row per version."""

    __tablename__ = "agents"
    __table_args__ = (Index("ix_agents_tenant_created", "tenant", "created_at", "id"),)

    id: str = Field(sa_column=Column(String, primary_key=True))
    tenant: str = Field(sa_column=Column(String, nullable=False))
    version: int = Field(sa_column=Column(Integer, nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    updated_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    archived_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, nullable=True))


class AgentVersionRow(SQLModel, table=True):
    """One version of an agent's spec (the agent object minus id, version and times); never changed."""

    __tablename__ = "agent_versions"

    agent_id: str = Field(sa_column=Column(String, ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True))
    version: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    spec: dict[str, Any] = Field(sa_column=Column(JSON_DOC, nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class EnvironmentRow(SQLModel, table=True):
    """A sandbox template of one tenant (a Managed Agents environment): its spec (the environment
    object minus id, type and times) and whether it is archived. Not versioned (``revision`` only
    orders writers); names are unique within a tenant."""

    __tablename__ = "environments"
    __table_args__ = (
        Index("ix_environments_tenant_created", "tenant", "created_at", "id"),
        Index("ux_environments_tenant_name", "tenant", "name", unique=True),
    )

    id: str = Field(sa_column=Column(String, primary_key=True))
    tenant: str = Field(sa_column=Column(String, nullable=False))
    name: str = Field(sa_column=Column(String, nullable=False))
    spec: dict[str, Any] = Field(sa_column=Column(JSON_DOC, nullable=False))
    revision: int = Field(sa_column=Column(Integer, nullable=False))  # +1 per update (compare-and-set)
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    updated_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    archived_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, nullable=True))


class FileRow(SQLModel, table=True):
    """A file of one tenant (the Files API): its name, type, size and expiry, the session it belongs
    to (``scope_session_id``: deleted with it), and whether its upload finished (``complete``: an
    incomplete one is an upload in flight, or abandoned, and is never shown). Its bytes are in
    ``file_chunks``."""

    __tablename__ = "files"
    __table_args__ = (
        Index("ix_files_tenant_created", "tenant", "created_at", "id"),
        Index("ix_files_scope", "scope_session_id"),
        Index("ix_files_expires", "expires_at"),
    )

    id: str = Field(sa_column=Column(String, primary_key=True))
    tenant: str = Field(sa_column=Column(String, nullable=False))
    filename: str = Field(sa_column=Column(String, nullable=False))
    mime_type: str = Field(sa_column=Column(String, nullable=False))
    size_bytes: int = Field(sa_column=Column(BigInteger, nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    expires_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, nullable=True))
    scope_session_id: str | None = Field(
        default=None, sa_column=Column(String, ForeignKey("sessions.id", ondelete="CASCADE"), nullable=True)
    )
    downloadable: bool = Field(sa_column=Column(Boolean, nullable=False))
    complete: bool = Field(sa_column=Column(Boolean, nullable=False))


class FileChunkRow(SQLModel, table=True):
    """One chunk of a file's bytes: the file is its chunks in ``seq`` order. Deleted with it."""

    __tablename__ = "file_chunks"

    file_id: str = Field(sa_column=Column(String, ForeignKey("files.id", ondelete="CASCADE"), primary_key=True))
    seq: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    size: int = Field(sa_column=Column(Integer, nullable=False))
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class FileBlobDeletionRow(SQLModel, table=True):
    """A file whose bytes may live in the object store and whose row was deleted (the outbox):
    written in the transaction that deletes the ``files`` row, drained by the service, which
    deletes the object unless a ``files`` row with that id exists again (files.py)."""

    __tablename__ = "file_blob_deletions"

    seq: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True, autoincrement=True))
    file_id: str = Field(sa_column=Column(String, nullable=False))
    tenant: str = Field(sa_column=Column(String, nullable=False))
    queued_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class WebhookEndpointRow(SQLModel, table=True):
    """Where one tenant's webhook events go: a URL, the event types it takes, its signing secret
    (``whsec_…``: the service signs with it, the API shows it only on create and regenerate),
    whether deliveries go (``state``) and how many events in a row failed (``failures``)."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("ix_webhook_endpoints_tenant_created", "tenant", "created_at", "id"),)

    id: str = Field(sa_column=Column(String, primary_key=True))
    tenant: str = Field(sa_column=Column(String, nullable=False))
    url: str = Field(sa_column=Column(String, nullable=False))
    name: str = Field(sa_column=Column(String, nullable=False))
    description: str = Field(sa_column=Column(String, nullable=False))
    enabled_events: list[str] = Field(sa_column=Column(JSON_DOC, nullable=False))
    secret: str = Field(sa_column=Column(String, nullable=False))
    state: str = Field(sa_column=Column(String, nullable=False))  # enabled | disabled
    disabled_reason: str = Field(sa_column=Column(String, nullable=False))
    failures: int = Field(sa_column=Column(Integer, nullable=False))  # events that failed in a row
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    updated_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))


class WebhookDeliveryRow(SQLModel, table=True):
    """One event for one endpoint: the outbox row its deliveries are sent from. Written in the same
    transaction as what caused the event; ``next_attempt_at`` is also the claim's lease."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            sqlite_where=text("state = 'pending'"),
            postgresql_where=text("state = 'pending'"),
        ),
        Index("ix_webhook_deliveries_tenant_state", "tenant", "state"),
        Index("ix_webhook_deliveries_endpoint", "endpoint_id"),
    )

    id: int | None = Field(default=None, sa_column=Column(BIG_PK, primary_key=True, autoincrement=True))
    endpoint_id: str = Field(
        sa_column=Column(String, ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), nullable=False)
    )
    tenant: str = Field(sa_column=Column(String, nullable=False))
    event_id: str = Field(sa_column=Column(String, nullable=False))  # the webhook-id, the same on every try
    event_type: str = Field(sa_column=Column(String, nullable=False))
    payload: dict[str, Any] = Field(sa_column=Column(JSON_DOC, nullable=False))
    state: str = Field(sa_column=Column(String, nullable=False))  # pending | delivered | failed | dropped
    attempts: int = Field(sa_column=Column(Integer, nullable=False))
    next_attempt_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    claimed_by: str | None = Field(default=None, sa_column=Column(String, nullable=True))
    last_error: str | None = Field(default=None, sa_column=Column(String, nullable=True))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    done_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, nullable=True))


class VaultRow(SQLModel, table=True):
    """A tenant's collection of credentials (a Managed Agents vault), named by sessions' ``vault_ids``."""

    __tablename__ = "vaults"
    __table_args__ = (Index("ix_vaults_tenant_created", "tenant", "created_at", "id"),)

    id: str = Field(sa_column=Column(String, primary_key=True))
    tenant: str = Field(sa_column=Column(String, nullable=False))
    display_name: str = Field(sa_column=Column(String, nullable=False))
    meta: dict[str, Any] = Field(sa_column=Column("metadata", JSON_DOC, nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    updated_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    archived_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, nullable=True))


class VaultCredentialRow(SQLModel, table=True):
    """One credential of a vault: what it is for (``kind``; ``match_key``, the normalised MCP server
    URL or the secret's name, unique among the vault's live credentials), what the API shows
    (``public``: the auth object without its secrets, display name, metadata) and its secrets,
    sealed by the service (``sealed``; this package never sees them in clear). Deleted with its vault."""

    __tablename__ = "vault_credentials"
    __table_args__ = (
        Index("ix_vault_credentials_vault_created", "vault_id", "created_at", "id"),
        Index(
            "ux_vault_credentials_live_key",
            "vault_id",
            "match_key",
            unique=True,
            sqlite_where=text("archived_at IS NULL"),
            postgresql_where=text("archived_at IS NULL"),
        ),
    )

    id: str = Field(sa_column=Column(String, primary_key=True))
    vault_id: str = Field(sa_column=Column(String, ForeignKey("vaults.id", ondelete="CASCADE"), nullable=False))
    tenant: str = Field(sa_column=Column(String, nullable=False))
    kind: str = Field(sa_column=Column(String, nullable=False))
    match_key: str = Field(sa_column=Column(String, nullable=False))
    public: dict[str, Any] = Field(sa_column=Column(JSON_DOC, nullable=False))
    sealed: str = Field(sa_column=Column(String, nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    updated_at: datetime = Field(sa_column=Column(UTCDateTime, nullable=False))
    archived_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime, nullable=True))


def entry_uuid(entry: Mapping[str, Any]) -> str | None:
    """The value of ``session_store_entries.uuid`` for an entry: its ``uuid`` if that is a string."""
    value = entry.get("uuid")
    return value if isinstance(value, str) else None


def table(name: str) -> Table:
    """The core ``Table`` behind one of the models above, for Core (non-ORM) statements."""
    return metadata.tables[name]


KEYS = table("session_store_keys")
ENTRIES = table("session_store_entries")
SESSIONS = table("sessions")
WORKSPACES = table("workspaces")
WORKSPACE_CHUNKS = table("workspace_chunks")
API_TOKENS = table("api_tokens")
TENANT_SPEND = table("tenant_spend")
AGENTS = table("agents")
AGENT_VERSIONS = table("agent_versions")
ENVIRONMENTS = table("environments")
SESSION_EVENTS = table("session_events")
SESSION_COMMANDS = table("session_commands")
REPLICAS = table("replicas")
FILES = table("files")
FILE_CHUNKS = table("file_chunks")
FILE_BLOB_DELETIONS = table("file_blob_deletions")
WEBHOOK_ENDPOINTS = table("webhook_endpoints")
WEBHOOK_DELIVERIES = table("webhook_deliveries")
VAULTS = table("vaults")
VAULT_CREDENTIALS = table("vault_credentials")
