"""Sessions made over the HTTP API: their Managed Agents fields and usage counters.

``api`` holds what the HTTP view shows and nothing decides on (``title``, ``metadata``,
``environment_id``, ``budget``); ``agent_id``, ``agent_version`` and ``archived_at`` are columns
because sessions are listed by them; the token counters and ``active_seconds`` are added to in
SQL, like ``cost_usd``.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from moorage_session_store.columns import JSON_DOC, UTCDateTime

revision = "0009"
down_revision: str | None = "0008"
branch_labels: str | None = None
depends_on: str | None = None

_COUNTERS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_creation_tokens")


def upgrade() -> None:
    """Add the columns (existing sessions: no api fields, zero usage) and the list index."""
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("api", JSON_DOC, nullable=True))
        batch.add_column(sa.Column("agent_id", sa.String(), nullable=True))
        batch.add_column(sa.Column("agent_version", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("archived_at", UTCDateTime(), nullable=True))
        for name in _COUNTERS:
            batch.add_column(sa.Column(name, sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("active_seconds", sa.Float(), nullable=False, server_default="0"))
    op.create_index("ix_sessions_tenant_created", "sessions", ["tenant", "created_at", "id"])


def downgrade() -> None:
    """Drop them."""
    op.drop_index("ix_sessions_tenant_created", table_name="sessions")
    with op.batch_alter_table("sessions") as batch:
        for name in ("active_seconds", *reversed(_COUNTERS), "archived_at", "agent_version", "agent_id", "api"):
            batch.drop_column(name)
