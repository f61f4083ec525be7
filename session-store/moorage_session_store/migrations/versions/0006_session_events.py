"""Session events: every client-visible frame of a session, in its per-session order ``seq``, so a
client that reconnects (``?after=N``) gets what it missed, across suspensions and restarts.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from moorage_session_store.columns import JSON_DOC, UTCDateTime

revision = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Create ``session_events`` (primary key ``(session_id, seq)``: reading a session's events
    after a seq is a range scan of that key)."""
    op.create_table(
        "session_events",
        sa.Column("session_id", sa.String(), sa.ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("type", sa.String(), nullable=False),
        sa.Column("body", JSON_DOC, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("session_events")
