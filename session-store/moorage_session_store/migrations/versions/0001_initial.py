"""Initial schema: transcript store (keys, entries) and service session records (sessions, workspaces).

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from moorage_session_store.columns import BIG_PK, JSON_DOC, UTCDateTime

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Create the four tables and their indexes."""
    op.create_table(
        "session_store_keys",
        sa.Column("id", BIG_PK, primary_key=True, autoincrement=True),
        sa.Column("project_key", sa.String(), nullable=False),
        sa.Column("session_id", sa.String(), nullable=False),
        sa.Column("subpath", sa.String(), nullable=False, server_default=""),
        sa.Column("mtime", sa.BigInteger(), nullable=False),
        sa.Column("summary", JSON_DOC, nullable=True),
        sa.UniqueConstraint("project_key", "session_id", "subpath", name="uq_session_store_keys_key"),
    )
    op.create_table(
        "session_store_entries",
        sa.Column("id", BIG_PK, primary_key=True, autoincrement=True),
        sa.Column("key_id", BIG_PK, sa.ForeignKey("session_store_keys.id", ondelete="CASCADE"), nullable=False),
        sa.Column("uuid", sa.String(), nullable=True),
        sa.Column("entry", JSON_DOC, nullable=False),
    )
    op.create_index("ix_session_store_entries_key_order", "session_store_entries", ["key_id", "id"])
    op.create_index(
        "uq_session_store_entries_uuid",
        "session_store_entries",
        ["key_id", "uuid"],
        unique=True,
        sqlite_where=sa.text("uuid IS NOT NULL"),
        postgresql_where=sa.text("uuid IS NOT NULL"),
    )
    op.create_table(
        "sessions",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("last_active_at", UTCDateTime(), nullable=False),
        sa.Column("turns", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("cost_usd", sa.Float(), nullable=False, server_default="0"),
        sa.Column("options", JSON_DOC, nullable=False),
        sa.Column("sandbox", JSON_DOC, nullable=True),
        sa.Column("owner", sa.String(), nullable=True),
        sa.Column("lease_expires_at", UTCDateTime(), nullable=True),
    )
    op.create_index("ix_sessions_tenant", "sessions", ["tenant"])
    op.create_index("ix_sessions_state", "sessions", ["state"])
    op.create_index("ix_sessions_owner", "sessions", ["owner"])
    op.create_table(
        "workspaces",
        sa.Column("session_id", sa.String(), sa.ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    """Drop everything ``upgrade`` created."""
    op.drop_table("workspaces")
    op.drop_index("ix_sessions_owner", table_name="sessions")
    op.drop_index("ix_sessions_state", table_name="sessions")
    op.drop_index("ix_sessions_tenant", table_name="sessions")
    op.drop_table("sessions")
    op.drop_index("uq_session_store_entries_uuid", table_name="session_store_entries")
    op.drop_index("ix_session_store_entries_key_order", table_name="session_store_entries")
    op.drop_table("session_store_entries")
    op.drop_table("session_store_keys")
