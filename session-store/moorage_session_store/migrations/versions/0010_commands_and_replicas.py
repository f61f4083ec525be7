"""Several replicas on one database (issue 16): the commands one replica sends to the replica that
runs a session (``session_commands``), and each replica's heartbeat (``replicas``).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from moorage_session_store.columns import BIG_PK, JSON_DOC, UTCDateTime

revision = "0010"
down_revision: str | None = "0009"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Create both tables. ``session_commands`` has two indexes: ``(session_id, id)`` for a
    session's commands in order (and the cascade from ``sessions``), and a partial one on the
    unclaimed commands' ``session_id``, which the owners' fallback poll (``waiting_sessions``)
    and ``claim`` read: it only holds commands nobody took yet, so it stays tiny."""
    op.create_table(
        "session_commands",
        sa.Column("id", BIG_PK, primary_key=True, autoincrement=True),
        sa.Column("session_id", sa.String(), sa.ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("body", JSON_DOC, nullable=False),
        sa.Column("sender", sa.String(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("claimed_by", sa.String(), nullable=True),
        sa.Column("claimed_at", UTCDateTime(), nullable=True),
        sa.Column("done_at", UTCDateTime(), nullable=True),
        sa.Column("result", JSON_DOC, nullable=True),
    )
    op.create_index("ix_session_commands_session", "session_commands", ["session_id", "id"])
    op.create_index(
        "ix_session_commands_unclaimed",
        "session_commands",
        ["session_id"],
        sqlite_where=sa.text("claimed_by IS NULL"),
        postgresql_where=sa.text("claimed_by IS NULL"),
    )
    op.create_table(
        "replicas",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("heartbeat_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("replicas")
    op.drop_index("ix_session_commands_unclaimed", table_name="session_commands")
    op.drop_index("ix_session_commands_session", table_name="session_commands")
    op.drop_table("session_commands")
